"""ACME Renewal Information (RFC 9773): the window in which the CA wants a leaf renewed.

An endpoint (or `defaults`) that names its CA's ACME directory gets its leaf's
renewalInfo fetched: the directory says where renewalInfo lives, and
``GET <renewalInfo>/<certificate id>`` returns the suggested window. This is shell work,
kept small and harmless:

- bounded: every request has a deadline (`timeout`, for the whole response) and a size
  limit (`max_bytes`); at most `concurrency` requests run at once;
- cached: a certificate's answer is kept until the time the CA's Retry-After asked for,
  clamped to between a minute and a day (RFC 9773 4.3.2); six hours after an answer
  without a valid Retry-After or after a long-term error (4.3.3), and with exponential
  backoff from a minute after a temporary one (a timeout, a 5xx); the directory is
  kept a day;
- soft-failing: a failure is a message beside the last window known, never an
  exception, and the expiry judgement never waits for it (the daemon judges first and
  judges again when an answer arrives).

Expired certificates are not asked about (4.3).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from certwatch.core.inventory import Endpoint
from certwatch.core.renewal import RenewalInfo, RenewalWindow, certificate_id
from certwatch.core.x509 import CertInfo

if TYPE_CHECKING:  # imported with the first fetch: most inventories name no ACME directory
    import httpx

__all__ = ["RenewalInfoFetcher"]

log = logging.getLogger(__name__)

TIMEOUT = 10.0  # seconds for one whole request
MAX_BYTES = 64 * 1024  # a directory or a RenewalInfo object is a few hundred bytes
CONCURRENCY = 4
MIN_RETRY, MAX_RETRY = 60.0, 86400.0  # bounds on the CA's Retry-After (RFC 9773 4.3.2)
DEFAULT_RETRY = 6 * 3600.0  # without a valid Retry-After, and after a long-term error
FIRST_BACKOFF = 60.0  # after a temporary error, doubling up to DEFAULT_RETRY
DIRECTORY_TTL = 86400.0
CACHE_SIZE = 20_000  # certificates remembered; the least recently asked go first
MAX_URL = 2048

Clock = Callable[[], datetime]


class _FetchError(Exception):
    """A failed request: `temporary` ones (timeouts, 5xx, resets) are retried sooner."""

    def __init__(self, message: str, *, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary


@dataclass(frozen=True, slots=True)
class _Directory:
    renewal_info: str | None  # the renewalInfo URL; None: the CA offers none
    error: str | None
    expires_at: datetime
    temporary: bool = False  # the error, if any, is worth retrying soon


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class RenewalInfoFetcher:
    """Fetches and caches renewalInfo; `known` maps leaf fingerprints to what is known."""

    def __init__(self, *, timeout: float = TIMEOUT, max_bytes: int = MAX_BYTES,
                 concurrency: int = CONCURRENCY, clock: Clock = _utcnow) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.clock = clock
        self.known: OrderedDict[str, RenewalInfo] = OrderedDict()
        self._failures: dict[str, int] = {}
        self._directories: dict[str, _Directory] = {}
        self._clients: dict[Path | None, httpx.AsyncClient] = {}
        self._slots = asyncio.Semaphore(concurrency)

    def due(self, endpoint: Endpoint, leaf: CertInfo, now: datetime) -> bool:
        """Whether this leaf's renewalInfo should be asked for now."""
        if endpoint.acme_directory is None or leaf.authority_key_id is None:
            return False
        if now >= leaf.not_after:
            return False
        info = self.known.get(leaf.fingerprint_sha256)
        return info is None or info.next_check_at is None or info.next_check_at <= now

    async def refresh(self, endpoint: Endpoint, leaves: Iterable[CertInfo]) -> bool:
        """Fetches what is due for `leaves` (each once); True if anything new was learnt."""
        now = self.clock()
        due = {leaf.fingerprint_sha256: leaf for leaf in leaves if self.due(endpoint, leaf, now)}
        if not due:
            return False
        results = await asyncio.gather(*(self._refresh_one(endpoint, leaf) for leaf in due.values()))
        return any(results)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    async def _refresh_one(self, endpoint: Endpoint, leaf: CertInfo) -> bool:
        key = leaf.fingerprint_sha256
        before = self.known.get(key)
        async with self._slots:
            info = await self._ask(endpoint, leaf, before)
        self.known[key] = info
        self.known.move_to_end(key)
        while len(self.known) > CACHE_SIZE:
            dropped, _ = self.known.popitem(last=False)
            self._failures.pop(dropped, None)
        return before is None or (before.window, before.error) != (info.window, info.error)

    async def _ask(self, endpoint: Endpoint, leaf: CertInfo, before: RenewalInfo | None) -> RenewalInfo:
        assert endpoint.acme_directory is not None and leaf.authority_key_id is not None
        key, now = leaf.fingerprint_sha256, self.clock()
        try:
            base = await self._renewal_info_url(endpoint)
            url = f"{base.rstrip('/')}/{certificate_id(leaf.authority_key_id, leaf.serial)}"
            body, retry_after = await self._get(endpoint, url)
            window, explanation = _parse_renewal_info(body)
        except _FetchError as exc:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            wait = (min(FIRST_BACKOFF * 2 ** (failures - 1), DEFAULT_RETRY) if exc.temporary
                    else DEFAULT_RETRY)
            log.info("renewalInfo of %s not fetched: %s", endpoint.name, exc,
                     extra={"endpoint": endpoint.name, "retry_in_seconds": wait})
            kept = before or RenewalInfo(None)
            return replace(kept, checked_at=now, next_check_at=now + timedelta(seconds=wait),
                           error=str(exc))
        self._failures.pop(key, None)
        planned = before.planned if before is not None and before.planned else window
        return RenewalInfo(window, planned, explanation, now,
                           now + timedelta(seconds=retry_after), None)

    async def _renewal_info_url(self, endpoint: Endpoint) -> str:
        url = endpoint.acme_directory
        assert url is not None
        now = self.clock()
        known = self._directories.get(url)
        if known is None or known.expires_at <= now:
            try:
                body, _ = await self._get(endpoint, url)
                found = _parse_directory(body)
                known = _Directory(found, None if found else "the ACME directory offers no "
                                   "renewalInfo", now + timedelta(seconds=DIRECTORY_TTL))
            except _FetchError as exc:
                wait = FIRST_BACKOFF if exc.temporary else DEFAULT_RETRY
                known = _Directory(None, f"ACME directory: {exc}", now + timedelta(seconds=wait),
                                   exc.temporary)
            self._directories[url] = known
        if known.renewal_info is None:
            raise _FetchError(known.error or "no renewalInfo", temporary=known.temporary)
        return known.renewal_info

    async def _get(self, endpoint: Endpoint, url: str) -> tuple[Any, float]:
        """The JSON body and the Retry-After (seconds, bounded) of one GET."""
        import httpx

        client = self._client(endpoint.ca_file)
        try:
            async with asyncio.timeout(self.timeout):
                async with client.stream("GET", url, headers={"Accept": "application/json"}) as r:
                    if r.status_code != 200:
                        raise _FetchError(f"HTTP {r.status_code} from {_origin(url)}",
                                          temporary=r.status_code >= 500)
                    body = b""
                    async for chunk in r.aiter_bytes():
                        body += chunk
                        if len(body) > self.max_bytes:
                            raise _FetchError(f"response over {self.max_bytes} bytes",
                                              temporary=False)
                    retry_after = _retry_after(r.headers.get("Retry-After"), self.clock())
        except TimeoutError:
            raise _FetchError(f"no answer within {self.timeout:g}s from {_origin(url)}",
                              temporary=True) from None
        except httpx.HTTPError as exc:
            temporary = isinstance(exc, (httpx.TimeoutException, httpx.NetworkError,
                                         httpx.RemoteProtocolError))
            raise _FetchError(f"{type(exc).__name__} from {_origin(url)}: {exc}",
                              temporary=temporary) from None
        try:
            return json.loads(body), retry_after
        except ValueError:
            raise _FetchError(f"not JSON from {_origin(url)}", temporary=False) from None

    def _client(self, ca_file: Path | None) -> httpx.AsyncClient:
        """One client per trust setting: the system's roots, plus the endpoint's ca_file
        (a private CA's ACME server has a certificate from that CA, as its leaves do)."""
        client = self._clients.get(ca_file)
        if client is None:
            import httpx

            context = ssl.create_default_context()
            if ca_file is not None:
                context.load_verify_locations(cafile=str(ca_file))
            client = httpx.AsyncClient(verify=context, timeout=self.timeout,
                                       follow_redirects=False)
            self._clients[ca_file] = client
        return client


