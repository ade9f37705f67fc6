"""When each endpoint is probed next, and the workers that probe the due ones.

Each endpoint is one APScheduler job on an interval trigger: `interval` while its probes
succeed, `retry_interval` while they fail, each with jitter so a large inventory spreads
out over time. APScheduler sets the next run as the job fires; the job is replaced only
when the wait changes (a probe failed, or succeeded again), and moved (`modify_job`) to
probe an endpoint promptly. The waits count from when a probe was due, not from when it
ended (so a sweep does not drift later by its probes' durations); a probe slower than its
interval skips the runs that came round meanwhile, and one is never run twice at once.
Re-adding a one-off job after every probe cost a quarter of a millisecond of CPU each (a
new Job, its trigger, the signature check): a tenth of the steady state's cost a probe.

Due times lie on a grid (a tick of at most half the jitter, up to 10 s), so the probes
due within one tick start together. A probe that starts alone wakes the event loop, the
kernel and OpenSSL's caches for itself: 2,000 loopback probes evenly spread at 100 a
second cost 2.3 ms of CPU each, the same in batches of 20 every 0.2 s 1.3 ms. A batch
that fills the workers costs less again: at a 20 s interval (bench/vs_blackbox.py's
steady state, 64 workers), ticks of 0.2, 0.5, 1 and 2 s cost 1.60, 1.55, 1.45 and
1.46 ms a probe. The jitter still spreads the batches over the interval: a tick of half
of it leaves each due time four or five places to fall, and the interval's phases
twenty ticks at 20 s. The first probes of a (re)load lie on a grid too (SOON_TICK): at
2,000 endpoints spread over four seconds, one at a time they cost 1.34-1.58 ms of CPU
each, in batches of ~50 every 0.1 s 1.13-1.23 ms.

A due job only puts the endpoint's name in a queue that `max_concurrency` workers take
from, so 10,000 endpoints due at once are 10,000 names waiting, not 10,000 suspended
probes (each holding its coroutine, task and buffers). An endpoint is never queued or
probed twice at once. A job runs where it fires (`_RunHere`, as APScheduler's
DebugExecutor runs them): its asyncio executor made a task of each run, a tenth of a
millisecond a probe.

APScheduler runs jobs at wall-clock times, so a watchdog compares the wall clock with
the monotonic one and moves every due time with a jump (:meth:`Schedule.watch_clock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Iterator, Mapping

from apscheduler.executors.base import BaseExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from certwatch.memory import without

__all__ = ["Schedule", "jitter_of"]

log = logging.getLogger(__name__)

MAX_JITTER = 300.0  # seconds; jitter is 10% of the interval, at most this
TICKS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)  # seconds; each a multiple of the ones before
TICK_OF_JITTER = 0.5  # a wait's tick is at most this share of its jitter
CLOCK_CHECK = 5.0  # seconds between comparisons of the wall and monotonic clocks
CLOCK_JUMP = 30.0  # a disagreement larger than this is a clock jump, not drift
SCHEDULE_BATCH = 50  # endpoints scheduled between two turns of the event loop
# First due times a second, at most: about what one daemon probes (1,200-1,450 a second
# on bench/vs_blackbox.py's loopback targets), so a first sweep is not held far below
# what the probes allow, while endpoints that fail at once (10,000 on a closed port,
# bench/reload.py) leave /healthz turns of the loop: at 2,000 a second its 99th
# percentile went from 16 to 93-139 ms, at 1,000 to 28-32 ms. At 500 a second a
# daemon's first sweep, and two shards' at 2,000 endpoints, waited for due times.
SOON_RATE = 1000.0
SOON_TICK = 0.1  # seconds: the grid of those first due times (~100 probes a tick at SOON_RATE)
ONE_SECOND = timedelta(seconds=1)  # how soon a probe asked for during a probe follows it
JOB_NAME = "probe"  # every job's name, in APScheduler's log lines (its id is the endpoint)

# Probes one endpoint; returns the seconds until its next probe, or None for none.
Run = Callable[[str], Awaitable["float | None"]]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def jitter_of(seconds: float) -> float:
    """How far either side of `seconds` a wait of `seconds` is spread."""
    return min(seconds * 0.1, MAX_JITTER)


def tick_of(seconds: float) -> float:
    """The grid the due times of a wait of `seconds` lie on: the largest of TICKS within
    half its jitter (0, no grid, for waits under 2 s)."""
    limit = jitter_of(seconds) * TICK_OF_JITTER
    return max((tick for tick in TICKS if tick <= limit), default=0.0)


def on_grid(when: datetime, tick: float) -> datetime:
    """`when` rounded to the nearest multiple of `tick` seconds since the epoch: on
    average no later, so a repeating wait does not drift."""
    if tick <= 0:
        return when
    return datetime.fromtimestamp(round(when.timestamp() / tick) * tick, timezone.utc)


class _OnGrid(IntervalTrigger):  # type: ignore[misc]  # APScheduler has no type hints
    """An interval trigger whose fire times are rounded to a grid of `tick` seconds."""

    def __init__(self, seconds: float, jitter: float, tick: float) -> None:
        super().__init__(seconds=seconds, jitter=jitter, timezone=timezone.utc)
        self.tick = tick
        self._last: tuple[datetime | None, datetime, datetime | None] | None = None

    def get_next_fire_time(self, previous_fire_time: datetime | None,
                           now: datetime) -> datetime | None:
        # APScheduler asks twice a run with the same two moments (to find the due run
        # times, then to set the next one): the second answer is the first's, once (so
        # another job on the same moments still draws its own jitter).
        last, self._last = self._last, None
        if last is not None and last[0] is previous_fire_time and last[1] is now:
            return last[2]
        when = super().get_next_fire_time(previous_fire_time, now)
        when = None if when is None else on_grid(when, self.tick)
        self._last = (previous_fire_time, now, when)
        return when


@functools.lru_cache(maxsize=256)
def repeating(seconds: float) -> IntervalTrigger:
    """A trigger that fires every `seconds` ± its jitter, on its wait's grid, one shared by
    every job of that wait. APScheduler adds a jitter of 0 to J after each fire time, so
    the interval is shortened by half of it: on average the wait is `seconds` and does not
    drift."""
    spread = jitter_of(seconds)
    return _OnGrid(seconds - spread, 2 * spread, tick_of(seconds))


def due_in(wait: float) -> datetime:
    """A first due time `wait` seconds from now, ± its jitter, on its grid."""
    spread = jitter_of(wait)
    return on_grid(utcnow() + timedelta(seconds=wait + random.uniform(-spread, spread)),
                   tick_of(wait))


class _RunHere(BaseExecutor):  # type: ignore[misc]  # APScheduler has no type hints
    """Runs a due job where it fires, once for its coalesced run times, as APScheduler's
    DebugExecutor does without its lock, instance count, log lines and one event a run:
    a job only queues a name, returns at once and has no listener, and those cost ~40%
    of the scheduler's CPU a probe."""

    def submit_job(self, job: Any, run_times: list[datetime]) -> None:
        try:
            job.func(*job.args, **job.kwargs)
        except Exception:  # as APScheduler would: logged, and the next run still comes
            log.exception("scheduling the probe of %s failed", job.id)

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        self.submit_job(job, run_times)


