"""What the daemon says about its configuration: the reload metrics, the banner, the logs;
and whether it is ready (the first load's endpoints each probed once).

A rejected or vanished file is said once in each place a user looks: the log, the
`certwatch_config_*` metrics and the status page's banner; at start-up, when there is no
previous inventory, the messages say so rather than promise one keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

from certwatch.config import ConfigError
from certwatch.core.status import TargetStatus
from certwatch.memory import frozen_meanwhile, without
from certwatch.serving.metrics import DaemonMetrics

__all__ = ["ConfigStatus", "FirstSweep"]

# A first sweep that has not finished by then (probes that hang past every timeout would
# be a bug) stops holding the collector's view frozen: cycles made meanwhile are freed.
FROZEN_AT_MOST = 900.0  # seconds

log = logging.getLogger(__name__)


class ConfigStatus:
    """The configuration's health as the daemon reports it."""

    def __init__(self, metrics: DaemonMetrics) -> None:
        self.metrics = metrics
        self.notices: list[str] = []

    def loaded(self, now: datetime) -> None:
        self.notices = []
        self.metrics.reload_ok.set(1)
        self.metrics.reload_time.set(now.timestamp())
        self.metrics.reloads.labels("success").inc()

    def rejected(self, why: str, exc: ConfigError, *, kept: bool) -> None:
        self._failed()
        still = "; still running the previous inventory" if kept else ""
        self.notices = [f"configuration reload ({why}) failed{still}. {exc}"]
        message = ("configuration rejected; the previous inventory keeps running" if kept
                   else "configuration rejected")
        for source, problems in exc.parts:
            log.error(message, extra={"why": why, "source": source, "problems": list(problems)})

    def missing(self, path: Path) -> None:
        self._failed()
        self.notices = [f"configuration file {path} is missing; "
                        "still running the previous inventory"]
        log.error("configuration file is missing; the previous inventory keeps running",
                  extra={"path": str(path)})

    def _failed(self) -> None:
        self.metrics.reload_ok.set(0)
        self.metrics.reloads.labels("failure").inc()


class FirstSweep:
    """Readiness (/readyz, certwatch_ready): it waits for the first sweep of the first
    load; later reloads do not take it back."""

    def __init__(self, metrics: DaemonMetrics) -> None:
        self.metrics = metrics
        self._unprobed: set[str] = set()
        self.started = False
        self._finished = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.started and not self._unprobed

    def expect(self, names: set[str]) -> None:
        self.started, self._unprobed = True, names
        self.metrics.ready.set(0 if names else 1)
        if not names:
            self._finished.set()

    async def frozen(self) -> None:
        """Until the first sweep finishes (FROZEN_AT_MOST at the longest), what exists is
        frozen as it goes (`frozen_meanwhile`): the sweep makes every target's status,
        and a full collection walking them again and again cost a 100,000-target sweep
        10 s of CPU, up to 1.3 s at a time."""
        with contextlib.suppress(TimeoutError):
            await frozen_meanwhile(asyncio.wait_for(self._finished.wait(), FROZEN_AT_MOST))

    def probed(self, name: str, statuses: Callable[[], Iterable[TargetStatus]]) -> None:
        """`name` was probed (or left the inventory); `statuses` are the targets known,
        counted by state on the one line that tells of the healthy ones (a target first
        seen ok is logged at debug only)."""
        if name in self._unprobed:
            self._unprobed = without(self._unprobed, name)
            if not self._unprobed:
                self.metrics.ready.set(1)
                self._finished.set()
                counts = dict(Counter(s.state.value for s in statuses()))
                log.info("first sweep finished",
                         extra={"targets": sum(counts.values()), "states": counts})
