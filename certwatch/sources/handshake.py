"""The probe's TLS handshake: OpenSSL (through pyOpenSSL) over the connection's own streams.

Why not the standard library: :mod:`ssl` cannot ask for a stapled OCSP response (the
`status_request` extension) nor hand one back, and the staple is what a server shows
every client about its certificate's revocation. pyOpenSSL (pyca, the same maintainers
and the same OpenSSL as `cryptography`) exposes `SSL_set_tlsext_status_type` and the
client's status callback. The handshake runs on memory BIOs: OpenSSL never touches the
socket, and this module moves its records between the BIOs and the connection, so one
deadline covers the whole phase and nothing blocks the loop. A TLS port reached directly
is driven from the connection's own callbacks (`connect`); after STARTTLS or through a
proxy, over the streams those phases already use (`run`).

As before, the handshake never refuses a certificate (verification is off; it happens
offline afterwards), reaches legacy servers (TLS 1.0, every cipher, security level 0)
and never resumes a session, so each probe sees the server's current certificate. The
chain the server sent is readable even when the handshake fails afterwards: a server
that rejects us for lacking a client certificate has already sent its own.

Errors: :class:`TLSError` carries OpenSSL's reason in its words ("wrong version
number"); :class:`TLSClosed` means the peer hung up before the handshake finished. The
wire source's `classify` turns them into error kinds.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol, cast

from OpenSSL import SSL, crypto
from OpenSSL._util import lib as _openssl  # the binding pyOpenSSL itself calls

from certwatch.config.files import PEM_FILE, check_file

__all__ = ["Handshake", "TLSClosed", "TLSError", "client_context"]

READ_SIZE = 64 * 1024  # bytes read from the peer at a time during the handshake
# The key exchanges offered, X25519 first (the one key share sent). The bundled OpenSSL
# would also offer, and compute a key share for, the post-quantum hybrid X25519MLKEM768,
# which costs the probe a fifth of its CPU for nothing: the probe reads a certificate and
# sends no secret. A server that wants another of these groups asks for it (a
# HelloRetryRequest), so every server reached before is reached still.
GROUPS = b"X25519:P-256:P-384:P-521:X448:ffdhe2048:ffdhe3072:ffdhe4096"
# A record the peer sends is at most 16 KiB plus overhead; the certificate message is
# bounded by OpenSSL itself (max_cert_list, 100 KiB), so the handshake's memory is too.


class TLSError(Exception):
    """OpenSSL ended the handshake; `reason` is its reason, as OpenSSL words it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TLSClosed(TLSError):
    """The peer closed the connection before the handshake finished."""

    def __init__(self) -> None:
        super().__init__("peer closed the connection during the handshake")


def _reason(exc: SSL.Error) -> str:
    """The most specific reason in an OpenSSL error (its queue holds one or more)."""
    queue = exc.args[0] if exc.args else None
    if isinstance(queue, list) and queue and isinstance(queue[-1], tuple):
        return str(queue[-1][-1])
    if isinstance(exc, SSL.ZeroReturnError):
        return "peer closed the connection during the handshake"
    return str(exc) or type(exc).__name__


def _remember_staple(connection: SSL.Connection, staple: bytes, _data: object) -> bool:
    handshake = connection.get_app_data()
    if isinstance(handshake, Handshake):
        handshake.staple = staple
    return True  # judged afterwards, offline: never abort the handshake over it


def client_context(client_cert: Path | None = None, client_key: Path | None = None) -> SSL.Context:
    """A context that accepts any certificate: we fetch here and judge later.

    Raises SSL.Error (or OSError) when the client certificate cannot be loaded.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE)
    # Reach legacy servers too: an old TLS 1.0 box with a 1024-bit key still has a
    # certificate that expires, and refusing to talk to it would hide that.
    context.set_min_proto_version(0)  # the lowest this OpenSSL supports
    context.set_cipher_list(b"ALL:@SECLEVEL=0")
    # Each probe must see the server's current certificate, never a resumed session;
    # servers without secure renegotiation (RFC 5746) are reached all the same.
    context.set_options(SSL.OP_ALL | SSL.OP_NO_TICKET | SSL.OP_LEGACY_SERVER_CONNECT)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_ocsp_client_callback(_remember_staple)
    _offer_groups(context)
    if client_cert is not None:
        for path in (client_cert, client_key):  # OpenSSL reads them by name: a FIFO would hang
            if path is not None:
                check_file(path, PEM_FILE)
        context.use_certificate_chain_file(str(client_cert))
        context.use_privatekey_file(str(client_key or client_cert))
        context.check_privatekey()
    return context


def _offer_groups(context: SSL.Context) -> None:
    """Offers GROUPS where this pyOpenSSL's binding can say so (pyOpenSSL has no public
    call for it); elsewhere OpenSSL's defaults stay, which reach the same servers."""
    set_groups = getattr(_openssl, "SSL_CTX_set1_curves_list", None)
    if set_groups is not None and set_groups(context._context, GROUPS) != 1:  # noqa: SLF001
        _openssl.ERR_clear_error()  # an OpenSSL without one of them: its defaults stay