def shared_job(enqueue: Callable[[str], None]) -> Callable[[str], None]:
    """The one function every job runs. APScheduler keeps, per job, the callable, its
    "module:name" reference and its name: for a bound method, a new method object and two
    new strings a job (~220 bytes, 2 MB at 10,000 endpoints); for one nested function,
    nothing new (it has no reference to keep, which only a persistent job store would
    need)."""
    def job(name: str) -> None:
        enqueue(name)
    return job


async def wall_clock_jumps(stop: asyncio.Event, jumped: Callable[[float], None]) -> None:
    """Until `stop`: every CLOCK_CHECK seconds, compares how far the wall clock and the
    monotonic one went; a difference of CLOCK_JUMP or more is a jump, told to `jumped`."""
    wall, mono = time.time(), time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), CLOCK_CHECK)
        now_wall, now_mono = time.time(), time.monotonic()
        jump = (now_wall - wall) - (now_mono - mono)
        wall, mono = now_wall, now_mono
        if abs(jump) >= CLOCK_JUMP:
            jumped(jump)


class Schedule:
    """The endpoints' due times, the queue of due endpoints and its workers."""

    def __init__(self, run: Run, stop: asyncio.Event, on_clock_jump: Callable[[], None]) -> None:
        self._run = run
        self._stop = stop
        self._on_clock_jump = on_clock_jump
        self._scheduler: AsyncIOScheduler | None = None
        self._deadline: dict[str, float] = {}  # next probe per endpoint, on time.monotonic()
        self._every: dict[str, float] = {}  # the wait each endpoint's job repeats at
        self._asked: set[str] = set()  # whose next run schedule() set, not the interval
        self._lag: dict[str, float] = {}
        self._due: asyncio.Queue[str] = asyncio.Queue()  # endpoints whose probe is due, in order
        self._queued: set[str] = set()  # the names in _due
        self._running: set[str] = set()  # endpoints being probed
        self._workers: set[asyncio.Task[Any]] = set()
        self._worker_count = 0  # how many workers there should be (max_concurrency)
        self.in_flight: set[asyncio.Task[Any]] = set()  # the workers busy probing
        self.wanted: Callable[[str], bool] = lambda name: True  # is the endpoint configured?
        # Workers wait for the HTTP server: a target that is certwatch itself (its own
        # serving certificate) must not be probed before the port is bound.
        self._released = asyncio.Event()
        self._job = shared_job(self._enqueue)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduler = AsyncIOScheduler(event_loop=loop, timezone=timezone.utc,
                                           executors={"default": _RunHere()})
        self._scheduler.start()

    def release(self) -> None:
        """Lets the workers start probing."""
        self._released.set()

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

    def schedule(self, name: str, when: datetime, every: float | None = None) -> None:
        """The endpoint's next probe at `when`; its job goes on repeating after it, every
        `every` seconds for a new one (the endpoint's interval) until a probe says
        otherwise."""
        assert self._scheduler is not None
        self._deadline[name] = time.monotonic() + (when - utcnow()).total_seconds()
        self._asked.add(name)
        if name in self._every:
            with contextlib.suppress(JobLookupError):
                self._scheduler.modify_job(name, next_run_time=when)
                return
            del self._every[name]
        if every is None:  # one run, then _repeat() gives it the wait its probe returns
            self._scheduler.add_job(self._job, "date", run_date=when, args=(name,), id=name,
                                    name=JOB_NAME, replace_existing=True, misfire_grace_time=None)
        else:
            self._add(name, every, when)

    def _repeat(self, name: str, wait: float) -> None:
        """After a probe: the next in `wait` seconds (jittered), and every `wait` after;
        a run asked for meanwhile (a file changed during the probe) stays where it is.
        In the steady state the job already repeats at that wait and APScheduler has set
        its next run: nothing is written, only the deadline read."""
        assert self._scheduler is not None
        job = self._scheduler.get_job(name)
        pending = job.next_run_time if job is not None else None
        if pending is not None and self._every.get(name) == wait:
            when = pending  # the steady state
        else:
            if pending is None or name not in self._asked:
                when = due_in(wait)
            else:
                when = pending  # asked for during the probe: it stays
            self._add(name, wait, when)
        self._deadline[name] = time.monotonic() + (when - utcnow()).total_seconds()

    def _add(self, name: str, every: float, when: datetime) -> None:
        assert self._scheduler is not None
        self._scheduler.add_job(self._job, repeating(every), args=(name,), id=name,
                                name=JOB_NAME, next_run_time=when, replace_existing=True,
                                misfire_grace_time=None)
        self._every[name] = every

    async def schedule_soon(self, intervals: Mapping[str, float], spread: float) -> None:
        """Each endpoint of `intervals` (name: interval) due at a random moment within
        `spread` seconds of its batch, or more when there are many: at most SOON_RATE a
        second, on a grid of SOON_TICK. 10,000 of them took seconds of the event loop, the
        scheduler looking for due jobs after each: it looks once a batch of SCHEDULE_BATCH,
        the loop turns between."""
        names = list(intervals)
        spread = max(spread, len(names) / SOON_RATE)
        for start in range(0, len(names), SCHEDULE_BATCH):
            with self._batch():
                now = utcnow()
                for name in names[start:start + SCHEDULE_BATCH]:
                    when = now + timedelta(seconds=random.uniform(0, spread))
                    self.schedule(name, on_grid(when, SOON_TICK), intervals[name])
            await asyncio.sleep(0)  # /healthz, scrapes and probes between batches

    @contextlib.contextmanager
    def _batch(self) -> Iterator[None]:
        assert self._scheduler is not None
        self._scheduler.pause()
        try:
            yield
        finally:
            if self._scheduler.running and not self._stop.is_set():
                self._scheduler.resume()

    def unschedule(self, name: str) -> None:
        self._deadline.pop(name, None)
        self._lag.pop(name, None)
        self._every.pop(name, None)
        self._asked.discard(name)
        if self._scheduler is not None:
            with contextlib.suppress(JobLookupError):
                self._scheduler.remove_job(name)

    def _enqueue(self, name: str) -> None:
        """What the scheduler's job does (see shared_job): the endpoint's probe is due."""
        if self._stop.is_set() or name in self._queued or not self.wanted(name):
            return  # a queued name is probed with the definition current when it runs
        if name in self._running:
            if name in self._asked:  # a reload asked for a probe while one is under way
                # (once APScheduler has set this run's successor, which would replace it)
                asyncio.get_running_loop().call_soon(self.schedule, name, utcnow() + ONE_SECOND)
            return  # else the interval came round during a slow probe: the next one will
        self._asked = without(self._asked, name)
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
            await self._released.wait()
            while not self._stop.is_set() and len(self._workers) <= self._worker_count:
                name = await self._due.get()
                self._queued = without(self._queued, name)
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
                self._repeat(name, wait)

    # --- the wall clock ---------------------------------------------------------------------

    async def watch_clock(self) -> None:
        """Keeps the schedule when the wall clock jumps: a clock set back an hour would
        delay every probe by an hour (and one set forward would fire them all at once),
        so every due time moves by the same amount and each probe keeps the wait it had
        left."""
        await wall_clock_jumps(self._stop, self._clock_jumped)

    def _clock_jumped(self, jump: float) -> None:
        log.warning("the wall clock jumped by %+.0f s; moving every scheduled probe with it",
                    jump, extra={"jump_seconds": round(jump, 1)})
        self._on_clock_jump()
        # Each probe keeps the wait it had left on the monotonic clock. (Moving the
        # wall-clock due times by the jump is wrong for the probes that already ran,
        # and were rescheduled, between the jump and its detection.)
        now, mono = utcnow(), time.monotonic()
        for name, deadline in list(self._deadline.items()):
            if name not in self._running and name not in self._queued:
                self.schedule(name, now + timedelta(seconds=max(0.0, deadline - mono)))

    # --- shutdown ---------------------------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Stops scheduling; probes in flight get `grace` seconds to finish."""
        assert self._scheduler is not None
        self._scheduler.pause()  # no more names queued; the workers' probes go on
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

    def close(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
