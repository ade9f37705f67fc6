"""Freed memory handed back after bursts of work (certwatch.memory)."""

from __future__ import annotations

import asyncio
import platform

import pytest

from certwatch.memory import Trimmer, malloc_trim


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_has_malloc_trim_and_it_runs() -> None:
    assert malloc_trim is not None
    assert malloc_trim(0) in (0, 1)  # 1: memory was released, 0: there was none to


def run_trimmer(trimmer: Trimmer, work: int, seconds: float) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(trimmer.run(stop))
        trimmer.worked(work)
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())


def test_it_trims_after_enough_work_once_an_interval() -> None:
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    idle = Trimmer(trim, interval=0.05, after=10)
    run_trimmer(idle, 9, 0.3)
    assert calls == [] and idle.trims == 0  # not enough work: no walk of the heap
    busy = Trimmer(trim, interval=0.05, after=10)
    run_trimmer(busy, 10, 0.3)
    assert calls == [0] and busy.trims == 1  # once, then the count starts again


def test_without_malloc_trim_it_does_nothing() -> None:
    trimmer = Trimmer(None, interval=0.01, after=1)
    run_trimmer(trimmer, 100, 0.1)  # returns at once, and stays out of the way
    assert trimmer.trims == 0


def test_the_first_sweep_is_frozen_as_it_goes_and_unfrozen_when_it_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The collector's view stays frozen while the first sweep makes its statuses, and
    nothing is left frozen once it has finished, or has taken too long."""
    import gc

    from certwatch.daemon import reloads
    from certwatch.serving.metrics import DaemonMetrics

    async def main() -> tuple[int, int, int]:
        sweep = reloads.FirstSweep(DaemonMetrics())
        sweep.expect({"a", "b"})
        task = asyncio.create_task(sweep.frozen())
        await asyncio.sleep(0.25)
        during = gc.get_freeze_count()
        sweep.probed("a", lambda: ())
        await asyncio.sleep(0.15)
        half = gc.get_freeze_count()
        sweep.probed("b", lambda: ())
        await asyncio.wait_for(task, 5)
        return during, half, gc.get_freeze_count()

    during, half, after = asyncio.run(main())
    assert during > 0 and half > 0 and after == 0

    monkeypatch.setattr(reloads, "FROZEN_AT_MOST", 0.3)

    async def never_finishes() -> int:
        sweep = reloads.FirstSweep(DaemonMetrics())
        sweep.expect({"never"})
        await asyncio.wait_for(sweep.frozen(), 5)
        return gc.get_freeze_count()

    assert asyncio.run(never_finishes()) == 0
