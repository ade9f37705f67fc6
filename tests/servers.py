"""Loopback servers for integration tests: real TLS (direct, or after a real STARTTLS
dialogue) and hostile peers (tarpit, drip, reset, garbage, plain HTTP).

Each server is a context manager. Entering binds 127.0.0.x or ::1 (only loopback is
allowed) and serves from background threads: one acceptor, plus one short-lived thread
per connection, at most _MAX_OPEN at once; further clients wait in the listen backlog,
as on a busy real server. Exiting stops accepting, shuts down every open connection's
socket (which wakes its handler at once), and joins every thread within _STOP_TIMEOUT;
a thread still alive after that is a bug here and raises RuntimeError.

The server side is not the code under test, so it is plain blocking code with a timeout
on every socket operation. Clients hanging up at any point is normal here: it is logged
at debug level, never raised.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import ssl
import struct
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)

_IO_TIMEOUT = 10.0  # any single socket operation; stopping the server wakes handlers sooner
_HOLD_TIMEOUT = 60.0  # how long a tarpit holds a silent connection at most
_PEEK_TIMEOUT = 1.0  # how long hostile peers wait for the client's first bytes
_STOP_TIMEOUT = 5.0
_ACCEPT_POLL = 0.02  # how often the acceptor checks whether to stop
_MAX_OPEN = 128
_MAX_COMMANDS = 20  # plaintext commands per STARTTLS dialogue before giving up
_MAX_DRAIN = 1 << 20  # bytes read from one client before hanging up on it


class _Connection:
    """One accepted connection. `sock` is replaced by its TLS wrapper under the server
    lock, so that close() always shuts down the socket the handler is blocked on."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


class _LoopbackServer:
    """Accept loop, bounded per-connection threads and clean shutdown; subclasses
    implement `_handle` for one connection."""

    def __init__(self, host: str = "127.0.0.1", *, port: int = 0) -> None:
        self._family = _loopback_family(host)
        self.host = host
        self.port = port
        self.connections = 0
        self.peak_connections = 0
        self._lock = threading.Lock()
        self._open: set[_Connection] = set()
        self._threads: set[threading.Thread] = set()
        self._slots = threading.BoundedSemaphore(_MAX_OPEN)
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    @property
    def address(self) -> str:
        """The host to connect to (an IP address literal)."""
        return self.host

    def __enter__(self) -> Self:
        self._prepare()
        listener = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            # An explicit port can be rebound while old connections sit in TIME_WAIT.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(_MAX_OPEN)
            listener.settimeout(_ACCEPT_POLL)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"{self}-accept", daemon=True)
        self._acceptor.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __str__(self) -> str:
        return f"{type(self).__name__}[{self.host}]:{self.port}"

    def close(self) -> None:
        """Stop accepting, wake and finish every connection, and join all threads."""
        self._stopping.set()
        deadline = time.monotonic() + _STOP_TIMEOUT
        if self._acceptor is not None:
            self._acceptor.join(_STOP_TIMEOUT)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for conn in self._open:
                _wake(conn.sock)
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in [*threads, self._acceptor] if t is not None and t.is_alive()]
        if alive:
            raise RuntimeError(f"{self}: threads still running after {_STOP_TIMEOUT}s: {alive}")

    def _prepare(self) -> None:
        """Load whatever the server needs before it starts listening."""

    def _handle(self, conn: _Connection) -> None:
        raise NotImplementedError

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            if not self._slots.acquire(timeout=_ACCEPT_POLL):
                continue
            try:
                sock, _peer = self._listener.accept()
            except (TimeoutError, ConnectionAbortedError):
                self._slots.release()
                continue
            sock.settimeout(_IO_TIMEOUT)
            # As nginx does: without it, Nagle holds the second TLS 1.3 session ticket
            # (and anything after) until the client's delayed ACK, 40 ms later.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(sock)
            thread = threading.Thread(target=self._serve, args=(conn,), name=f"{self}-conn", daemon=True)
            with self._lock:
                self.connections += 1
                self._open.add(conn)
                live = sum(1 for c in self._open if not _peer_closed(c.sock))
                self.peak_connections = max(self.peak_connections, live)
                if len(self._threads) >= _MAX_OPEN:
                    self._threads = {t for t in self._threads if t.is_alive()}
                self._threads.add(thread)
            thread.start()

    def _serve(self, conn: _Connection) -> None:
        try:
            self._handle(conn)
        except OSError as exc:  # includes ssl.SSLError, timeouts and peer resets
            log.debug("%s: connection ended: %r", self, exc)
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.sock.close()
            self._slots.release()


