"""Revocation evidence from the network: CRLs and AIA OCSP responses over HTTP (httpx).

Every fetch is bounded in time (`revocation.timeout`, the whole fetch, however slowly a
server drips) and in size, runs at most FETCH_CONCURRENCY at once, and is shared: one
fetch per URL (per OCSP request) at a time, whatever number of targets wait for it, and
its result is cached until the evidence's nextUpdate, so one CRL serves every target
under the same CA. A failure is a value (:class:`~certwatch.core.revocation.FetchFailure`)
cached for FAILURE_RETRY, so a dead CRL server costs one timeout per few minutes, not
one per target.

:class:`RefusalChecks` is what the sweep calls after the expiry judgement is made: it
asks for the evidence a target needs, waits for it at most `revocation.timeout` (a fetch
still under way then keeps going in the background and serves the next probe; this one
reports `pending`), and judges (pure, :func:`certwatch.core.refusals.judge_refusals`).
It never raises: whatever goes wrong, the expiry judgement stands.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Sequence

from cryptography.x509 import ocsp

from certwatch import __version__
from certwatch.core.assess import Assessment
from certwatch.core.inventory import Endpoint, RevocationSettings
from certwatch.core.refusals import (
    PathCertificates,
    Policy,
    judge_refusals,
    path_certificates,
    wanted,
)
from certwatch.core.revocation import CRLIndex, FetchFailure, Unknown, index_crl
from certwatch.core.verify import TrustStore
from certwatch.sources.trust import TrustStores

if TYPE_CHECKING:  # imported with the first fetch: many chains name nothing to fetch
    import httpx

__all__ = ["RefusalChecks", "RevocationFetcher"]

log = logging.getLogger(__name__)

MAX_CRL_BYTES = 16 * 1024 * 1024  # a large public CA's CRL is a few MB
MAX_OCSP_BYTES = 64 * 1024
FETCH_CONCURRENCY = 8
WAIT_GRACE = 0.25  # seconds
FAILURE_RETRY = timedelta(minutes=5)
MAX_CACHE_AGE = timedelta(days=7)  # a nextUpdate further off (or none) is not believed
STALE_RETRY = timedelta(minutes=5)  # evidence already past nextUpdate is fetched again soon
OCSP_WITHOUT_NEXT_UPDATE = timedelta(hours=1)
CACHED_CRLS = 512
CACHED_OCSP = 100_000
USER_AGENT = f"certwatch/{__version__}"

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _TooLarge(Exception):
    pass


class RevocationFetcher:
    """Fetches and caches CRLs and OCSP responses; read by the pure judge as Evidence."""

    def __init__(self, *, max_crl_bytes: int = MAX_CRL_BYTES,
                 max_ocsp_bytes: int = MAX_OCSP_BYTES, concurrency: int = FETCH_CONCURRENCY,
                 clock: Clock = _utcnow,
                 on_fetch: Callable[[str, str], None] | None = None) -> None:
        """`on_fetch(source, result)` is told of every fetch: source crl or ocsp, result
        success or the Unknown reason (for the daemon's counter)."""
        self.max_crl_bytes, self.max_ocsp_bytes = max_crl_bytes, max_ocsp_bytes
        self._slots = asyncio.Semaphore(concurrency)
        self._clock = clock
        # url -> (evidence or failure, until when it serves)
        self._crls: OrderedDict[str, tuple[CRLIndex | FetchFailure, datetime]] = OrderedDict()
        self._ocsp: OrderedDict[tuple[str, bytes],
                                tuple[tuple[bytes, datetime] | FetchFailure, datetime]] = OrderedDict()
        self._in_flight: dict[object, asyncio.Task[None]] = {}
        self._client: httpx.AsyncClient | None = None
        self._on_fetch = on_fetch

    # --- Evidence: what the judge reads ---------------------------------------------------

    def crl(self, url: str) -> CRLIndex | FetchFailure | None:
        entry = self._crls.get(url)
        return entry[0] if entry is not None else None

    def ocsp(self, url: str, request: bytes) -> tuple[bytes, datetime] | FetchFailure | None:
        entry = self._ocsp.get((url, request))
        return entry[0] if entry is not None else None

    # --- fetching ---------------------------------------------------------------------------

    def _due(self, until: datetime | None) -> bool:
        return until is None or until <= self._clock()

    async def gather(self, crls: Sequence[str], requests: Sequence[tuple[str, bytes]],
                     settings: RevocationSettings) -> None:
        """Starts the fetches whose cached result is due, and waits for every one this
        target needs at most `settings.timeout`; those still running carry on."""
        tasks = []
        for url in crls:
            entry = self._crls.get(url)
            if self._due(entry[1] if entry else None):
                tasks.append(self._start(url, functools.partial(self._fetch_crl, url, settings)))
            elif url in self._in_flight:
                tasks.append(self._in_flight[url])
        for url, request in requests:
            key = (url, request)
            cached = self._ocsp.get(key)
            if self._due(cached[1] if cached else None):
                tasks.append(self._start(key, functools.partial(self._fetch_ocsp, url, request,
                                                              settings)))
        if tasks:
            # A little past the fetch's own deadline, so a fetch that started at once has
            # ended, one way or the other; one still queued for a slot reports pending.
            await asyncio.wait(tasks, timeout=settings.timeout + WAIT_GRACE)

    def _start(self, key: object,
               fetch: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(fetch())
            self._in_flight[key] = task
            task.add_done_callback(lambda _: self._in_flight.pop(key, None))
        return task

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            # No proxies from the environment, no redirects to elsewhere: a CRL is where
            # the certificate says; http:// mostly (CRLs and OCSP are signed, not secret).
            self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False,
                                             headers={"User-Agent": USER_AGENT})
        return self._client

    async def _body(self, method: str, url: str, content: bytes | None, limit: int,
                    settings: RevocationSettings) -> bytes:
        import httpx

        headers = {"Content-Type": "application/ocsp-request"} if content is not None else {}
        async with self._slots, asyncio.timeout(settings.timeout):
            async with self._http().stream(method, url, content=content, headers=headers,
                                           timeout=settings.timeout) as response:
                if response.status_code != 200:
                    raise httpx.HTTPStatusError(f"HTTP {response.status_code}",
                                                request=response.request, response=response)
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise _TooLarge(f"{int(declared)} bytes announced")
                body = bytearray()
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > limit:
                        raise _TooLarge(f"more than {limit} bytes")
                return bytes(body)

    def _failure(self, url: str, exc: BaseException, settings: RevocationSettings) -> FetchFailure:
        import httpx

        now = self._clock()
        if isinstance(exc, TimeoutError):
            return FetchFailure(url, Unknown.UNREACHABLE, f"{url}: no answer within "
                                                          f"{settings.timeout:g}s", now)
        if isinstance(exc, _TooLarge):
            return FetchFailure(url, Unknown.TOO_LARGE, f"{url}: too large ({exc})", now)
        if isinstance(exc, httpx.HTTPStatusError):
            return FetchFailure(url, Unknown.UNREACHABLE, f"{url}: {exc}", now)
        if isinstance(exc, (httpx.HTTPError, OSError)):
            return FetchFailure(url, Unknown.UNREACHABLE,
                                f"{url}: {type(exc).__name__}: {exc}".rstrip(": "), now)
        return FetchFailure(url, Unknown.MALFORMED, f"{url}: {exc}", now)

    def _count(self, source: str, result: str) -> None:
        if self._on_fetch is not None:
            self._on_fetch(source, result)

    async def _fetch_crl(self, url: str, settings: RevocationSettings) -> None:
        try:
            data = await self._body("GET", url, None, self.max_crl_bytes, settings)
            crl = index_crl(data, url, self._clock())
        except Exception as exc:  # noqa: BLE001 - becomes a value, soft-fail
            failure = self._failure(url, exc, settings)
            self._store(self._crls, url, failure, failure.at + FAILURE_RETRY, CACHED_CRLS)
            self._count("crl", str(failure.reason))
            log.info("CRL fetch failed", extra={"url": url, "reason": failure.reason,
                                                "detail": failure.detail})
            return
        self._store(self._crls, url, crl, self._until(crl.next_update), CACHED_CRLS)
        self._count("crl", "success")

    async def _fetch_ocsp(self, url: str, request: bytes, settings: RevocationSettings) -> None:
        key = (url, request)
        try:
            data = await self._body("POST", url, request, self.max_ocsp_bytes, settings)
            response = ocsp.load_der_ocsp_response(data)  # judged later; here only its window
            next_update = (response.next_update_utc if response.response_status is
                           ocsp.OCSPResponseStatus.SUCCESSFUL else None)
        except Exception as exc:  # noqa: BLE001 - becomes a value, soft-fail
            failure = self._failure(url, exc, settings)
            self._store(self._ocsp, key, failure, failure.at + FAILURE_RETRY, CACHED_OCSP)
            self._count("ocsp", str(failure.reason))
            return
        now = self._clock()
        until = self._until(next_update) if next_update else now + OCSP_WITHOUT_NEXT_UPDATE
        self._store(self._ocsp, key, (data, now), until, CACHED_OCSP)
        self._count("ocsp", "success")

    def _until(self, next_update: datetime | None) -> datetime:
        now = self._clock()
        if next_update is None or next_update > now + MAX_CACHE_AGE:
            return now + MAX_CACHE_AGE
        return next_update if next_update > now else now + STALE_RETRY

    @staticmethod
    def _store(cache: OrderedDict, key: object, value: object, until: datetime,  # type: ignore[type-arg]
               bound: int) -> None:
        cache[key] = (value, until)
        cache.move_to_end(key)
        while len(cache) > bound:
            cache.popitem(last=False)

    async def aclose(self) -> None:
        """Cancels the fetches under way and closes the HTTP client."""
        for task in list(self._in_flight.values()):
            task.cancel()
        await asyncio.gather(*self._in_flight.values(), return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class RefusalChecks:
    """Revocation and root-program lints for the sweep: fetch (bounded), then judge."""

    def __init__(self, policy: Policy, fetcher: RevocationFetcher | None = None) -> None:
        self.policy = policy
        self.fetcher = fetcher or RevocationFetcher()

    def judge(self, a: Assessment, endpoint: Endpoint, trust: TrustStores,
              now: datetime, certificates: PathCertificates | None = None) -> Assessment:
        """Judges with the evidence at hand (no fetch): also for an earlier observation
        judged again after a failed probe. `certificates`: the assessment's path
        certificates, when the caller has them already."""
        try:
            return judge_refusals(a, trust.for_endpoint(endpoint), endpoint.revocation,
                                  self.fetcher, self.policy, now,
                                  public_roots=trust.public_roots(endpoint),
                                  certificates=certificates)
        except Exception:  # noqa: BLE001 - a bug here must not cost the expiry judgement
            log.exception("revocation and policy checks failed for %s", a.target.key)
            return a

    async def check(self, assessments: Sequence[Assessment], endpoint: Endpoint,
                    trust: TrustStores, now: datetime) -> tuple[Assessment, ...]:
        """Fetches what the targets need (waiting at most the revocation timeout), then
        judges each; never raises. Each target's path certificates are loaded once, for
        both what to fetch and the judgement."""
        settings = endpoint.revocation
        paths: list[PathCertificates | None] = [None] * len(assessments)
        try:
            store: TrustStore = trust.for_endpoint(endpoint)
            paths = [path_certificates(a, store) if a.leaf is not None else None
                     for a in assessments]
            needs = [wanted(a, store, settings, certificates=path)
                     for a, path in zip(assessments, paths)]
            crls = list(dict.fromkeys(url for need in needs for url in need.crls))
            requests = list(dict.fromkeys(r for need in needs for r in need.ocsp))
            await self.fetcher.gather(crls, requests, settings)
        except Exception:  # noqa: BLE001 - soft-fail: judged with what is at hand
            log.exception("revocation fetches failed for %s", endpoint.name)
        return tuple(self.judge(a, endpoint, trust, now, path)
                     for a, path in zip(assessments, paths))

    async def aclose(self) -> None:
        await self.fetcher.aclose()
