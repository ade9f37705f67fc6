"""When each endpoint is probed next, and the workers that probe the due ones.

Each endpoint has one due time on the event loop's monotonic clock, in a heap that one
timer of the loop (`call_at`) serves, set again after its probe: `interval` after a success, `retry_interval` after a
failure, each with jitter so a large inventory spreads out over time. A due timer only
puts the endpoint's name in a queue that `max_concurrency` workers take from, so 10,000
endpoints due at once are 10,000 names waiting, not 10,000 suspended probes (each
holding its coroutine, task and buffers). An endpoint is never queued or probed twice
at once.

Why the loop's timers and not APScheduler's jobs, which this module used before: a job
cost a quarter of a millisecond of CPU each time it was set (the job store, its
triggers, wakeups), a tenth of the steady state's CPU per probe, and a kilobyte of
memory per endpoint; and its due times were on the wall clock, so a clock jump moved
every probe. A heap entry on the monotonic clock costs neither (and a hundred bytes, not
a loop timer's six hundred), and a jump of the wall clock leaves the schedule alone; the watchdog (:meth:`Schedule.watch_clock`) still notices
jumps, for the metric, the log and the outbox's pending retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

__all__ = ["Schedule", "jittered"]

log = logging.getLogger(__name__)

MAX_JITTER = 300.0  # seconds; jitter is 10% of the interval, at most this
CLOCK_CHECK = 5.0  # seconds between comparisons of the wall and monotonic clocks
CLOCK_JUMP = 30.0  # a disagreement larger than this is a clock jump, not drift

# Probes one endpoint; returns the seconds until its next probe, or None for none.
Run = Callable[[str], Awaitable["float | None"]]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def jittered(seconds: float) -> float:
    spread = min(seconds * 0.1, MAX_JITTER)
    return seconds + random.uniform(-spread, spread)


class Schedule:
    """The endpoints' due times, the queue of due endpoints and its workers."""

    def __init__(self, run: Run, stop: asyncio.Event, on_clock_jump: Callable[[], None]) -> None:
        self._run = run
        self._stop = stop
        self._on_clock_jump = on_clock_jump
        self._loop: asyncio.AbstractEventLoop | None = None
        # Due times on the loop's clock: a heap of (due, sequence, name), of which only the
        # entry in _entry counts for each name (others were replaced or cancelled), and
        # the one timer that fires at the earliest.
        self._heap: list[tuple[float, int, str]] = []
        self._entry: dict[str, tuple[float, int, str]] = {}
        self._sequence = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._paused = False
        self._deadline: dict[str, float] = {}  # next probe per endpoint, on time.monotonic()
        self._lag: dict[str, float] = {}
        self._due: asyncio.Queue[str] = asyncio.Queue()  # endpoints whose probe is due, in order
        self._queued: set[str] = set()  # the names in _due
        self._running: set[str] = set()  # endpoints being probed
        self._workers: set[asyncio.Task[Any]] = set()
        self._worker_count = 0  # how many workers there should be (max_concurrency)
        self.in_flight: set[asyncio.Task[Any]] = set()  # the workers busy probing
        self.wanted: Callable[[str], bool] = lambda name: True  # is the endpoint configured?

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # --- what the rest of the daemon reads ----------------------------------------------

    def deadline(self, name: str) -> float | None:
        """When the endpoint's next probe is due, on the monotonic clock."""
        return self._deadline.get(name)

    def next_probe_at(self, name: str) -> datetime | None:
        deadline = self._deadline.get(name)
        if deadline is None:
            return None
        return utcnow() + timedelta(seconds=deadline - time.monotonic())

    def record_lag(self, name: str, lag: float) -> None:
        self._lag[name] = lag

    def worst_lag(self) -> float:
        return max(self._lag.values(), default=0.0)

    # --- due times ------------------------------------------------------------------------

    def schedule(self, name: str, when: datetime) -> None:
        assert self._loop is not None
        wait = (when - utcnow()).total_seconds()
        self._deadline[name] = time.monotonic() + wait
        if self._paused:
            return
        entry = (self._loop.time() + max(0.0, wait), next(self._sequence), name)
        self._entry[name] = entry
        heapq.heappush(self._heap, entry)
        if self._timer is None or entry[0] < self._timer_at:
            self._arm()

    def unschedule(self, name: str) -> None:
        self._deadline.pop(name, None)
        self._lag.pop(name, None)
        self._entry.pop(name, None)  # its heap entry no longer counts

    def _arm(self) -> None:
        """Sets the one timer for the earliest due time that counts."""
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        heap = self._heap
        while heap and self._entry.get(heap[0][2]) is not heap[0]:
            heapq.heappop(heap)  # replaced or cancelled
        if heap:
            self._timer_at = heap[0][0]
            self._timer = self._loop.call_at(self._timer_at, self._fire)

    def _fire(self) -> None:
        """The timer's callback: every endpoint due by now is queued."""
        assert self._loop is not None
        self._timer = None
        now, heap = self._loop.time(), self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if self._entry.get(entry[2]) is entry:
                del self._entry[entry[2]]
                self._enqueue(entry[2])
        if self._timer is None:  # _enqueue may have set it, rescheduling a running one
            self._arm()

    def _enqueue(self, name: str) -> None:
        """The endpoint is due."""
        if self._stop.is_set() or name in self._queued or not self.wanted(name):
            return  # a queued name is probed with the definition current when it runs
        if name in self._running:  # a reload asked for a probe while one is under way
            self.schedule(name, utcnow() + timedelta(seconds=1))
            return
        self._queued.add(name)
        self._due.put_nowait(name)

    # --- workers --------------------------------------------------------------------------

    def resize(self, count: int) -> None:
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
                self.in_flight.add(worker)
                try:
                    await self._probe(name)
                finally:
                    self.in_flight.discard(worker)
        finally:
            self._workers.discard(worker)

    async def _probe(self, name: str) -> None:
        self._running.add(name)
        wait = None
        try:
            wait = await self._run(name)
        finally:
            self._running.discard(name)
            if wait is not None and not self._stop.is_set():
                self.schedule(name, utcnow() + timedelta(seconds=jittered(wait)))

    # --- the wall clock ---------------------------------------------------------------------

    async def watch_clock(self) -> None:
        """Notices jumps of the wall clock. The timers are on the monotonic clock, so
        each probe keeps the wait it had left; what is on the wall clock elsewhere (the
        outbox's pending retries) is told (`on_clock_jump`)."""
        wall, mono = time.time(), time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), CLOCK_CHECK)
            now_wall, now_mono = time.time(), time.monotonic()
            jump = (now_wall - wall) - (now_mono - mono)
            wall, mono = now_wall, now_mono
            if abs(jump) < CLOCK_JUMP:
                continue
            log.warning("the wall clock jumped by %+.0f s; the probes keep their schedule "
                        "(it runs on the monotonic clock)", jump,
                        extra={"jump_seconds": round(jump, 1)})
            self._on_clock_jump()

    # --- shutdown ---------------------------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Stops scheduling; probes in flight get `grace` seconds to finish."""
        self._pause()
        for worker in self._workers - self.in_flight:
            worker.cancel()  # idle: waiting for a name
        if self.in_flight:
            _, pending = await asyncio.wait(set(self.in_flight), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("probes cancelled after the grace time", extra={"count": len(pending)})
                await asyncio.wait(pending, timeout=1)
        self.close()

    def _pause(self) -> None:
        """No probe is queued from now on (those in flight go on)."""
        self._paused = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
        self._entry.clear()

    def close(self) -> None:
        self._pause()
