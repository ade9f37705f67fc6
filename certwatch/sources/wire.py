"""The probe: resolve, connect, STARTTLS, handshake, and hand back what the wire said.

The handshake never refuses a certificate: verification is off here and happens later,
offline, in :mod:`certwatch.core.verify`, so expired, self-signed and mismatched certificates
are still read. Every phase has its own deadline and a global semaphore bounds how many
connections are open at once. Failures become :class:`ProbeError` values, translated
from low-level exceptions in one place (:func:`classify`).

Error kinds, for operators:
    dns                   the name did not resolve (or not to the address family asked for)
    refused               nothing listens on the port (TCP RST to our SYN)
    unreachable           no route to the address
    timeout               a phase got no answer before its deadline (the phase says which)
    reset                 the peer reset the connection
    closed                the peer closed the connection before the handshake finished
    not_tls               the peer answered, but not with TLS (plain HTTP, garbage, ...)
    starttls_unsupported  the STARTTLS dialogue failed: not offered, refused, or unexpected
    handshake             TLS failed; the detail is OpenSSL's reason (alerts, versions, ...)
    client_cert           the configured client certificate or key could not be loaded
    internal              a bug in certwatch; the detail says what
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import ipaddress
import logging
import socket
import ssl
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

from certwatch.config.files import PEM_FILE, check_file
from certwatch.core.inventory import Endpoint, is_ip
from certwatch.core.observation import Observation, ProbeError, Target
from certwatch.core.vocabulary import ErrorKind, Phase
from certwatch.sources.starttls import DIALOGUES, StartTLSError

__all__ = ["Prober", "classify", "system_resolver"]

log = logging.getLogger(__name__)

STREAM_LIMIT = 16 * 1024  # longest line a STARTTLS peer may send before we give up
# Look-ups run in the loop's default thread pool (at least 5 threads). Admitting fewer
# at once means a look-up's deadline starts when a thread takes it, not while it queues
# behind thousands of others (which made slow-but-fine resolvers look like timeouts).
DNS_CONCURRENCY = 4


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address of `host`, in the order the system resolver gives them."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def select_addresses(addresses: list[str], mode: str) -> list[str]:
    if mode == "first":
        return addresses[:1]
    if mode in ("ipv4", "ipv6"):
        version = 4 if mode == "ipv4" else 6
        return [a for a in addresses if ipaddress.ip_address(a.split("%")[0]).version == version]
    return addresses


# --- classification: the one place low-level exceptions become values ---------------

# OpenSSL reasons that mean "the peer is not speaking TLS at all".
_NOT_TLS_REASONS = {
    "WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE",
    "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "UNEXPECTED_RECORD", "RECORD_TOO_LARGE",
    "UNSUPPORTED_PROTOCOL", "BAD_PACKET_LENGTH", "LENGTH_MISMATCH",
}
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}


def classify(exc: BaseException, phase: Phase, timeout: float) -> ProbeError:
    """Translates an exception raised during `phase` into a ProbeError."""
    if isinstance(exc, TimeoutError):
        return ProbeError(ErrorKind.TIMEOUT, phase, f"no answer within {timeout:g}s")
    if isinstance(exc, socket.gaierror):
        return ProbeError(ErrorKind.DNS, phase, exc.strerror or str(exc))
    if isinstance(exc, StartTLSError):
        return ProbeError(ErrorKind.STARTTLS_UNSUPPORTED, phase, str(exc))
    if isinstance(exc, (asyncio.LimitOverrunError, ValueError)) and phase == Phase.STARTTLS:
        return ProbeError(ErrorKind.STARTTLS_UNSUPPORTED, phase, "server sent an overlong line")
    if isinstance(exc, asyncio.IncompleteReadError):
        return ProbeError(ErrorKind.CLOSED, phase, "peer closed the connection")
    if isinstance(exc, ssl.SSLEOFError):
        return ProbeError(ErrorKind.CLOSED, phase, "peer closed the connection during the handshake")
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        detail = exc.reason.lower().replace("_", " ") if exc.reason else str(exc)
        if reason in _NOT_TLS_REASONS:
            return ProbeError(ErrorKind.NOT_TLS, phase, f"peer did not answer with TLS ({detail})")
        if reason in ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE") \
                and phase == Phase.HANDSHAKE:
            return ProbeError(ErrorKind.HANDSHAKE, phase, f"peer rejected the handshake ({detail}); "
                                                  "it may require a client certificate")
        return ProbeError(ErrorKind.HANDSHAKE, phase, detail)
    if isinstance(exc, ConnectionRefusedError):
        return ProbeError(ErrorKind.REFUSED, phase, "connection refused")
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return ProbeError(ErrorKind.RESET, phase, "connection reset by peer")
    if isinstance(exc, ConnectionAbortedError):
        return ProbeError(ErrorKind.CLOSED, phase, "connection aborted")
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return ProbeError(ErrorKind.UNREACHABLE, phase, exc.strerror or str(exc))
    if isinstance(exc, OSError):
        return ProbeError(ErrorKind.UNREACHABLE if phase == Phase.CONNECT else ErrorKind.RESET, phase,
                          exc.strerror or str(exc))
    return ProbeError(ErrorKind.INTERNAL, phase, f"{type(exc).__name__}: {exc}")


# --- TLS client context -------------------------------------------------------------

# The SSLObject of the handshake under way in this task. asyncio creates it in a
# callback that runs in a copy of the caller's context, so a context variable carries
# it back to us; with it the presented chain can be read even when the handshake
# fails afterwards (a server that rejects us for lacking a client certificate has
# already sent its own).
_handshake_objects: contextvars.ContextVar[list[ssl.SSLObject]] = contextvars.ContextVar(
    "certwatch_handshake_objects")


class _RecordingContext(ssl.SSLContext):
    def wrap_bio(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        ssl_object = super().wrap_bio(*args, **kwargs)
        holder = _handshake_objects.get(None)
        if holder is not None:
            holder.append(ssl_object)
        return ssl_object


def client_context(client_cert: Path | None = None, client_key: Path | None = None) -> ssl.SSLContext:
    """A context that accepts any certificate: we fetch here and judge later."""
    context = _RecordingContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # Reach legacy servers too: an old TLS 1.0 box with a 1024-bit key still has a
    # certificate that expires, and refusing to talk to it would hide that.
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.set_ciphers("ALL:@SECLEVEL=0")
    # Each probe must see the server's current certificate, never a resumed session.
    context.options |= ssl.OP_NO_TICKET
    if client_cert is not None:
        for path in (client_cert, client_key):  # OpenSSL reads them by name: a FIFO would hang
            if path is not None:
                check_file(path, PEM_FILE)
        context.load_cert_chain(client_cert, client_key)
    return context


def _presented_chain(ssl_object: ssl.SSLObject) -> tuple[bytes, ...]:
    """The chain as the server sent it, leaf first; empty if none arrived."""
    public = getattr(ssl_object, "get_unverified_chain", None)  # public from Python 3.13
    certs = public() if public is not None else ssl_object._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
    if not certs:
        return ()
    return tuple(c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
                 for c in certs)


async def _close(writer: asyncio.StreamWriter) -> None:
    """Closes at once: abort() never waits for a close_notify a peer may never send.

    abort() closes the socket in a callback it schedules; yielding once lets that run,
    so the connection is gone before the caller releases its slot and the connection
    bound stays exact. (wait_closed() is no use here: after a failed start_tls the
    stream's protocol no longer hears of the close.)
    """
    writer.transport.abort()
    await asyncio.sleep(0)


# --- the prober ---------------------------------------------------------------------


class Prober:
    """Probes endpoints; one instance owns the global connection bound."""

    def __init__(self, *, max_concurrency: int = 100, resolver: Resolver = system_resolver) -> None:
        self._slots = asyncio.Semaphore(max_concurrency)
        self._dns_slots = asyncio.Semaphore(DNS_CONCURRENCY)
        self._resolver = resolver
        self._contexts: dict[tuple[Path | None, Path | None], ssl.SSLContext] = {}
        self.max_concurrency = max_concurrency

    def _context(self, endpoint: Endpoint) -> ssl.SSLContext:
        key = (endpoint.client_cert, endpoint.client_key)
        if key not in self._contexts:
            self._contexts[key] = client_context(*key)
        return self._contexts[key]

    async def observe(self, endpoint: Endpoint) -> tuple[Observation, ...]:
        """Probes every selected address of the endpoint; never raises."""
        started_at, start = datetime.now(timezone.utc), time.monotonic()
        try:
            addresses = await self._resolve(endpoint)
            selected = select_addresses(addresses, endpoint.addresses)
            if not selected:
                raise socket.gaierror(socket.EAI_NONAME,
                                      f"{endpoint.host} has no {endpoint.addresses} address")
        except Exception as exc:  # noqa: BLE001 - becomes a value
            error = classify(exc, Phase.DNS, endpoint.timeout)
            return (Observation(Target(endpoint, None), started_at,
                                time.monotonic() - start, error=error),)
        return tuple(await asyncio.gather(*(self.probe_address(endpoint, a) for a in selected)))

    async def _resolve(self, endpoint: Endpoint) -> list[str]:
        if is_ip(endpoint.host):
            return [endpoint.host]
        async with self._dns_slots, asyncio.timeout(endpoint.timeout):
            return await self._resolver(endpoint.host, endpoint.port)

    async def probe_address(self, endpoint: Endpoint, address: str) -> Observation:
        """One connection and handshake to `address`; never raises."""
        async with self._slots:
            started_at, start = datetime.now(timezone.utc), time.monotonic()
            target = Target(endpoint, address)
            handshakes: list[ssl.SSLObject] = []
            token = _handshake_objects.set(handshakes)
            writer: asyncio.StreamWriter | None = None
            phase = Phase.SETUP
            try:
                try:
                    context = self._context(endpoint)
                except (OSError, ssl.SSLError) as exc:
                    error = ProbeError(ErrorKind.CLIENT_CERT, Phase.SETUP, f"cannot load client certificate: {exc}")
                    return Observation(target, started_at, time.monotonic() - start, error=error)
                phase = Phase.CONNECT
                async with asyncio.timeout(endpoint.timeout):
                    reader, writer = await asyncio.open_connection(
                        address, endpoint.port, limit=STREAM_LIMIT)
                if endpoint.protocol != "tls":
                    phase = Phase.STARTTLS
                    async with asyncio.timeout(endpoint.timeout):
                        await DIALOGUES[endpoint.protocol](reader, writer, endpoint.verify_name)
                phase = Phase.HANDSHAKE
                async with asyncio.timeout(endpoint.timeout):
                    await writer.start_tls(context, server_hostname=endpoint.server_name)
                ssl_object = writer.get_extra_info("ssl_object")
                cipher = ssl_object.cipher()
                return Observation(target, started_at, time.monotonic() - start,
                                   chain=_presented_chain(ssl_object),
                                   tls_version=ssl_object.version(),
                                   cipher=cipher[0] if cipher else None)
            except Exception as exc:  # noqa: BLE001 - becomes a value
                chain = _presented_chain(handshakes[-1]) if handshakes else ()
                return Observation(target, started_at, time.monotonic() - start, chain=chain,
                                   error=classify(exc, phase, endpoint.timeout))
            finally:
                _handshake_objects.reset(token)
                if writer is not None:
                    await _close(writer)
