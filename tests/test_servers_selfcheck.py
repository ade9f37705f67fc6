"""The test servers and PKI checked with the stdlib only, so a failure in certwatch's
integration tests points at certwatch, not at its fixtures."""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests import pki
from tests.kubeapi import FakeKubeAPI
from tests.servers import (
    DripServer,
    GarbageServer,
    PlainHTTPServer,
    ResetServer,
    TarpitServer,
    TLSServer,
    closed_port,
)

TIMEOUT = 3.0
VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]
NOT_BEFORE = datetime.now(UTC) - timedelta(days=1)
NOT_AFTER = NOT_BEFORE + timedelta(days=30)


class Listening(Protocol):
    host: str
    port: int


@dataclass(frozen=True)
class Pki:
    root_pem: Path
    issued: dict[str, pki.Issued]
    files: dict[str, tuple[Path, Path]]


@pytest.fixture(scope="module")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    root = pki.make_root("Selfcheck Root", not_before=NOT_BEFORE, not_after=NOT_AFTER)
    intermediate = pki.make_intermediate(
        root, "Selfcheck Intermediate", not_before=NOT_BEFORE, not_after=NOT_AFTER
    )
    client_auth = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    issued = {
        "a": pki.make_leaf(intermediate, ["a.test"], not_before=NOT_BEFORE, not_after=NOT_AFTER),
        # RSA, and no AKI: OpenSSL (like browsers and Go) still builds the chain.
        "b": pki.make_leaf(
            intermediate, ["b.test"], key_type="rsa", aki=False, not_before=NOT_BEFORE, not_after=NOT_AFTER
        ),
        "default": pki.make_leaf(
            root, ["default.test", "127.0.0.1", "::1"], not_before=NOT_BEFORE, not_after=NOT_AFTER
        ),
        "client": pki.make_leaf(
            root,
            ["client.test"],
            extra_extensions=[(client_auth, False)],
            not_before=NOT_BEFORE,
            not_after=NOT_AFTER,
        ),
    }
    files = {name: leaf.write(directory, name) for name, leaf in issued.items()}
    return Pki(pki.write_pem(directory / "root.pem", [root.cert]), issued, files)


def _open_fds() -> int | None:
    fd_dir = Path("/proc/self/fd")
    return len(os.listdir(fd_dir)) if fd_dir.is_dir() else None


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """A server must be fully gone when its with-block ends: no thread, no socket."""
    threads, fds = threading.active_count(), _open_fds()
    yield
    assert threading.active_count() == threads
    assert _open_fds() == fds


def _client(test_pki: Pki, *, cert: str | None = None, check_hostname: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=test_pki.root_pem)
    ctx.check_hostname = check_hostname
    if cert is not None:
        ctx.load_cert_chain(*test_pki.files[cert])
    return ctx


def _tcp(server: Listening, timeout: float = TIMEOUT) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=timeout)


def _connect(
    server: TLSServer, ctx: ssl.SSLContext, server_hostname: str | None
) -> tuple[x509.Certificate, str]:
    """Handshake, prove the server accepted us with an echo; the peer cert and version."""
    with _tcp(server) as raw, ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
        tls.sendall(b"ping")
        assert tls.recv(4) == b"ping"
        der, version = tls.getpeercert(binary_form=True), tls.version()
        assert der is not None and version is not None
        return x509.load_der_x509_certificate(der), version


def test_sni_selects_certificate(test_pki: Pki) -> None:
    leaf = test_pki.issued
    certs = {"a.test": test_pki.files["a"], "B.test": test_pki.files["b"], None: test_pki.files["default"]}
    with TLSServer(certs) as server:
        assert _connect(server, _client(test_pki), "a.test")[0] == leaf["a"].cert
        assert _connect(server, _client(test_pki), "b.test")[0] == leaf["b"].cert
        # No SNI (Python sends none for an IP address) or an unknown name: the default.
        assert _connect(server, _client(test_pki), "127.0.0.1")[0] == leaf["default"].cert
        unverified = _client(test_pki, check_hostname=False)
        assert _connect(server, unverified, "unknown.test")[0] == leaf["default"].cert
        assert server.connections == 4


