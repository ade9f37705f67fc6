"""Demo endpoints: real TLS servers on loopback, one for every state certwatch reports.

Why this exists: a newcomer on a fresh machine, with no internet and no certificates of
their own, should start the daemon on the shipped default inventory and within a minute
see something real: TLS endpoints that are ok, warning, critical, expired, untrusted,
mismatched and unreachable, and one state change (a critical certificate "renewed" after
`renew_after` seconds). Everything is made here: a private demo PKI (EC P-256, so it is
fast) and asyncio TLS servers in the running event loop, on ephemeral loopback ports.
The demo server names end in `.invalid` (RFC 6761), so nothing ever resolves them.

Each connection completes the handshake, waits briefly for the client to hang up and
closes; every step is bounded, and clients that vanish are logged at debug level only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import socket
import ssl
import tempfile
from asyncio import sslproto
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certwatch.config import ConfigError, build_inventory
from certwatch.core.inventory import Inventory
from certwatch.serving.listener import stream_transport

__all__ = ["DemoEndpoints", "with_demo"]

log = logging.getLogger(__name__)

DOMAIN = "demo.certwatch.invalid"
ROOT_FILE = "demo-root.pem"
RENEWED_DAYS = 90
_HANDSHAKE_SECONDS = 5.0  # a client that connects and says nothing is dropped after this
_LINGER_SECONDS = 5.0  # how long a connection stays open after the handshake at most
_CLOSE_SECONDS = 1.0  # for the TLS close_notify exchange before the socket is aborted
_STOP_SECONDS = 5.0  # for the cancelled renewal task on exit

# name, left-most label of its server name, days left (negative: expired), kind
_ENDPOINTS: tuple[tuple[str, str, float, str], ...] = (
    ("demo-ok", "ok", 80, "issued"),
    ("demo-warning", "warning", 20, "issued"),
    ("demo-critical", "critical", 5, "issued"),
    ("demo-expired", "expired", -3, "issued"),
    ("demo-untrusted", "untrusted", 200, "self_signed"),
    ("demo-wrong-name", "wrong-name", 80, "other_name"),
)
_RENEWED = "demo-critical"
_UNREACHABLE = "demo-unreachable"
# A team label each, so the status page's label filter has something to choose from.
_TEAMS = {"demo-ok": "web", "demo-warning": "payments", "demo-critical": "payments",
          "demo-expired": "mail", "demo-untrusted": "intranet", "demo-wrong-name": "web",
          _UNREACHABLE: "mail"}

_Key = ec.EllipticCurvePrivateKey


# --- the demo PKI ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Issuer:
    cert: x509.Certificate
    key: _Key


def _new_key() -> _Key:
    return ec.generate_private_key(ec.SECP256R1())


def _sign(builder: x509.CertificateBuilder, subject_key: _Key, issuer: _Issuer | None,
          common_name: str, not_before: datetime, not_after: datetime) -> x509.Certificate:
    """Fills in what every certificate has, then signs (self-signed when issuer is None)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = subject_key.public_key()
    builder = (builder.subject_name(subject)
               .issuer_name(issuer.cert.subject if issuer else subject)
               .public_key(public)
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before)
               .not_valid_after(not_after)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False))
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False)
    return builder.sign(issuer.key if issuer else subject_key, hashes.SHA256())


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False)


def _make_ca(common_name: str, issuer: _Issuer | None, now: datetime, years: int) -> _Issuer:
    """A CA; the intermediate (issuer given) may sign leaves only."""
    key = _new_key()
    path_length = None if issuer is None else 0
    builder = (x509.CertificateBuilder()
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), True)
               .add_extension(_key_usage(ca=True), True))
    # Issued a year ago, so the expired leaf (issued ~93 days ago) has a chain that was
    # once entirely valid: certwatch then reports it as expired, not as untrusted.
    cert = _sign(builder, key, issuer, common_name, now - timedelta(days=365),
                 now + timedelta(days=365 * years))
    return _Issuer(cert, key)