class TLSServer(_LoopbackServer):
    """A TLS server choosing its certificate by SNI, optionally behind a STARTTLS dialogue.

    `certs` maps a server name to (PEM chain path, key path); the None entry is served
    to clients sending no SNI or an unknown name. Without a None entry such clients get
    an unrecognized_name alert. After the handshake the server echoes what it receives
    until the client hangs up: an echo proves the server accepted the connection, which
    in TLS 1.3 the client's finished handshake does not (the server judges a client
    certificate after the client considers the handshake done).

    The server is deliberately permissive (OpenSSL security level 0): it must serve any
    certificate a test makes, 1024-bit RSA included; judging it is certwatch's job.
    """

    def __init__(
        self,
        certs: Mapping[str | None, tuple[Path, Path]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        min_version: ssl.TLSVersion | None = None,
        max_version: ssl.TLSVersion | None = None,
        starttls: str | None = None,
        starttls_offered: bool = True,
        client_ca: Path | None = None,
    ) -> None:
        if not certs:
            raise ValueError("TLSServer needs at least one certificate")
        if starttls is not None and starttls not in _DIALOGUES:
            raise ValueError(f"unknown starttls {starttls!r}; expected one of {sorted(_DIALOGUES)}")
        super().__init__(host, port=port)
        self._certs = dict(certs)
        self._min_version = min_version
        self._max_version = max_version
        self._dialogue = _DIALOGUES[starttls] if starttls is not None else None
        self._starttls_offered = starttls_offered
        self._client_ca = client_ca
        self._by_name: dict[str | None, ssl.SSLContext] = {}
        self._front: ssl.SSLContext | None = None
        self.server_names: list[str | None] = []  # the SNI of each handshake, as received

    def _prepare(self) -> None:
        self._by_name = {
            name.lower() if name is not None else None: self._context(chain, key)
            for name, (chain, key) in self._certs.items()
        }
        # The context every connection starts with; the SNI callback swaps in the
        # certificate's context. It carries the same settings, because OpenSSL keeps
        # the protocol and verify settings of the SSL object it started with.
        self._front = self._context()
        self._front.sni_callback = self._select

    def _context(self, chain: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            # Setting TLSv1/TLSv1_1 warns; serving them is how tests see old servers.
            warnings.simplefilter("ignore", DeprecationWarning)
            if self._min_version is not None:
                ctx.minimum_version = self._min_version
            if self._max_version is not None:
                ctx.maximum_version = self._max_version
        if self._client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=self._client_ca)
        if chain is not None:
            ctx.load_cert_chain(chain, key)
        return ctx

    def _select(
        self, sock: ssl.SSLSocket | ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext
    ) -> int | None:
        with self._lock:
            self.server_names.append(server_name)
        name = server_name.lower() if server_name is not None else None
        ctx = self._by_name.get(name) or self._by_name.get(None)
        if ctx is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sock.context = ctx
        return None

    def _handle(self, conn: _Connection) -> None:
        assert self._front is not None
        if self._dialogue is not None and not self._dialogue(_Peer(conn.sock), self._starttls_offered):
            return
        with self._lock:
            conn.sock = tls = self._front.wrap_socket(
                conn.sock, server_side=True, do_handshake_on_connect=False
            )
        tls.do_handshake()
        received = 0
        while received < _MAX_DRAIN and (data := tls.recv(4096)):
            tls.sendall(data)
            received += len(data)


class TarpitServer(_LoopbackServer):
    """Accepts, sends `banner` if any, then nothing more: only the client's own deadline
    ends the wait. Holds the connection until the client closes or the server stops."""

    def __init__(self, host: str = "127.0.0.1", banner: bytes = b"", *, port: int = 0) -> None:
        super().__init__(host, port=port)
        self.banner = banner

    def _handle(self, conn: _Connection) -> None:
        conn.sock.settimeout(_HOLD_TIMEOUT)
        if self.banner:
            conn.sock.sendall(self.banner)
        _drain(conn.sock)


class DripServer(_LoopbackServer):
    """Reads the ClientHello, then sends a TLS record one byte per `interval`.

    Every read on the client gets a byte before a per-read timeout fires, so only an
    overall handshake deadline ends it. The record header announces a 16 KiB
    handshake record (a ServerHello) so the client keeps waiting for the rest;
    `max_bytes` bounds how long the drip lasts.
    """

    _RECORD_START = b"\x16\x03\x03\x40\x00\x02"

    def __init__(
        self, host: str = "127.0.0.1", *, port: int = 0, interval: float = 1.0, max_bytes: int = 120
    ) -> None:
        super().__init__(host, port=port)
        self.interval = interval
        self.max_bytes = max_bytes

    def _handle(self, conn: _Connection) -> None:
        _read_some(conn.sock)
        record = self._RECORD_START.ljust(self.max_bytes, b"\x00")[: self.max_bytes]
        for byte in record:
            conn.sock.sendall(bytes([byte]))
            if self._stopping.wait(self.interval):
                return


class ResetServer(_LoopbackServer):
    """Reads a little, then closes with SO_LINGER (1, 0): the client gets a TCP RST."""

    def _handle(self, conn: _Connection) -> None:
        _read_some(conn.sock)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class GarbageServer(_LoopbackServer):
    """Sends `size` random bytes, then closes.

    The first byte is never a TLS content type (20-24), so a client fails the same
    way on every run instead of, once in a few hundred, waiting for a "record".
    """

    def __init__(self, host: str = "127.0.0.1", *, port: int = 0, size: int = 64 * 1024) -> None:
        super().__init__(host, port=port)
        self.size = size

    def _handle(self, conn: _Connection) -> None:
        _read_some(conn.sock)
        garbage = bytearray(os.urandom(self.size))
        if 20 <= garbage[0] <= 24:
            garbage[0] |= 0x80
        conn.sock.sendall(garbage)
        _close_gently(conn.sock)


class PlainHTTPServer(_LoopbackServer):
    """Answers like a plain HTTP server hit with a TLS ClientHello: 400, then close."""

    def _handle(self, conn: _Connection) -> None:
        _read_some(conn.sock)
        conn.sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        _close_gently(conn.sock)


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (connecting gets refused). Another process could take
    it before the test connects; with ephemeral ports on loopback that is remote."""
    with socket.socket(_loopback_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def _loopback_family(host: str) -> socket.AddressFamily:
    """Refuse anything but a loopback address: test servers must never be reachable."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host must be a loopback IP address, not {host!r}") from None
    if not ip.is_loopback:
        raise ValueError(f"host must be a loopback IP address, not {host!r}")
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


