"""A loopback Kubernetes API server for the tests: list and watch, as the API reference
documents them.

No real API server can be had from the package registries (Debian has kubectl and
etcd, but no kube-apiserver; PyPI and npm have none), so this one speaks the wire
format the reference describes ("API Concepts: efficient detection of changes"):

* GET a collection (cluster-wide or under /namespaces/<ns>/) returns a `<Kind>List`
  with `metadata.resourceVersion`, paged with `limit` and `continue`, filtered by
  `labelSelector` (equality: `k=v`, `k!=v`, `k`) and, for Secrets, `fieldSelector=type=`;
* `?watch=1&resourceVersion=N` streams (chunked) one JSON event per line, ADDED,
  MODIFIED, DELETED, and BOOKMARK with `allowWatchBookmarks`, and ends after
  `timeoutSeconds`; a version older than the retained history is answered with
  HTTP 200 and an ERROR event whose Status has code 410 (reason Expired), as
  kube-apiserver does;
* a bearer token is required (401 otherwise); it is served over TLS.

`mode` turns it hostile: "garbage" (200 with HTML), "error" (500), "hang" (no answer).
"""

from __future__ import annotations

import copy
import json
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

HANDSHAKE_TIMEOUT = 10.0  # seconds a client has to finish its TLS handshake
KINDS = {"secrets": ("v1", "Secret"), "configmaps": ("v1", "ConfigMap"),
         "ingresses": ("networking.k8s.io/v1", "Ingress"),
         "gateways": ("gateway.networking.k8s.io/v1", "Gateway")}
PREFIXES = {"/api/v1": ("secrets", "configmaps"), "/apis/networking.k8s.io/v1": ("ingresses",),
            "/apis/gateway.networking.k8s.io/v1": ("gateways",)}


def _route(path: str) -> tuple[str, str | None] | None:
    for prefix, resources in PREFIXES.items():
        if not path.startswith(prefix + "/"):
            continue
        parts = path[len(prefix) + 1:].split("/")
        if len(parts) == 1 and parts[0] in resources:
            return parts[0], None
        if len(parts) == 3 and parts[0] == "namespaces" and parts[2] in resources:
            return parts[2], parts[1]
    return None


