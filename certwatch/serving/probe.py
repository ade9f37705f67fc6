"""`GET /probe?target=host:port&module=NAME`: one probe, answered with that target's metrics.

Prometheus' multi-target exporter pattern, as blackbox_exporter and ssl_exporter serve
it: Prometheus schedules the probes (and shards them with `hashmod`), certwatch probes
once per request through the one path the daemon uses (:func:`certwatch.sweep.judge_endpoint`)
and renders the statuses with the daemon's exposition, so the series have the same
names and labels as the daemon's.

- The target must be allowed (:class:`~certwatch.core.probing.AllowList`; nothing is
  by default): 403 otherwise. A name allowed only through `networks` is probed at its
  allowed addresses only, as resolved when the probe runs.
- At most `probe.max_concurrency` probes run at once; the others wait, within their
  deadline.
- The deadline is the scrape's (`X-Prometheus-Scrape-Timeout-Seconds`, less
  `timeout_offset`), else 10 s; every phase's timeout is capped by it. A probe that
  cannot finish in time answers with `certwatch_probe_success 0` and the error kind
  `timeout`, before Prometheus gives up on the scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from datetime import datetime, timezone
from typing import Callable, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter

from certwatch.config.kit import suggest
from certwatch.core.inventory import Endpoint, Inventory, is_ip
from certwatch.core.observation import Observation, ProbeError, Target
from certwatch.core.inventory import ProbeSettings
from certwatch.core.probing import parse_target, probe_endpoint
from certwatch.core.status import TargetStatus, merge
from certwatch.core.vocabulary import ErrorKind, Phase
from certwatch.render.exposition import target_families
from certwatch.sources.revocation import RefusalChecks
from certwatch.sources.trust import TrustStores
from certwatch.sources.wire import Prober, system_resolver
from certwatch.sweep import judge_endpoint

__all__ = ["ProbeService"]

log = logging.getLogger(__name__)

DEFAULT_DEADLINE = 10.0  # seconds, without the scrape's timeout header (Prometheus' default)
MIN_DEADLINE = 0.1
TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"


class Running(Protocol):
    """What /probe reads of the running configuration."""

    @property
    def inventory(self) -> Inventory: ...
    @property
    def trust(self) -> TrustStores: ...
    @property
    def refusals(self) -> RefusalChecks: ...


class ProbeService:
    """The `/probe` handler, over the running configuration's `probe:` settings."""

    def __init__(self, running: Callable[[], Running | None],
                 registry: CollectorRegistry) -> None:
        self._running = running
        self._requests = Counter("certwatch_probe_requests", "Requests to /probe by module "
                                 "and result (probed, refused, invalid, timeout).",
                                 ["module", "result"], registry=registry)
        self._bound: tuple[int, asyncio.Semaphore, Prober] | None = None

    def _settings(self) -> ProbeSettings | None:
        running = self._running()
        return running.inventory.probe if running is not None else None

    def _trust(self) -> TrustStores:
        running = self._running()
        return running.trust if running is not None else TrustStores()

    def _refusals(self) -> RefusalChecks | None:
        running = self._running()
        return running.refusals if running is not None else None

    def _slots(self, settings: ProbeSettings) -> tuple[asyncio.Semaphore, Prober]:
        """The concurrency bound and the prober, remade when a reload changes the bound."""
        if self._bound is None or self._bound[0] != settings.max_concurrency:
            prober = Prober(max_concurrency=settings.max_concurrency, resolver=self._resolve)
            self._bound = (settings.max_concurrency,
                           asyncio.Semaphore(settings.max_concurrency), prober)
        return self._bound[1], self._bound[2]

    async def _resolve(self, host: str, port: int) -> list[str]:
        """The system's addresses of `host`, less those the allow-list does not allow
        (all of them for a name it allows by name)."""
        addresses = await system_resolver(host, port)
        settings = self._settings()
        if settings is None:
            return []
        if settings.allow.allows_name(host):
            return addresses
        return [a for a in addresses if settings.allow.allows_address(a)]

    async def handle(self, request: web.Request) -> web.Response:
        settings = self._settings()
        module_name = request.query.get("module")
        # The module as a label only when it is one of the file's (the label stays bounded).
        label = module_name if module_name and settings and module_name in settings.modules \
            else ""
        target = request.query.get("target", "")
        if settings is None or settings.default is None:
            return self._refuse(label, 403, "/probe is off: the configuration file has no "
                                            "'probe:' section with an allow-list")
        module = settings.default if module_name is None else settings.modules.get(module_name)
        if module is None:
            return self._refuse(label, 400, f"unknown module {module_name!r}"
                                            f"{suggest(module_name, settings.modules)}")
        try:
            host, port = parse_target(target)
            endpoint = probe_endpoint(module, host, port)
        except ValueError as exc:
            return self._refuse(label, 400, f"bad target: {exc}")
        deadline = _deadline(request.headers.get(TIMEOUT_HEADER), settings.timeout_offset)
        endpoint = _bounded(endpoint, deadline)
        if not await self._allowed(endpoint, settings):
            log.info("probe refused: target not allowed", extra={"target": target,
                                                                 "probe_module": module_name})
            return self._refuse(label, 403, f"target {target!r} is not allowed by probe.allow")
        statuses, result = await self._probe(endpoint, settings, deadline)
        self._requests.labels(label, result).inc()
        log.debug("probed", extra={"target": target, "probe_module": module_name, "result": result})
        running = self._running()
        extra = running.inventory.metrics_extra if running is not None else frozenset()
        return web.Response(body="".join(target_families(statuses, extra)).encode(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _refuse(self, label: str, status: int, why: str) -> web.Response:
        self._requests.labels(label, "refused" if status == 403 else "invalid").inc()
        return web.Response(status=status, text=why + "\n")

    async def _allowed(self, endpoint: Endpoint, settings: ProbeSettings) -> bool:
        allow = settings.allow
        if is_ip(endpoint.host):
            return allow.allows_address(endpoint.host)
        if allow.allows_name(endpoint.host):
            return True
        if endpoint.proxy is not None or not allow.networks:
            return False  # through a proxy, the proxy resolves: no address to check here
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(endpoint.timeout):
                return bool(await self._resolve(endpoint.host, endpoint.port))
        return False

    async def _probe(self, endpoint: Endpoint, settings: ProbeSettings,
                     deadline: float) -> tuple[list[TargetStatus], str]:
        slots, prober = self._slots(settings)
        started_at, start = datetime.now(timezone.utc), time.monotonic()
        try:
            async with asyncio.timeout(deadline), slots:
                judged = await judge_endpoint(endpoint, prober, self._trust(),
                                              refusals=self._refusals())
        except TimeoutError:
            error = ProbeError(ErrorKind.TIMEOUT, Phase.SETUP,
                               f"the probe did not finish within the scrape's {deadline:g}s")
            observation = Observation(Target(endpoint, None), started_at,
                                      time.monotonic() - start, error=error)
            timed_out = await judge_endpoint(endpoint, _Given(observation), self._trust())
            return merge([], timed_out.assessments, endpoint, timed_out.rejudge), "timeout"
        return merge([], judged.assessments, endpoint, judged.rejudge), "probed"


class _Given:
    """A source that has already observed (the probe that ran out of time)."""

    def __init__(self, observation: Observation) -> None:
        self._observation = observation

    async def observe(self, endpoint: Endpoint) -> tuple[Observation, ...]:
        return (self._observation,)


def _deadline(header: str | None, offset: float) -> float:
    """Seconds the probe may take: the scrape's timeout less the offset."""
    try:
        scrape = float(header) if header else DEFAULT_DEADLINE
    except ValueError:
        scrape = DEFAULT_DEADLINE
    if scrape != scrape or scrape <= 0:  # NaN, or nonsense
        scrape = DEFAULT_DEADLINE
    return max(MIN_DEADLINE, min(scrape, 3600.0) - offset)


def _bounded(endpoint: Endpoint, deadline: float) -> Endpoint:
    """The endpoint with each phase's timeout, and the revocation fetches', within it."""
    revocation = dataclasses.replace(endpoint.revocation,
                                     timeout=min(endpoint.revocation.timeout, deadline / 2))
    return dataclasses.replace(endpoint, timeout=min(endpoint.timeout, deadline),
                               revocation=revocation)
