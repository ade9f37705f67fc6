"""A small client of the Kubernetes API: list and watch, over httpx, every step bounded.

Only what certwatch needs, as the API reference documents it ("Efficient detection of
changes", "API Concepts"): a list (paged with `limit`/`continue`) returns the items and
the collection's `resourceVersion`; a watch from that version streams one JSON event a
line (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR) until the server ends it after
`timeoutSeconds`. A version the server no longer has is `410 Gone`, as the response's
status or as an ERROR event whose Status has code 410: then the caller lists again.

The credentials are the pod's service account: a bearer token read from its file on
every request (the kubelet rotates it) and the cluster's CA file. (A maintained client,
kubernetes-asyncio or lightkube, would bring models and a second HTTP stack for four
GET requests; httpx is already a dependency, and bounding sizes and times stays ours.)

Errors, for :class:`ApiError.kind`: refused, timeout, unreachable, tls, unauthorized,
forbidden, not_found, gone, status (any other HTTP status), garbage (not the JSON the
reference describes, or too large).
"""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Mapping

import httpx

from certwatch.core.selections import KubernetesAccess

__all__ = ["ApiError", "KubeAPI", "MAX_EVENT_BYTES", "MAX_LIST_BYTES"]

MAX_LIST_BYTES = 32 * 1024 * 1024  # one page of a list
MAX_EVENT_BYTES = 4 * 1024 * 1024  # one watch event (a Secret is at most 1 MiB)
MAX_PAGES = 1000
PAGE_SIZE = 250
MAX_TOKEN_BYTES = 64 * 1024


class ApiError(Exception):
    """The API server did not give what was asked; `kind` says how (see the module)."""

    def __init__(self, kind: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.status = kind, detail, status


_STATUS_KINDS = {401: "unauthorized", 403: "forbidden", 404: "not_found", 410: "gone"}


def _server(access: KubernetesAccess, environ: Mapping[str, str]) -> str:
    if access.api_server:
        return access.api_server
    host = environ.get("KUBERNETES_SERVICE_HOST")
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ApiError("unreachable", "no api_server is configured and KUBERNETES_SERVICE_HOST "
                                      "is not set (not running in a pod?)")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def _translate(exc: Exception) -> ApiError:
    """The one place httpx's exceptions become values."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        return ApiError("timeout", "no answer in time")
    if isinstance(exc, httpx.ConnectError):
        causes = list(_causes(exc))
        if any(isinstance(c, ConnectionRefusedError) for c in causes) or "refused" in str(exc):
            return ApiError("refused", "connection refused")
        if any(isinstance(c, ssl.SSLError) for c in causes):
            return ApiError("tls", str(exc))
        return ApiError("unreachable", str(exc) or type(exc).__name__)
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        return ApiError("garbage", f"the connection broke: {exc or type(exc).__name__}")
    if isinstance(exc, (ValueError, UnicodeDecodeError)):
        return ApiError("garbage", f"not the JSON the API returns: {exc}")
    return ApiError("unreachable", f"{type(exc).__name__}: {exc}")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


class KubeAPI:
    """GET-only access to one API server."""

    def __init__(self, access: KubernetesAccess, environ: Mapping[str, str] | None = None) -> None:
        self.access = access
        self._environ = environ if environ is not None else os.environ
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            verify: ssl.SSLContext | bool = True
            if self.access.ca_file is not None and self.access.ca_file.exists():
                verify = ssl.create_default_context(cafile=str(self.access.ca_file))
            self._client = httpx.AsyncClient(
                base_url=_server(self.access, self._environ), verify=verify, trust_env=False,
                timeout=httpx.Timeout(self.access.timeout), follow_redirects=False)
        return self._client

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = _read_token(self.access.token_file)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def list(self, path: str, params: Mapping[str, str]) -> tuple[list[dict[str, Any]], str]:
        """Every item of a collection, page by page, and its resourceVersion."""
        items: list[dict[str, Any]] = []
        query = {**params, "limit": str(PAGE_SIZE)}
        try:
            for _ in range(MAX_PAGES):
                body = await self._get_json(path, query)
                metadata = body.get("metadata") or {}
                page = body.get("items")
                if not isinstance(page, list) or not isinstance(metadata, dict):
                    raise ApiError("garbage", f"{path}: a list without 'items' and 'metadata'")
                items.extend(item for item in page if isinstance(item, dict))
                follow = metadata.get("continue")
                if not follow:
                    return items, str(metadata.get("resourceVersion") or "")
                query = {**params, "limit": str(PAGE_SIZE), "continue": str(follow)}
        except Exception as exc:  # noqa: BLE001 - becomes an ApiError
            raise _translate(exc) from None
        raise ApiError("garbage", f"{path}: more than {MAX_PAGES} pages")

    async def _get_json(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        async with self._http().stream("GET", path, params=params, headers=self._headers()) as r:
            _check_status(r, path)
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > MAX_LIST_BYTES:
                    raise ApiError("garbage", f"{path}: a response larger than {MAX_LIST_BYTES} bytes")
        document = json.loads(bytes(body))
        if not isinstance(document, dict):
            raise ApiError("garbage", f"{path}: not a JSON object")
        return document

    async def watch(self, path: str, params: Mapping[str, str],
                    resource_version: str) -> AsyncIterator[dict[str, Any]]:
        """The events after `resource_version` until the server ends the watch. An ERROR
        event is raised as an ApiError (kind "gone" for code 410)."""
        query = {**params, "watch": "1", "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(int(self.access.watch_timeout))}
        if resource_version:
            query["resourceVersion"] = resource_version
        # The server ends the watch after timeoutSeconds; waiting longer than that for a
        # byte means it is gone.
        timeout = httpx.Timeout(self.access.timeout,
                                read=self.access.watch_timeout + self.access.timeout)
        try:
            async with self._http().stream("GET", path, params=query, headers=self._headers(),
                                           timeout=timeout) as r:
                _check_status(r, path)
                async for line in _lines(r):
                    event = json.loads(line)
                    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
                        raise ApiError("garbage", f"{path}: a watch event without an object")
                    if event.get("type") == "ERROR":
                        status = event["object"]
                        code = status.get("code")
                        kind = "gone" if code == 410 else "status"
                        raise ApiError(kind, f"{path}: {status.get('message') or status}",
                                       code if isinstance(code, int) else None)
                    yield event
        except Exception as exc:  # noqa: BLE001 - becomes an ApiError
            raise _translate(exc) from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _check_status(response: httpx.Response, path: str) -> None:
    if response.status_code == 200:
        return
    kind = _STATUS_KINDS.get(response.status_code, "status")
    raise ApiError(kind, f"{path}: HTTP {response.status_code}", response.status_code)


async def _lines(response: httpx.Response) -> AsyncIterator[bytes]:
    """The stream's lines, each at most MAX_EVENT_BYTES."""
    pending = bytearray()
    async for chunk in response.aiter_bytes():
        pending += chunk
        while (end := pending.find(b"\n")) >= 0:
            line = bytes(pending[:end]).strip()
            del pending[: end + 1]
            if line:
                yield line
        if len(pending) > MAX_EVENT_BYTES:
            raise ApiError("garbage", f"a watch event larger than {MAX_EVENT_BYTES} bytes")
    if pending.strip():
        yield bytes(pending).strip()


def _read_token(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            token = handle.read(MAX_TOKEN_BYTES).decode("ascii", "replace").strip()
    except OSError:
        return None
    return token or None
