"""Moments as every output writes them."""

from __future__ import annotations

import functools
from datetime import datetime, timezone

__all__ = ["SECONDS_PER_DAY", "minute_utc", "rfc3339"]

SECONDS_PER_DAY = 86400.0


def rfc3339(moment: datetime | None) -> str | None:
    """UTC, to the second, with a Z; None stays None."""
    if moment is None:
        return None
    # isoformat, not strftime: strftime does not zero-pad years before 1000
    return moment.astimezone(timezone.utc).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


@functools.lru_cache(maxsize=256)
def minute_utc(moment: datetime) -> str:
    """"2027-03-04 05:06 UTC": how summaries name a moment. Memoised: every probe of a
    target names the same notAfter, and strftime costs a few microseconds a call."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
