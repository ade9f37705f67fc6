"""The daemon's HTML status page: one pure function from target dicts to a page.

The page is self-contained (inline CSS, no scripts, no external assets) and carries a
strict Content-Security-Policy (:data:`CONTENT_SECURITY_POLICY`, also sent as a
``<meta>``): the only thing it allows is its own stylesheet, by hash. Every string
that can come from a certificate, a peer or the inventory is made printable with
:func:`certwatch.report.safe_text` (control characters and terminal escapes shown, not
interpreted) and then HTML-escaped, attributes included.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from certwatch.core.vocabulary import ErrorKind, Problem, State
from certwatch.render.report import safe_text

__all__ = ["CONTENT_SECURITY_POLICY", "count_states", "render_status_page", "row_order",
           "status_page_parts"]

STATES = tuple(state.value for state in State.worst_first())  # badges and rows: worst first

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
}

_CSS = """
:root{--ok:#1a7f37;--warning:#b45309;--critical:#c62828;--expired:#7f1d1d;--error:#6d28d9;
--unknown:#6b7280;--ink:#1f2328;--muted:#59636e;--line:#d8dee4;--bg:#f6f8fa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--ink);background:var(--bg)}
header,main{max-width:1280px;margin:0 auto;padding:16px 20px}
header{padding-bottom:4px}
h1{font-size:20px;margin:0 8px 0 0;display:inline}
.meta,.sub{color:var(--muted);font-size:12px}
.counts{display:flex;flex-wrap:wrap;gap:8px;list-style:none;padding:0;margin:12px 0 0}
.badge{display:inline-block;border-radius:999px;padding:2px 10px;font-weight:600;
font-size:12px;color:#fff;white-space:nowrap}
.counts .badge{font-size:13px;padding:4px 12px}
.counts .zero{opacity:.35}
.total{background:#fff;color:var(--ink);border:1px solid var(--line)}
.s-ok{--c:var(--ok)}.s-warning{--c:var(--warning)}.s-critical{--c:var(--critical)}
.s-expired{--c:var(--expired)}.s-error{--c:var(--error)}.s-unknown{--c:var(--unknown)}
.badge.s-ok,.badge.s-warning,.badge.s-critical,.badge.s-expired,.badge.s-error,
.badge.s-unknown{background:var(--c)}
.banner{margin:0 0 12px;padding:10px 14px;border-radius:6px;
border:1px solid #e3b341;background:#fff8c5}
.banner.starting{border-color:#54aeff;background:#ddf4ff}
.wrap{background:#fff;border:1px solid var(--line);border-radius:8px;overflow:hidden}
table{width:100%;border-collapse:collapse;table-layout:fixed}
th{text-align:left;font-size:12px;color:var(--muted);font-weight:600;background:#fafbfc;
border-bottom:1px solid var(--line);white-space:nowrap}
th,td{padding:9px 10px;vertical-align:top}
td{border-top:1px solid var(--line);overflow-wrap:anywhere}
th:nth-child(1){width:96px}th:nth-child(2){width:80px}th:nth-child(3){width:192px}
th:nth-child(4){width:19%}th:nth-child(5){width:13%}th:nth-child(6){width:11%}
th:nth-child(7){width:124px}
tr.s-warning td{background:#fffbeb}tr.s-critical td{background:#fef2f2}
tr.s-expired td{background:#fde8e8}tr.s-error td{background:#f5f3ff}
td.state,th:first-child{border-left:4px solid var(--c,transparent)}
td.days{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums;font-weight:600;
color:var(--c)}
th:nth-child(2){text-align:right}th:nth-child(3){padding-left:20px}
td.expires{padding-left:20px;white-space:nowrap}td.expires .sub{white-space:normal}
td.expires,td.checked{font-variant-numeric:tabular-nums}
.name{font-weight:600}
.tag{display:inline-block;margin:3px 4px 0 0;padding:0 6px;border-radius:4px;
background:#eef1f4;border:1px solid var(--line);font-size:11px;color:var(--muted)}
.good{color:var(--ok)}.bad{color:var(--critical)}.failed{color:var(--error)}
.empty{padding:48px 20px;text-align:center;color:var(--muted);background:#fff;
border:1px solid var(--line);border-radius:6px}
@media (max-width:700px){
header,main{padding:12px}
thead{display:none}
table,tbody,tr,td{display:block;width:100%}
.wrap{border:0;background:none}
tr{display:flex;flex-direction:column;margin:0 0 12px;background:#fff;
border:1px solid var(--line);border-left:5px solid var(--c);border-radius:6px;overflow:hidden}
td,td.state{border:0;padding:3px 12px;display:flex;gap:10px}
td::before{content:attr(data-label);flex:0 0 84px;color:var(--muted);font-size:12px;
font-weight:400;padding-top:2px}
td>div{flex:1;min-width:0}
td.blank{display:none}
td.endpoint{order:-1;padding-top:10px;display:block}
td.endpoint::before{content:none}
td.days,th:nth-child(2){text-align:left}
td.expires{padding-left:12px}
td:last-child{padding-bottom:10px}
}
"""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()}'; "
    "base-uri 'none'; form-action 'none'"
)


def _text(value: object) -> str:
    """A peer- or config-supplied value, printable and HTML-escaped."""
    return html.escape(safe_text(str(value)), quote=True)


def _parse(stamp: object) -> datetime | None:
    if not isinstance(stamp, str):
        return None
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _span(seconds: float) -> str:
    for unit, size, limit in (("min", 60, 3600), ("h", 3600, 172800)):
        if seconds < limit:
            return f"{int(seconds // size)} {unit}"
    n = int(seconds // 86400)
    return f"{n} day{'s' if n != 1 else ''}"


def _relative(stamp: object, now: datetime, *, past: bool, never: str, soon: str,
              template: str) -> str:
    """A moment from now in words: `soon` within a minute (or on the wrong side of now)."""
    moment = _parse(stamp)
    if moment is None:
        return never
    seconds = ((now - moment) if past else (moment - now)).total_seconds()
    return soon if seconds < 60 else template.format(_span(seconds))


def _ago(stamp: object, now: datetime) -> str:
    """'3 min ago', 'just now', 'never'; a moment after `now` (clock skew) is 'just now'."""
    return _relative(stamp, now, past=True, never="never", soon="just now", template="{} ago")


def _until(stamp: object, now: datetime) -> str:
    return _relative(stamp, now, past=False, never="", soon="next probe due now",
                     template="next in {}")


def _utc(stamp: object) -> str:
    moment = _parse(stamp)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if moment else ""


def _state(target: Mapping[str, Any]) -> str:
    state = target.get("state")
    return state if state in STATES else "unknown"


def row_order(state: object, days_left: object, name: object) -> tuple[int, float, str]:
    """Attention first, then soonest expiry, then name.

    States in their one order, worst first (:meth:`State.rank`): expired, critical
    (expiring within the critical threshold, or rejected by clients), error (no
    certificate: we are blind), warning, ok; unknown states last. Within a state, days
    left ascending (no certificate after the rest), then name.
    """
    tier = STATES.index(state) if state in STATES else len(STATES)
    return (tier, days_left if isinstance(days_left, (int, float)) else float("inf"), str(name))


def _sort_key(target: Mapping[str, Any]) -> tuple[int, float, str]:
    return row_order(_state(target), target.get("days_left"), target.get("name", ""))


def _error_words(error: Mapping[str, Any]) -> str:
    kind, phase, detail = (str(error.get(k) or "") for k in ("kind", "phase", "detail"))
    template = ERROR_WORDS.get(kind, "{kind} during {phase}: {detail}")
    return template.format(kind=kind.replace("_", " "), phase=phase or "probe",
                           detail=detail or "no detail")


def _probe_cell(target: Mapping[str, Any], now: datetime) -> str:
    """Errors in words; a failed probe beside an older certificate says so."""
    error = target.get("last_error")
    if not isinstance(error, Mapping):
        if not target.get("error_kind"):
            return ""
        error = {"kind": target["error_kind"], "phase": target.get("error_phase"),
                 "detail": target.get("error")}
    words = _text(_error_words(error))
    failures = target.get("consecutive_failures")
    count = failures if isinstance(failures, int) and failures > 0 else 1
    if target.get("days_left") is not None and target.get("last_error"):
        read = _ago(target.get("certificate_read_at"), now)
        return (f'<span class="failed">last probe failed ({count}×): {words}</span>; '
                f'<span class="sub">showing certificate read {read}</span>')
    again = f' <span class="sub">({count}× in a row)</span>' if count > 1 else ""
    return f'<span class="failed">{words}</span>{again}'


def _verification_cell(target: Mapping[str, Any]) -> str:
    problems = target.get("verify_problems") or []
    if problems:
        words = ", ".join(PROBLEM_WORDS.get(p, str(p).replace("_", " ")) for p in problems)
        off = ' <span class="sub">(not enforced)</span>' if target.get("verify") is False else ""
        return f'<span class="bad">{_text(words)}</span>{off}'
    return '<span class="good">verified</span>' if target.get("verified") else ""


def _issuer(target: Mapping[str, Any]) -> str:
    position = target.get("earliest_position")
    for cert in target.get("chain") or []:
        if isinstance(cert, Mapping) and cert.get("position") == position:
            return str(cert.get("issuer") or "")
    return ""


def _endpoint_cell(target: Mapping[str, Any]) -> str:
    address, port = target.get("address"), target.get("port")
    where = "unresolved" if not address else (
        f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}")
    details = [where, str(target.get("protocol") or "tls")]
    if target.get("server_name"):
        details.append(f"SNI {target['server_name']}")
    labels = target.get("labels") or {}
    tags = "".join(f'<span class="tag">{_text(k)}={_text(v)}</span>'
                   for k, v in sorted(labels.items()))
    return (f'<div class="name">{_text(target.get("name", ""))}</div>'
            f'<div class="sub">{" · ".join(_text(d) for d in details)}</div>{tags}')


def _expires_cell(target: Mapping[str, Any]) -> str:
    when = _text(_utc(target.get("earliest_not_after")))
    position = target.get("earliest_position")
    if isinstance(position, int) and position > 0:
        subject = _text(target.get("earliest_subject") or "")
        when += f'<div class="sub">chain certificate {position}: {subject}</div>'
    return when


def _alerts(target: Mapping[str, Any], now: datetime) -> str:
    """Open alerts and how their last notification fared."""
    lines = []
    for alert in target.get("alerts") or []:
        if not isinstance(alert, Mapping):
            continue
        sent = ""
        last = alert.get("last_notification")
        if isinstance(last, Mapping) and isinstance(last.get("sinks"), Mapping):
            sent = "; " + ", ".join(f"{_text(name)}: {_text(info.get('status'))}"
                                    for name, info in sorted(last["sinks"].items())
                                    if isinstance(info, Mapping))
        lines.append(f'<div class="sub">alert: {_text(alert.get("kind"))} '
                     f'({_text(alert.get("severity"))}) since {_ago(alert.get("started_at"), now)}'
                     f"{sent}</div>")
    return "".join(lines)


def _row(target: Mapping[str, Any], now: datetime) -> str:
    state = _state(target)
    days = target.get("days_left")
    checked = _ago(target.get("last_probe_at") or target.get("checked_at"), now)
    cells = [
        ("state", "State",
         f'<span class="badge s-{state}">{_text(target.get("state"))}</span>{_alerts(target, now)}'),
        ("days", "Days left", f"{days:.1f}" if isinstance(days, (int, float)) else ""),
        ("expires", "Expires", _expires_cell(target)),
        ("endpoint", "Endpoint", _endpoint_cell(target)),
        ("issuer", "Issuer", _text(_issuer(target))),
        ("verify", "Verification", _verification_cell(target)),
        ("checked", "Checked",
         f'{checked}<div class="sub">{_until(target.get("next_probe_at"), now)}</div>'),
        ("probe", "Probe", _probe_cell(target, now)),
    ]
    tds = "".join(f'<td class="{cls}{"" if body else " blank"}" data-label="{label}">'
                  f"<div>{body}</div></td>" for cls, label, body in cells)
    return f'<tr class="s-{state}" title="{_text(target.get("summary") or "")}">{tds}</tr>'


def render_status_page(targets: Sequence[Mapping[str, Any]], *, now: datetime,
                       title: str = "certwatch", version: str = "", ready: bool = True,
                       notices: Sequence[str] = ()) -> str:
    """The status page for `targets` (dicts as the HTTP API returns them) at `now`.

    Rows are sorted worst first, then soonest expiry (see :func:`row_order`).
    """
    return "".join(status_page_parts(
        sorted(targets, key=_sort_key), total=len(targets),
        counts=count_states(_state(t) for t in targets), now=now, title=title,
        version=version, ready=ready, notices=notices))


def count_states(states: Iterable[str]) -> dict[str, int]:
    counts = {s: 0 for s in STATES}
    for state in states:
        if state in counts:
            counts[state] += 1
    return counts


def status_page_parts(rows: Iterable[Mapping[str, Any]], *, total: int,
                      counts: Mapping[str, int], now: datetime, title: str = "certwatch",
                      version: str = "", ready: bool = True,
                      notices: Sequence[str] = ()) -> Iterator[str]:
    """The page in pieces, one row at a time: `rows` already in :func:`row_order`, and
    their number and counts by state given beforehand (the header shows them), so a
    server can stream a page of 10,000 rows without building every row's dict at once."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    bad = [f"{counts[s]} {s}" for s in STATES[:-1] if counts.get(s)]
    headline = ", ".join(bad) if bad else ("all ok" if total else "no targets")
    badges = "".join(
        f'<li><span class="badge s-{s}{"" if counts.get(s) else " zero"}">{counts.get(s, 0)} {s}'
        "</span></li>" for s in STATES)
    # A notice is certwatch's own text, one problem a line: each line is shown as a line
    # (escaped like any text, as a problem may quote the file), not as an escaped "\n".
    banners = [f'<div class="banner" role="alert">{"<br>".join(map(_text, n.splitlines()))}'
               '</div>' for n in notices]
    if not ready:
        banners.insert(0, '<div class="banner starting" role="status">'
                          'starting: first sweep not finished</div>')
    version_text = f'<span class="meta">{_text(version)}</span>' if version else ""
    generated = now.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    yield (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="refresh" content="60">'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        f"<title>{_text(title)}: {headline}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{_text(title)}</h1>{version_text}"
        f'<div class="meta">generated {generated}</div>'
        f'<ul class="counts"><li><span class="badge total">{total} total</span></li>'
        f"{badges}</ul></header><main>{''.join(banners)}"
    )
    if total:
        heads = "".join(f"<th>{h}</th>" for h in (
            "State", "Days left", "Expires", "Endpoint", "Issuer", "Verification",
            "Checked", "Probe"))
        yield f'<div class="wrap"><table><thead><tr>{heads}</tr></thead><tbody>'
        yield from (_row(target, now) for target in rows)
        yield "</tbody></table></div>"
    else:
        yield ('<div class="empty">' + ("no results yet: the first sweep is still running"
               if not ready else "no targets configured") + "</div>")
    yield "</main></body></html>\n"
