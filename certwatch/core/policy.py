"""The threshold policy: when an expiring certificate warns and when it pages.

One small pure function of (certificate, now, thresholds), used by everything that
judges: the assessment takes its state from it and the alert engine reads the
assessment's judgement, so a new policy is written here once.

The thresholds scale with the certificate's own lifetime: it warns when less than
min(warn_days, warn_fraction x lifetime) is left and pages below min(critical_days,
critical_fraction x lifetime). With the defaults (30 and 7 days, 1/3 and 1/5) a 90-day
or longer certificate keeps the fixed 30/7 days, while a 6-day one is ok for its first
four days, warns at 2 days left and pages at 1.2 (see the README for why these).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from certwatch.core.inventory import Thresholds
from certwatch.core.timestamps import SECONDS_PER_DAY
from certwatch.core.vocabulary import Severity, State
from certwatch.core.x509 import CertInfo

__all__ = ["Expiry", "judge_expiry", "thresholds_in_force"]


@lru_cache(maxsize=256)
def _days(days: float) -> timedelta:
    """timedelta(days=days), remembered: made from a float it takes half a microsecond,
    and every scrape asks for it twice a target, of the few thresholds in force."""
    return timedelta(days=days)


@dataclass(frozen=True, slots=True)
class Expiry:
    """The policy's judgement of one certificate at one moment."""

    state: State  # OK, WARNING, CRITICAL or EXPIRED
    days_left: float
    lifetime_days: float = 0.0
    used: float = 0.0  # the share of the lifetime gone by at `now` (above 1 once expired)
    warn_days: float = 30.0  # the thresholds in force for this certificate, in days left
    critical_days: float = 7.0
    not_after: datetime | None = None  # of the certificate judged

    @property
    def warning_at(self) -> datetime | None:
        """When the certificate enters (or entered) its warning threshold."""
        return self.not_after - _days(self.warn_days) if self.not_after else None

    @property
    def critical_at(self) -> datetime | None:
        return self.not_after - _days(self.critical_days) if self.not_after else None

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


def thresholds_in_force(cert: CertInfo, thresholds: Thresholds) -> tuple[float, float]:
    """(warn, critical) in days left for this certificate: the fixed days, lowered to the
    fractions of its lifetime where those are smaller."""
    lifetime = cert.lifetime_seconds / SECONDS_PER_DAY
    if lifetime <= 0:  # notAfter before notBefore: there is no lifetime to scale by
        return thresholds.warn_days, thresholds.critical_days
    return (min(thresholds.warn_days, thresholds.warn_fraction * lifetime),
            min(thresholds.critical_days, thresholds.critical_fraction * lifetime))


def judge_expiry(cert: CertInfo, now: datetime, thresholds: Thresholds) -> Expiry:
    """Days left against the warn and critical thresholds in force for `cert`."""
    days_left = (cert.not_after - now).total_seconds() / SECONDS_PER_DAY
    warn, critical = thresholds_in_force(cert, thresholds)
    if days_left <= 0:
        state = State.EXPIRED
    elif days_left < critical:
        state = State.CRITICAL
    elif days_left < warn:
        state = State.WARNING
    else:
        state = State.OK
    lifetime = cert.lifetime_seconds
    used = (now - cert.not_before).total_seconds() / lifetime if lifetime > 0 else 1.0
    return Expiry(state, days_left, lifetime / SECONDS_PER_DAY, used, warn, critical,
                  cert.not_after)
