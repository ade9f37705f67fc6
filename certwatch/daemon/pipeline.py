"""One endpoint's probe through the flow: observe and judge, merge, store, decide alerts.

The only place the daemon turns a due endpoint into new statuses. It never raises: a
bug inside certwatch is logged, and the endpoint is tried again at its retry interval.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from certwatch.alerting.notifier import Notifier
from certwatch.core.inventory import Endpoint
from certwatch.core.status import Change, merge
from certwatch.daemon.store import Store
from certwatch.serving.metrics import DaemonMetrics
from certwatch.sources import Source
from certwatch.sources.revocation import RefusalChecks
from certwatch.sources.trust import TrustStores
from certwatch.sweep import judge_endpoint

__all__ = ["Outcome", "Pipeline"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one probe went, for the schedule."""

    wait: float | None  # seconds until the next probe; None: a reload replaced the endpoint
    lag: float | None = None  # how late the probe started; None if it did not complete


class Pipeline:
    """Probes an endpoint and records what it found."""

    def __init__(self, store: Store, metrics: DaemonMetrics) -> None:
        self.store = store
        self.metrics = metrics

    async def run(self, endpoint: Endpoint, source: Source, trust: TrustStores,
                  notifier: Notifier | None, deadline: float,
                  current: Callable[[], Endpoint | None],
                  refusals: RefusalChecks | None = None) -> Outcome:
        """Probes `endpoint` (due at `deadline`, monotonic). When `current()` says a reload
        replaced it meanwhile, nothing is recorded: the new definition has its own probe
        coming."""
        lag = None
        try:
            judged = await judge_endpoint(endpoint, source, trust, refusals=refusals)
            if current() is not endpoint:
                return Outcome(None)
            previous = self.store.of_endpoint(endpoint.name)
            statuses = merge(previous, judged.assessments, endpoint, judged.rejudge)
            log_changes(self.store.replace_endpoint(endpoint.name, statuses))
            if notifier is not None:
                vanished = {s.target.key for s in previous} - {s.target.key for s in statuses}
                notifier.observe(statuses, sorted(vanished))
            for status in statuses:
                error = status.last_error
                self.metrics.probes.labels("success" if error is None else "failure",
                                           error.kind if error else "").inc()
            # How late the probe started, all on the monotonic clock (a wall-clock jump,
            # even one during the probe, is not lateness): each observation's duration is
            # monotonic, so the earliest start is now less the longest of them.
            since_start = max((a.observation.duration_seconds for a in judged.assessments),
                              default=0.0)
            lag = max(0.0, time.monotonic() - since_start - deadline)
            failed = any(not s.probe_success for s in statuses)
        except Exception:
            log.exception("probe of %s failed inside certwatch", endpoint.name)
            failed = True
        if current() is not endpoint:
            return Outcome(None)
        return Outcome(endpoint.retry_interval if failed else endpoint.interval, lag)


def log_changes(changes: list[Change]) -> None:
    for change in changes:
        status = change.status
        before = change.before.value if change.before else None
        log.info(
            "state %s -> %s: %s" % (before or "new", status.state.value, status.target.key),
            extra={"target": status.target.key, "before": before, "state": status.state.value,
                   "reasons": list(status.assessment.reasons),
                   "summary": status.assessment.summary},
        )
