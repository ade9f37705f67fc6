"""The schedule on its own: APScheduler's interval jobs, the queue and its workers."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from certwatch.daemon.schedule import (SOON_TICK, Schedule, _RunHere, repeating, tick_of,
                                       utcnow)
from certwatch.daemon.sourcing import FIRST_SWEEP_SPREAD
from certwatch.memory import without


def _run_schedule(body: Callable[[Schedule, dict[str, Any]], Awaitable[None]],
                  run: Callable[[str, dict[str, Any]], Awaitable[float | None]]) -> dict[str, Any]:
    """Runs `body` against a started Schedule whose probes are `run`; returns what they
    recorded (`starts`, `ends`: monotonic times per name) and the jobs APScheduler was
    given (`added`)."""
    seen: dict[str, Any] = {"starts": {}, "ends": {}, "added": 0}

    async def main() -> None:
        stop = asyncio.Event()

        async def probe(name: str) -> float | None:
            seen["starts"].setdefault(name, []).append(time.monotonic())
            try:
                return await run(name, seen)
            finally:
                seen["ends"].setdefault(name, []).append(time.monotonic())

        schedule = Schedule(probe, stop, lambda: None)
        schedule.start(asyncio.get_running_loop())
        scheduler = schedule._scheduler
        assert scheduler is not None
        add_job = scheduler.add_job

        def counting(*args: Any, **kwargs: Any) -> Any:
            seen["added"] += 1
            return add_job(*args, **kwargs)

        scheduler.add_job = counting  # type: ignore[method-assign]
        schedule.resize(4)
        schedule.release()
        try:
            await asyncio.wait_for(body(schedule, seen), 20)
        finally:
            stop.set()
            await schedule.drain(1)

    asyncio.run(main())
    return seen


def test_the_steady_state_adds_no_job_per_probe() -> None:
    async def run(name: str, seen: dict[str, Any]) -> float:
        return 0.2

    async def body(schedule: Schedule, seen: dict[str, Any]) -> None:
        schedule.schedule("a", utcnow())
        await asyncio.sleep(3)

    seen = _run_schedule(body, run)
    starts = seen["starts"]["a"]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert 11 <= len(starts) <= 17, gaps  # every 0.2 s ± 10%, for 3 s
    assert all(0.14 < gap < 0.30 for gap in gaps), gaps
    assert 0.18 < sum(gaps) / len(gaps) < 0.22, gaps  # the jitter does not lengthen the wait
    # The first run, then one interval job: APScheduler sets each next run itself.
    assert seen["added"] == 2


def test_an_endpoint_scheduled_with_its_interval_is_one_job_from_the_start() -> None:
    """The first sweep: schedule_soon knows each endpoint's interval, so a probe that
    succeeds adds nothing (at 10,000 endpoints an add_job cost up to half a millisecond)."""
    async def run(name: str, seen: dict[str, Any]) -> float:
        return 0.2

    async def body(schedule: Schedule, seen: dict[str, Any]) -> None:
        await schedule.schedule_soon({"a": 0.2, "b": 0.2}, 0.1)
        await asyncio.sleep(1.5)

    seen = _run_schedule(body, run)
    assert all(6 <= len(seen["starts"][name]) <= 9 for name in "ab"), seen["starts"]
    assert seen["added"] == 2  # one job for each endpoint, ever


def _first_due_times(count: int, spread: float) -> tuple[datetime, list[datetime]]:
    """`count` new endpoints (interval 30 s) scheduled by schedule_soon over `spread`:
    when that began, and the due times of those not yet probed (a probed one is next due
    ~30 s on)."""
    names = {f"e{i}": 30.0 for i in range(count)}
    found: dict[str, Any] = {}

    async def run(name: str, seen: dict[str, Any]) -> float:
        return 30.0

    async def body(schedule: Schedule, seen: dict[str, Any]) -> None:
        start = found["start"] = utcnow()
        await schedule.schedule_soon(names, spread)
        assert schedule._scheduler is not None
        found["first"] = [job.next_run_time for job in schedule._scheduler.get_jobs()
                          if job.next_run_time - start < timedelta(seconds=10)]

    _run_schedule(body, run)
    return found["start"], found["first"]


def test_the_first_probes_start_in_batches_on_a_grid() -> None:
    """The first sweep's due times lie on a grid of SOON_TICK, so the probes due within
    one tick start together (at 2,000 names a probe started alone cost ~20% more CPU)."""
    start, first = _first_due_times(100, 1.0)
    assert len(first) > 50
    assert all(abs(when.timestamp() / SOON_TICK - round(when.timestamp() / SOON_TICK))
               < 1e-3 for when in first), first
    assert len(set(first)) <= 1.0 / SOON_TICK + 2  # not a hundred moments, a dozen
    assert all(start - timedelta(seconds=SOON_TICK) <= when
               <= start + timedelta(seconds=1.0 + SOON_TICK) for when in first)


def test_a_large_first_sweep_is_not_held_below_what_a_daemon_probes() -> None:
    """1,000 new endpoints are all due within a second: a daemon probes 1,200-1,450 a
    second on loopback, and a first sweep held at 500 a second (over at least 2 s) left
    a daemon, and two shards on two cores, waiting for due times."""
    start, first = _first_due_times(1000, FIRST_SWEEP_SPREAD)
    assert len(first) > 900
    assert max(first) <= start + timedelta(seconds=1.0 + SOON_TICK)  # on its grid


def test_every_job_shares_one_function_and_one_name() -> None:
    """At 10,000 endpoints each job's own bound method, reference and name were 2 MB."""
    async def run(name: str, seen: dict[str, Any]) -> float:
        return 30.0

    async def body(schedule: Schedule, seen: dict[str, Any]) -> None:
        await schedule.schedule_soon({"a": 30.0, "b": 30.0}, 0.1)
        assert schedule._scheduler is not None
        jobs = schedule._scheduler.get_jobs()
        assert sorted(job.id for job in jobs) == ["a", "b"]
        assert jobs[0].func is jobs[1].func and jobs[0].name is jobs[1].name
        assert jobs[0].func_ref is None  # no "module:name" string kept per job
        await asyncio.sleep(0.5)
        assert sorted(seen["starts"]) == ["a", "b"]  # and the shared function runs each

    _run_schedule(body, run)


