"""The alert engine's shell: decide on each probe result, persist, deliver with retries.

Decisions are pure (:mod:`certwatch.alerts`); this module writes them to the outbox and
runs the delivery loop. Every (notification, sink) pair is delivered independently with
exponential backoff and jitter, so one broken sink never holds up the others; one that
keeps failing past `give_up_after`, or answers that it never will accept it, is
dead-lettered with a log line and a metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from certwatch.alerts import Alert, AlertPolicy, Notification, decide
from certwatch.outbox import Delivery, Outbox
from certwatch.report import rfc3339
from certwatch.config import AlertSettings, ConfigError
from certwatch.sinks import Sink, SinkError, parse_sinks
from certwatch.store import TargetStatus

__all__ = ["AlertsConfig", "Notifier", "RetryPolicy", "alerts_config", "open_alerts_by_target"]

log = logging.getLogger(__name__)

PRUNE_EVERY = 3600.0  # seconds between clean-ups of the outbox
KEEP_DELIVERED = 7 * 86400.0  # delivered and dead notifications are kept this long
# The outbox is written from the event loop, and SQLite waits for another process's
# lock by blocking the thread: a long wait would stall probes, scrapes and deliveries.
# certwatch is the database's only writer, so a lock held elsewhere (a backup, an
# operator's shell) fails fast, and the write is tried again later.
BUSY_TIMEOUT = 0.25  # seconds
WRITE_RETRY = 1.0  # seconds between write attempts while the database fails
PER_SINK = 10  # deliveries in flight at once to one sink
CLOCK_JUMP = 30.0  # seconds; a wall clock set back further moves pending retries with it


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial: float = 5.0  # seconds before the first retry; doubled each time
    maximum: float = 300.0
    give_up_after: float = 86400.0  # a notification older than this is dead-lettered

    def next_attempt(self, attempts: int, now: float) -> float:
        delay = min(self.initial * 2 ** attempts, self.maximum)
        return now + delay * random.uniform(0.5, 1.5)


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    state_dir: Path
    policy: AlertPolicy = field(default_factory=AlertPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sinks: tuple[Sink, ...] = ()


def alerts_config(settings: AlertSettings, source: str, environ: Mapping[str, str],
                  base: Path) -> AlertsConfig:
    """The running alert configuration; the sinks (and their secrets) are read here."""
    sinks, problems = parse_sinks(list(settings.sinks), "alerts.sinks", environ, base)
    if problems:
        raise ConfigError(source, problems)
    return AlertsConfig(
        state_dir=settings.state_dir,
        policy=AlertPolicy(
            repeat={"warning": timedelta(seconds=settings.repeat_warning),
                    "critical": timedelta(seconds=settings.repeat_critical)},
            probe_failures=settings.probe_failures,
            external_url=settings.external_url),
        retry=RetryPolicy(settings.retry_initial, settings.retry_max, settings.give_up_after),
        sinks=tuple(sinks))


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
        self.state_ok.set(1)


class Notifier:
    def __init__(self, config: AlertsConfig, outbox: Outbox, registry: CollectorRegistry,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.config = config
        self.outbox = outbox
        self.metrics = NotifierMetrics(registry)
        self.clock = clock
        self.open: dict[str, Alert] = outbox.open_alerts()
        self.degraded: str | None = None
        self._wake = asyncio.Event()
        self._last_prune = 0.0
        outbox.set_busy_timeout(BUSY_TIMEOUT)
        self._write_failed_at: float | None = None  # time.monotonic() of the latest failure
        # (notification id, sink): the deliveries being sent, and those sent whose outcome
        # could not be written yet (not sent again until it is).
        self._sending: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._unrecorded: dict[tuple[str, str], Callable[[], None]] = {}
        self._clock_offset = time.time() - time.monotonic()
        self._clock_shift = 0.0  # a backward jump not yet applied to the outbox
        self._update_gauges()

    def alerts_by_target(self) -> dict[str, list[dict[str, Any]]]:
        try:
            last = self.outbox.last_notifications()
        except sqlite3.Error:
            last = {}
        return open_alerts_by_target(self.open, last)

    def reconfigure(self, config: AlertsConfig) -> None:
        self.config = config

    def observe(self, statuses: Sequence[TargetStatus], removed: Sequence[str] = ()) -> None:
        """Decides on fresh statuses (and targets gone); persists before anything is sent."""
        now = self.clock()
        changes, notices = decide(self.open, statuses, now, self.config.policy,
                                  removed_targets=removed)
        if not changes:
            return
        deliveries = [(n, sink.name) for n in notices for sink in self.config.sinks
                      if sink.accepts(n)]
        # Nothing is lost by not writing: the open alerts are unchanged, so the same
        # decision is taken again at the next probe, once the database accepts writes.
        if not self._may_write():
            return
        try:
            self.outbox.apply(changes, deliveries, now)
        except sqlite3.Error as exc:
            self._degrade(f"state database write failed: {exc}")
            return
        self._recover()
        for key, alert in changes.items():
            if alert is None:
                self.open.pop(key, None)
            else:
                self.open[key] = alert
        for notice in notices:
            log.info("alert %s: %s", notice.action, notice.summary,
                     extra={"alert_key": notice.alert_key, "severity": notice.severity,
                            "sinks": [s for n, s in deliveries if n is notice]})
        self._update_gauges()
        if deliveries:
            self._wake.set()

    def _may_write(self) -> bool:
        """False for WRITE_RETRY seconds after a failed write: while the database fails,
        each attempt can block the event loop for BUSY_TIMEOUT, so they are spaced out."""
        return (self._write_failed_at is None
                or time.monotonic() - self._write_failed_at >= WRITE_RETRY)

    def _degrade(self, why: str, *, write: bool = True) -> None:
        if write:
            self._write_failed_at = time.monotonic()
        if self.degraded is None:
            log.error("alerting degraded: %s", why, extra={"path": str(self.outbox.path)})
        self.degraded = why
        self.metrics.state_ok.set(0)

    def _recover(self) -> None:
        self._write_failed_at = None
        if self.degraded is not None:
            log.info("alerting recovered: the state database accepts writes again")
        self.degraded = None
        self.metrics.state_ok.set(1)

    def _update_gauges(self) -> None:
        for severity in ("warning", "critical"):
            self.metrics.open_alerts.labels(severity).set(
                sum(1 for a in self.open.values() if a.severity == severity))
        try:
            depth, oldest = self.outbox.pending_stats()
        except sqlite3.Error as exc:
            self._degrade(f"state database read failed: {exc}", write=False)
            return
        self.metrics.outbox_depth.set(depth)
        self.metrics.oldest_age.set(time.time() - oldest if oldest else 0)

    # --- delivery ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Delivers due notifications until `stop`; wakes on new ones or every second.

        Each (notification, sink) is sent by a task of its own, so a sink that hangs
        until its timeout holds up nothing but its own deliveries."""
        async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as client:
            refresher = asyncio.create_task(self._refresh_forever(client, stop))
            try:
                while not stop.is_set():
                    self._follow_clock()
                    self.start_due(client)
                    self._update_gauges()
                    self._prune_now_and_then()
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), 1.0)
            finally:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
                await self._finish_sending()

    async def _finish_sending(self) -> None:
        """Lets the deliveries under way end (each is bounded by its sink's timeout);
        cancelled, they stay pending in the outbox and are sent after a restart."""
        sending = set(self._sending.values())
        if not sending:
            return
        try:
            await asyncio.wait(sending, timeout=max((s.timeout for s in self.config.sinks),
                                                    default=10.0) + 1)
        finally:
            for task in sending:
                task.cancel()
            await asyncio.wait(sending, timeout=1)

    def _prune_now_and_then(self) -> None:
        now = time.time()
        if now - self._last_prune < PRUNE_EVERY or not self._may_write():
            return
        self._last_prune = now
        self._record(lambda: log.debug("pruned %d old notifications",
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
        if self._clock_shift and self._may_write():
            shift = self._clock_shift
            if self._record(lambda: self.outbox.shift_pending(shift)):
                self._clock_shift = 0.0

    def start_due(self, client: httpx.AsyncClient) -> list[asyncio.Task[None]]:
        """Starts a task for each due delivery not already under way; returns them."""
        self._record_unrecorded()
        busy = self._sending.keys() | self._unrecorded.keys()
        try:
            due = self.outbox.due(time.time(), limit=100 + len(busy), per_sink=PER_SINK + len(busy))
        except sqlite3.Error as exc:
            self._degrade(f"state database read failed: {exc}", write=False)
            return []
        sinks = {sink.name: sink for sink in self.config.sinks}
        in_flight: dict[str, int] = {}
        for key in self._sending:
            in_flight[key[1]] = in_flight.get(key[1], 0) + 1
        started = []
        for delivery in due:
            key = (delivery.notification.id, delivery.sink)
            if key in busy or in_flight.get(delivery.sink, 0) >= PER_SINK:
                continue
            in_flight[delivery.sink] = in_flight.get(delivery.sink, 0) + 1
            task = asyncio.create_task(self._deliver(delivery, sinks.get(delivery.sink), client),
                                       name=f"deliver {delivery.sink}")
            self._sending[key] = task
            task.add_done_callback(lambda _, key=key: self._sent(key))
            started.append(task)
        return started

    def _sent(self, key: tuple[str, str]) -> None:
        self._sending.pop(key, None)
        self._wake.set()  # the next due ones of that sink may start

    async def deliver_due(self, client: httpx.AsyncClient) -> None:
        """Sends every due delivery and waits for them all."""
        started = self.start_due(client)
        if started:
            await asyncio.wait(started)
        self._update_gauges()

    async def _deliver(self, delivery: Delivery, sink: Sink | None,
                       client: httpx.AsyncClient) -> None:
        key = (delivery.notification.id, delivery.sink)
        now = time.time()
        try:
            if sink is None:
                raise SinkError(f"sink {delivery.sink!r} is no longer configured", retryable=False)
            await sink.send(delivery.notification, client)
        except SinkError as exc:
            too_old = now - delivery.created_at > self.config.retry.give_up_after
            retry_at = (None if not exc.retryable or too_old
                        else max(self.config.retry.next_attempt(delivery.attempts, now),
                                 now + (exc.retry_after or 0)))  # the receiver's Retry-After
            result = "retry" if retry_at is not None else "dead"
            self.metrics.notifications.labels(delivery.sink, result).inc()
            (log.warning if retry_at is not None else log.error)(
                "notification %s to %s: %s", "will be retried" if retry_at else "dead-lettered",
                delivery.sink, exc, extra={"alert_key": delivery.notification.alert_key,
                                           "attempts": delivery.attempts + 1})
            # Bound now: `exc` is gone after this block, and the write may be kept for later.
            error = str(exc)
            self._record_outcome(key, lambda: self.outbox.failed(delivery, error, retry_at))
            return
        self.metrics.notifications.labels(delivery.sink, "delivered").inc()
        delivered_at = time.time()
        self._record_outcome(key, lambda: self.outbox.delivered(delivery, delivered_at))

    def _record_outcome(self, key: tuple[str, str], write: Callable[[], None]) -> None:
        """Writes how a delivery went; if the database fails, keeps it to write later
        (and does not send that delivery again meanwhile)."""
        if not self._may_write() or not self._record(write):
            self._unrecorded[key] = write

    def _record_unrecorded(self) -> None:
        for key, write in list(self._unrecorded.items()):
            if not self._may_write() or not self._record(write):
                return
            del self._unrecorded[key]

    def _record(self, write: Callable[[], Any]) -> bool:
        try:
            write()
        except sqlite3.Error as exc:
            self._degrade(f"state database write failed: {exc}")
            return False
        self._recover()
        return True

    async def _refresh_forever(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        """Alertmanager forgets alerts not re-posted; re-post the open ones periodically."""
        refreshing = [s for s in self.config.sinks if hasattr(s, "refresh")]
        if not refreshing:
            return
        interval = min(getattr(s, "refresh_interval", 60.0) for s in refreshing)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            now = self.clock()
            for sink in refreshing:
                active = [_as_notification(a, now, self.config.policy.external_url)
                          for a in self.open.values()]
                active = [n for n in active if sink.accepts(n)]
                if not active:
                    continue
                try:
                    await sink.refresh(active, client)  # type: ignore[attr-defined]
                except SinkError as exc:
                    log.warning("re-posting open alerts to %s failed: %s", sink.name, exc)


def _as_notification(alert: Alert, now: datetime, url: str | None) -> Notification:
    return Notification(id=f"refresh-{alert.key}", alert_key=alert.key, kind=alert.kind,
                        action="remind", severity=alert.severity, created_at=now,
                        started_at=alert.started_at, summary=alert.summary, target=alert.target,
                        details=alert.details, url=url)


def open_alerts_by_target(open_alerts: dict[str, Alert],
                          last: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Open alerts grouped by target key, each with its last notification, for the API."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for alert in open_alerts.values():
        grouped.setdefault(alert.target.get("key", ""), []).append({
            "key": alert.key, "kind": alert.kind, "severity": alert.severity,
            "started_at": rfc3339(alert.started_at), "summary": alert.summary,
            "last_notification": last.get(alert.key)})
    return grouped
