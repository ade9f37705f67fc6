"""One endpoint's probe through the flow: observe and judge, merge, remember, store, decide
alerts; then, for leaves whose CA publishes renewal windows, the same again once the
window is known.

The only place the daemon turns a due endpoint into new statuses. It never raises: a
bug inside certwatch is logged, and the endpoint is tried again at its retry interval.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Collection, Sequence

from certwatch.core.inventory import Endpoint
from certwatch.core.renewal import SeenCertificate, last_renewal
from certwatch.core.status import Change, TargetStatus, merge
from certwatch.core.timestamps import rfc3339
from certwatch.core.vocabulary import State
from certwatch.daemon.history import CertificateHistory
from certwatch.daemon.store import Store
from certwatch.serving.metrics import DaemonMetrics
from certwatch.sources import Source
from certwatch.sources.ari import RenewalInfoFetcher
from certwatch.sources.revocation import RefusalChecks
from certwatch.sources.trust import TrustStores
from certwatch.sweep import judge_endpoint

if TYPE_CHECKING:  # imported when alerts are configured (daemon.startup)
    from certwatch.alerting.notifier import Notifier

__all__ = ["Outcome", "Pipeline"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one probe went, for the schedule."""

    wait: float | None  # seconds until the next probe; None: a reload replaced the endpoint
    lag: float | None = None  # how late the probe started; None if it did not complete


class Pipeline:
    """Probes an endpoint and records what it found."""

    def __init__(self, store: Store, metrics: DaemonMetrics,
                 history: CertificateHistory | None = None,
                 renewal: RenewalInfoFetcher | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.history = history  # set once the state database is open
        self.renewal = renewal or RenewalInfoFetcher()

    async def run(self, endpoint: Endpoint, source: Source, trust: TrustStores,
                  notifier: Notifier | None, deadline: float,
                  current: Callable[[], Endpoint | None],
                  refusals: RefusalChecks | None = None) -> Outcome:
        """Probes `endpoint` (due at `deadline`, monotonic). When `current()` says a reload
        replaced it meanwhile, nothing is recorded: the new definition has its own probe
        coming."""
        lag = None
        try:
            earlier = {s.target.key: s.assessment for s in self.store.of_endpoint(endpoint.name)}
            judged = await judge_endpoint(endpoint, source, trust, refusals=refusals,
                                          renewal_info=self.renewal.known, previous=earlier)
            if current() is not endpoint:
                return Outcome(None)
            previous = self.store.of_endpoint(endpoint.name)
            statuses = self._remember(merge(
                previous, judged.assessments, endpoint,
                lambda observation: judged.rejudge(observation, earlier.get(observation.target.key))))
            vanished = {s.target.key for s in previous} - {s.target.key for s in statuses}
            self.forget(vanished)
            self._record(endpoint, statuses, sorted(vanished), notifier)
            for status in statuses:
                error = status.last_error
                self.metrics.probes.labels("success" if error is None else "failure",
                                           error.kind if error else "").inc()
            # How late the probe started, all on the monotonic clock (a wall-clock jump,
            # even one during the probe, is not lateness): each observation's duration is
            # monotonic, so the earliest start is now less the longest of them.
            since_start = max(a.observation.duration_seconds for a in judged.assessments)
            lag = max(0.0, time.monotonic() - since_start - deadline)
            failed = any(not s.probe_success for s in statuses)
            # Judged and recorded already: the CA's answer (bounded) only refines it.
            leaves = [s.assessment.leaf for s in statuses if s.assessment.leaf is not None]
            if await self.renewal.refresh(endpoint, leaves) and current() is endpoint:
                self._record(endpoint, [dataclasses.replace(
                    s, assessment=judged.rejudge(s.assessment.observation, s.assessment))
                    for s in statuses], (), notifier)
        except Exception:
            log.exception("probe of %s failed inside certwatch", endpoint.name)
            failed = True
        if current() is not endpoint:
            return Outcome(None)
        return Outcome(endpoint.retry_interval if failed else endpoint.interval, lag)

    def forget(self, targets: Collection[str]) -> None:
        """Targets that left the inventory leave the certificate history too."""
        if self.history is not None:
            self.history.forget(targets)

    async def close(self) -> None:
        if self.history is not None:
            self.history.close()
        await self.renewal.aclose()

    def _record(self, endpoint: Endpoint, statuses: Sequence[TargetStatus],
                vanished: Sequence[str], notifier: Notifier | None) -> None:
        log_changes(self.store.replace_endpoint(endpoint.name, statuses))
        if notifier is not None:
            notifier.observe(statuses, vanished)

    def _remember(self, statuses: Collection[TargetStatus]) -> list[TargetStatus]:
        """Each status with its target's certificate history, updated with the leaf read
        by this probe (a certificate carried over from an earlier probe was not seen now)."""
        if self.history is None:
            return list(statuses)
        remembered = []
        for status in statuses:
            key, leaf = status.target.key, status.assessment.leaf
            if leaf is None or status.certificate_read_at != status.last_probe_at:
                history = self.history.of(key)
            else:
                history = self.history.record(key, leaf, status.last_probe_at)
                if history[-1].first_seen == status.last_probe_at and len(history) > 1:
                    log_replacement(key, history)
            remembered.append(dataclasses.replace(status, history=history))
        return remembered


def log_replacement(key: str, history: Sequence[SeenCertificate]) -> None:
    """A target began serving another certificate: a renewal, or a step back."""
    previous, current = history[-2], history[-1]
    fields = {"target": key, "previous_not_after": rfc3339(previous.not_after),
              "not_after": rfc3339(current.not_after),
              "previous_fingerprint_sha256": previous.fingerprint_sha256,
              "fingerprint_sha256": current.fingerprint_sha256}
    renewed = last_renewal(history)
    if renewed is not None:
        log.info("%s: %s", key, renewed.summary(current.first_seen), extra=fields)
    else:
        log.warning("%s: now serves a certificate that expires sooner than the one before "
                    "(a rollback?)", key, extra=fields)


def log_changes(changes: list[Change]) -> None:
    """Each change of state at info; a target first seen ok at debug. A first sweep of
    100,000 healthy targets is not 100,000 lines of news ("first sweep finished" counts
    them by state), and its line was a twentieth of a first probe's CPU. A new target in
    any other state is news, and logged."""
    for change in changes:
        status = change.status
        before = change.before.value if change.before else None
        level = logging.DEBUG if before is None and status.state is State.OK else logging.INFO
        if not log.isEnabledFor(level):
            continue
        log.log(
            level, "state %s -> %s: %s" % (before or "new", status.state.value, status.target.key),
            extra={"target": status.target.key, "before": before, "state": status.state.value,
                   "reasons": list(status.assessment.reasons),
                   "summary": status.assessment.summary},
        )