def _make_leaf(dns_name: str, issuer: _Issuer | None, now: datetime,
               days_left: float) -> tuple[x509.Certificate, _Key]:
    """A server certificate for `dns_name`, issued as a 90-day certificate would be."""
    key = _new_key()
    not_after = now + timedelta(days=days_left)
    not_before = not_after - timedelta(days=max(90.0, days_left + 1))
    builder = (x509.CertificateBuilder()
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
               .add_extension(_key_usage(ca=False), True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), False))
    return _sign(builder, key, issuer, dns_name, not_before, not_after), key


def _server_context(chain: list[x509.Certificate], key: _Key) -> ssl.SSLContext:
    """A server context presenting `chain` (leaf first); the files live only while loading."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.num_tickets = 0  # nothing to write to a client that hangs up after the handshake
    with tempfile.TemporaryDirectory(prefix="certwatch-demo-") as scratch:
        cert_path, key_path = Path(scratch, "chain.pem"), Path(scratch, "key.pem")
        cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        context.load_cert_chain(cert_path, key_path)
    return context


# --- the servers -------------------------------------------------------------------------


@dataclass(slots=True)
class _Site:
    """One demo endpoint; `context` is read by each new connection, so it can be swapped."""

    name: str
    server_name: str
    port: int = 0
    context: ssl.SSLContext | None = None  # None: nothing listens (demo-unreachable)
    server: asyncio.Server | None = None


def _free_port(host: str) -> int:
    """A port nothing listens on: bound, noted and released at once."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _Connection(asyncio.Protocol):
    """One client, above the TLS layer (_TLS): the handshake done, wait (bounded) for the
    client to hang up, then close."""

    def __init__(self) -> None:
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._linger = asyncio.get_running_loop().call_later(_LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # whatever the client says, the demo has nothing to answer

    def eof_received(self) -> None:
        return None  # the client is done: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()


class _TLS(sslproto.SSLProtocol):
    """asyncio's TLS layer as the connection's protocol from the accept on, with the
    site's context of the moment (a renewal shows to the next client), as in the daemon's
    own listener. Starting TLS afterwards (start_tls) dropped a ClientHello that arrived
    first, as a client that speaks at once sends it. It keeps the socket in `connections`
    while open, so that stopping aborts those still in their handshake too. A client that
    fails the handshake is dropped quietly (asyncio logs it at debug)."""

    def __init__(self, connections: set[asyncio.Transport], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections = connections
        self._socket: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._socket = stream_transport(transport)
        self._connections.add(self._socket)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._socket is not None:
            self._connections.discard(self._socket)
        super().connection_lost(exc)


def _accept(site: _Site, connections: set[asyncio.Transport]) -> asyncio.BaseProtocol:
    """The protocol of a new connection: TLS with the site's context, the demo above it."""
    assert site.context is not None
    return _TLS(connections, asyncio.get_running_loop(), _Connection(), site.context, None,
                server_side=True, ssl_handshake_timeout=_HANDSHAKE_SECONDS,
                ssl_shutdown_timeout=_CLOSE_SECONDS)


class DemoEndpoints:
    """Demo TLS endpoints in every state, served from the running event loop.

    `async with DemoEndpoints(directory) as demo:` writes the demo root CA to
    `directory/demo-root.pem` and starts the servers; `demo.inventory_entries()` gives
    the endpoint entries to put in an inventory. Leaving the block stops everything.
    """

    def __init__(self, directory: Path, *, host: str = "127.0.0.1",
                 renew_after: float | None = 45.0) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"demo endpoints listen on loopback only, not {host!r}")
        self._directory = Path(directory)
        self._host = host
        self._renew_after = renew_after
        self._sites: list[_Site] = []
        self._connections: set[asyncio.Transport] = set()
        self._renewal: asyncio.Task[None] | None = None
        self._intermediate: _Issuer | None = None

    @property
    def root_pem(self) -> Path:
        """The demo root CA certificate (PEM); trust it to see the demo chains as valid."""
        return self._directory / ROOT_FILE

    def inventory_entries(self) -> list[dict[str, Any]]:
        """One inventory endpoint entry per demo endpoint, for `build_inventory`."""
        return [{"name": site.name, "host": self._host, "port": site.port,
                 "server_name": site.server_name, "ca_file": str(self.root_pem),
                 "system_trust": False, "labels": {"env": "demo", "team": _TEAMS[site.name]}}
                for site in self._sites]

    async def __aenter__(self) -> DemoEndpoints:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._stop()

    async def _start(self) -> None:
        now = datetime.now(timezone.utc)
        root = _make_ca("certwatch demo root", None, now, years=10)
        self._intermediate = intermediate = _make_ca("certwatch demo intermediate", root, now,
                                                     years=5)
        self._directory.mkdir(parents=True, exist_ok=True)
        self.root_pem.write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))
        for name, label, days_left, kind in _ENDPOINTS:
            site = _Site(name, f"{label}.{DOMAIN}")
            if kind == "self_signed":
                leaf, key = _make_leaf(site.server_name, None, now, days_left)
                site.context = _server_context([leaf], key)
            else:
                dns_name = f"elsewhere.{DOMAIN}" if kind == "other_name" else site.server_name
                leaf, key = _make_leaf(dns_name, intermediate, now, days_left)
                site.context = _server_context([leaf, intermediate.cert], key)
            self._sites.append(site)
            site.server = await asyncio.get_running_loop().create_server(
                functools.partial(_accept, site, self._connections), self._host, 0)
            site.port = int(site.server.sockets[0].getsockname()[1])
        self._sites.append(_Site(_UNREACHABLE, f"unreachable.{DOMAIN}",
                                 port=_free_port(self._host)))
        if self._renew_after is not None:
            self._renewal = asyncio.create_task(self._renew_later(self._renew_after),
                                                name="certwatch-demo-renewal")

    async def _stop(self) -> None:
        for site in self._sites:
            if site.server is not None:
                site.server.close()
        for transport in list(self._connections):
            transport.abort()
        self._connections.clear()
        tasks = [self._renewal] if self._renewal else []
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_STOP_SECONDS)
            if pending:  # pragma: no cover - every await above is bounded
                log.warning("demo: %d tasks did not stop within %gs", len(pending), _STOP_SECONDS)
        for site in self._sites:
            if site.server is not None:
                await site.server.wait_closed()
        self._renewal = None

    async def _renew_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        site = next(s for s in self._sites if s.name == _RENEWED)
        assert self._intermediate is not None
        leaf, key = _make_leaf(site.server_name, self._intermediate,
                               datetime.now(timezone.utc), RENEWED_DAYS)
        site.context = _server_context([leaf, self._intermediate.cert], key)
        log.info("demo: renewed the certificate of %s (%s:%d): a new %d-day certificate "
                 "replaces the one about to expire, so its next check turns critical into ok",
                 site.name, self._host, site.port, RENEWED_DAYS)


def with_demo(inventory: Inventory, demo: DemoEndpoints) -> Inventory:
    """The inventory with the demo endpoints added (`demo: true`), for `run` and `check`.

    The demo endpoints follow the inventory's defaults (its interval above all), except
    for the trust settings each of them brings."""
    d = inventory.defaults
    defaults = {"timeout": d.timeout, "warn_days": d.warn_days, "critical_days": d.critical_days,
                "interval": d.interval, "retry_interval": d.retry_interval,
                "warn_fraction": d.warn_fraction, "critical_fraction": d.critical_fraction,
                "renewal_due_fraction": d.renewal_due_fraction}
    entries = build_inventory({"defaults": defaults, "endpoints": demo.inventory_entries()},
                              source="demo")
    clash = {e.name for e in entries.endpoints} & {e.name for e in inventory.endpoints}
    if clash:
        raise ConfigError(inventory.source,
                          [f"top: endpoint names {sorted(clash)} are used by the demo endpoints"])
    return dataclasses.replace(inventory, endpoints=inventory.endpoints + entries.endpoints)
