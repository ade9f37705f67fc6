"""Sending what the outbox holds: each (notification, sink) on its own, with retries.

Every (notification, sink) pair is delivered by a task of its own, with exponential
backoff and jitter, so one broken sink never holds up the others; one that keeps
failing past `give_up_after`, or answers that it never will accept it, is
dead-lettered with a log line and a metric. An outcome the state database cannot take
yet is kept and written later, and that delivery is not sent again meanwhile.

Deliveries are claimed from the outbox for a lease longer than the sink's timeout
(:meth:`~certwatch.alerting.outbox.Outbox.claim`), so replicas sharing the database
never send the same one at once, and a claim is checked just before sending: a replica
that stalled past its lease sends nothing another has taken over.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Sequence

import httpx
from prometheus_client import Counter

from certwatch.alerting.health import StateGuard
from certwatch.alerting.outbox import Delivery, Outbox
from certwatch.alerting.sinks import Sink, SinkError

__all__ = ["Deliveries", "RetryPolicy", "PER_SINK"]

log = logging.getLogger(__name__)

PER_SINK = 10  # deliveries in flight at once to one sink
LEASE_MARGIN = 10.0  # seconds a claim lasts beyond the slowest sink's timeout
Key = tuple[str, str]  # (notification id, sink name)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial: float = 5.0  # seconds before the first retry; doubled each time
    maximum: float = 300.0
    give_up_after: float = 86400.0  # a notification older than this is dead-lettered

    def next_attempt(self, attempts: int, now: float) -> float:
        delay = min(self.initial * 2.0 ** attempts, self.maximum)
        return now + delay * random.uniform(0.5, 1.5)


class Deliveries:
    """The deliveries under way, and the outcomes still to be written."""

    def __init__(self, outbox: Outbox, guard: StateGuard, counter: Counter,
                 wake: asyncio.Event) -> None:
        self.outbox, self.guard, self.counter, self.wake = outbox, guard, counter, wake
        self.sending: dict[Key, asyncio.Task[None]] = {}
        self._unrecorded: dict[Key, Callable[[], None]] = {}  # outcomes to write

    def start_due(self, client: httpx.AsyncClient, sinks: Sequence[Sink],
                  retry: RetryPolicy) -> list[asyncio.Task[None]]:
        """Starts a task for each due delivery not already under way; returns them."""
        self.record_unrecorded()
        busy = self.sending.keys() | self._unrecorded.keys()
        lease = max((sink.timeout for sink in sinks), default=10.0) + LEASE_MARGIN

        def read_due() -> list[Delivery]:
            return self.outbox.claim(time.time(), lease, limit=100 + len(busy),
                                     per_sink=PER_SINK + len(busy))

        due: list[Delivery] = self.guard.read(read_due, [])
        by_name = {sink.name: sink for sink in sinks}
        in_flight: dict[str, int] = {}
        for key in self.sending:
            in_flight[key[1]] = in_flight.get(key[1], 0) + 1
        started = []
        for delivery in due:
            key = (delivery.notification.id, delivery.sink)
            if key in busy or in_flight.get(delivery.sink, 0) >= PER_SINK:
                continue
            in_flight[delivery.sink] = in_flight.get(delivery.sink, 0) + 1
            task = asyncio.create_task(
                self._deliver(delivery, by_name.get(delivery.sink), client, retry),
                name=f"deliver {delivery.sink}")
            self.sending[key] = task
            task.add_done_callback(functools.partial(self._sent, key))
            started.append(task)
        return started

    def _sent(self, key: Key, _: object = None) -> None:
        self.sending.pop(key, None)
        self.wake.set()  # the next due ones of that sink may start

    async def _deliver(self, delivery: Delivery, sink: Sink | None, client: httpx.AsyncClient,
                       retry: RetryPolicy) -> None:
        key = (delivery.notification.id, delivery.sink)
        now = time.time()
        if sink is not None and not self.guard.read(
                lambda: self.outbox.still_claimed(delivery, sink.timeout + 1), False):
            log.info("notification %s to %s: not sent, its claim is no longer held (another "
                     "replica took it over, or the database did not answer)",
                     delivery.notification.id, delivery.sink,
                     extra={"alert_key": delivery.notification.alert_key})
            return
        try:
            if sink is None:
                raise SinkError(f"sink {delivery.sink!r} is no longer configured", retryable=False)
            await sink.send(delivery.notification, client)
        except SinkError as exc:
            too_old = now - delivery.created_at > retry.give_up_after
            retry_at = (None if not exc.retryable or too_old
                        else max(retry.next_attempt(delivery.attempts, now),
                                 now + (exc.retry_after or 0)))  # the receiver's Retry-After
            result = "retry" if retry_at is not None else "dead"
            self.counter.labels(delivery.sink, result).inc()
            (log.warning if retry_at is not None else log.error)(
                "notification %s to %s: %s", "will be retried" if retry_at else "dead-lettered",
                delivery.sink, exc, extra={"alert_key": delivery.notification.alert_key,
                                           "attempts": delivery.attempts + 1})
            # Bound now: `exc` is gone after this block, and the write may be kept for later.
            error = str(exc)
            self._record_outcome(key, lambda: self.outbox.failed(delivery, error, retry_at))
            return
        self.counter.labels(delivery.sink, "delivered").inc()
        delivered_at = time.time()
        self._record_outcome(key, lambda: self.outbox.delivered(delivery, delivered_at))

    def _record_outcome(self, key: Key, write: Callable[[], bool]) -> None:
        """Writes how a delivery went; if the database fails, keeps it to write later."""
        def fenced() -> None:
            if not write():
                log.warning("notification %s to %s: another replica took it over meanwhile "
                            "(its receiver may get it twice, with the same idempotency key)",
                            *key)
        if not self.guard.may_write() or not self.guard.record(fenced):
            self._unrecorded[key] = fenced

    def record_unrecorded(self) -> None:
        for key, write in list(self._unrecorded.items()):
            if not self.guard.may_write() or not self.guard.record(write):
                return
            del self._unrecorded[key]

    async def finish(self, timeout: float) -> None:
        """Lets the deliveries under way end (each is bounded by its sink's timeout);
        cancelled, they stay pending in the outbox and are sent after a restart."""
        sending = set(self.sending.values())
        if not sending:
            return
        try:
            await asyncio.wait(sending, timeout=timeout)
        finally:
            for task in sending:
                task.cancel()
            await asyncio.wait(sending, timeout=1)