def test_failures_retry_at_their_own_interval_then_the_interval_returns() -> None:
    async def run(name: str, seen: dict[str, Any]) -> float:
        failing = len(seen["starts"][name]) <= 3
        return 0.1 if failing else 30.0  # retry_interval, then interval

    async def body(schedule: Schedule, seen: dict[str, Any]) -> None:
        schedule.schedule("a", utcnow())
        await asyncio.sleep(1.5)
        next_at = schedule.next_probe_at("a")
        assert next_at is not None
        assert timedelta(seconds=25) < next_at - utcnow() < timedelta(seconds=33)

    seen = _run_schedule(body, run)
    assert len(seen["starts"]["a"]) == 4  # three failures 0.1 s apart, one success
    assert seen["added"] == 3  # the first run, the retry job, the interval job


def test_a_slow_probe_is_never_run_twice_at_once_nor_back_to_back() -> None:
    async def run(name: str, seen: dict[str, Any]) -> float:
        await asyncio.sleep(0.5)  # longer than the interval
        return 0.2

    async def body(schedule: Schedule, seen: dict[str, Any]) -> None:
        schedule.schedule("a", utcnow())
        await asyncio.sleep(3)

    seen = _run_schedule(body, run)
    starts, ends = seen["starts"]["a"], seen["ends"]["a"]
    assert all(start >= end for start, end in zip(starts[1:], ends)), (starts, ends)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(starts) <= 6 and all(gap >= 0.5 for gap in gaps), gaps


