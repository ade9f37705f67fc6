"""The daemon: schedules probes, keeps the store, serves HTTP, reloads, shuts down cleanly.

This is the shell around the pure core. One object owns the running inventory and swaps
it whole on reload; a bad new file is rejected and the old inventory keeps running.

Scheduling: each endpoint is one APScheduler job that runs once and reschedules itself:
`interval` after a success, `retry_interval` after a failure, each with jitter so a large
inventory spreads out over time. A due job only puts the endpoint's name in a queue that
`max_concurrency` workers take from, so 10,000 endpoints due at once are 10,000 names
waiting, not 10,000 suspended probes (each holding its coroutine, task and buffers). An
endpoint is never queued or probed twice at once, and the prober's semaphore bounds
the connections of the whole daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import signal
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from aiohttp import web
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from certwatch.assess import assess
from certwatch.certs import TrustStores
from certwatch.config import ConfigError, Endpoint, Inventory, build_inventory, load_inventory, split_listen
from certwatch.demo import DemoEndpoints
from certwatch.metrics import DaemonMetrics, TargetExposition
from certwatch.notifier import AlertsConfig, Notifier, alerts_config
from certwatch.outbox import Outbox, StateError
from certwatch.probe import Prober
from certwatch.store import Change, Store, TargetStatus, merge
from certwatch.web import create_app
from certwatch.webconfig import ServerTLS, TLSLoadError, WebConfig, log_serving

__all__ = ["Daemon"]

log = logging.getLogger(__name__)

FIRST_SWEEP_SPREAD = 2.0  # seconds over which the first probes of a (re)load are spread
MAX_JITTER = 300.0  # seconds; jitter is 10% of the interval, at most this
CLOCK_CHECK = 5.0  # seconds between comparisons of the wall and monotonic clocks
CLOCK_JUMP = 30.0  # a disagreement larger than this is a clock jump, not drift


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _jittered(seconds: float) -> float:
    spread = min(seconds * 0.1, MAX_JITTER)
    return seconds + random.uniform(-spread, spread)


class Daemon:
    """`certwatch run`: one instance per process."""

    def __init__(self, config_path: Path, *, listen: str | None = None,
                 reload_poll: float = 5.0, grace: float = 5.0,
                 web_config: WebConfig | None = None) -> None:
        self.config_path = config_path
        self.web_config = web_config  # TLS, client certificates, basic auth of the HTTP server
        self.listen_override = listen
        self.reload_poll = reload_poll
        self.grace = grace
        self.metrics = DaemonMetrics()
        self.registry = self.metrics.registry
        self.store = Store()
        self.bound_port: int | None = None
        self._inventory: Inventory | None = None
        self._endpoints: dict[str, Endpoint] = {}
        self._trust = TrustStores()
        self._prober: Prober | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._deadline: dict[str, float] = {}  # next probe per endpoint, on time.monotonic()
        self._lag: dict[str, float] = {}
        self._due: asyncio.Queue[str] = asyncio.Queue()  # endpoints whose probe is due, in order
        self._queued: set[str] = set()  # the names in _due
        self._running: set[str] = set()  # endpoints being probed
        self._workers: set[asyncio.Task[Any]] = set()
        self._worker_count = 0  # how many workers there should be (max_concurrency)
        self._in_flight: set[asyncio.Task[Any]] = set()  # the workers busy probing
        self._unprobed: set[str] = set()
        self._notices: list[str] = []
        self._file_signature: tuple[int, int, int] | None = None
        self._stop = asyncio.Event()
        self._notifier: Notifier | None = None
        self._alerts_config: AlertsConfig | None = None
        self._demo: DemoEndpoints | None = None
        self._demo_dir: tempfile.TemporaryDirectory[str] | None = None
        self.exposition = TargetExposition(self.store.statuses, self._worst_lag)

    # --- the view the web layer reads -------------------------------------------------

    def snapshot(self) -> Mapping[str, TargetStatus]:
        return self.store.snapshot()

    def target_metrics(self) -> Iterator[str]:
        return self.exposition.pieces()

    def next_probe_at(self, endpoint_name: str) -> datetime | None:
        deadline = self._deadline.get(endpoint_name)
        if deadline is None:
            return None
        return _utcnow() + timedelta(seconds=deadline - time.monotonic())

    def ready(self) -> bool:
        return self._inventory is not None and not self._unprobed

    def notices(self) -> list[str]:
        degraded = self._notifier.degraded if self._notifier else None
        return list(self._notices) + ([f"alerting degraded: {degraded}"] if degraded else [])

    def alerts_by_target(self) -> dict[str, list[dict[str, Any]]]:
        return self._notifier.alerts_by_target() if self._notifier else {}

    def _worst_lag(self) -> float:
        return max(self._lag.values(), default=0.0)

    # --- configuration ------------------------------------------------------------------

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def _load(self) -> tuple[Inventory, AlertsConfig | None]:
        inventory = await self._load_inventory()
        alerts = None
        if inventory.alerts is not None:
            alerts = alerts_config(inventory.alerts, str(self.config_path), os.environ,
                                   self.config_path.parent.resolve())
        return inventory, alerts

    async def _load_inventory(self) -> Inventory:
        inventory = load_inventory(self.config_path)
        if not inventory.demo:
            return inventory
        if self._demo is None:
            self._demo_dir = tempfile.TemporaryDirectory(prefix="certwatch-demo-")
            self._demo = await DemoEndpoints(Path(self._demo_dir.name)).__aenter__()
            log.info("demo endpoints started", extra={"count": len(self._demo.inventory_entries())})
        # The demo endpoints follow the inventory's defaults (its interval above all),
        # except for the trust settings each of them brings.
        d = inventory.defaults
        defaults = {"timeout": d.timeout, "warn_days": d.warn_days,
                    "critical_days": d.critical_days, "interval": d.interval,
                    "retry_interval": d.retry_interval}
        demo = build_inventory({"defaults": defaults, "endpoints": self._demo.inventory_entries()},
                               source="demo")
        clash = {e.name for e in demo.endpoints} & {e.name for e in inventory.endpoints}
        if clash:
            raise ConfigError(str(self.config_path),
                              [f"endpoint names {sorted(clash)} are used by the demo endpoints"])
        return dataclasses.replace(inventory, endpoints=inventory.endpoints + demo.endpoints)

    def _apply(self, inventory: Inventory, alerts: AlertsConfig | None) -> None:
        """Swaps in a validated inventory: new and changed endpoints are probed promptly,
        removed ones vanish, unchanged ones keep their state and schedule."""
        old = self._endpoints
        new = {e.name: e for e in inventory.endpoints}
        if self._inventory is None:  # readiness waits for the first sweep of the first load
            self._unprobed = set(new)
            self.metrics.ready.set(0 if new else 1)
        if self._prober is None or inventory.max_concurrency != self._prober.max_concurrency:
            self._prober = Prober(max_concurrency=inventory.max_concurrency)
        self._resize_workers(inventory.max_concurrency)
        self._inventory, self._endpoints, self._trust = inventory, new, TrustStores()
        for name in old.keys() - new.keys():
            self._unschedule(name)
        removed = self.store.retain(set(new))
        for key in removed:
            log.info("target removed", extra={"target": key})
        self._alerts_config = alerts
        if self._notifier is not None:
            if alerts is not None:
                self._notifier.reconfigure(alerts)
            self._notifier.observe([], removed)
        now = _utcnow()
        for name, endpoint in new.items():
            if old.get(name) != endpoint:
                self._schedule(name, now + timedelta(seconds=random.uniform(0, FIRST_SWEEP_SPREAD)))
        self.metrics.endpoints.set(len(new))
        self.metrics.reload_ok.set(1)
        self.metrics.reload_time.set(now.timestamp())
        self.metrics.reloads.labels("success").inc()

    async def reload(self, why: str) -> bool:
        self._file_signature = self._signature()
        try:
            inventory, alerts = await self._load()
        except ConfigError as exc:
            self.metrics.reload_ok.set(0)
            self.metrics.reloads.labels("failure").inc()
            self._notices = [f"configuration reload ({why}) failed; still running the previous "
                             f"inventory. {exc}"]
            log.error("configuration rejected; the previous inventory keeps running",
                      extra={"why": why, "source": exc.source, "problems": list(exc.problems)})
            return False
        previous = self._inventory
        self._apply(inventory, alerts)
        self._notices = []
        if previous is not None and inventory.listen != previous.listen and not self.listen_override:
            log.warning("'listen' changed; restart certwatch to apply it",
                        extra={"listen": inventory.listen})
        log.info("configuration loaded", extra={"why": why, "endpoints": len(self._endpoints)})
        return True

    async def _watch_config_file(self) -> None:
        """Polls the file: an edit reloads, as SIGHUP does."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.reload_poll)
            signature = self._signature()
            if signature is None and self._file_signature is not None:
                self._file_signature = None
                self.metrics.reload_ok.set(0)
                self.metrics.reloads.labels("failure").inc()
                self._notices = [f"configuration file {self.config_path} is missing; "
                                 "still running the previous inventory"]
                log.error("configuration file is missing; the previous inventory keeps running",
                          extra={"path": str(self.config_path)})
            elif signature is not None and signature != self._file_signature:
                await self.reload("file changed")

    async def _watch_clock(self) -> None:
        """Keeps the schedule when the wall clock jumps.

        APScheduler runs jobs at wall-clock times, so a clock set back an hour would
        delay every probe by an hour (and one set forward would fire them all at once).
        Comparing the wall clock with the monotonic clock finds a jump; every due time
        then moves by the same amount, so each probe keeps the wait it had left.
        """
        wall, mono = time.time(), time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), CLOCK_CHECK)
            now_wall, now_mono = time.time(), time.monotonic()
            jump = (now_wall - wall) - (now_mono - mono)
            wall, mono = now_wall, now_mono
            if abs(jump) < CLOCK_JUMP:
                continue
            log.warning("the wall clock jumped by %+.0f s; moving every scheduled probe with it",
                        jump, extra={"jump_seconds": round(jump, 1)})
            self.metrics.clock_jumps.inc()
            # Each probe keeps the wait it had left on the monotonic clock. (Moving the
            # wall-clock due times by the jump is wrong for the probes that already ran,
            # and were rescheduled, between the jump and its detection.)
            now, mono = _utcnow(), time.monotonic()
            for name, deadline in list(self._deadline.items()):
                if name not in self._running and name not in self._queued:
                    self._schedule(name, now + timedelta(seconds=max(0.0, deadline - mono)))

    # --- scheduling and probing ---------------------------------------------------------

    def _schedule(self, name: str, when: datetime) -> None:
        assert self._scheduler is not None
        self._deadline[name] = time.monotonic() + (when - _utcnow()).total_seconds()
        self._scheduler.add_job(self._enqueue, "date", run_date=when, args=[name], id=name,
                                replace_existing=True, misfire_grace_time=None)

    def _unschedule(self, name: str) -> None:
        self._deadline.pop(name, None)
        self._lag.pop(name, None)
        self._first_probe_done(name)  # a removed endpoint no longer holds readiness back
        if self._scheduler is not None:
            with contextlib.suppress(JobLookupError):
                self._scheduler.remove_job(name)

    async def _enqueue(self, name: str) -> None:
        """The scheduler's job (a coroutine: APScheduler runs plain functions in threads)."""
        if self._stop.is_set() or name in self._queued or name not in self._endpoints:
            return  # a queued name is probed with the definition current when it runs
        if name in self._running:  # a reload asked for a probe while one is under way
            self._schedule(name, _utcnow() + timedelta(seconds=1))
            return
        self._queued.add(name)
        self._due.put_nowait(name)

    def _resize_workers(self, count: int) -> None:
        """Starts workers up to `count`; surplus ones end after their next probe."""
        self._worker_count = count
        while len(self._workers) < count:
            worker = asyncio.get_running_loop().create_task(self._work())
            self._workers.add(worker)

    async def _work(self) -> None:
        worker = asyncio.current_task()
        assert worker is not None
        try:
            while not self._stop.is_set() and len(self._workers) <= self._worker_count:
                name = await self._due.get()
                self._queued.discard(name)
                self._in_flight.add(worker)
                try:
                    await self._run_endpoint(name)
                finally:
                    self._in_flight.discard(worker)
        finally:
            self._workers.discard(worker)

    async def _run_endpoint(self, name: str) -> None:
        endpoint = self._endpoints.get(name)
        if endpoint is None or self._stop.is_set():
            return
        assert self._prober is not None
        self._running.add(name)
        deadline = self._deadline.get(name, time.monotonic())
        failed = True
        try:
            observations = await self._prober.probe(endpoint)
            now = _utcnow()
            trust = self._trust.for_endpoint(endpoint)
            fresh = [assess(o, now, trust) for o in observations]
            if self._endpoints.get(name) is not endpoint:
                return  # reloaded meanwhile: the new definition has its own probe coming
            previous = self.store.of_endpoint(name)
            statuses = merge(previous, fresh, endpoint,
                             lambda observation: assess(observation, now, trust))
            self._log_changes(self.store.replace_endpoint(name, statuses))
            if self._notifier is not None:
                vanished = {s.target.key for s in previous} - {s.target.key for s in statuses}
                self._notifier.observe(statuses, sorted(vanished))
            for status in statuses:
                error = status.last_error
                self.metrics.probes.labels("success" if error is None else "failure",
                                           error.kind if error else "").inc()
            # How late the probe started, all on the monotonic clock (a wall-clock jump,
            # even one during the probe, is not lateness): each observation's duration is
            # monotonic, so the earliest start is now less the longest of them.
            since_start = max(o.duration_seconds for o in observations)
            self._lag[name] = max(0.0, time.monotonic() - since_start - deadline)
            failed = any(not s.probe_success for s in statuses)
            self._first_probe_done(name)
        except Exception:
            log.exception("probe of %s failed inside certwatch", name)
        finally:
            self._running.discard(name)
            if self._endpoints.get(name) is endpoint and not self._stop.is_set():
                wait = endpoint.retry_interval if failed else endpoint.interval
                self._schedule(name, _utcnow() + timedelta(seconds=_jittered(wait)))

    def _first_probe_done(self, name: str) -> None:
        if name in self._unprobed:
            self._unprobed.discard(name)
            if not self._unprobed:
                self.metrics.ready.set(1)
                log.info("first sweep finished", extra={"targets": len(self.store.statuses())})

    @staticmethod
    def _log_changes(changes: list[Change]) -> None:
        for change in changes:
            status = change.status
            log.info(
                "state %s -> %s: %s" % (change.before.value if change.before else "new",
                                        status.state.value, status.target.key),
                extra={"target": status.target.key, "before": change.before.value
                       if change.before else None, "state": status.state.value,
                       "reasons": list(status.assessment.reasons),
                       "summary": status.assessment.summary},
            )

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # Signals first: as PID 1 in a container, a SIGTERM during start-up must stop us.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self._scheduler = AsyncIOScheduler(event_loop=loop, timezone=timezone.utc)
        self._scheduler.start()
        try:
            if not await self.reload("start-up"):
                return 2
            assert self._inventory is not None
            server_tls = None
            if self.web_config is not None and self.web_config.tls is not None:
                try:  # validated by the CLI; the files may have changed since
                    server_tls = ServerTLS(self.web_config.tls)
                except TLSLoadError as exc:
                    log.error("web configuration %s: %s", self.web_config.source, exc)
                    return 2
            notifier_task = None
            if self._alerts_config is not None:
                try:
                    outbox = Outbox(self._alerts_config.state_dir / "certwatch.db")
                except StateError as exc:
                    log.error("%s", exc)
                    return 2
                self._notifier = Notifier(self._alerts_config, outbox, self.registry)
                notifier_task = asyncio.create_task(self._notifier.run(self._stop))
            runner = web.AppRunner(create_app(self, self.web_config), access_log=None)
            await runner.setup()
            host, port = split_listen(self.listen_override or self._inventory.listen)
            site = web.TCPSite(runner, host, port,
                               ssl_context=server_tls.context if server_tls else None)
            await site.start()
            sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
            self.bound_port = sockets[0].getsockname()[1] if sockets else port
            scheme = "https" if server_tls else "http"
            log.info("listening on %s://%s:%s/", scheme, host or "0.0.0.0", self.bound_port,
                     extra={"port": self.bound_port, "scheme": scheme,
                            "basic_auth": bool(self.web_config and self.web_config.basic_auth_users)})
            if server_tls is not None:
                log_serving(server_tls)
            elif self.web_config is not None and self.web_config.basic_auth_users:
                log.warning("basic auth without TLS: passwords cross the network in clear text")
            loop.add_signal_handler(signal.SIGHUP,
                                    lambda: asyncio.ensure_future(self.reload("SIGHUP")))
            watcher = asyncio.create_task(self._watch_config_file())
            clock_watch = asyncio.create_task(self._watch_clock())
            await self._stop.wait()
            log.info("stopping: letting probes in flight finish", extra={"in_flight": len(self._in_flight)})
            clock_watch.cancel()
            await self._shutdown(runner, watcher, notifier_task)
            return 0
        finally:
            if self._scheduler.running:
                self._scheduler.shutdown(wait=False)
            if self._demo is not None:
                await self._demo.__aexit__(None, None, None)
            if self._demo_dir is not None:
                self._demo_dir.cleanup()

    async def _shutdown(self, runner: web.AppRunner, watcher: asyncio.Task[None],
                        notifier_task: asyncio.Task[None] | None) -> None:
        assert self._scheduler is not None
        # pause(), not shutdown(): APScheduler's AsyncIOExecutor.shutdown cancels every job
        # still running, which would cut the probes in flight short of their grace time.
        self._scheduler.pause()
        watcher.cancel()
        for worker in self._workers - self._in_flight:
            worker.cancel()  # idle: waiting for a name
        if self._in_flight:
            done, pending = await asyncio.wait(set(self._in_flight), timeout=self.grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("probes cancelled after the grace time", extra={"count": len(pending)})
                await asyncio.wait(pending, timeout=1)
        self._scheduler.shutdown(wait=False)
        if notifier_task is not None:
            # The loop ends at its next wake-up; what is undelivered stays in the outbox.
            done, _ = await asyncio.wait({notifier_task}, timeout=self.grace)
            if not done:
                notifier_task.cancel()
        if self._notifier is not None:
            self._notifier.outbox.close()
        await runner.cleanup()
        log.info("stopped")

    def stop(self) -> None:
        self._stop.set()