# Linux TCP states (include/net/tcp_states.h) in which the peer has closed or reset.
_PEER_CLOSED_STATES = frozenset({6, 7, 8, 9, 11})  # TIME_WAIT CLOSE CLOSE_WAIT LAST_ACK CLOSING


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the client has closed this connection, though its handler may not have
    noticed yet. Counting those would make peak_connections overshoot a client's real
    concurrency (a client closing one connection and opening the next is seen as two
    open ones until the old handler catches up). Without TCP_INFO: assume open."""
    if not hasattr(socket, "TCP_INFO"):
        return False
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return True
    return state in _PEER_CLOSED_STATES


def _wake(sock: socket.socket) -> None:
    """Shut the socket down so a thread blocked on it returns at once. The base method
    on purpose: SSLSocket.shutdown would also drop its TLS state under that thread."""
    with contextlib.suppress(OSError):  # already closed or reset: nothing to wake
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _read_some(sock: socket.socket) -> bytes:
    """The client's first bytes (its ClientHello or request), or b"" if it sends none soon."""
    sock.settimeout(_PEEK_TIMEOUT)
    try:
        return sock.recv(16 * 1024)
    except TimeoutError:
        return b""
    finally:
        sock.settimeout(_IO_TIMEOUT)


def _drain(sock: socket.socket) -> None:
    """Read and discard until the client hangs up (or sends more than _MAX_DRAIN)."""
    received = 0
    while received < _MAX_DRAIN and (data := sock.recv(64 * 1024)):
        received += len(data)


def _close_gently(sock: socket.socket) -> None:
    """Send FIN and read out what the client sent: closing with unread input would send
    a RST instead, and the client could lose the bytes we just sent."""
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(_PEEK_TIMEOUT)
    _drain(sock)


