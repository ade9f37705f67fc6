"""Root-program policy: rules a certificate can break that clients enforce by date. Pure.

- The maximum validity of a TLS server certificate, by the date it was issued (its
  notBefore): the CA/Browser Forum's Baseline Requirements 6.3.2, shrinking with ballot
  SC-081 to 200, 100 and 47 days.
- Distrusted CAs: a browser's root program stops trusting certificates from some roots
  issued after a cutoff, measured by the earliest SCT (Chrome) or by notBefore
  (Mozilla). The rows ship as data (certwatch/data/distrust.yaml, with the source and
  date of each); an inventory can add its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from certwatch.core.x509 import CertInfo

__all__ = ["MAX_VALIDITY", "DistrustRule", "MaximumValidity", "distrust_findings",
           "maximum_validity", "validity_of"]


@dataclass(frozen=True, slots=True)
class MaximumValidity:
    """From `since` (issuance, notBefore), at most `days` of validity."""

    since: datetime
    days: int
    source: str
    refused: bool = False  # whether clients already refuse a longer certificate


def _utc(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=timezone.utc)


# Newest last. Sources: CA/Browser Forum Baseline Requirements 6.3.2 and its ballots.
MAX_VALIDITY: tuple[MaximumValidity, ...] = (
    MaximumValidity(_utc(2018, 3, 1), 825, "CA/B Forum ballot 193 (BR 6.3.2), 2017-03-17"),
    # Safari and Chrome refuse certificates over 398 days issued from 2020-09-01.
    MaximumValidity(_utc(2020, 9, 1), 398, "CA/B Forum ballot SC31 (BR 6.3.2), 2020-07-16",
                    refused=True),
    MaximumValidity(_utc(2026, 3, 15), 200, "CA/B Forum ballot SC-081v3, 2025-04-11"),
    MaximumValidity(_utc(2027, 3, 15), 100, "CA/B Forum ballot SC-081v3, 2025-04-11"),
    MaximumValidity(_utc(2029, 3, 15), 47, "CA/B Forum ballot SC-081v3, 2025-04-11"),
)


def validity_of(cert: CertInfo) -> timedelta:
    """The validity period as the BRs count it: both ends included (one second more)."""
    return cert.not_after - cert.not_before + timedelta(seconds=1)


def maximum_validity(cert: CertInfo) -> MaximumValidity | None:
    """The rule in force when the certificate was issued, if any."""
    applicable = [rule for rule in MAX_VALIDITY if rule.since <= cert.not_before]
    return applicable[-1] if applicable else None


@dataclass(frozen=True, slots=True)
class DistrustRule:
    """A root program's cutoff for certificates under some roots."""

    program: str  # chrome, mozilla, apple, microsoft, or a name of the user's
    ca: str  # whose roots, in words ("Entrust")
    roots: frozenset[str]  # SHA-256 fingerprints (lower-case hex) of the roots
    after: datetime  # certificates whose measure is later than this are distrusted
    measure: str  # "sct": the earliest embedded SCT (notBefore without SCTs); "not_before"
    source: str  # where the rule was announced
    announced: str = ""  # when (YYYY-MM-DD)


@dataclass(frozen=True, slots=True)
class DistrustFinding:
    rule: DistrustRule
    distrusted: bool  # clients of the program refuse this certificate already
    detail: str


def distrust_findings(rules: tuple[DistrustRule, ...], path_fingerprints: frozenset[str],
                      leaf: CertInfo, earliest_sct: datetime | None,
                      now: datetime) -> list[DistrustFinding]:
    """For each rule covering a root on the path: is the certificate past the cutoff, or
    will its next renewal (from the same CA) be?"""
    findings = []
    for rule in rules:
        if not rule.roots & path_fingerprints:
            continue
        by_sct = rule.measure == "sct" and earliest_sct is not None
        moment = earliest_sct if by_sct and earliest_sct is not None else leaf.not_before
        what = "its earliest SCT" if by_sct else "its notBefore"
        cutoff = f"{rule.after:%Y-%m-%d %H:%M:%S} UTC"
        if moment > rule.after:
            findings.append(DistrustFinding(rule, True, (
                f"{rule.program} distrusts {rule.ca} certificates whose {what.split(' ', 1)[1]} "
                f"is after {cutoff}, and {what} is {moment:%Y-%m-%d %H:%M} UTC ({rule.source})")))
        elif max(now, leaf.not_after) > rule.after:
            findings.append(DistrustFinding(rule, False, (
                f"{rule.program} distrusts {rule.ca} certificates issued after {cutoff}: the "
                f"renewal of this one must come from another CA ({rule.source})")))
    return findings
