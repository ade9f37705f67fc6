"""The probe: resolve, connect, STARTTLS, handshake, and hand back what the wire said.

The handshake never refuses a certificate: verification is off here and happens later,
offline, in :mod:`certwatch.core.verify`, so expired, self-signed and mismatched certificates
are still read; the handshake (:mod:`certwatch.sources.handshake`) also asks for the
stapled OCSP response and hands it on, unjudged. Every phase has its own deadline and a
global semaphore bounds how many connections are open at once. Failures become
:class:`ProbeError` values, translated from low-level exceptions in one place
(:func:`classify`).

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
    proxy_*               an egress proxy refused the tunnel (see certwatch.sources.proxy)

Through a proxy (`endpoint.proxy`) there is no DNS here: the proxy resolves the name, so
the endpoint is one target whose address is the host name the CONNECT asked for.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Awaitable, Callable

from OpenSSL import SSL

from certwatch.core.inventory import Endpoint, is_ip
from certwatch.core.observation import Observation, ProbeError, Target
from certwatch.core.vocabulary import ErrorKind, Phase
from certwatch.sources.proxy import ProxyError, open_tunnel
from certwatch.sources.handshake import Handshake, TLSClosed, TLSError, client_context
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

# OpenSSL reasons (in OpenSSL's words) that mean "the peer is not speaking TLS at all".
_NOT_TLS_REASONS = {
    "wrong version number", "packet length too long", "record layer failure",
    "unknown protocol", "http request", "unexpected record", "record too large",
    "unsupported protocol", "bad packet length", "length mismatch",
}
# ... and those that say the server wants a client certificate we do not have.
_CLIENT_CERT_REASONS = {
    "tlsv13 alert certificate required", "sslv3 alert handshake failure",
    "ssl/tls alert handshake failure",
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
    if isinstance(exc, ProxyError):
        return ProbeError(exc.kind, phase, str(exc))
    if isinstance(exc, (asyncio.LimitOverrunError, ValueError)) and phase == Phase.STARTTLS:
        return ProbeError(ErrorKind.STARTTLS_UNSUPPORTED, phase, "server sent an overlong line")
    if isinstance(exc, asyncio.IncompleteReadError):
        return ProbeError(ErrorKind.CLOSED, phase, "peer closed the connection")
    if isinstance(exc, TLSClosed):
        return ProbeError(ErrorKind.CLOSED, phase, "peer closed the connection during the handshake")
    if isinstance(exc, TLSError):
        reason = exc.reason.lower()
        if reason in _NOT_TLS_REASONS:
            return ProbeError(ErrorKind.NOT_TLS, phase, f"peer did not answer with TLS ({reason})")
        if reason in _CLIENT_CERT_REASONS and phase == Phase.HANDSHAKE:
            return ProbeError(ErrorKind.HANDSHAKE, phase, f"peer rejected the handshake ({reason}); "
                                                  "it may require a client certificate")
        return ProbeError(ErrorKind.HANDSHAKE, phase, reason)
    if isinstance(exc, ConnectionRefusedError):
        return ProbeError(ErrorKind.REFUSED, phase, "connection refused")
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return ProbeError(ErrorKind.RESET, phase, "connection reset by peer")
    if isinstance(exc, ConnectionAbortedError):
        return ProbeError(ErrorKind.CLOSED, phase, "connection aborted")
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return ProbeError(ErrorKind.UNREACHABLE, phase, exc.strerror or str(exc))
    if isinstance(exc, OSError):
        return ProbeError(ErrorKind.UNREACHABLE if phase in (Phase.CONNECT, Phase.PROXY)
                          else ErrorKind.RESET, phase,
                          exc.strerror or str(exc))
    return ProbeError(ErrorKind.INTERNAL, phase, f"{type(exc).__name__}: {exc}")


async def _close(transport: asyncio.WriteTransport) -> None:
    """Closes at once: abort() never waits for a close_notify a peer may never send.

    abort() closes the socket in a callback it schedules; yielding once lets that run,
    so the connection is gone before the caller releases its slot and the connection
    bound stays exact.
    """
    transport.abort()
    await asyncio.sleep(0)


async def _within(finished: asyncio.Future[None], timeout: float) -> None:
    """Waits for a future that callbacks resolve, failed with TimeoutError after `timeout`
    seconds. As asyncio.timeout would, for a third of its CPU: no task is cancelled (and
    uncancelled); the future alone is failed, so what resolves it afterwards is ignored."""
    timer = asyncio.get_running_loop().call_later(timeout, _time_out, finished)
    try:
        await finished
    finally:
        timer.cancel()


def _time_out(finished: asyncio.Future[None]) -> None:
    if not finished.done():
        finished.set_exception(TimeoutError())


async def _connect(endpoint: Endpoint,
                   address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plaintext connection to the endpoint at `address`, directly or through its proxy."""
    if endpoint.proxy is not None:
        return await open_tunnel(endpoint.proxy, address, endpoint.port, limit=STREAM_LIMIT)
    return await asyncio.open_connection(address, endpoint.port, limit=STREAM_LIMIT)