# STARTTLS dialogues. Each speaks the plaintext part of its protocol and returns True
# when the client asked for TLS and the server agreed; the caller then does the
# handshake on the same socket.


class _Peer:
    """Buffered reads of a plaintext dialogue. Bytes the client sends after its STARTTLS
    command stay in the buffer and are dropped, as real servers have done since
    CVE-2011-0411 (plaintext injected ahead of the handshake)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def send(self, data: str | bytes) -> None:
        self._sock.sendall(data.encode("ascii") if isinstance(data, str) else data)

    def read_until(self, token: bytes, limit: int = 4096) -> bytes:
        """Everything up to and including `token`."""
        while (end := self._buffer.find(token)) < 0:
            if len(self._buffer) > limit:
                raise ConnectionError(f"no {token!r} in the first {limit} bytes")
            self._fill()
        end += len(token)
        data, self._buffer = self._buffer[:end], self._buffer[end:]
        return data

    def read_exact(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def readline(self) -> str:
        """One command line without its line ending."""
        return self.read_until(b"\n").decode("latin-1").rstrip("\r\n")

    def _fill(self) -> None:
        data = self._sock.recv(4096)
        if not data:
            raise ConnectionError("client closed the connection mid-dialogue")
        self._buffer += data


def _smtp(peer: _Peer, offered: bool) -> bool:
    """RFC 3207."""
    peer.send("220 test.invalid ESMTP\r\n")
    for _ in range(_MAX_COMMANDS):
        verb = peer.readline().split(" ", 1)[0].upper()
        if verb == "EHLO":
            starttls = "250-STARTTLS\r\n" if offered else ""
            peer.send(f"250-test.invalid\r\n250-PIPELINING\r\n{starttls}250 8BITMIME\r\n")
        elif verb == "STARTTLS" and offered:
            peer.send("220 2.0.0 Ready to start TLS\r\n")
            return True
        elif verb == "QUIT":
            peer.send("221 2.0.0 Bye\r\n")
            return False
        else:
            peer.send("502 5.5.2 Error\r\n")
    return False


def _imap(peer: _Peer, offered: bool) -> bool:
    """RFC 9051 section 6.2.1."""
    capabilities = "IMAP4rev1 STARTTLS" if offered else "IMAP4rev1"
    peer.send(f"* OK [CAPABILITY {capabilities}] ready\r\n")
    for _ in range(_MAX_COMMANDS):
        tag, _, rest = peer.readline().partition(" ")
        command = rest.split(" ", 1)[0].upper()
        if command == "CAPABILITY":
            peer.send(f"* CAPABILITY {capabilities}\r\n{tag} OK CAPABILITY completed\r\n")
        elif command == "STARTTLS" and offered:
            peer.send(f"{tag} OK Begin TLS negotiation now\r\n")
            return True
        elif command == "STARTTLS":
            peer.send(f"{tag} BAD STARTTLS not supported\r\n")
        elif command == "LOGOUT":
            peer.send(f"* BYE logging out\r\n{tag} OK LOGOUT completed\r\n")
            return False
        else:
            peer.send(f"{tag} BAD unknown command\r\n")
    return False


def _pop3(peer: _Peer, offered: bool) -> bool:
    """RFC 2595 section 4."""
    peer.send("+OK POP3 ready\r\n")
    for _ in range(_MAX_COMMANDS):
        command = peer.readline().split(" ", 1)[0].upper()
        if command == "CAPA":
            stls = "STLS\r\n" if offered else ""
            peer.send(f"+OK Capability list follows\r\nUSER\r\n{stls}.\r\n")
        elif command == "STLS" and offered:
            peer.send("+OK Begin TLS\r\n")
            return True
        elif command == "QUIT":
            peer.send("+OK bye\r\n")
            return False
        else:
            peer.send("-ERR not supported\r\n")
    return False


def _ftp(peer: _Peer, offered: bool) -> bool:
    """RFC 4217, with a multi-line greeting to exercise the client's reply parsing."""
    peer.send("220-Welcome\r\n220 FTP ready\r\n")
    for _ in range(_MAX_COMMANDS):
        verb, _, argument = peer.readline().partition(" ")
        verb = verb.upper()
        if verb == "AUTH" and argument.strip().upper() == "TLS" and offered:
            peer.send("234 AUTH TLS successful\r\n")
            return True
        if verb == "FEAT":
            auth = " AUTH TLS\r\n" if offered else ""
            peer.send(f"211-Features:\r\n{auth}211 End\r\n")
        elif verb == "QUIT":
            peer.send("221 Goodbye\r\n")
            return False
        else:
            peer.send("502 not supported\r\n")
    return False


