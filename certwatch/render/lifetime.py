"""A certificate's lifetime as a bar: the share used, today's mark and the thresholds.

Inline SVG, drawn on the server from the API's dicts: the whole bar is the validity
period (not_before to not_after), the filled part is the time used until now, coloured
by what the thresholds say of this certificate today, and the warning and critical
stretches at the end are shaded, so a glance says how close renewal is.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from certwatch.render.pagekit import parse_time, text, utc

__all__ = ["lifetime_bar"]

_WIDTH = 1000


def _days(target: Mapping[str, Any], key: str) -> float | None:
    days = target.get(key)
    return float(days) if isinstance(days, (int, float)) and not isinstance(days, bool) else None


def lifetime_bar(cert: Mapping[str, Any], target: Mapping[str, Any], now: datetime) -> str:
    """The bar of `cert` (one of `target`'s chain), with `target`'s thresholds; "" when the
    certificate's dates cannot be read."""
    start, end = parse_time(cert.get("not_before")), parse_time(cert.get("not_after"))
    if start is None or end is None or end <= start:
        return ""
    span = (end - start).total_seconds()

    def x(moment: datetime) -> float:
        return min(max((moment - start).total_seconds() / span, 0.0), 1.0) * _WIDTH

    warn, critical = _days(target, "warn_days"), _days(target, "critical_days")
    warn_at = end - timedelta(days=warn) if warn is not None else None
    critical_at = end - timedelta(days=critical) if critical is not None else None
    if now >= end:
        state = "expired"
    elif critical_at is not None and now >= critical_at:
        state = "critical"
    elif warn_at is not None and now >= warn_at:
        state = "warning"
    else:
        state = "ok"
    shapes = [f'<rect class="track" x="0" y="8" width="{_WIDTH}" height="16" rx="3"/>']
    if warn_at is not None:
        stop = x(critical_at) if critical_at is not None else _WIDTH
        shapes.append(f'<rect class="zone-warning" x="{x(warn_at):.1f}" y="8" '
                      f'width="{max(stop - x(warn_at), 0):.1f}" height="16"/>')
    if critical_at is not None:
        shapes.append(f'<rect class="zone-critical" x="{x(critical_at):.1f}" y="8" '
                      f'width="{_WIDTH - x(critical_at):.1f}" height="16"/>')
    today = x(now)
    shapes.append(f'<rect class="used s-{state}" x="0" y="11" width="{today:.1f}" height="10"/>')
    shapes.append(f'<line class="mark" x1="{today:.1f}" y1="2" x2="{today:.1f}" y2="30"/>')
    used = min(max((now - start).total_seconds() / span, 0.0), 1.0)
    left = (end - now).total_seconds() / 86400
    life = span / 86400
    thresholds = []
    if warn_at is not None:
        thresholds.append(f"warning from {utc(warn_at.isoformat())}")
    if critical_at is not None:
        thresholds.append(f"critical from {utc(critical_at.isoformat())}")
    words = (f"{used:.0%} of {life:.0f} days used; "
             + (f"{left:.1f} days left" if left >= 0 else f"expired {-left:.1f} days ago")
             + (f"; {', '.join(thresholds)}" if thresholds else ""))
    return (f'<div class="life"><svg viewBox="0 0 {_WIDTH} 32" role="img" '
            f'aria-label="Lifetime: {text(words)}" focusable="false">{"".join(shapes)}</svg>'
            f'<div class="ends sub"><span>issued {text(utc(cert.get("not_before")))}</span>'
            f'<span>expires {text(utc(cert.get("not_after")))}</span></div>'
            f'<div class="sub">{text(words)}</div></div>')