def _origin(url: str) -> str:
    """scheme://host[:port] of a URL: what a message names, never a path or query."""
    import httpx

    parts = httpx.URL(url)
    host = f"[{parts.host}]" if ":" in parts.host else parts.host
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def _retry_after(value: str | None, now: datetime) -> float:
    """Seconds to wait: the header's delay or date, bounded; DEFAULT_RETRY without one."""
    if value is None:
        return DEFAULT_RETRY
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = (parsedate_to_datetime(value) - now).total_seconds()
        except (TypeError, ValueError):
            return DEFAULT_RETRY
    return min(max(seconds, MIN_RETRY), MAX_RETRY)


def _parse_directory(body: Any) -> str | None:
    if not isinstance(body, dict):
        raise _FetchError("the ACME directory is not a JSON object", temporary=False)
    url = body.get("renewalInfo")
    if url is None:
        return None
    if not isinstance(url, str) or not url.startswith(("https://", "http://")) or len(url) > MAX_URL:
        raise _FetchError("the ACME directory's renewalInfo is not a URL", temporary=False)
    return url


def _parse_renewal_info(body: Any) -> tuple[RenewalWindow, str | None]:
    """The suggested window and explanation URL; an invalid object is a long-term error."""
    window = body.get("suggestedWindow") if isinstance(body, dict) else None
    try:
        start, end = (_moment(window[edge]) for edge in ("start", "end"))  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        raise _FetchError("the RenewalInfo object has no valid suggestedWindow",
                          temporary=False) from None
    if end <= start:  # RFC 9773 4.2: treated as no answer
        raise _FetchError("the suggested window ends before it starts", temporary=False)
    explanation = body.get("explanationURL")
    if not (isinstance(explanation, str) and explanation.startswith(("https://", "http://"))
            and len(explanation) <= MAX_URL and explanation.isprintable()):
        explanation = None
    return RenewalWindow(start, end), explanation


def _moment(value: Any) -> datetime:
    if not isinstance(value, str):
        raise TypeError(value)
    moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(value)
    return moment.astimezone(timezone.utc)