def test_unknown_name_without_default_is_refused(test_pki: Pki) -> None:
    with (
        TLSServer({"a.test": test_pki.files["a"]}) as server,
        pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"),
    ):
        _connect(server, _client(test_pki, check_hostname=False), "other.test")


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
def test_pinned_version_is_negotiated(test_pki: Pki, version: ssl.TLSVersion) -> None:
    with TLSServer({None: test_pki.files["default"]}, min_version=version, max_version=version) as server:
        _, negotiated = _connect(server, _client(test_pki), "default.test")
    assert negotiated == version.name.replace("_", ".")


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_loopback(test_pki: Pki) -> None:
    with TLSServer({None: test_pki.files["default"]}, host="::1") as server:
        cert, _ = _connect(server, _client(test_pki), "::1")
    assert cert == test_pki.issued["default"].cert


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
def test_client_certificate_required(test_pki: Pki, version: ssl.TLSVersion) -> None:
    with TLSServer(
        {None: test_pki.files["default"]}, max_version=version, client_ca=test_pki.root_pem
    ) as server:
        _connect(server, _client(test_pki, cert="client"), "default.test")
        anonymous = _client(test_pki)
        with (
            _tcp(server) as raw,
            anonymous.wrap_socket(raw, server_hostname="default.test", do_handshake_on_connect=False) as tls,
        ):
            if version is ssl.TLSVersion.TLSv1_2:
                with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
                    tls.do_handshake()
            else:
                # TLS 1.3: the client's handshake is done (the server certificate
                # readable) before the server judges the client's; the refusal
                # arrives as an alert on the first read.
                tls.do_handshake()
                assert tls.getpeercert(binary_form=True) is not None
                with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
                    tls.recv(1)


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="exact only where TCP_INFO exists")
def test_peak_connections_counts_what_the_client_holds_open(test_pki: Pki) -> None:
    with TLSServer({None: test_pki.files["default"]}) as server:
        for _ in range(10):
            _connect(server, _client(test_pki), "default.test")
        assert server.peak_connections == 1
        held = [_tcp(server) for _ in range(3)]
        try:
            _connect(server, _client(test_pki), "default.test")  # accepted after the 3 held
        finally:
            for sock in held:
                sock.close()
        assert (server.connections, server.peak_connections) == (14, 4)


# Minimal STARTTLS clients: each returns True when the server agreed to start TLS.


def _recv_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(1)
        assert chunk, f"server closed before {end!r}; got {data!r}"
        data += chunk
        assert len(data) < 4096
    return data


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"server closed after {data!r}"
        data += chunk
    return data


def _reply(sock: socket.socket, code: str) -> str:
    """A possibly multi-line SMTP/FTP reply, up to its `<code> ` line."""
    lines: list[str] = []
    while not (lines and lines[-1].startswith(f"{code} ")):
        lines.append(_recv_until(sock, b"\r\n").decode())
    return "".join(lines)


def _smtp(sock: socket.socket) -> bool:
    _reply(sock, "220")
    sock.sendall(b"EHLO client.test\r\n")
    _reply(sock, "250")
    sock.sendall(b"STARTTLS\r\n")
    return _recv_until(sock, b"\r\n").startswith(b"220 ")


def _imap(sock: socket.socket) -> bool:
    _recv_until(sock, b"\r\n")
    sock.sendall(b"a1 STARTTLS\r\n")
    return _recv_until(sock, b"\r\n").startswith(b"a1 OK")


def _pop3(sock: socket.socket) -> bool:
    _recv_until(sock, b"\r\n")
    sock.sendall(b"STLS\r\n")
    return _recv_until(sock, b"\r\n").startswith(b"+OK")


def _ftp(sock: socket.socket) -> bool:
    assert _reply(sock, "220").startswith("220-")
    sock.sendall(b"AUTH TLS\r\n")
    return _recv_until(sock, b"\r\n").startswith(b"234 ")


def _ldap(sock: socket.socket) -> bool:
    oid = b"1.3.6.1.4.1.1466.20037"
    request = b"\x77" + bytes([len(oid) + 2]) + b"\x80" + bytes([len(oid)]) + oid
    sock.sendall(b"\x30" + bytes([len(request) + 3]) + b"\x02\x01\x07" + request)
    tag, length = _recv_exact(sock, 2)
    assert tag == 0x30 and length < 0x80
    response = _recv_exact(sock, length)
    assert response.startswith(b"\x02\x01\x07\x78")  # our messageID, ExtendedResponse
    return b"\x0a\x01\x00" in response  # resultCode success


