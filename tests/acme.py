"""A loopback ACME server's directory and renewalInfo resource, as RFC 9773's examples
show them (section 3: the directory's "renewalInfo"; section 4: GET
<renewalInfo>/<certificate id>, a RenewalInfo object with suggestedWindow and
explanationURL, and Retry-After).

Debian's `pebble` (2.4.0) serves no renewalInfo, so this stands in for a CA that does.
It speaks HTTPS on 127.0.0.1 with a certificate from the test's own CA, and lets a test
choose each answer: the window per certificate id, Retry-After, an error status, a
body too large, or a slow answer.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["RenewalInfoResponder"]


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class RenewalInfoResponder:
    def __init__(self, cert: Path, key: Path, *, offers_renewal_info: bool = True) -> None:
        self.windows: dict[str, tuple[datetime, datetime]] = {}  # certificate id -> window
        self.retry_after: str | None = "21600"  # the RFC's example: six hours
        self.status = 200  # for renewalInfo requests
        self.body: bytes | None = None  # replaces the renewalInfo body when set
        self.delay = 0.0  # seconds before a renewalInfo answer
        self.requests: list[str] = []
        self.offers_renewal_info = offers_renewal_info
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def directory_url(self) -> str:
        return f"{self.base}/directory"

    def __enter__(self) -> RenewalInfoResponder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _directory(self) -> dict[str, Any]:
        base = self.base
        directory: dict[str, Any] = {
            "newNonce": f"{base}/new-nonce", "newAccount": f"{base}/new-account",
            "newOrder": f"{base}/new-order", "revokeCert": f"{base}/revoke-cert",
            "keyChange": f"{base}/key-change",
            "meta": {"termsOfService": f"{base}/terms", "externalAccountRequired": False}}
        if self.offers_renewal_info:
            directory["renewalInfo"] = f"{base}/renewal-info"
        return directory

    def _renewal_info(self, cert_id: str) -> tuple[int, bytes]:
        if self.delay:
            time.sleep(self.delay)
        if self.status != 200:
            return self.status, b'{"type": "urn:ietf:params:acme:error:serverInternal"}'
        if self.body is not None:
            return 200, self.body
        if cert_id not in self.windows:
            return 404, b'{"type": "urn:ietf:params:acme:error:malformed"}'
        start, end = self.windows[cert_id]
        return 200, json.dumps({"suggestedWindow": {"start": _stamp(start), "end": _stamp(end)},
                                "explanationURL": f"{self.base}/docs/ari"}).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        responder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                responder.requests.append(self.path)
                headers: dict[str, str] = {}
                if self.path == "/directory":
                    status, body = 200, json.dumps(responder._directory()).encode()
                elif self.path.startswith("/renewal-info/"):
                    status, body = responder._renewal_info(self.path.rsplit("/", 1)[1])
                    if status == 200 and responder.retry_after is not None:
                        headers["Retry-After"] = responder.retry_after
                else:
                    status, body = 404, b"{}"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        return Handler
