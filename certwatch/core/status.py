"""What is known of a target now, and the pure rule that updates it with a new result.

A failed probe does not erase what was known: the last certificate read stays reported
(judged afresh at `now`, so it still crosses thresholds on time) beside the error, so a
flapping network neither hides an expiring certificate nor makes its alerts flap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Sequence

from certwatch.core.assess import Assessment
from certwatch.core.inventory import Endpoint
from certwatch.core.observation import Observation, ProbeError, Target
from certwatch.core.renewal import Renewed, SeenCertificate, last_renewal
from certwatch.core.vocabulary import ErrorKind, Phase, State

__all__ = ["RECENT_ERRORS", "Change", "TargetStatus", "merge"]

RECENT_ERRORS = 5  # failed probes remembered per target, newest first


@dataclass(frozen=True, slots=True)
class TargetStatus:
    """What is known of one target now."""

    assessment: Assessment  # the latest certificate read (or the latest error if none ever was)
    last_error: ProbeError | None  # why the latest probe failed; None if it succeeded
    consecutive_failures: int
    last_probe_at: datetime
    last_probe_duration: float
    # The latest failed probes (when, why), newest first, kept after a recovery too: what
    # went wrong lately, for the target's page.
    recent_errors: tuple[tuple[datetime, ProbeError], ...] = ()
    # The leaves this target has served, oldest first; None where no history is kept
    # (a one-shot `check`).
    history: tuple[SeenCertificate, ...] | None = None

    @property
    def renewed(self) -> Renewed | None:
        """The renewal that put the served certificate in place, if the history has it."""
        return last_renewal(self.history) if self.history else None

    @property
    def target(self) -> Target:
        return self.assessment.target

    @property
    def state(self) -> State:
        return self.assessment.state

    @property
    def probe_success(self) -> bool:
        return self.last_error is None

    @property
    def certificate_read_at(self) -> datetime | None:
        return self.assessment.observation.started_at if self.assessment.leaf else None


Rejudge = Callable[[Observation], Assessment]


def _recent(old: TargetStatus | None, error: ProbeError | None,
            at: datetime) -> tuple[tuple[datetime, ProbeError], ...]:
    kept = old.recent_errors if old is not None else ()
    return ((at, error), *kept)[:RECENT_ERRORS] if error is not None else kept


def _failure(assessment: Assessment) -> ProbeError | None:
    error = assessment.observation.error
    if error is None and assessment.leaf is None:
        return ProbeError(ErrorKind.NO_CERTIFICATE, Phase.HANDSHAKE, assessment.summary)
    return error


def merge(previous: Sequence[TargetStatus], fresh: Sequence[Assessment], endpoint: Endpoint,
          rejudge: Rejudge) -> list[TargetStatus]:
    """The endpoint's new statuses after one probe; `fresh` has one assessment per address.

    `rejudge` assesses an old observation again at the current time; it is used only
    where a probe failed and an earlier certificate is still the best knowledge.
    """
    known = {status.target.key: status for status in previous}

    def carried(old: TargetStatus, latest: Assessment) -> TargetStatus:
        observation = dataclasses.replace(
            old.assessment.observation, target=dataclasses.replace(old.target, endpoint=endpoint))
        error, at = _failure(latest), latest.observation.started_at
        return TargetStatus(rejudge(observation), error, old.consecutive_failures + 1, at,
                            latest.observation.duration_seconds, _recent(old, error, at))

    # The name did not resolve: every address we knew keeps its certificate, failed.
    # (An entry validation rejected is in state error: nothing is carried for it.)
    carry = not endpoint.rejected
    if carry and len(fresh) == 1 and fresh[0].target.address is None \
            and fresh[0].target.location is None:
        with_certificates = [s for s in previous if s.assessment.leaf is not None]
        if with_certificates:
            return [carried(old, fresh[0]) for old in with_certificates]

    statuses = []
    for assessment in fresh:
        old = known.get(assessment.target.key)
        error = _failure(assessment)
        if carry and assessment.leaf is None and old is not None and old.assessment.leaf is not None:
            statuses.append(carried(old, assessment))
            continue
        failures = 0 if error is None else (old.consecutive_failures if old else 0) + 1
        at = assessment.observation.started_at
        statuses.append(TargetStatus(assessment, error, failures, at,
                                     assessment.observation.duration_seconds,
                                     _recent(old, error, at)))
    return statuses


@dataclass(frozen=True, slots=True)
class Change:
    """A target whose state changed (before is None for a new target)."""

    before: State | None
    status: TargetStatus
