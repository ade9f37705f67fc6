"""A picture of what is coming: the expiries of the next 90 days as inline SVG.

Drawn on the server from (days left, state) pairs, so it needs no script and no external
asset, and its size is bounded whatever the number of targets: one stacked bar a day
(coloured by state, worst at the bottom) plus one for what has already expired, each
with a <title> that says its date and counts (a tooltip, and what a screen reader reads).
It is drawn twice, wide and narrow, and the stylesheet shows the one that fits: text in
an SVG scales with it, and a wide drawing shrunk onto a phone is unreadable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from certwatch.render.pagekit import STATES

__all__ = ["HORIZON_DAYS", "expiry_timeline"]

HORIZON_DAYS = 90
_STACK = (*STATES, "unknown")  # worst at the bottom


@dataclass(frozen=True, slots=True)
class _Layout:
    name: str  # the CSS class that shows it
    width: int
    height: int
    marks: tuple[int, ...]  # days from today with a labelled line
    expired: int  # width of the "expired" bar
    gap: int  # between it and today: its label must not run into today's
    left: int = 34  # room for the count axis
    top: int = 10
    bottom: int = 34  # room for two lines of date labels


_LAYOUTS = (_Layout("tl-wide", 960, 124, (0, 7, 30, 60, 90), expired=26, gap=30),
            _Layout("tl-narrow", 360, 170, (0, 30, 60, 90), expired=14, gap=38))


def _summary(days: list[float]) -> str:
    expired = sum(1 for d in days if d < 0)
    words = "; ".join(f"{sum(1 for d in days if 0 <= d < limit)} within {limit} days"
                      for limit in (7, 30, HORIZON_DAYS))
    return f"Expiring: {words}" + (f"; {expired} already expired" if expired else "") + "."


def _draw(layout: _Layout, buckets: dict[int, Counter[str]], now: datetime, summary: str) -> str:
    origin = layout.left + layout.expired + layout.gap  # x of today
    step = (layout.width - 4 - origin) / HORIZON_DAYS
    plot = layout.height - layout.top - layout.bottom
    peak = max((sum(c.values()) for c in buckets.values()), default=0)
    scale = plot / peak if peak else 0.0
    base = layout.top + plot
    ids = f"{layout.name}-title {layout.name}-desc"
    parts = [
        f'<svg class="{layout.name}" viewBox="0 0 {layout.width} {layout.height}" role="img" '
        f'aria-labelledby="{ids}" focusable="false">',
        f'<title id="{layout.name}-title">Certificate expiries in the next 90 days</title>',
        f'<desc id="{layout.name}-desc">{summary}</desc>',
        f'<line class="axis" x1="{layout.left}" y1="{base}" x2="{layout.width - 4}" y2="{base}"/>',
        f'<text class="tick" x="{layout.left - 6}" y="{base}" text-anchor="end">0</text>',
        f'<text class="tick" x="{layout.left - 6}" y="{layout.top + 10}" '
        f'text-anchor="end">{peak}</text>',
    ]
    for mark in layout.marks:
        x = origin + mark * step
        date = (now + timedelta(days=mark)).astimezone(timezone.utc).strftime("%b %d")
        label = "today" if mark == 0 else f"+{mark} d"
        anchor = "end" if mark == HORIZON_DAYS else "start" if mark == 0 else "middle"
        parts.append(f'<line class="{"today" if mark == 0 else "axis"}" x1="{x:.1f}" '
                     f'y1="{layout.top}" x2="{x:.1f}" y2="{base + 4}"/>'
                     f'<text class="tick" x="{x:.1f}" y="{base + 16}" text-anchor="{anchor}">'
                     f'{label}</text><text class="tick" x="{x:.1f}" y="{base + 29}" '
                     f'text-anchor="{anchor}">{date}</text>')
    if -1 in buckets:
        parts.append(f'<text class="tick" x="{layout.left + layout.expired / 2:.1f}" '
                     f'y="{base + 16}" text-anchor="middle">expired</text>')
    for slot, counter in sorted(buckets.items()):
        x = layout.left if slot < 0 else origin + step * (slot + 0.1)
        width = layout.expired if slot < 0 else step * 0.8
        when = ("already expired" if slot < 0 else
                (now + timedelta(days=slot)).astimezone(timezone.utc).strftime("%Y-%m-%d"))
        counted = ", ".join(f"{counter[s]} {s}" for s in _STACK if counter[s])
        parts.append(f"<g><title>{when}: {counted}</title>")
        y = float(base)
        for state in _STACK:
            if counter[state]:
                height = max(counter[state] * scale, 1.5)
                y -= height
                parts.append(f'<rect class="s-{state}" x="{x:.1f}" y="{y:.1f}" '
                             f'width="{width:.1f}" height="{height:.1f}"/>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def expiry_timeline(days_left: Iterable[tuple[float, str]], now: datetime) -> str:
    """The timeline's HTML: a <figure> with the drawings and a one-line summary in words."""
    buckets: dict[int, Counter[str]] = {}
    days: list[float] = []
    for left, state in days_left:
        days.append(left)
        if left < HORIZON_DAYS:
            slot = -1 if left < 0 else int(left)
            buckets.setdefault(slot, Counter())[state if state in STATES else "unknown"] += 1
    summary = _summary(days)
    drawings = "".join(_draw(layout, buckets, now, summary) for layout in _LAYOUTS)
    legend = "".join(f'<li class="s-{s}"><span class="swatch"></span>{s}</li>' for s in STATES)
    return (f'<figure class="panel timeline"><h2>Expiring in the next {HORIZON_DAYS} days</h2>'
            f'{drawings}<figcaption class="sub">{summary}</figcaption>'
            f'<ul class="legend sub">{legend}</ul></figure>')