# --- the prober ---------------------------------------------------------------------


class Prober:
    """Probes endpoints; one instance owns the global connection bound."""

    def __init__(self, *, max_concurrency: int = 100, resolver: Resolver = system_resolver) -> None:
        self._slots = asyncio.Semaphore(max_concurrency)
        self._dns_slots = asyncio.Semaphore(DNS_CONCURRENCY)
        self._resolver = resolver
        self._contexts: dict[tuple[Path | None, Path | None], SSL.Context] = {}
        self.max_concurrency = max_concurrency

    def _context(self, endpoint: Endpoint) -> SSL.Context:
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
        if len(selected) == 1:  # most endpoints: no task and gathering future for one probe
            return (await self.probe_address(endpoint, selected[0]),)
        return tuple(await asyncio.gather(*(self.probe_address(endpoint, a) for a in selected)))

    async def _resolve(self, endpoint: Endpoint) -> list[str]:
        if is_ip(endpoint.host) or endpoint.proxy is not None:
            return [endpoint.host]  # through a proxy, the proxy resolves the name
        async with self._dns_slots, asyncio.timeout(endpoint.timeout):
            return await self._resolver(endpoint.host, endpoint.port)

    async def probe_address(self, endpoint: Endpoint, address: str) -> Observation:
        """One connection and handshake to `address`; never raises."""
        async with self._slots:
            started_at, start = datetime.now(timezone.utc), time.monotonic()
            target = Target(endpoint, address)
            handshake: Handshake | None = None
            transport: asyncio.WriteTransport | None = None
            phase = Phase.SETUP
            try:
                try:
                    context = self._context(endpoint)
                except (OSError, SSL.Error) as exc:
                    error = ProbeError(ErrorKind.CLIENT_CERT, Phase.SETUP, f"cannot load client certificate: {exc}")
                    return Observation(target, started_at, time.monotonic() - start, error=error)
                phase = Phase.CONNECT if endpoint.proxy is None else Phase.PROXY
                if endpoint.proxy is None and endpoint.protocol == "tls":
                    # Most probes: the handshake begins as the connection is made.
                    handshake = Handshake(context, endpoint.server_name,
                                          request_staple=endpoint.revocation.staple)
                    async with asyncio.timeout(endpoint.timeout):
                        transport, finished = await handshake.connect(address, endpoint.port)
                    phase = Phase.HANDSHAKE
                    await _within(finished, endpoint.timeout)
                else:
                    async with asyncio.timeout(endpoint.timeout):
                        reader, writer = await _connect(endpoint, address)
                    transport = writer.transport
                    if endpoint.protocol != "tls":
                        phase = Phase.STARTTLS
                        async with asyncio.timeout(endpoint.timeout):
                            await DIALOGUES[endpoint.protocol](reader, writer, endpoint.verify_name)
                    phase = Phase.HANDSHAKE
                    handshake = Handshake(context, endpoint.server_name,
                                          request_staple=endpoint.revocation.staple)
                    async with asyncio.timeout(endpoint.timeout):
                        await handshake.run(reader, writer)
                return Observation(target, started_at, time.monotonic() - start,
                                   chain=handshake.chain, tls_version=handshake.version,
                                   cipher=handshake.cipher, ocsp_staple=handshake.staple)
            except Exception as exc:  # noqa: BLE001 - becomes a value
                # The chain is read even when the handshake failed after it arrived.
                chain = handshake.chain if handshake is not None else ()
                return Observation(target, started_at, time.monotonic() - start, chain=chain,
                                   error=classify(exc, phase, endpoint.timeout))
            finally:
                if handshake is not None:
                    handshake.release()
                if transport is not None:
                    await _close(transport)
