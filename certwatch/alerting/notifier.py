"""The alert engine's shell: decide on each probe result, persist, deliver.

Decisions are pure (:mod:`certwatch.core.alerts`); this module writes them to the
outbox in the same transaction as the alert change, before anything is sent, and runs
the delivery loop (:mod:`certwatch.alerting.delivery`). While the state database
refuses writes, alerting is degraded, not stopped: nothing is lost, the same decision
is taken again at the next probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from certwatch.alerting.delivery import Deliveries, RetryPolicy
from certwatch.alerting.health import StateGuard
from certwatch.alerting.outbox import Decision, Outbox
from certwatch.alerting.sinks import Refreshing, Sink, SinkError, build_sinks
from certwatch.core.alerts import Alert, AlertPolicy, Notification, decide
from certwatch.core.inventory import AlertSettings
from certwatch.core.status import TargetStatus
from certwatch.core.vocabulary import Action, Severity
from certwatch.render.report import open_alerts_by_target

__all__ = ["AlertsConfig", "Notifier", "RetryPolicy", "alerts_config"]

log = logging.getLogger(__name__)

PRUNE_EVERY = 3600.0  # seconds between clean-ups of the outbox
KEEP_DELIVERED = 7 * 86400.0  # delivered and dead notifications are kept this long
# The outbox is written from the event loop, and SQLite waits for another process's
# lock by blocking the thread: a long wait would stall probes, scrapes and deliveries.
# certwatch is the database's only writer, so a lock held elsewhere (a backup, an
# operator's shell) fails fast, and the write is tried again later.
BUSY_TIMEOUT = 0.25  # seconds
CLOCK_JUMP = 30.0  # seconds; a wall clock set back further moves pending retries with it
SHARED_REFRESH = 10.0  # seconds between reads of the alerts other replicas decided


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    state_dir: Path
    policy: AlertPolicy = field(default_factory=AlertPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sinks: tuple[Sink, ...] = ()


def alerts_config(settings: AlertSettings) -> AlertsConfig:
    """The running alert configuration, from the validated `alerts:` section."""
    return AlertsConfig(
        state_dir=settings.state_dir,
        policy=AlertPolicy(
            repeat={Severity.WARNING: timedelta(seconds=settings.repeat_warning),
                    Severity.CRITICAL: timedelta(seconds=settings.repeat_critical)},
            probe_failures=settings.probe_failures,
            external_url=settings.external_url),
        retry=RetryPolicy(settings.retry_initial, settings.retry_max, settings.give_up_after),
        sinks=build_sinks(settings.sinks))


class NotifierMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.notifications = Counter("certwatch_notifications",
                                     "Notification delivery attempts by sink and result "
                                     "(delivered, retry, dead).", ["sink", "result"],
                                     registry=registry)
        self.open_alerts = Gauge("certwatch_alerts_open", "Open alerts by severity.",
                                 ["severity"], registry=registry)
        self.outbox_depth = Gauge("certwatch_outbox_pending",
                                  "Notifications not yet delivered.", registry=registry)
        self.oldest_age = Gauge("certwatch_outbox_oldest_pending_age_seconds",
                                "Age of the oldest undelivered notification (0 when none).",
                                registry=registry)
        self.state_ok = Gauge("certwatch_state_database_healthy",
                              "1 if the state database accepted the latest write.",
                              registry=registry)


class Notifier:
    def __init__(self, config: AlertsConfig, outbox: Outbox, registry: CollectorRegistry,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.config = config
        self.outbox = outbox
        self.metrics = NotifierMetrics(registry)
        self.clock = clock
        self.open: dict[str, Alert] = outbox.open_alerts()
        self.guard = StateGuard(outbox.path, self.metrics.state_ok)
        self._wake = asyncio.Event()
        self.deliveries = Deliveries(outbox, self.guard, self.metrics.notifications, self._wake)
        self._last_prune = 0.0
        outbox.set_busy_timeout(BUSY_TIMEOUT)
        self._clock_offset = time.time() - time.monotonic()
        self._clock_shift = 0.0  # a backward jump not yet applied to the outbox
        self._owns: Callable[[Any], bool] = lambda name: True  # a shard's own targets
        self._shared_read = time.monotonic()
        self._update_gauges()

    @property
    def degraded(self) -> str | None:
        return self.guard.degraded

    def alerts_by_target(self) -> dict[str, list[dict[str, Any]]]:
        last = self.guard.read(self.outbox.last_notifications, {})
        return open_alerts_by_target(self.open, last)

    def reconfigure(self, config: AlertsConfig) -> None:
        self.config = config

    def observe(self, statuses: Sequence[TargetStatus], removed: Sequence[str] = (), *,
                handed_over: Sequence[str] = ()) -> None:
        """Decides on fresh statuses (and targets gone); persists before anything is sent.

        Alone on its database, the open alerts in memory are the stored ones. Sharing it
        (PostgreSQL), another replica may have decided about the same targets: the
        decision is taken from the stored alerts, again inside the transaction that
        holds the targets' locks (:meth:`Outbox.decide`), and only when it changes
        something is anything written."""
        now, policy = self.clock(), self.config.policy
        targets = [s.target.key for s in statuses] + [*removed, *handed_over]
        known = self.guard.read(lambda: self.outbox.alerts_of(targets), None) \
            if self.outbox.shared else self.open
        if known is None:
            return

        def decision(current: Mapping[str, Alert], now: datetime) -> Decision:
            changes, notices = decide(current, statuses, now, policy, removed_targets=removed,
                                      handed_over_targets=handed_over)
            return changes, notices, [(n, sink.name) for n in notices
                                      for sink in self.config.sinks if sink.accepts(n)]

        tentative = decision(known, now)
        if not tentative[0]:
            self._remember(targets, known, {})
            return
        outcome: list[Decision] = []
        # Nothing is lost by not writing: the open alerts are unchanged, so the same
        # decision is taken again at the next probe, once the database accepts writes.
        if not self.guard.may_write() or not self.guard.record(lambda: outcome.append(
                self.outbox.decide(targets, decision, self.clock) if self.outbox.shared
                else self._apply(tentative, now))):
            return
        changes, notices, deliveries = outcome[0]
        self._remember(targets, known, changes)
        for notice in notices:
            log.info("alert %s: %s", notice.action, notice.summary,
                     extra={"alert_key": notice.alert_key, "severity": notice.severity,
                            "sinks": [s for n, s in deliveries if n is notice]})
        self._update_gauges()
        if deliveries:
            self._wake.set()

    def _apply(self, decision: Decision, now: datetime) -> Decision:
        self.outbox.apply(decision[0], decision[2], now)
        return decision

    def _remember(self, targets: Sequence[str], known: Mapping[str, Alert],
                  changes: Mapping[str, Alert | None]) -> None:
        """The open alerts in memory after a decision about `targets` (sharing the
        database: what it held, `known`, updated by the decision)."""
        if self.outbox.shared:
            mine = set(targets)
            for key in [k for k in self.open if k.rsplit("/", 1)[0] in mine]:
                del self.open[key]
            self.open.update({k: a for k, a in known.items() if self._owns(a.target.get("name"))})
        for key, alert in changes.items():
            if alert is None:
                self.open.pop(key, None)
            else:
                self.open[key] = alert

    def release(self, owns: Callable[[str], bool]) -> None:
        """A shard's start-up: alerts of targets another shard owns now (the count
        changed) are no longer shown here; alone on its database, this replica resolves
        them ("now watched by another shard"): it will never probe them again."""
        self._owns = lambda name: isinstance(name, str) and owns(name)
        foreign = sorted({a.target.get("key", a.key.rsplit("/", 1)[0]) for a in self.open.values()
                          if not self._owns(a.target.get("name"))})
        if not foreign:
            return
        if self.outbox.shared:
            self.open = {k: a for k, a in self.open.items() if self._owns(a.target.get("name"))}
            self._update_gauges()
        else:
            self.observe([], handed_over=foreign)

    def _follow_shared(self) -> None:
        """The alerts other replicas decided (for the gauges, API and refresh)."""
        now = time.monotonic()
        if not self.outbox.shared or now - self._shared_read < SHARED_REFRESH:
            return
        self._shared_read = now
        stored = self.guard.read(self.outbox.open_alerts, None)
        if stored is not None:
            self.open = {k: a for k, a in stored.items() if self._owns(a.target.get("name"))}

    def _update_gauges(self) -> None:
        for severity in Severity:
            self.metrics.open_alerts.labels(severity).set(
                sum(1 for a in self.open.values() if a.severity == severity))
        stats = self.guard.read(self.outbox.pending_stats, None)
        if stats is None:
            return
        depth, oldest = stats
        self.metrics.outbox_depth.set(depth)
        self.metrics.oldest_age.set(time.time() - oldest if oldest else 0)

    async def run(self, stop: asyncio.Event) -> None:
        """Delivers due notifications until `stop`; wakes on new ones or every second.

        Each (notification, sink) is sent by a task of its own, so a sink that hangs
        until its timeout holds up nothing but its own deliveries."""
        async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as client:
            refresher = asyncio.create_task(self._refresh_forever(client, stop))
            try:
                while not stop.is_set():
                    self._follow_clock()
                    self._follow_shared()
                    self.deliveries.start_due(client, self.config.sinks, self.config.retry)
                    self._update_gauges()
                    self._prune_now_and_then()
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), 1.0)
            finally:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
                await self.deliveries.finish(
                    max((s.timeout for s in self.config.sinks), default=10.0) + 1)

    async def deliver_due(self, client: httpx.AsyncClient) -> None:
        """Sends every due delivery and waits for them all."""
        started = self.deliveries.start_due(client, self.config.sinks, self.config.retry)
        if started:
            await asyncio.wait(started)
        self._update_gauges()

    def _prune_now_and_then(self) -> None:
        now = time.time()
        if now - self._last_prune < PRUNE_EVERY or not self.guard.may_write():
            return
        self._last_prune = now
        self.guard.record(lambda: log.debug("pruned %d old notifications",
                                            self.outbox.prune(now - KEEP_DELIVERED)))

    def _follow_clock(self) -> None:
        """Retries are stored at wall-clock times; when the clock is set back, move the
        pending ones with it, or they would wait as long as it was set back. (A clock set
        forward only makes them due early, which is harmless.)"""
        offset = time.time() - time.monotonic()
        jump, self._clock_offset = offset - self._clock_offset, offset
        if jump < -CLOCK_JUMP:
            log.warning("the wall clock was set back %.0f s; moving pending retries with it",
                        -jump, extra={"jump_seconds": round(jump, 1)})
            self._clock_shift += jump
        if self._clock_shift and self.guard.may_write():
            shift = self._clock_shift
            if self.guard.record(lambda: self.outbox.shift_pending(shift)):
                self._clock_shift = 0.0

    async def _refresh_forever(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        """Alertmanager forgets alerts not re-posted; re-post the open ones periodically."""
        refreshing = [s for s in self.config.sinks if isinstance(s, Refreshing)]
        if not refreshing:
            return
        interval = min(s.refresh_interval for s in refreshing)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            now = self.clock()
            for sink in refreshing:
                active = [n for n in (_as_notification(a, now, self.config.policy.external_url)
                                      for a in self.open.values()) if sink.accepts(n)]
                if not active:
                    continue
                try:
                    await sink.refresh(active, client)
                except SinkError as exc:
                    log.warning("re-posting open alerts to %s failed: %s", sink.name, exc)


def _as_notification(alert: Alert, now: datetime, url: str | None) -> Notification:
    return Notification(id=f"refresh-{alert.key}", alert_key=alert.key, kind=alert.kind,
                        action=Action.REMIND, severity=alert.severity, created_at=now,
                        started_at=alert.started_at, summary=alert.summary, target=alert.target,
                        details=alert.details, url=url)