class Handshake:
    """One client handshake, driven over asyncio streams; read its results afterwards."""

    def __init__(self, context: SSL.Context, server_name: str | None, *,
                 request_staple: bool = True) -> None:
        self._connection = SSL.Connection(context, None)
        self._connection.set_connect_state()
        self._connection.set_app_data(self)
        if server_name:
            self._connection.set_tlsext_host_name(server_name.encode("idna"))
        self.staple_requested = request_staple
        if request_staple:
            self._connection.request_ocsp()
        # The stapled OCSP response (DER); b"" when asked for and none came; None when
        # not asked for or the handshake did not get that far.
        self.staple: bytes | None = None
        self.finished: asyncio.Future[None] | None = None  # set by connect()

    async def connect(self, host: str, port: int,
                      ) -> tuple[asyncio.Transport, asyncio.Future[None]]:
        """Connects to `host` (an address) and starts the handshake there, driven from the
        connection's own callbacks: the usual probe, a TLS port reached directly, with no
        streams between the socket and OpenSSL (~0.1 ms of CPU a probe less than `run`).
        Returns the transport and the future that says how the handshake ended (the
        caller bounds it in time; it raises as `run` does)."""
        loop = asyncio.get_running_loop()
        finished = self.finished = loop.create_future()
        transport, _ = await loop.create_connection(lambda: _Driver(self, finished), host, port)
        return transport, finished

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Completes the handshake over streams that are already open (after STARTTLS or
        through a proxy's tunnel); the caller bounds it in time. Raises TLSError."""
        data = b""
        while not self.advance(data, writer):
            await writer.drain()
            data = await reader.read(READ_SIZE)
            if not data:
                raise TLSClosed()
        await writer.drain()

    def advance(self, data: bytes, out: _Writer) -> bool:
        """Hands OpenSSL what the peer sent (b"" to begin) and `out` what OpenSSL answers;
        True once the handshake is complete. Raises TLSError."""
        connection = self._connection
        if data:
            connection.bio_write(data)
        try:
            connection.do_handshake()
        except SSL.WantReadError:
            self._send(out)
            return False
        except SSL.Error as exc:
            self._send(out)  # the alert that says why, as any client would
            raise TLSError(_reason(exc)) from None
        self._send(out)
        return True

    def release(self) -> None:
        """Breaks the reference cycle between the connection and this object, its app
        data (for the staple callback): left to the cyclic collector, thousands of
        finished connections (~25 KB of OpenSSL memory each, unseen by Python's
        collector) piled up between collections on uvloop, ~50 MB more RSS."""
        self._connection.set_app_data(None)
        if self.finished is not None and self.finished.done() and not self.finished.cancelled():
            self.finished.exception()  # retrieved: a probe that gave up no longer waits

    def _send(self, out: _Writer) -> None:
        """Hands what OpenSSL wrote to its memory BIO to the transport."""
        while True:
            try:
                data = self._connection.bio_read(READ_SIZE)
            except SSL.WantReadError:
                return
            if not data or out.is_closing():
                return
            out.write(data)
            if len(data) < READ_SIZE:
                return  # the BIO is empty: no exception raised to learn it

    @property
    def chain(self) -> tuple[bytes, ...]:
        """The chain as the server sent it (DER, leaf first); empty if none arrived."""
        certs = self._connection.get_peer_cert_chain()
        return tuple(crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in certs or ())

    @property
    def version(self) -> str:
        return self._connection.get_protocol_version_name()

    @property
    def cipher(self) -> str | None:
        return self._connection.get_cipher_name()


class _Writer(Protocol):
    """Where OpenSSL's records go: a transport, or the stream writer over one."""

    def write(self, data: bytes) -> None: ...
    def is_closing(self) -> bool: ...


class _Driver(asyncio.Protocol):
    """A handshake driven by the transport's callbacks (see Handshake.connect): each
    arrival goes straight to OpenSSL, its answer straight back; `finished` says how it
    ended. Nothing is buffered here: OpenSSL bounds the handshake's messages
    (max_cert_list), and reading stops once it is complete."""

    def __init__(self, handshake: Handshake, finished: asyncio.Future[None]) -> None:
        self._handshake = handshake
        self._finished = finished
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._advance(b"")

    def data_received(self, data: bytes) -> None:
        self._advance(data)

    def eof_received(self) -> bool:
        self._end(TLSClosed())
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc if exc is not None else TLSClosed())

    def _advance(self, data: bytes) -> None:
        finished, transport = self._finished, self._transport
        if finished.done() or transport is None:
            return
        try:
            complete = self._handshake.advance(data, transport)
        except Exception as exc:  # noqa: BLE001 - the probe's error, classified by the caller
            finished.set_exception(exc)
            return
        if complete:
            transport.pause_reading()  # what the server sends next is not read
            finished.set_result(None)

    def _end(self, exc: BaseException) -> None:
        if not self._finished.done():
            self._finished.set_exception(exc)
