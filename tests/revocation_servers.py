"""Loopback servers and PKI pieces for the revocation tests (issue 12).

- :class:`StaplingTLSServer`: a TLS server that staples an OCSP response. Python's ssl
  module cannot staple on the server side either, so it is pyOpenSSL's
  (`set_ocsp_server_callback`), on the same accept loop as tests/servers.py.
- :class:`EvidenceServer`: an HTTP server on loopback serving CRLs and OCSP responses
  by path, and misbehaving on purpose on some: slow (drips bytes past the client's
  deadline), huge (more bytes than any bound), garbage. It counts requests per path, so
  a test can tell that one CRL served many targets.
- Builders for what a CA publishes: CRLs, OCSP responses, and the extensions a leaf
  names them with (CDP, AIA, TLS Feature must-staple, embedded SCTs).
"""

from __future__ import annotations

import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL

from tests.pki import Issued
from tests.servers import _Connection, _LoopbackServer

_SLOW_LIMIT = 5.0  # seconds a slow response drips at most
SCT_LIST_OID = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")


# --- what a CA publishes -----------------------------------------------------------------


def make_crl(issuer: Issued, revoked: Sequence[int] = (), *, last_update: datetime,
             next_update: datetime, signer: Any = None) -> bytes:
    """A DER CRL of `issuer` listing `revoked` serials, signed by `signer` (default: the
    issuer's key)."""
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer.cert.subject)
               .last_update(last_update).next_update(next_update))
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(last_update - timedelta(hours=1))
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), False).build())
    crl = builder.sign(signer or issuer.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.DER)


def make_ocsp_response(cert: x509.Certificate, issuer: Issued, status: ocsp.OCSPCertStatus, *,
                       this_update: datetime, next_update: datetime | None,
                       signer: Any = None, responder: Issued | None = None) -> bytes:
    """A DER OCSP response about `cert`; `signer` replaces the key it is signed with (a
    wrong key), `responder` a delegated OCSP signing certificate."""
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=cert, issuer=issuer.cert, algorithm=hashes.SHA1(), cert_status=status,
        this_update=this_update, next_update=next_update,
        revocation_time=this_update - timedelta(hours=1) if status is ocsp.OCSPCertStatus.REVOKED
        else None,
        revocation_reason=x509.ReasonFlags.key_compromise
        if status is ocsp.OCSPCertStatus.REVOKED else None)
    if responder is not None:
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, responder.cert) \
            .certificates([responder.cert])
        key = responder.key
    else:
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.cert)
        key = issuer.key
    response = builder.sign(signer or key, hashes.SHA256())
    return response.public_bytes(serialization.Encoding.DER)


def cdp(*urls: str) -> tuple[x509.ExtensionType, bool]:
    return (x509.CRLDistributionPoints([x509.DistributionPoint(
        [x509.UniformResourceIdentifier(u) for u in urls], None, None, None)]), False)


def aia_ocsp(url: str) -> tuple[x509.ExtensionType, bool]:
    return (x509.AuthorityInformationAccess([x509.AccessDescription(
        x509.oid.AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(url))]), False)


def must_staple() -> tuple[x509.ExtensionType, bool]:
    return (x509.TLSFeature([x509.TLSFeatureType.status_request]), False)


def ocsp_signing() -> tuple[x509.ExtensionType, bool]:
    return (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), False)


def embedded_scts(*scts: tuple[bytes, datetime]) -> tuple[x509.ExtensionType, bool]:
    """The SignedCertificateTimestampList extension (RFC 6962 3.3) with one SCT per
    (log ID, timestamp). cryptography parses but does not build it, so it is written here;
    the signatures are filler (certwatch counts SCTs, it does not verify them)."""
    serialized = b""
    for log_id, moment in scts:
        body = (b"\x00" + log_id + struct.pack(">Q", int(moment.timestamp() * 1000))
                + b"\x00\x00" + b"\x04\x03" + struct.pack(">H", 8) + b"\x30\x06\x02\x01\x01\x02\x01\x01")
        serialized += struct.pack(">H", len(body)) + body
    tls_list = struct.pack(">H", len(serialized)) + serialized
    return (x509.UnrecognizedExtension(SCT_LIST_OID, _octet_string(tls_list)), False)


def _octet_string(content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([0x04, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x04, 0x80 | len(length)]) + length + content


# --- a TLS server that staples ------------------------------------------------------------


class StaplingTLSServer(_LoopbackServer):
    """Serves one chain and staples `staple` (DER; b"" staples nothing) to every
    handshake whose client asks for it. Records whether clients asked."""

    def __init__(self, files: tuple[Path, Path], staple: bytes, *, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self._files = files
        self.staple = staple
        self.asked = 0
        self._context: SSL.Context | None = None

    def _prepare(self) -> None:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.use_certificate_chain_file(str(self._files[0]))
        context.use_privatekey_file(str(self._files[1]))
        context.set_ocsp_server_callback(self._staple)
        self._context = context

    def _staple(self, connection: SSL.Connection, data: object) -> bytes:
        self.asked += 1
        return self.staple

    def _handle(self, conn: _Connection) -> None:
        assert self._context is not None
        conn.sock.settimeout(None)  # pyOpenSSL wants a blocking socket; close() wakes it
        tls = SSL.Connection(self._context, conn.sock)
        tls.set_accept_state()
        try:
            tls.do_handshake()
            while tls.recv(4096):
                pass
        except SSL.Error:  # the client hung up, as probes do right after the handshake
            pass


# --- an HTTP server for CRLs and OCSP ----------------------------------------------------------

Responder = Callable[[bytes], bytes]  # an OCSP request (DER) -> a response (DER)


class EvidenceServer:
    """HTTP on loopback. `files` maps a path to bytes; `ocsp` maps a path to a responder.
    The paths /slow, /huge and /garbage misbehave whatever else is served."""

    def __init__(self, files: dict[str, bytes] | None = None,
                 ocsp: dict[str, Responder] | None = None, *, huge_bytes: int = 64 << 20) -> None:
        self.files = dict(files or {})
        self.ocsp = dict(ocsp or {})
        self.huge_bytes = huge_bytes
        self.requests: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __enter__(self) -> EvidenceServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests[self.path] += 1
                if self.path == "/slow":
                    return owner._drip(self)
                if self.path == "/huge":
                    return owner._huge(self)
                body = b"\x30\x82\x01\x00garbage, not a CRL" if self.path == "/garbage" else \
                    owner.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                owner.requests[self.path] += 1
                size = min(int(self.headers.get("Content-Length", "0")), 64 * 1024)
                request = self.rfile.read(size)
                responder = owner.ocsp.get(self.path)
                if responder is None:
                    self.send_error(404)
                    return
                body = responder(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _drip(self, handler: BaseHTTPRequestHandler) -> None:
        """A 200 with a long body, one byte every 0.1 s (for at most _SLOW_LIMIT)."""
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        deadline = time.monotonic() + _SLOW_LIMIT
        try:
            while time.monotonic() < deadline and not self._stopping.wait(0.1):
                handler.wfile.write(b"\x30")
                handler.wfile.flush()
        except OSError:
            pass

    def _huge(self, handler: BaseHTTPRequestHandler) -> None:
        """A body without Content-Length, far bigger than any bound (the client must stop
        reading, not the server stop sending)."""
        handler.send_response(200)
        handler.end_headers()
        chunk = b"\x00" * 65536
        try:
            for _ in range(self.huge_bytes // len(chunk)):
                if self._stopping.is_set():
                    return
                handler.wfile.write(chunk)
        except OSError:
            pass
