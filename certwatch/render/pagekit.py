"""What certwatch's HTML pages share: escaping, times in words, the page's frame, and the
words for states, verification problems and probe errors.

Every string that can come from a certificate, a peer or the inventory goes through
:func:`text`: made printable with :func:`certwatch.render.report.safe_text` (control
characters and terminal escapes shown, not interpreted), then HTML-escaped, quotes
included, so it is safe in element content and in attribute values alike.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from certwatch.core.timestamps import minute_utc
from certwatch.core.vocabulary import ErrorKind, Phase, Problem, State
from certwatch.render.report import safe_text
from certwatch.render.stylesheet import CONTENT_SECURITY_POLICY, CSS

__all__ = ["ERROR_WORDS", "PROBLEM_WORDS", "REFRESH_SECONDS", "STATES", "ago", "badge",
           "error_words", "facts", "page_end", "page_start", "parse_time", "problem_words",
           "span", "state_of", "text", "until", "utc"]

STATES = tuple(state.value for state in State.worst_first())  # badges and rows: worst first
REFRESH_SECONDS = 60

PROBLEM_WORDS: dict[str, str] = {
    Problem.HOSTNAME_MISMATCH: "name mismatch",
    Problem.INCOMPLETE_CHAIN: "incomplete chain",
    Problem.UNTRUSTED: "untrusted issuer",
    Problem.SELF_SIGNED: "self-signed",
    Problem.NOT_YET_VALID: "not yet valid",
    Problem.EXPIRED: "expired",
}

# How a probe error reads for an operator; fields: kind, phase, detail.
ERROR_WORDS: dict[str, str] = {
    ErrorKind.TIMEOUT: "timeout during {phase}: {detail}",
    ErrorKind.DNS: "DNS lookup failed: {detail}",
    ErrorKind.REFUSED: "connection refused",
    ErrorKind.UNREACHABLE: "unreachable: {detail}",
    ErrorKind.RESET: "connection reset during {phase}",
    ErrorKind.CLOSED: "connection closed during {phase}",
    ErrorKind.NOT_TLS: "{detail}",
    ErrorKind.STARTTLS_UNSUPPORTED: "STARTTLS failed: {detail}",
    ErrorKind.HANDSHAKE: "TLS handshake failed: {detail}",
    ErrorKind.CLIENT_CERT: "client certificate unusable: {detail}",
    ErrorKind.INTERNAL: "internal error: {detail}",
    **{kind: "{detail}" for kind in (ErrorKind.PROXY_AUTH, ErrorKind.PROXY_DENIED,
                                     ErrorKind.PROXY_TARGET_UNREACHABLE, ErrorKind.PROXY_ERROR)},
}


def text(value: object) -> str:
    """A peer- or config-supplied value, printable and HTML-escaped."""
    return html.escape(safe_text(str(value)), quote=True)


def state_of(target: Mapping[str, Any]) -> str:
    state = target.get("state")
    return state if state in STATES else "unknown"


def badge(state: object) -> str:
    shown = state if state in STATES else "unknown"
    return f'<span class="badge s-{shown}">{text(state or "unknown")}</span>'


def problem_words(problems: Iterable[object]) -> str:
    """Verification problems as an operator reads them: "name mismatch, self-signed"."""
    return ", ".join(PROBLEM_WORDS.get(str(p), str(p).replace("_", " ")) for p in problems)


def error_words(error: Mapping[str, Any]) -> str:
    kind, phase, detail = (str(error.get(k) or "") for k in ("kind", "phase", "detail"))
    template = ERROR_WORDS.get(kind, "{kind} during {phase}: {detail}")
    words = template.format(kind=kind.replace("_", " "), phase=phase or "probe",
                            detail=detail or "no detail")
    # Reaching the proxy failed (refused, timeout, ...): say whose failure it was.
    return f"proxy: {words}" if phase == Phase.PROXY and not kind.startswith("proxy") else words


# --- time in words -------------------------------------------------------------------------


def parse_time(stamp: object) -> datetime | None:
    if not isinstance(stamp, str):
        return None
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def span(seconds: float) -> str:
    """A duration in the largest unit that keeps it readable: '14 s', '3 min', '2 h', '3 days'."""
    for unit, size, limit in (("s", 1, 60), ("min", 60, 3600), ("h", 3600, 172800)):
        if seconds < limit:
            return f"{int(seconds // size)} {unit}"
    n = int(seconds // 86400)
    return f"{n} day{'s' if n != 1 else ''}"


def ago(stamp: object, now: datetime) -> str:
    """'3 min ago', 'just now' (within a minute, or after `now`: clock skew), 'never'."""
    moment = parse_time(stamp)
    if moment is None:
        return "never"
    seconds = (now - moment).total_seconds()
    return "just now" if seconds < 60 else f"{span(seconds)} ago"


def until(stamp: object, now: datetime) -> str:
    """When the next probe is due: 'next in 14 s', 'next in 59 min'; a due time that has
    passed (the probe is queued or under way) is 'next probe due now', and one long
    past says by how much it is overdue. Empty when no probe is scheduled."""
    moment = parse_time(stamp)
    if moment is None:
        return ""
    seconds = (moment - now).total_seconds()
    if seconds >= 1:
        return f"next in {span(seconds)}"
    if seconds > -60:
        return "next probe due now"
    return f"next probe overdue by {span(-seconds)}"


def utc(stamp: object, *, seconds: bool = False) -> str:
    moment = parse_time(stamp)
    if moment is None:
        return ""
    if not seconds:
        return minute_utc(moment)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# --- the frame of a page -------------------------------------------------------------------


def page_start(title: str, heading: str, *, subtitle: str = "", now: datetime,
               skip: tuple[str, str] = ("main", "Skip to the content")) -> str:
    """Everything up to and including the opening <main>: `title`, `heading` and
    `subtitle` are HTML already (escaped by the caller); `skip` is the first link, for
    keyboard users: (the id it jumps to, its words)."""
    generated = now.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # Reloads the same URL, filter included; browsers restore the scroll position
        # of a reload (Chromium does: tests/test_browser.py checks it).
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{title}</title><style>{CSS}</style></head><body>"
        f'<a class="skip" href="#{skip[0]}">{skip[1]}</a>'
        f"<header>{heading}{subtitle}"
        f'<div class="meta">generated {generated}</div></header><main id="main">'
    )


def page_end(*, links: Iterable[tuple[str, str]] = ()) -> str:
    """The closing of <main>, a footer with `links` (href, words: trusted, not peer text)."""
    shown = " · ".join(f'<a href="{href}">{words}</a>' for href, words in links)
    return (f'</main><footer>Refreshes every {REFRESH_SECONDS} s. {shown}</footer>'
            "</body></html>\n")


def facts(rows: Iterable[tuple[str, str]]) -> str:
    """A definition list of (term, HTML) rows; rows with an empty value are left out."""
    items = "".join(f"<dt>{term}</dt><dd>{value}</dd>" for term, value in rows if value)
    return f'<dl class="facts">{items}</dl>' if items else ""