_LDAP_STARTTLS = b"1.3.6.1.4.1.1466.20037"
_LDAP_SUCCESS = 0
_LDAP_PROTOCOL_ERROR = 2
_LDAP_MAX_MESSAGE = 64 * 1024


def _ldap(peer: _Peer, offered: bool) -> bool:
    """RFC 4511 section 4.14: one ExtendedRequest for StartTLS, one ExtendedResponse."""
    tag, length = peer.read_exact(2)
    if length & 0x80:
        length = int.from_bytes(peer.read_exact(length & 0x7F), "big")
    if tag != 0x30 or length > _LDAP_MAX_MESSAGE:
        raise ConnectionError(f"not an LDAPMessage (tag {tag:#x}, length {length})")
    items = _ber_items(peer.read_exact(length))
    if len(items) < 2 or items[0][0] != 0x02:
        raise ConnectionError("LDAPMessage without messageID and protocolOp")
    message_id, (op_tag, op) = items[0][1], items[1]
    if op_tag != 0x77 or _ber_items(op)[:1] != [(0x80, _LDAP_STARTTLS)]:  # [APPLICATION 23]
        return False
    if offered:
        result = _ber(0x0A, bytes([_LDAP_SUCCESS])) + _ber(0x04, b"") + _ber(0x04, b"")
        result += _ber(0x8A, _LDAP_STARTTLS)  # responseName [10]
    else:
        result = _ber(0x0A, bytes([_LDAP_PROTOCOL_ERROR])) + _ber(0x04, b"")
        result += _ber(0x04, b"unsupported extended operation")
    peer.send(_ber(0x30, _ber(0x02, message_id) + _ber(0x78, result)))  # [APPLICATION 24]
    return offered


def _ber(tag: int, content: bytes) -> bytes:
    """One BER element in definite-length form, as LDAP requires."""
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _ber_items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) elements in `data`, one level deep."""
    items = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise ConnectionError("truncated BER element")
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if length & 0x80:
            width = length & 0x7F
            length = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        if pos + length > len(data):
            raise ConnectionError("truncated BER element")
        items.append((tag, data[pos : pos + length]))
        pos += length
    return items


_PG_SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def _postgres(peer: _Peer, offered: bool) -> bool:
    """PostgreSQL SSLRequest: 8 bytes in, one byte ("S" yes, "N" no) out."""
    if peer.read_exact(8) != _PG_SSL_REQUEST:
        return False
    peer.send(b"S" if offered else b"N")
    return offered


_XMPP_TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"


def _xmpp(peer: _Peer, offered: bool) -> bool:
    """RFC 6120 section 5: stream header and features, then <starttls/> and <proceed/>."""
    peer.read_until(b"<stream:stream")  # skips an XML declaration, whose "?>" is not the end
    peer.read_until(b">")
    starttls = f"<starttls xmlns='{_XMPP_TLS_NS}'><required/></starttls>" if offered else ""
    peer.send(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client'"
        " xmlns:stream='http://etherx.jabber.org/streams' id='1' from='test.invalid'"
        f" version='1.0'><stream:features>{starttls}</stream:features>"
    )
    for _ in range(_MAX_COMMANDS):
        element = peer.read_until(b">")
        if b"<starttls" in element and offered:
            peer.send(f"<proceed xmlns='{_XMPP_TLS_NS}'/>")
            return True
        if b"<starttls" in element:
            peer.send(f"<failure xmlns='{_XMPP_TLS_NS}'/></stream:stream>")
            return False
        if b"</stream:stream" in element:
            peer.send("</stream:stream>")
            return False
    return False


_DIALOGUES: dict[str, Callable[[_Peer, bool], bool]] = {
    "smtp": _smtp,
    "imap": _imap,
    "pop3": _pop3,
    "ftp": _ftp,
    "ldap": _ldap,
    "postgres": _postgres,
    "xmpp": _xmpp,
}
