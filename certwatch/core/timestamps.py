"""Moments as every output writes them."""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["SECONDS_PER_DAY", "rfc3339"]

SECONDS_PER_DAY = 86400.0


def rfc3339(moment: datetime | None) -> str | None:
    """UTC, to the second, with a Z; None stays None."""
    if moment is None:
        return None
    # isoformat, not strftime: strftime does not zero-pad years before 1000
    return moment.astimezone(timezone.utc).replace(microsecond=0, tzinfo=None).isoformat() + "Z"