def _selected(obj: dict[str, Any], labels: str, fields: str) -> bool:
    have = obj["metadata"].get("labels") or {}
    for term in filter(None, labels.split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if have.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if have.get(key.rstrip("=")) != value:
                return False
        elif term not in have:
            return False
    for term in filter(None, fields.split(",")):
        key, value = term.split("=", 1)
        if key == "type" and obj.get("type") != value:
            return False
    return True


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection lost or a handshake failed (a client that refused our certificate,
        or gave up): dropped quietly, as when the handshake ran in accept()."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class FakeKubeAPI:
    """The server, its objects and its event history."""

    def __init__(self, token_file: Path, cert: Path, key: Path, *, gateways: bool = False) -> None:
        self.token_file = token_file
        self.gateways = gateways
        self.mode = "ok"
        self.version = 100
        self.oldest = 100  # events at or before this are forgotten (compacted)
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []
        self.requests: list[str] = []
        self.generation = 0
        self._changed = threading.Condition()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self._context = context
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        # The handshake runs in each connection's thread (Handler.setup), bounded: in
        # accept() it ran in the serving thread, where a client that connected and never
        # finished its handshake held it, and shutdown() with it, for ever.
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeKubeAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        with self._changed:
            self.mode = "stopped"
            self._changed.notify_all()
        self.server.shutdown()
        self.server.server_close()

    # --- objects ------------------------------------------------------------------------

    def put(self, resource: str, obj: dict[str, Any]) -> None:
        with self._changed:
            self.version += 1
            obj = copy.deepcopy(obj)
            api_version, kind = KINDS[resource]
            obj.update(apiVersion=api_version, kind=kind)
            obj["metadata"]["resourceVersion"] = str(self.version)
            key = (resource, obj["metadata"]["namespace"], obj["metadata"]["name"])
            event = "MODIFIED" if key in self.objects else "ADDED"
            self.objects[key] = obj
            self.events.append((self.version, resource, event, obj))
            self._changed.notify_all()

    def delete(self, resource: str, namespace: str, name: str) -> None:
        with self._changed:
            self.version += 1
            obj = self.objects.pop((resource, namespace, name))
            obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.version)}}
            self.events.append((self.version, resource, "DELETED", obj))
            self._changed.notify_all()

    def compact(self) -> None:
        """Forgets the history, as etcd compaction does: older versions answer 410."""
        with self._changed:
            self.oldest = self.version
            self.events.clear()
            self.generation += 1  # and ends the watches under way (a restarted server)
            self._changed.notify_all()

    # --- HTTP -----------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                self.request.settimeout(HANDSHAKE_TIMEOUT)
                self.request.do_handshake()
                self.request.settimeout(None)
                super().setup()

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                api.requests.append(self.path)
                if api.mode == "hang":
                    time.sleep(30)
                    return
                if api.mode == "error":
                    return self._send(500, b'{"kind":"Status","code":500}')
                if api.mode == "garbage":
                    return self._send(200, b"<html><body>proxy login</body></html>")
                expected = f"Bearer {api.token_file.read_text().strip()}"
                if self.headers.get("Authorization") != expected:
                    return self._send(401, b'{"kind":"Status","code":401,"reason":"Unauthorized"}')
                url = urlsplit(self.path)
                route = _route(url.path)
                if route is None or (route[0] == "gateways" and not api.gateways):
                    return self._send(404, b'{"kind":"Status","code":404,"reason":"NotFound"}')
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if query.get("watch") in ("1", "true"):
                    return self._watch(*route, query)
                return self._list(*route, query)

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _matching(self, resource: str, namespace: str | None, obj: dict[str, Any],
                          query: dict[str, str]) -> bool:
                return ((namespace is None or obj["metadata"]["namespace"] == namespace)
                        and _selected(obj, query.get("labelSelector", ""),
                                      query.get("fieldSelector", "")))

            def _list(self, resource: str, namespace: str | None, query: dict[str, str]) -> None:
                with api._changed:
                    items = [o for (r, _, _), o in sorted(api.objects.items())
                             if r == resource and self._matching(resource, namespace, o, query)]
                    version = api.version
                start = int(query.get("continue", "0") or 0)
                limit = int(query.get("limit", "0") or 0) or len(items) or 1
                page = items[start:start + limit]
                metadata: dict[str, Any] = {"resourceVersion": str(version)}
                if start + limit < len(items):
                    metadata["continue"] = str(start + limit)
                api_version, kind = KINDS[resource]
                body = {"kind": f"{kind}List", "apiVersion": api_version, "metadata": metadata,
                        "items": page}
                self._send(200, json.dumps(body).encode())

            def _chunk(self, event: dict[str, Any]) -> None:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _watch(self, resource: str, namespace: str | None, query: dict[str, str]) -> None:
                since = int(query.get("resourceVersion") or api.version)
                deadline = time.monotonic() + int(query.get("timeoutSeconds", "30"))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    if since < api.oldest:
                        self._chunk({"type": "ERROR", "object": {
                            "kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "reason": "Expired", "code": 410,
                            "message": f"too old resource version: {since} ({api.oldest})"}})
                    else:
                        self._stream(resource, namespace, query, since, deadline)
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass
                self.close_connection = True

            def _stream(self, resource: str, namespace: str | None, query: dict[str, str],
                        since: int, deadline: float) -> None:
                checked, generation = since, api.generation
                while time.monotonic() < deadline and api.mode == "ok" \
                        and generation == api.generation:
                    with api._changed:
                        checked = api.version
                        fresh = [(v, t, o) for v, r, t, o in api.events
                                 if v > since and r == resource
                                 and self._matching(resource, namespace, o, query)]
                        if not fresh:
                            api._changed.wait(min(0.2, max(0.0, deadline - time.monotonic())))
                            continue
                    for version, kind, obj in fresh:
                        self._chunk({"type": kind, "object": obj})
                        since = version
                if query.get("allowWatchBookmarks") == "true" and api.mode == "ok" \
                        and generation == api.generation:
                    api_version, kind = KINDS[resource]
                    self._chunk({"type": "BOOKMARK", "object": {
                        "kind": kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": str(checked)}}})

        return Handler
