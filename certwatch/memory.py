"""Memory the interpreter freed, handed back to the system after bursts of work.

CPython keeps small objects in arenas of its own and asks the C allocator for the rest:
on most Linux systems glibc's malloc, which gives back what is freed at the top of its
heap but keeps the free pages between blocks still in use, resident. A burst of work
leaves many: the first sweep (`max_concurrency` TLS connections at a time, each with its
OpenSSL buffers, freed among the statuses that stay), a flood of HTTP connections, a
configuration parsed in a worker thread (whose malloc arena only that thread uses).
After the first sweep of 10,000 targets the main arena held ~11 MB free, most of it
resident. glibc's :data:`malloc_trim` releases those pages: the HTTP listener calls it
once a flood of connections has gone, and :class:`Trimmer` once TRIM_AFTER probes have
finished since the last time, at most every TRIM_INTERVAL. It walks the heap (~15 ms at
that size), so the Trimmer runs it in a worker thread. Where the C library has no
malloc_trim (musl, macOS) nothing is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
from typing import Awaitable, Callable, TypeVar

__all__ = ["FREEZE_EVERY", "TRIM_AFTER", "TRIM_INTERVAL", "Trimmer", "frozen_meanwhile",
           "malloc_trim", "without"]

log = logging.getLogger(__name__)

TRIM_INTERVAL = 1.0  # seconds between two trims, at the least
TRIM_AFTER = 500  # probes finished since the last trim before another is worth its walk
FREEZE_EVERY = 0.1  # seconds between two gc.freeze() while a burst of lasting objects is made

T = TypeVar("T")


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(None).malloc_trim  # the C library this interpreter runs on
    except (OSError, AttributeError):  # no such library or call: not glibc
        return None
    function.argtypes, function.restype = [ctypes.c_size_t], ctypes.c_int
    return function


malloc_trim = _find_malloc_trim()


async def frozen_meanwhile(work: Awaitable[T]) -> T:
    """Awaits `work`, freezing what exists every FREEZE_EVERY seconds (gc.freeze: the
    cyclic collector skips it), for bursts that make millions of lasting objects: a file
    being parsed, a first sweep's statuses. A collection holds the GIL for as long as it
    takes: one walking the objects of a large file took up to a second of the event loop,
    and a first sweep of 100,000 targets ran 16 full collections of 0.4-1.3 s each, every
    one walking the statuses made so far again. This way a collection walks at most what
    was made since the last freeze. When the work is done (or fails) everything is
    unfrozen and collected as usual. Garbage in cycles made meanwhile waits until then:
    a probe makes none, and pausing the collector instead left the garbage of a minute
    of serving for one collection at the end."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=FREEZE_EVERY)
            gc.freeze()
    finally:
        gc.unfreeze()
    return task.result()


def without(names: set[str], name: str) -> set[str]:
    """`names` less `name`, and a new set once it is empty: a set keeps the table of its
    largest size, and the first sweep's 10,000 names due at once left ~0.5 MB in each."""
    names.discard(name)
    return names if names else set()


class Trimmer:
    """Counts the work done (`worked`) and trims after enough of it (`run`)."""

    def __init__(self, trim: Callable[[int], int] | None = malloc_trim, *,
                 interval: float = TRIM_INTERVAL, after: int = TRIM_AFTER) -> None:
        self._trim = trim
        self.interval = interval
        self.after = after
        self._pending = 0
        self.trims = 0

    def worked(self, amount: int = 1) -> None:
        self._pending += amount

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: every `interval`, trims if `after` probes were done meanwhile."""
        if self._trim is None:
            log.debug("no malloc_trim in this C library: freed memory is left to it")
            return
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
            if self._pending >= self.after and not stop.is_set():
                self._pending = 0
                await asyncio.to_thread(self._trim, 0)
                self.trims += 1
