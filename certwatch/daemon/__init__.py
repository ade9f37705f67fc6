"""The daemon: schedules probes, keeps the store, serves HTTP, reloads, shuts down cleanly.

This is the shell around the pure core, put together from one module per concern:
:mod:`~certwatch.daemon.loading` (the configuration and its edits),
:mod:`~certwatch.daemon.schedule` (due times, the queue and its workers, the clock),
:mod:`~certwatch.daemon.pipeline` (one endpoint's probe through the flow),
:mod:`~certwatch.daemon.store` (the latest statuses) and :mod:`certwatch.serving`.

One object owns the running configuration (:class:`Running`) and swaps it whole on
reload; a bad new file is rejected and the old configuration keeps running.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from certwatch.config import ConfigError
from certwatch.config.web import WebConfig
from certwatch.core.inventory import Endpoint, Inventory
from certwatch.core.sharding import WHOLE, Shard
from certwatch.core.status import TargetStatus
from certwatch.daemon.loading import Loaded, Loader
from certwatch.daemon.pipeline import Pipeline
from certwatch.daemon.reloads import ConfigStatus, FirstSweep
from certwatch.daemon.schedule import Schedule, utcnow
from certwatch.daemon.sourcing import endpoint_map, invalid_entries, swap_endpoints
from certwatch.daemon.startup import open_server, open_state
from certwatch.daemon.store import Store
from certwatch.memory import Trimmer
from certwatch.render.exposition import TargetExposition
from certwatch.serving.metrics import DaemonMetrics
from certwatch.serving.probe import ProbeService
from certwatch.serving.server import ListenerLimits, Serving
from certwatch.config.refusals import policy_for
from certwatch.sources.revocation import RefusalChecks, RevocationFetcher
from certwatch.sources import Listener
from certwatch.sources.registry import Sources
from certwatch.sources.trust import TrustStores

if TYPE_CHECKING:  # imported when alerts are configured (daemon.startup)
    from certwatch.alerting.notifier import AlertsConfig, Notifier

__all__ = ["Daemon"]

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class Running:
    """The running configuration, replaced whole on reload."""

    inventory: Inventory
    endpoints: Mapping[str, Endpoint]
    alerts: AlertsConfig | None
    trust: TrustStores
    sources: Sources
    refusals: RefusalChecks  # revocation and root-program lints; its cache outlives reloads


class Daemon:
    """`certwatch run`: one instance per process."""

    def __init__(self, config_path: Path, *, listen: str | None = None,
                 reload_poll: float = 5.0, grace: float = 5.0,
                 web_config_path: Path | None = None, strict: bool = False,
                 limits: ListenerLimits = ListenerLimits(), shard: Shard = WHOLE) -> None:
        self.loader = Loader(config_path, web_config_path, strict=strict, shard=shard)
        self.shard = shard
        self.listen_override = listen
        self.limits = limits
        self.reload_poll = reload_poll
        self.grace = grace
        self.metrics = DaemonMetrics()
        self.metrics.shard_info.labels(str(shard.index), str(shard.count)).set(1)
        self.registry = self.metrics.registry
        self.store = Store()
        self.bound_port: int | None = None
        self.web_config: WebConfig | None = None
        self._running: Running | None = None
        self._stop = asyncio.Event()
        self._schedule = Schedule(self._probe, self._stop, self.metrics.clock_jumps.inc)
        self._schedule.wanted = lambda name: self._endpoint(name) is not None
        self._pipeline = Pipeline(self.store, self.metrics)
        self._first_sweep = FirstSweep(self.metrics)
        self._memory = Trimmer()  # hands freed memory back after bursts of probes
        self._config = ConfigStatus(self.metrics)
        self._reloading = asyncio.Lock()
        self._pending: set[asyncio.Future[Any]] = set()  # rediscoveries under way
        self._notifier: Notifier | None = None
        self.exposition = TargetExposition(
            self.store.statuses, self._schedule.worst_lag,
            lambda: self._running.inventory.metrics_extra if self._running else frozenset())
        self.metrics.watch_sources(lambda: self._running.sources.health() if self._running else {})
        self._listener = Listener(self._changed, self._rediscover)
        self._probes = ProbeService(lambda: self._running, self.registry)

    # --- the view the web layer reads -------------------------------------------------

    def snapshot(self) -> Mapping[str, TargetStatus]:
        return self.store.snapshot()

    def target_metrics(self) -> Iterator[str]:
        return self.exposition.pieces()

    def next_probe_at(self, endpoint_name: str) -> datetime | None:
        return self._schedule.next_probe_at(endpoint_name)

    def ready(self) -> bool:
        return self._running is not None and self._first_sweep.done

    def notices(self) -> list[str]:
        degraded = self._notifier.degraded if self._notifier else None
        return self._config.notices + ([f"alerting degraded: {degraded}"] if degraded else [])

    def alerts_by_target(self) -> dict[str, list[dict[str, Any]]]:
        return self._notifier.alerts_by_target() if self._notifier else {}

    # --- configuration ------------------------------------------------------------------

    def _endpoint(self, name: str) -> Endpoint | None:
        return self._running.endpoints.get(name) if self._running else None

    async def _apply(self, loaded: Loaded) -> None:
        """Swaps in a validated configuration: new and changed endpoints are probed
        promptly, removed ones vanish, unchanged ones keep their state and schedule."""
        inventory, previous = loaded.inventory, self._running
        if previous is None:  # readiness waits for the first sweep of the first load
            self._first_sweep.expect({e.name for e in inventory.endpoints
                                      if self.shard.owns(e.name)})
        sources = Sources(inventory, previous.sources if previous else None)
        for replaced in sources.replaced:
            asyncio.ensure_future(sources.close([replaced]))
        self._schedule.resize(inventory.max_concurrency)
        fetcher = previous.refusals.fetcher if previous else RevocationFetcher(
            on_fetch=lambda source, result: self.metrics.revocation_fetches.labels(
                source, result).inc())
        refusals = RefusalChecks(policy_for(inventory.distrust, inventory.ct_log_list), fetcher)
        self._running = Running(inventory, previous.endpoints if previous else {},
                                loaded.alerts, TrustStores(), sources, refusals)
        self.metrics.invalid_entries.set(invalid_entries(inventory.endpoints, self.shard))
        if self._notifier is not None and loaded.alerts is not None:
            self._notifier.reconfigure(loaded.alerts)
        sources.follow(inventory.endpoints, self._listener)
        self._config.loaded(await self._set_endpoints(sources.discovered()))

    async def _set_endpoints(self, discovered: tuple[Endpoint, ...]) -> datetime:
        running = self._running
        assert running is not None
        new = endpoint_map(running.inventory.endpoints, discovered, self.shard)
        self._running = dataclasses.replace(running, endpoints=new)
        now = await swap_endpoints(running.endpoints, new, schedule=self._schedule,
                                   store=self.store, notifier=self._notifier,
                                   forget=self._first_probe_done, removed=self._pipeline.forget)
        self.metrics.endpoints.set(len(new))
        return now

    def _changed(self, name: str) -> None:
        """A source saw an entry's certificates change: probe it now."""
        if self._endpoint(name) is not None and not self._stop.is_set():
            self._schedule.schedule(name, utcnow())

    def _rediscover(self) -> None:
        if self._running is not None and not self._stop.is_set():
            task = asyncio.ensure_future(self._set_endpoints(self._running.sources.discovered()))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def reload(self, why: str) -> bool:
        async with self._reloading:  # SIGHUP during an edit's reload: one after the other
            return await self._reload(why)

    async def _reload(self, why: str) -> bool:
        previous = self._running
        try:
            loaded = await self.loader.load(with_web=previous is None)
        except ConfigError as exc:
            self._config.rejected(why, exc, kept=previous is not None)
            return False
        if previous is None:
            self.web_config = loaded.web
        await self._apply(loaded)
        inventory = loaded.inventory
        if previous is not None and inventory.listen != previous.inventory.listen \
                and not self.listen_override:
            log.warning("'listen' changed; restart certwatch to apply it",
                        extra={"listen": inventory.listen})
        log.info("configuration loaded", extra={"why": why, "endpoints": len(inventory.endpoints)})
        return True

    def _config_missing(self) -> None:
        self._config.missing(self.loader.config_path)

    # --- probing ---------------------------------------------------------------------------

    async def _probe(self, name: str) -> float | None:
        """The schedule's work for a due endpoint: the seconds until its next probe."""
        running, endpoint = self._running, self._endpoint(name)
        if running is None or endpoint is None or self._stop.is_set():
            return None
        deadline = self._schedule.deadline(name)
        outcome = await self._pipeline.run(
            endpoint, running.sources, running.trust, self._notifier,
            deadline if deadline is not None else 0.0, lambda: self._endpoint(name),
            running.refusals)
        self._memory.worked()
        if outcome.lag is not None:
            self._schedule.record_lag(name, outcome.lag)
            self._first_probe_done(name)
        return outcome.wait

    def _first_probe_done(self, name: str) -> None:
        self._first_sweep.probed(name, self.store.statuses)

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # Signals first: as PID 1 in a container, a SIGTERM during start-up must stop us.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self._schedule.start(loop)
        try:
            if not await self.reload("start-up"):
                return 2
            return await self._serve(loop)
        finally:
            self._schedule.close()
            await self.loader.close()

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> int:
        assert self._running is not None
        serving = await open_server(self, self.listen_override or self._running.inventory.listen,
                                    self.web_config, self.limits, self._probes.handle)
        if serving is None:
            return 2
        self.bound_port = serving.port
        state = open_state(self._running.inventory, self._running.alerts, self.registry)
        if state is None:
            await serving.close()
            return 2
        self._pipeline.history, self._notifier = state
        self._schedule.release()  # probes record history, and may watch our own port
        notifier_task = None
        if self._notifier is not None:
            self._notifier.release(self.shard.owns)
            notifier_task = asyncio.create_task(self._notifier.run(self._stop))
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("SIGHUP")))
        watchers = [asyncio.create_task(self.loader.watch(self._stop, self.reload_poll,
                                                          self.reload, self._config_missing)),
                    asyncio.create_task(self._schedule.watch_clock()),
                    asyncio.create_task(self._memory.run(self._stop)),
                    asyncio.create_task(self._first_sweep.frozen())]
        await self._stop.wait()
        log.info("stopping: letting probes in flight finish",
                 extra={"in_flight": len(self._schedule.in_flight)})
        for watcher in watchers:
            watcher.cancel()
        await self._shutdown(serving, notifier_task)
        if self._running is not None:
            await self._running.sources.close()
        return 0

    async def _shutdown(self, serving: Serving, notifier_task: asyncio.Task[None] | None) -> None:
        await self._schedule.drain(self.grace)
        if notifier_task is not None:
            # The loop ends at its next wake-up; what is undelivered stays in the outbox.
            done, _ = await asyncio.wait({notifier_task}, timeout=self.grace)
            if not done:
                notifier_task.cancel()
        if self._notifier is not None:
            self._notifier.outbox.close()
        if self._running is not None:
            await self._running.refusals.aclose()
        await self._pipeline.close()
        await serving.close()
        log.info("stopped")

    def stop(self) -> None:
        self._stop.set()
