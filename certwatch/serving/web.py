"""The daemon's HTTP server: /metrics, /healthz, /readyz, the JSON API, the status page
and each target's page.

aiohttp serves in the daemon's own event loop; handlers only read the store's snapshot,
so a scrape never waits for a probe. The two large responses (with 10,000 targets:
~12 MB of metrics, ~40 MB of JSON) are streamed in chunks made from one snapshot, a
few hundred targets at a time, so neither is ever held whole in memory, and the loop
serves other requests (and probes) between chunks. The status page shows one page of
rows: it selects over a small dict of each target (:func:`status_facts`) and builds the
API's whole dict only for the rows it shows. The pages' renderers are imported with
the first page asked for, and bcrypt with a basic-auth configuration: a daemon only
scraped never holds them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import zlib
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Iterable, Iterator, Mapping, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from certwatch import __version__
from certwatch.config.web import WebConfig
from certwatch.core.status import TargetStatus
from certwatch.render.report import sort_key, status_facts, status_to_dict
from certwatch.render.stylesheet import CONTENT_SECURITY_POLICY

__all__ = ["DaemonView", "create_app"]

STREAM_CHUNK = 256 * 1024  # characters per write of a streamed response

Clock = Callable[[], datetime]
_FORM_DEFAULTS = {("sort", "state"), ("order", "asc")}  # what the filter form sends by default

# The pages show peer-supplied text; forbid anything but their own stylesheet.
_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class DaemonView(Protocol):
    """What the web layer may read of the daemon."""

    registry: CollectorRegistry

    def snapshot(self) -> Mapping[str, TargetStatus]: ...
    def target_metrics(self) -> Iterator[str]: ...
    def next_probe_at(self, endpoint_name: str) -> datetime | None: ...
    def ready(self) -> bool: ...
    def notices(self) -> list[str]: ...
    def alerts_by_target(self) -> dict[str, list[dict[str, Any]]]: ...


def _target_dicts(view: DaemonView, statuses: Iterable[TargetStatus]) -> Iterator[dict[str, Any]]:
    alerts = view.alerts_by_target()
    for s in statuses:
        yield status_to_dict(s, view.next_probe_at(s.target.endpoint.name), alerts.get(s.target.key))


def _api_order(statuses: Iterable[TargetStatus]) -> list[TargetStatus]:
    return sorted(statuses, key=lambda s: sort_key(s.assessment))


def _json_list(items: Iterable[Any]) -> Iterator[str]:
    yield "["
    for index, item in enumerate(items):
        yield ("," if index else "") + json.dumps(item)
    yield "]"


def batched(pieces: Iterable[str], size: int) -> Iterator[bytes]:
    """Pieces of text joined into chunks of at least `size` characters (the last may be less)."""
    pending: list[str] = []
    length = 0
    for piece in pieces:
        pending.append(piece)
        length += len(piece)
        if length >= size:
            yield "".join(pending).encode()
            pending, length = [], 0
    if pending:
        yield "".join(pending).encode()


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


def gzip_compressor() -> Compressor:
    """A compressor of one gzip stream, at the fastest level: ISA-L's deflate when
    installed (isal, in certwatch[fast]; at 100,000 targets it compresses 120 MB of
    metrics in 0.12 s rather than zlib's 0.6 s, and a tenth smaller), else zlib's."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    compressor: Compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 16 + isal_zlib.MAX_WBITS)
    return compressor  # (typed, also where mypy runs without isal)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (RFC 9110 section 12.5.3: a q of 0
    refuses a coding, and "*" stands for any coding not named)."""
    weights: dict[str, float] = {}
    for coding in accept_encoding.lower().split(","):
        name, *params = coding.split(";")
        weight = 1.0
        for param in params:
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        weights[name.strip()] = weight
    return weights.get("gzip", weights.get("x-gzip", weights.get("*", 0.0))) > 0


async def _stream(request: web.Request, pieces: Iterable[str], content_type: str,
                  headers: Mapping[str, str] | None = None, head: bytes = b"") -> web.StreamResponse:
    response = web.StreamResponse(headers={**(headers or {}), "Content-Type": content_type,
                                           "Vary": "Accept-Encoding"})
    # Gzipped when the client asks (Prometheus does): with 10,000 targets 12 MB of metrics
    # become ~1.5 MB. In the loop, a chunk at a time: aiohttp's own compression (zlib's
    # level 6, in threads) cost 2.5 times the CPU for a tenth less on the wire.
    compressor = None
    if accepts_gzip(request.headers.get("Accept-Encoding", "")):
        response.headers["Content-Encoding"] = "gzip"
        compressor = gzip_compressor()
    await response.prepare(request)
    for chunk in itertools.chain([head] if head else [], batched(pieces, STREAM_CHUNK)):
        await response.write(compressor.compress(chunk) if compressor else chunk)
        await asyncio.sleep(0)  # write() yields only when the socket's buffer is full
    if compressor:
        await response.write(compressor.flush())
    await response.write_eof()
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _security(config: WebConfig) -> tuple[list[Any], Callable[[web.Request, web.StreamResponse], Awaitable[None]]]:
    """The web configuration's basic auth (a middleware) and headers (a response hook)."""
    middlewares: list[Any] = []
    if config.basic_auth_users:
        from certwatch.serving.auth import BasicAuth

        auth = BasicAuth(config.basic_auth_users)
        open_paths = config.http.open_paths

        @web.middleware
        async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
            # It wraps unknown paths too: an anonymous client cannot learn which paths exist.
            if request.path in open_paths or await auth.check(request.headers.get("Authorization")):
                return await handler(request)
            return web.Response(status=401, text="401 Unauthorized\n",
                                headers={"WWW-Authenticate": auth.challenge})

        middlewares.append(basic_auth)

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        # A header a handler set itself wins: the status page's strict CSP guards
        # peer-supplied text and must not be loosened by a site-wide setting.
        for name, value in config.http.headers:
            response.headers.setdefault(name, value)

    return middlewares, add_headers


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def create_app(view: DaemonView, web_config: WebConfig | None = None, *,
               clock: Clock = _utcnow, probe: Handler | None = None) -> web.Application:
    """The daemon's routes; `probe` serves /probe (:mod:`certwatch.serving.probe`)."""
    async def metrics(request: web.Request) -> web.StreamResponse:
        return await _stream(request, view.target_metrics(), CONTENT_TYPE_LATEST,
                             head=generate_latest(view.registry))

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if view.ready():
            # Still ready when degraded (it serves what it knows); the body says what is wrong.
            return web.Response(text="ready\n" + "".join(f"degraded: {n}\n" for n in view.notices()))
        return web.Response(status=503, text="not ready: the first sweep has not finished\n")

    async def targets(request: web.Request) -> web.StreamResponse:
        statuses = _api_order(view.snapshot().values())
        return await _stream(request, _json_list(_target_dicts(view, statuses)),
                             "application/json; charset=utf-8")

    async def target(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        statuses = _api_order(s for s in view.snapshot().values() if s.target.endpoint.name == name)
        if not statuses:
            return web.json_response({"error": f"no target named {name!r}"}, status=404)
        return web.json_response(list(_target_dicts(view, statuses)))

    async def page(request: web.Request) -> web.StreamResponse:
        # The filter is in the URL and applied here: only one page of rows is rendered.
        from certwatch.render.selection import Query, select
        from certwatch.render.statuspage import status_page_parts

        query = Query.parse(request.query.items())
        if any(not value.strip() or (name, value) in _FORM_DEFAULTS
               for name, value in request.query.items()):
            # The filter form sends every field, the empty ones too: the address to share
            # or bookmark is the short one (?state=critical&team=payments&q=api). (Only
            # that noise is redirected, so the target is never redirected again.)
            raise web.HTTPSeeOther(query.href(page=query.page))
        selection = select(((s, status_facts(s)) for s in view.snapshot().values()), query)
        parts = status_page_parts(
            selection, _target_dicts(view, selection.rows), now=clock(), version=__version__,
            ready=view.ready(), notices=view.notices())
        return await _stream(request, parts, "text/html; charset=utf-8", headers=_PAGE_HEADERS)

    async def target_page(request: web.Request) -> web.Response:
        from certwatch.render.selection import Query
        from certwatch.render.targetpage import render_target_page, target_missing_page

        key = request.query.get("key", "")
        back = Query.parse((k, v) for k, v in request.query.items() if k != "key")
        status = view.snapshot().get(key)
        if status is None:
            return web.Response(status=404, text=target_missing_page(key, now=clock(), back=back),
                                content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS)
        target = next(_target_dicts(view, [status]))
        return web.Response(text=render_target_page(target, now=clock(), back=back),
                            content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS)

    middlewares, add_headers = _security(web_config) if web_config else ([], None)
    app = web.Application(middlewares=middlewares)
    if add_headers is not None:
        app.on_response_prepare.append(add_headers)
    app.router.add_get("/", page)
    app.router.add_get("/target", target_page)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/targets", targets)
    app.router.add_get("/api/v1/targets/{name}", target)
    if probe is not None:
        app.router.add_get("/probe", probe)
    return app