def test_a_probe_asked_for_during_a_probe_runs_soon_after_it() -> None:
    """A reload changed the endpoint while its probe ran: the new definition is probed
    about a second later, not an interval later."""
    async def run(name: str, seen: dict[str, Any]) -> float:
        if len(seen["starts"][name]) == 1:
            await asyncio.sleep(0.5)
        return 3600.0

    async def body(schedule: Schedule, seen: dict[str, Any]) -> None:
        schedule.schedule("a", utcnow())
        deadline = time.monotonic() + 5
        while "a" not in seen["starts"] and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        schedule.schedule("a", utcnow())  # while the first probe runs
        while len(seen["starts"].get("a", [])) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    seen = _run_schedule(body, run)
    starts, ends = seen["starts"]["a"], seen["ends"]["a"]
    assert len(starts) == 2 and 0 < starts[1] - ends[0] < 1.6, (starts, ends)


def test_due_times_lie_on_their_waits_grid_and_do_not_drift() -> None:
    """Probes due within one tick start together (one wake-up for a batch, not one a
    probe); rounding to the nearest tick keeps the average wait what it was."""
    assert tick_of(1) == 0.0 and tick_of(5) == 0.2 and tick_of(3600) == 10.0
    assert tick_of(20) == 1.0 and tick_of(60) == 2.0  # half its jitter, on the ladder
    trigger = repeating(3600.0)
    start = utcnow()
    fires = [trigger.get_next_fire_time(None, start)]
    for _ in range(2000):
        fires.append(trigger.get_next_fire_time(fires[-1], fires[-1]))
    stamps = [fire.timestamp() for fire in fires]
    assert all(abs(stamp - round(stamp / 10) * 10) < 1e-5 for stamp in stamps[1:]), stamps[:5]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert all(3230 <= gap <= 3970 for gap in gaps)  # 3600 s ± 10%, ± half a tick
    assert abs(sum(gaps) / len(gaps) - 3600) < 15  # 2,000 draws of ±360 s: no drift


def test_the_second_question_of_a_run_gets_the_first_answer_and_no_more() -> None:
    """APScheduler asks a trigger twice a run with the same two moments: one jitter draw
    answers both; another job asking with those moments draws its own."""
    trigger = repeating(3600.0)
    previous, now = utcnow(), utcnow()
    firsts, seconds = [], []
    for _ in range(20):
        firsts.append(trigger.get_next_fire_time(previous, now))
        seconds.append(trigger.get_next_fire_time(previous, now))
    assert firsts == seconds
    assert len(set(firsts)) > 1  # ±360 s on a 10 s grid: 20 equal draws would be chance


def test_a_job_that_raises_is_logged_and_the_scheduler_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def fails(name: str) -> None:
        ran.append(name)
        raise RuntimeError("boom")

    async def main() -> None:
        scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(),
                                     executors={"default": _RunHere()})
        scheduler.start()
        scheduler.add_job(fails, "interval", seconds=0.1, args=("a",), id="a",
                          next_run_time=utcnow())
        deadline = time.monotonic() + 5
        while len(ran) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        scheduler.shutdown(wait=False)

    with caplog.at_level(logging.ERROR, logger="certwatch.daemon.schedule"):
        asyncio.run(main())
    assert len(ran) >= 3
    assert "scheduling the probe of a failed" in caplog.text and "boom" in caplog.text


def test_a_steady_job_is_due_on_the_grid() -> None:
    async def run(name: str, seen: dict[str, Any]) -> float:
        return 20.0

    async def body(schedule: Schedule, seen: dict[str, Any]) -> None:
        await schedule.schedule_soon({name: 20.0 for name in "abcdef"}, 0.1)
        deadline = time.monotonic() + 5
        while len(seen["ends"]) < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert schedule._scheduler is not None
        for name in "abcdef":
            due = schedule._scheduler.get_job(name).next_run_time.timestamp()
            assert abs(due - round(due)) < 1e-5, (name, due)  # on the 1 s grid; datetimes hold µs
            next_at = schedule.next_probe_at(name)
            assert next_at is not None and 17.4 < (next_at - utcnow()).total_seconds() < 22.6

    seen = _run_schedule(body, run)
    assert all(len(seen["starts"][name]) == 1 for name in "abcdef")
def test_a_set_emptied_by_a_sweep_does_not_keep_its_table() -> None:
    names = {f"endpoint-{i}" for i in range(10_000)}
    big = sys.getsizeof(names)
    for name in sorted(names):
        names = without(names, name)
    assert names == set() and sys.getsizeof(names) < big / 100
