"""Renewal: when a certificate should have been replaced, and what a target has served.

Pure rules over values, time passed in:

- :func:`judge_renewal`: the moment the served leaf should have been replaced (the end
  of the CA's suggested renewal window, RFC 9773, where that is known; otherwise
  RENEWAL_DUE_FRACTION of its lifetime), whether that moment has passed, and whether
  the CA moved its window earlier than it first said;
- :func:`certificate_id`: the RFC 9773 certificate identifier the window is asked by;
- :func:`record_seen` and :func:`last_renewal`: the per-target history of certificates
  (fingerprint, first and last seen, validity), bounded, and the latest renewal in it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Sequence

from certwatch.core.inventory import RENEWAL_DUE_FRACTION
from certwatch.core.sharing import shared
from certwatch.core.timestamps import SECONDS_PER_DAY, rfc3339
from certwatch.core.x509 import CertInfo

__all__ = [
    "HISTORY_PER_TARGET", "LIFETIME_RULE_MAX_DAYS", "Renewal", "RenewalInfo", "RenewalWindow",
    "Renewed", "SeenCertificate", "certificate_id", "judge_renewal", "last_renewal",
    "record_seen",
]

# RENEWAL_DUE_FRACTION (0.7): renewal agents start at two thirds of the lifetime
# (certbot: 30 days before a 90-day certificate ends; cert-manager: renewBefore is a
# third of the duration). Overdue comes a little later, so that an agent that renews on
# time and deploys within 3% of the lifetime (2.7 days of a 90-day certificate, 4 hours
# of a 6-day one) is never called late. An endpoint may set its own
# (`renewal_due_fraction`; 1 leaves only the CA's window).
# The share-of-lifetime rule is for certificates renewed by an agent. Longer than the
# longest publicly trusted lifetime there was (398 days, before SC-081), a leaf comes
# from a private CA, renewed on a schedule certwatch cannot guess (a 10-year internal
# certificate is not "overdue" after 7): such a leaf is due at its expiry, and only the
# expiry thresholds (or its CA's window) speak.
LIFETIME_RULE_MAX_DAYS = 398
HISTORY_PER_TARGET = 20  # certificates remembered per target, newest kept
# A window that starts this much earlier than the first one seen was moved on purpose
# (a CA's windows are otherwise stable for a certificate).
MOVED_EARLIER = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class RenewalWindow:
    """The CA's suggested window to renew a certificate in (RFC 9773 suggestedWindow)."""

    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class RenewalInfo:
    """What the CA's renewalInfo said of one certificate, as last fetched."""

    window: RenewalWindow | None  # None: not known (never fetched, or the fetch failed)
    planned: RenewalWindow | None = None  # the first window seen for this certificate
    explanation_url: str | None = None
    checked_at: datetime | None = None  # the latest fetch attempt
    next_check_at: datetime | None = None  # as Retry-After asked (bounded)
    error: str | None = None  # why the latest fetch failed; the window, if any, is older


@dataclass(frozen=True, slots=True)
class Renewal:
    """The judgement: when the leaf should have been replaced, and whether it was."""

    due_at: datetime
    basis: str  # "ari": the CA's window; "lifetime": a share of it; "expiry": see above
    overdue: bool  # still served after due_at (and not expired: that is worse, and its own)
    window_moved_earlier: bool = False
    info: RenewalInfo | None = None


def judge_renewal(leaf: CertInfo, now: datetime, info: RenewalInfo | None = None,
                  due_fraction: float = RENEWAL_DUE_FRACTION) -> Renewal:
    """Whether the served leaf should have been replaced by `now`."""
    window = info.window if info is not None else None
    lifetime = max(leaf.lifetime_seconds, 0.0)
    if window is not None:
        due_at, basis = window.end, "ari"
    elif lifetime > LIFETIME_RULE_MAX_DAYS * SECONDS_PER_DAY:
        due_at, basis = leaf.not_after, "expiry"
    else:
        due_at, basis = leaf.not_before + timedelta(seconds=lifetime * due_fraction), "lifetime"
    moved = bool(window and info and info.planned
                 and window.start < info.planned.start - MOVED_EARLIER)
    return shared(Renewal(due_at, basis, due_at <= now < leaf.not_after, moved, info))


def certificate_id(authority_key_id: str, serial: str) -> str:
    """RFC 9773 section 4.1: base64url(AKI keyIdentifier) "." base64url(the serial's DER
    content octets), unpadded. `authority_key_id` and `serial` are hexadecimal as
    :class:`CertInfo` holds them (a serial may carry a "-")."""
    number = int(serial, 16)
    size = ((number if number >= 0 else ~number).bit_length() + 8) // 8  # DER's minimum
    serial_der = number.to_bytes(size, "big", signed=True)
    return f"{_b64url(bytes.fromhex(authority_key_id))}.{_b64url(serial_der)}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class SeenCertificate:
    """A leaf a target has served, and when."""

    fingerprint_sha256: str
    first_seen: datetime
    last_seen: datetime
    not_before: datetime
    not_after: datetime

    def to_dict(self) -> dict[str, str | None]:
        return {"fingerprint_sha256": self.fingerprint_sha256,
                "first_seen": rfc3339(self.first_seen), "last_seen": rfc3339(self.last_seen),
                "not_before": rfc3339(self.not_before), "not_after": rfc3339(self.not_after)}


def record_seen(history: Sequence[SeenCertificate], leaf: CertInfo, now: datetime,
                limit: int = HISTORY_PER_TARGET) -> tuple[SeenCertificate, ...]:
    """The history after `leaf` was read at `now`: oldest first, the served one last.

    A certificate seen before keeps its first sighting and moves to the end (a target
    rolled back to it serves it again); the oldest are dropped past `limit`."""
    known = next((c for c in history if c.fingerprint_sha256 == leaf.fingerprint_sha256), None)
    if known is not None and history[-1] is known:
        return (*history[:-1], replace(known, last_seen=max(known.last_seen, now)))
    seen = (replace(known, last_seen=now) if known is not None else
            SeenCertificate(leaf.fingerprint_sha256, now, now, leaf.not_before, leaf.not_after))
    kept = tuple(c for c in history if c is not known)
    return (*kept, seen)[-limit:]


@dataclass(frozen=True, slots=True)
class Renewed:
    """The served certificate replaced an older one that expired sooner."""

    previous: SeenCertificate
    current: SeenCertificate

    def summary(self, now: datetime) -> str:
        """ "renewed: expiry 2026-07-02 → 2026-09-24, first seen 10:14 UTC" (the date too
        when that was not today)."""
        seen = self.current.first_seen
        when = seen.strftime("%H:%M UTC" if seen.date() == now.date() else "%Y-%m-%d %H:%M UTC")
        return (f"renewed: expiry {self.previous.not_after:%Y-%m-%d} → "
                f"{self.current.not_after:%Y-%m-%d}, first seen {when}")

    def to_dict(self) -> dict[str, str | None]:
        return {"previous_fingerprint_sha256": self.previous.fingerprint_sha256,
                "previous_not_after": rfc3339(self.previous.not_after),
                "fingerprint_sha256": self.current.fingerprint_sha256,
                "not_after": rfc3339(self.current.not_after),
                "first_seen": rfc3339(self.current.first_seen)}


def last_renewal(history: Sequence[SeenCertificate]) -> Renewed | None:
    """The renewal that put the served certificate in place, if the history shows one:
    the certificate before it expired sooner (a change to one that expires sooner is a
    rollback, not a renewal)."""
    if len(history) < 2:
        return None
    previous, current = history[-2], history[-1]
    return Renewed(previous, current) if current.not_after > previous.not_after else None
