"""The HTTP server's connections: how many may be open, how long each may take, how much
each may hold.

aiohttp serves the requests; it has a keep-alive timeout but no cap on connections and
no deadline for a request's headers, and asyncio's TLS layer gives every connection a
256 KiB read buffer and 60 s for its handshake. 500 connections that never sent a
ClientHello cost 150 MB that was never returned. So the listening socket is made here:

- at most `max_connections` are open; at the cap a new connection closes the open one
  that has waited longest without a request being served (handshaking, sending its
  headers slowly, or idle between requests), so a flood of idle connections cannot lock
  out a scrape or a health check; when every open one is serving a request, the new
  one is closed instead;
- the TLS handshake has `handshake_timeout`, and a request's line and headers have
  `header_timeout` from their first byte (from the connection's start for the first);
  a connection idle between requests is closed by aiohttp after `idle_timeout`;
- a request's line and headers may take `max_header_bytes`, and TLS reads go through a
  16 KiB buffer (a TLS record's size), so an open connection holds tens of kilobytes;
- when a flood of connections has gone, the C library is asked to return the memory
  they used to the system (glibc's malloc_trim; elsewhere nothing is done), which it
  otherwise keeps for the next flood.

The TLS layer is asyncio's own (:class:`asyncio.sslproto.SSLProtocol`, with a smaller
buffer), made here rather than by `create_server(ssl=...)`, which offers no way to size
it. Everything above the socket is aiohttp's.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import ssl
import time
from asyncio import sslproto
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, cast

from aiohttp import web

from certwatch.memory import malloc_trim

__all__ = ["ConnectionGuard", "GuardedSite", "ListenerLimits", "stream_transport"]

log = logging.getLogger(__name__)

TLS_READ_BUFFER = 16 * 1024  # bytes; asyncio's default is 256 KiB per connection
SHUTDOWN_TIMEOUT = 5.0  # seconds for a closing TLS connection's close_notify
WARN_EVERY = 60.0  # seconds between two warnings that the cap was reached
TRIM_AFTER = 64  # open connections that make a flood worth returning memory after
TRIM_DELAY = 1.0  # seconds after the flood has gone (closes come in bursts)


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    max_connections: int = 256
    handshake_timeout: float = 10.0
    header_timeout: float = 10.0
    idle_timeout: float = 60.0  # keep-alive between requests
    max_header_bytes: int = 64 * 1024


def stream_transport(transport: asyncio.BaseTransport) -> asyncio.Transport:
    """A stream socket's transport, as the type checker should see it. Not an isinstance
    check: uvloop's transports have asyncio.Transport's methods without subclassing it."""
    return cast(asyncio.Transport, transport)


class _Slot:
    """One open connection, as the guard sees it."""

    __slots__ = ("transport", "busy", "refused")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None  # the socket's own transport
        self.busy = False  # a request is being served
        self.refused = False  # over the cap with nobody to close: closed at once


class ConnectionGuard:
    """Admits, times and bounds the connections of one listening socket."""

    def __init__(self, limits: ListenerLimits, tls: ssl.SSLContext | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._tls = tls
        self._clock = clock
        # Open connections, the one waiting longest for a request first.
        self._open: collections.OrderedDict[_Slot, None] = collections.OrderedDict()
        self._watches: dict[asyncio.BaseTransport, _RequestWatch] = {}
        self.closed_at_cap = 0  # connections closed to make room, or refused
        self._warned_at: float | None = None
        self._peak = 0  # the most open at once since memory was last returned
        self._trim = malloc_trim  # None where the C library has none (musl, macOS)
        self._trimming: asyncio.TimerHandle | None = None

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def factory(self, handlers: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.BaseProtocol]:
        """The protocol factory for `loop.create_server`: aiohttp's handler, watched."""
        def accept() -> asyncio.BaseProtocol:
            slot = self._admit()
            watch = _RequestWatch(self, slot, handlers())
            if self._tls is None:
                return watch
            return _BoundedTLS(slot, self, asyncio.get_running_loop(), watch, self._tls, None,
                               server_side=True,
                               ssl_handshake_timeout=self.limits.handshake_timeout,
                               ssl_shutdown_timeout=SHUTDOWN_TIMEOUT)
        return accept

    def _admit(self) -> _Slot:
        slot = _Slot()
        if len(self._open) >= self.limits.max_connections:
            victim = next((s for s in self._open if not s.busy and s.transport is not None), None)
            self.closed_at_cap += 1
            self._warn()
            if victim is None:
                slot.refused = True
                return slot
            self.forget(victim)
            assert victim.transport is not None
            victim.transport.abort()
        self._open[slot] = None
        self._peak = max(self._peak, len(self._open))
        return slot

    def _warn(self) -> None:
        now = self._clock()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning("HTTP connection limit reached (%d open): closing the connections "
                        "that wait longest without a request", self.limits.max_connections,
                        extra={"max_connections": self.limits.max_connections,
                               "closed_at_cap": self.closed_at_cap})

    def connected(self, slot: _Slot, transport: asyncio.BaseTransport) -> None:
        slot.transport = stream_transport(transport)
        if slot.refused:
            slot.transport.abort()

    def forget(self, slot: _Slot) -> None:
        self._open.pop(slot, None)
        if self._trim is not None and self._trimming is None and self._peak >= TRIM_AFTER \
                and len(self._open) <= self._peak // 4:
            self._trimming = asyncio.get_running_loop().call_later(TRIM_DELAY, self._return_memory)

    def _return_memory(self) -> None:
        self._trimming = None
        self._peak = len(self._open)
        assert self._trim is not None
        gc.collect()  # closed connections leave cycles (transports, handlers, tasks)
        self._trim(0)

    def served(self, slot: _Slot) -> None:
        """A request was answered: the connection goes to the back of the queue."""
        if slot in self._open:
            self._open.move_to_end(slot)

    def abort_all(self) -> None:
        """Closes every connection still open (at shutdown, after aiohttp's own)."""
        for slot in list(self._open):
            self.forget(slot)
            if slot.transport is not None:
                slot.transport.abort()

    @web.middleware
    async def track(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        """The outermost middleware: marks the connection busy while its request is served."""
        watch = self._watches.get(request.transport) if request.transport else None
        if watch is None:
            return await handler(request)
        watch.request_started()
        try:
            return await handler(request)
        finally:
            watch.request_finished()


class _BoundedTLS(sslproto.SSLProtocol):
    """asyncio's TLS layer with a record-sized read buffer; it tells the guard when the
    socket opens and closes (the request watch above it hears of neither when the
    handshake does not complete)."""

    max_size = TLS_READ_BUFFER

    def __init__(self, slot: _Slot, guard: ConnectionGuard, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slot, self._guard = slot, guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._guard.connected(self._slot, transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.forget(self._slot)
        super().connection_lost(exc)


class _RequestWatch(asyncio.Protocol):
    """Between the transport and aiohttp's request handler: the header deadline and the
    header size. Bytes count until aiohttp hands the request to the application."""

    def __init__(self, guard: ConnectionGuard, slot: _Slot, inner: asyncio.Protocol) -> None:
        self._guard, self._slot, self._inner = guard, slot, inner
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._pending = 0  # bytes of the request not yet handed over
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = stream_transport(transport)  # TLS or not
        self._guard._watches[transport] = self
        if self._guard._tls is None:
            self._guard.connected(self._slot, transport)
        self._start_deadline()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._busy:
            self._pending += len(data)
            if self._pending > self._guard.limits.max_header_bytes:
                self._close("request headers larger than "
                            f"{self._guard.limits.max_header_bytes} bytes")
                return
            if self._deadline is None:
                self._start_deadline()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._transport is not None:
            self._guard._watches.pop(self._transport, None)
        if self._guard._tls is None:
            self._guard.forget(self._slot)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # --- told by the guard's middleware -------------------------------------------------

    def request_started(self) -> None:
        self._cancel_deadline()
        self._busy = self._slot.busy = True
        self._pending = 0

    def request_finished(self) -> None:
        self._busy = self._slot.busy = False
        self._guard.served(self._slot)

    # --- the header deadline ------------------------------------------------------------

    def _start_deadline(self) -> None:
        self._deadline = asyncio.get_running_loop().call_later(
            self._guard.limits.header_timeout, self._close,
            f"no complete request within {self._guard.limits.header_timeout:g}s")

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _close(self, why: str) -> None:
        self._deadline = None
        if self._transport is not None and not self._busy:
            log.debug("closing an HTTP connection: %s", why)
            self._transport.abort()


class GuardedSite(web.BaseSite):
    """An aiohttp site on HOST:PORT whose connections go through a ConnectionGuard."""

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int,
                 guard: ConnectionGuard) -> None:
        super().__init__(runner)
        self._host, self._port, self._guard = host, port, guard
        self.bound_port = port

    @property
    def name(self) -> str:
        scheme = "https" if self._guard._tls is not None else "http"
        return f"{scheme}://{self._host or '0.0.0.0'}:{self.bound_port}"

    async def start(self) -> None:
        await super().start()
        handlers = self._runner.server
        assert handlers is not None  # made by runner.setup()
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.factory(handlers), self._host, self._port, reuse_address=True)
        sockets = self._server.sockets
        self.bound_port = sockets[0].getsockname()[1] if sockets else self._port