def _postgres(sock: socket.socket) -> bool:
    sock.sendall(struct.pack("!ii", 8, 80877103))
    return sock.recv(1) == b"S"


def _xmpp(sock: socket.socket) -> bool:
    sock.sendall(
        b"<?xml version='1.0'?><stream:stream to='test.invalid' xmlns='jabber:client'"
        b" xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
    )
    _recv_until(sock, b"</stream:features>")
    sock.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    return b"<proceed" in _recv_until(sock, b"/>")


STARTTLS_CLIENTS: dict[str, Callable[[socket.socket], bool]] = {
    "smtp": _smtp,
    "imap": _imap,
    "pop3": _pop3,
    "ftp": _ftp,
    "ldap": _ldap,
    "postgres": _postgres,
    "xmpp": _xmpp,
}


@pytest.mark.parametrize("offered", [True, False])
@pytest.mark.parametrize("protocol", sorted(STARTTLS_CLIENTS))
def test_starttls_dialogue(test_pki: Pki, protocol: str, offered: bool) -> None:
    server = TLSServer({None: test_pki.files["default"]}, starttls=protocol, starttls_offered=offered)
    with server, _tcp(server) as raw:
        assert STARTTLS_CLIENTS[protocol](raw) is offered
        if offered:
            with _client(test_pki).wrap_socket(raw, server_hostname="default.test") as tls:
                der = test_pki.issued["default"].cert.public_bytes(Encoding.DER)
                assert tls.getpeercert(binary_form=True) == der


def test_reset_server_resets() -> None:
    with ResetServer() as server, _tcp(server) as sock, pytest.raises(ConnectionResetError):
        sock.sendall(b"\x16\x03\x01 hello")
        sock.recv(1)


def test_closed_port_refuses() -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", closed_port()), timeout=TIMEOUT).close()


@pytest.mark.parametrize("server_type", [GarbageServer, PlainHTTPServer])
def test_non_tls_peers_fail_the_handshake(server_type: type[GarbageServer | PlainHTTPServer]) -> None:
    ctx = ssl.create_default_context()
    with server_type() as server, _tcp(server) as raw, pytest.raises(ssl.SSLError):
        ctx.wrap_socket(raw, server_hostname="x.test").close()


def test_tarpit_sends_banner_then_nothing() -> None:
    with TarpitServer(banner=b"220 hi\r\n") as server, _tcp(server, timeout=0.2) as sock:
        assert _recv_until(sock, b"\r\n") == b"220 hi\r\n"
        with pytest.raises(TimeoutError):
            sock.recv(1)


def test_drip_sends_a_record_header_byte_by_byte() -> None:
    with DripServer(interval=0.1) as server, _tcp(server) as sock:
        sock.sendall(b"\x16\x03\x01\x00\x05hello")
        started = time.monotonic()
        assert b"".join(sock.recv(1) for _ in range(3)) == b"\x16\x03\x03"
        assert time.monotonic() - started >= 0.18


def test_a_silent_client_holds_neither_the_fake_kube_api_nor_its_shutdown(tmp_path: Path) -> None:
    """A client that connects and never finishes its handshake (a probe given up on)
    once held the fake API server's accepting thread, and its shutdown, for ever."""
    root = pki.make_root("Kube Selfcheck Root", not_before=NOT_BEFORE, not_after=NOT_AFTER)
    cert, key = pki.make_leaf(root, ["127.0.0.1"], not_before=NOT_BEFORE,
                              not_after=NOT_AFTER).write(tmp_path, "api")
    (tmp_path / "token").write_text("token\n")
    ctx = ssl.create_default_context(cafile=pki.write_pem(tmp_path / "root.pem", [root.cert]))
    threads = threading.active_count()
    api = FakeKubeAPI(tmp_path / "token", cert, key).__enter__()
    with socket.create_connection(("127.0.0.1", api.port), timeout=TIMEOUT):  # silent
        try:
            with socket.create_connection(("127.0.0.1", api.port), timeout=TIMEOUT) as raw:
                ctx.wrap_socket(raw, server_hostname="127.0.0.1").close()  # served meanwhile
        finally:
            started = time.monotonic()
            api.stop()
        assert time.monotonic() - started < TIMEOUT
    # The silent client's own thread ends with its connection (its handshake sees EOF).
    deadline = time.monotonic() + TIMEOUT
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.01)
