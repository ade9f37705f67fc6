"""The threshold policy: when an expiring certificate warns and when it pages.

One small pure function of (certificate, now, thresholds), used by everything that
judges: the assessment takes its state from it and the alert engine reads the
assessment's judgement, so a new policy is written here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from certwatch.core.inventory import Thresholds
from certwatch.core.timestamps import SECONDS_PER_DAY
from certwatch.core.vocabulary import Severity, State
from certwatch.core.x509 import CertInfo

__all__ = ["Expiry", "judge_expiry"]


@dataclass(frozen=True, slots=True)
class Expiry:
    """The policy's judgement of one certificate at one moment."""

    state: State  # OK, WARNING, CRITICAL or EXPIRED
    days_left: float

    @property
    def expired(self) -> bool:
        return self.state is State.EXPIRED

    @property
    def alerting(self) -> bool:
        """Whether the certificate is within a threshold (or past its end)."""
        return self.state is not State.OK

    @property
    def severity(self) -> Severity | None:
        """The alert this judgement calls for: a warning, a page, or none."""
        if self.state is State.OK:
            return None
        return Severity.WARNING if self.state is State.WARNING else Severity.CRITICAL


def judge_expiry(cert: CertInfo, now: datetime, thresholds: Thresholds) -> Expiry:
    """Days left against the warn and critical thresholds."""
    days_left = (cert.not_after - now).total_seconds() / SECONDS_PER_DAY
    if days_left <= 0:
        state = State.EXPIRED
    elif days_left < thresholds.critical_days:
        state = State.CRITICAL
    elif days_left < thresholds.warn_days:
        state = State.WARNING
    else:
        state = State.OK
    return Expiry(state, days_left)
