"""The daemon's status page: pure functions from a selection of target dicts to HTML.

What a person sees, top to bottom: the counts by state (each a link that filters the
table), a filter form (search, state, every label key, the source, the order), the
expiries of the next 90 days as a picture (:mod:`certwatch.render.timeline`), then one
page of the table, problems first (:func:`certwatch.render.selection.row_order`), with
sortable columns and a link from each row to the target's own page
(:mod:`certwatch.render.targetpage`). Everything is a link or a form control, so it works
by keyboard and without JavaScript; the page has none.

The page is self-contained and carries a strict Content-Security-Policy
(:data:`certwatch.render.stylesheet.CONTENT_SECURITY_POLICY`); every string that can come
from a certificate, a peer or the inventory is escaped by :func:`pagekit.text`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from certwatch.core.names import for_people
from certwatch.render.pagekit import (
    STATES,
    ago,
    error_words,
    page_end,
    page_start,
    problem_words,
    state_of,
    text,
    until,
    utc,
)
from certwatch.render.selection import (
    SORTS,
    Query,
    Selection,
    issuer_name,
    label_parameter,
    select,
    source_location,
    source_of,
)
from certwatch.render.timeline import expiry_timeline

__all__ = ["render_status_page", "status_page_parts", "target_href"]

# (cell class, heading, the sort it links to)
COLUMNS: tuple[tuple[str, str, str | None], ...] = (
    ("state", "State", "state"), ("days", "Days left", "expiry"),
    ("expires", "Expires", "expiry"), ("endpoint", "Endpoint", "name"),
    ("issuer", "Issuer", "issuer"), ("verify", "Verification", None),
    ("checked", "Checked", "checked"), ("probe", "Probe", None),
)
FOOTER_LINKS = (("/api/v1/targets", "JSON API"), ("/metrics", "metrics"))


def target_href(target: Mapping[str, Any], query: Query) -> str:
    """The target's own page, remembering the view it was opened from (for the way back)."""
    return "/target?" + urlencode([("key", str(target.get("key") or "")), *query.pairs()])


def _attr(url: str) -> str:
    return html.escape(url, quote=True)


def _probe_cell(target: Mapping[str, Any], now: datetime) -> str:
    """Errors in words; a failed probe beside an older certificate says so."""
    error = target.get("last_error")
    if not isinstance(error, Mapping):
        if not target.get("error_kind"):
            return ""
        error = {"kind": target["error_kind"], "phase": target.get("error_phase"),
                 "detail": target.get("error")}
    words = text(error_words(error))
    failures = target.get("consecutive_failures")
    count = failures if isinstance(failures, int) and failures > 0 else 1
    if target.get("days_left") is not None and target.get("last_error"):
        read = ago(target.get("certificate_read_at"), now)
        return (f'<span class="failed">last probe failed ({count}×): {words}</span>; '
                f'<span class="sub">showing certificate read {read}</span>')
    again = f' <span class="sub">({count}× in a row)</span>' if count > 1 else ""
    return f'<span class="failed">{words}</span>{again}'


def verification_cell(target: Mapping[str, Any]) -> str:
    problems = target.get("verify_problems") or []
    if problems:
        words = problem_words(problems)
        off = ' <span class="sub">(not enforced)</span>' if target.get("verify") is False else ""
        return f'<span class="bad">{text(words)}</span>{off}{_refusal_note(target)}'
    verified = '<span class="good">verified</span>' if target.get("verified") else ""
    return verified + _refusal_note(target)


def _refusal_note(target: Mapping[str, Any]) -> str:
    """Revocation and root-program lints, one line (the target page has them whole)."""
    status = target.get("revocation_status")
    parts = []
    if status == "revoked":
        parts.append(f'<span class="bad">revoked ({text(target.get("revocation_source"))})</span>')
    elif status is not None and status != "unknown":
        parts.append(f"revocation {text(status)} ({text(target.get('revocation_source'))})")
    lints = [lint.get("code") for lint in target.get("lints") or [] if isinstance(lint, Mapping)]
    if lints:
        parts.append(f'<span class="bad">{text(", ".join(str(c) for c in lints))}</span>')
    return f'<div class="sub">{" · ".join(parts)}</div>' if parts else ""


def endpoint_words(target: Mapping[str, Any]) -> str:
    """address:port · protocol · SNI name, escaped."""
    address, port = target.get("address"), target.get("port")
    where = "unresolved" if not address else (
        f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}")
    details = [for_people(where), str(target.get("protocol") or "tls")]
    if source_of(target) != "tls":  # a file or a Kubernetes object: where it was read
        details = [source_of(target), source_location(target)]
    if target.get("proxy"):
        details.append(f"via proxy {target['proxy']}")
    if target.get("server_name"):
        sni = str(target["server_name"])
        shown = for_people(sni)  # an international name, and its A-label for the curious
        details.append(f"SNI {shown}" if shown == sni else f"SNI {shown} ({sni})")
    return " · ".join(text(d) for d in details)


def label_tags(target: Mapping[str, Any]) -> str:
    labels = target.get("labels")
    if not isinstance(labels, Mapping):
        return ""
    return "".join(f'<span class="tag">{text(k)}={text(v)}</span>'
                   for k, v in sorted(labels.items()))


def _endpoint_cell(target: Mapping[str, Any], query: Query) -> str:
    return (f'<div class="name"><a href="{_attr(target_href(target, query))}">'
            f'{text(for_people(str(target.get("name", ""))))}</a></div>'
            f'<div class="sub">{endpoint_words(target)}</div>{label_tags(target)}')


def _expires_cell(target: Mapping[str, Any]) -> str:
    when = text(utc(target.get("earliest_not_after")))
    position = target.get("earliest_position")
    if isinstance(position, int) and position > 0:
        subject = text(target.get("earliest_subject") or "")
        when += f'<div class="sub">chain certificate {position}: {subject}</div>'
    return when + _renewal_lines(target)


def _days(value: object) -> str:
    return f"{value:.3g}d" if isinstance(value, (int, float)) else "?"


def _renewal_lines(target: Mapping[str, Any]) -> str:
    """The lifetime, the share used, the thresholds in force, when the leaf is due for
    renewal (the CA's window where known) and the latest renewal, one short line each."""
    lines = []
    lifetime, used = target.get("lifetime_days"), target.get("lifetime_used")
    if isinstance(lifetime, (int, float)) and isinstance(used, (int, float)):
        lines.append(f"{_days(lifetime)} certificate, {used:.0%} used; warns at "
                     f"{_days(target.get('warn_days_in_force'))}, pages at "
                     f"{_days(target.get('critical_days_in_force'))}")
    renewal = target.get("renewal")
    if isinstance(renewal, Mapping) and renewal.get("due_at"):
        late = '<span class="bad">renewal overdue</span>: ' if renewal.get("overdue") else ""
        window = (f" (CA window {text(utc(renewal.get('window_start')))} → "
                  f"{text(utc(renewal.get('window_end')))})" if renewal.get("window_end") else "")
        moved = (' <span class="bad">moved earlier by the CA</span>'
                 if renewal.get("window_moved_earlier") else "")
        lines.append(f"{late}renew by {text(utc(renewal['due_at']))}{window}{moved}")
    renewed = target.get("renewed")
    if isinstance(renewed, Mapping):
        lines.append(f"renewed {text(utc(renewed.get('first_seen')))}: expiry "
                     f"{text(str(renewed.get('previous_not_after') or '')[:10])} → "
                     f"{text(str(renewed.get('not_after') or '')[:10])}")
    return "".join(f'<div class="sub">{line}</div>' for line in lines)


def _issuer_cell(target: Mapping[str, Any]) -> str:
    name = issuer_name(target)
    chain = target.get("chain") or [{}]
    full = chain[0].get("issuer") if isinstance(chain[0], Mapping) else None
    if not name:
        return ""
    return f'<span title="{text(full)}">{text(name)}</span>' if full and full != name else text(name)


def _alerts(target: Mapping[str, Any], now: datetime) -> str:
    """Open alerts and how their last notification fared."""
    lines = []
    for alert in target.get("alerts") or []:
        if not isinstance(alert, Mapping):
            continue
        sent = ""
        last = alert.get("last_notification")
        if isinstance(last, Mapping) and isinstance(last.get("sinks"), Mapping):
            sent = "; " + ", ".join(f"{text(name)}: {text(info.get('status'))}"
                                    for name, info in sorted(last["sinks"].items())
                                    if isinstance(info, Mapping))
        lines.append(f'<div class="sub">alert: {text(alert.get("kind"))} '
                     f'({text(alert.get("severity"))}) since {ago(alert.get("started_at"), now)}'
                     f"{sent}</div>")
    return "".join(lines)


def _row(target: Mapping[str, Any], now: datetime, query: Query) -> str:
    state = state_of(target)
    days = target.get("days_left")
    checked = ago(target.get("last_probe_at") or target.get("checked_at"), now)
    due = target.get("next_probe_at")
    bodies = {
        "state": f'<span class="badge s-{state}">{text(target.get("state"))}</span>'
                 f"{_alerts(target, now)}",
        "days": f"{days:.1f}" if isinstance(days, (int, float)) else "",
        "expires": _expires_cell(target),
        "endpoint": _endpoint_cell(target, query),
        "issuer": _issuer_cell(target),
        "verify": verification_cell(target),
        "checked": f'{checked}<div class="sub" title="{text(utc(due, seconds=True))}">'
                   f"{until(due, now)}</div>",
        "probe": _probe_cell(target, now),
    }
    tds = "".join(f'<td class="{cls}{"" if bodies[cls] else " blank"}" data-label="{label}">'
                  f"<div>{bodies[cls]}</div></td>" for cls, label, _ in COLUMNS)
    return f'<tr class="s-{state}" title="{text(target.get("summary") or "")}">{tds}</tr>'


def _counters(selection: Selection[Any]) -> str:
    query, counts = selection.query, selection.counts
    shown = sum(counts.values())
    everything = query.href(states=())
    items = [f'<li><a class="badge total" href="{_attr(everything)}"'
             f'{"" if query.states else " aria-current=true"}>{shown} total</a></li>']
    for state in (*STATES, *(("unknown",) if counts.get("unknown") else ())):
        n = counts.get(state, 0)
        active = state in query.states
        href = query.href(states=()) if active else query.href(states=(state,))
        hint = "show every state" if active else f"show only {state}"
        items.append(f'<li><a class="badge s-{state}{"" if n else " zero"}" href="{_attr(href)}"'
                     f' aria-label="{n} {state}: {hint}"{" aria-current=true" if active else ""}>'
                     f"{n} {state}</a></li>")
    return f'<nav aria-label="States"><ul class="counts">{"".join(items)}</ul></nav>'


def _select(label: str, name: str, options: Iterable[tuple[str, str]], chosen: str) -> str:
    rendered = "".join(f'<option value="{text(value)}"{" selected" if value == chosen else ""}>'
                       f"{text(words)}</option>" for value, words in options)
    return f'<label>{label}<select name="{text(name)}">{rendered}</select></label>'


def _filters(selection: Selection[Any]) -> str:
    query = selection.query
    fields = [f'<label class="search">Search<input type="search" name="q" value="{text(query.text)}" '
              'placeholder="name, host, SAN, issuer, label" maxlength="200"></label>']
    if len(query.states) > 1:  # from a link; the form keeps them as they are
        fields += [f'<input type="hidden" name="state" value="{text(s)}">' for s in query.states]
    else:
        fields.append(_select("State", "state", [("", "any"), *((s, s) for s in STATES)],
                              query.states[0] if query.states else ""))
    for key, values in selection.labels.items():
        current = query.label_values(key)
        if key in selection.crowded or len(current) > 1:
            fields.append(f'<label>{text(key)}<input name="{text(label_parameter(key))}" '
                          f'value="{text(current[0] if current else "")}"></label>')
        else:
            fields.append(_select(text(key), label_parameter(key),
                                  [("", "any"), *((v, v) for v in values)],
                                  current[0] if current else ""))
    fields.append(_select("Source", "source", [("", "any"), *((s, s) for s in selection.sources)],
                          query.sources[0] if len(query.sources) == 1 else ""))
    fields.append(_select("Order", "sort", SORTS.items(), query.sort))
    fields.append(_select("Direction", "order", [("asc", "ascending"), ("desc", "descending")],
                          "desc" if query.descending else "asc"))
    fields.append('<button type="submit">Apply</button>')
    if query.filtering:
        fields.append('<a href="/">Clear filters</a>')
    return ('<form class="panel filters" method="get" action="/" role="search" '
            f'aria-label="Filter the targets">{"".join(fields)}</form>')


def _pages(selection: Selection[Any]) -> str:
    if selection.pages <= 1:
        return ""
    query, page, last = selection.query, selection.query.page, selection.pages
    shown = sorted({1, last, *range(max(1, page - 2), min(last, page + 2) + 1)})
    items, previous = [], 0
    if page > 1:
        items.append(f'<li><a rel="prev" href="{_attr(query.href(page=page - 1))}">'
                     "‹ previous</a></li>")
    for number in shown:
        if number > previous + 1:
            items.append('<li><span class="gap">…</span></li>')
        items.append(f'<li><span aria-current="page">{number}</span></li>' if number == page
                     else f'<li><a href="{_attr(query.href(page=number))}">{number}</a></li>')
        previous = number
    if page < last:
        items.append(f'<li><a rel="next" href="{_attr(query.href(page=page + 1))}">'
                     "next ›</a></li>")
    return f'<nav aria-label="Pages"><ul class="pages">{"".join(items)}</ul></nav>'


def _head_cell(label: str, sort: str | None, query: Query) -> str:
    if sort is None:
        return f"<th>{label}</th>"
    current = query.sort == sort
    descending = current and query.descending
    arrow = (" ▼" if descending else " ▲") if current else ""
    href = query.href(sort=sort, descending=current and not query.descending)
    aria = f' aria-sort="{"descending" if descending else "ascending"}"' if current else ""
    return (f'<th{aria}><a href="{_attr(href)}">{label}<span aria-hidden="true">{arrow}'
            "</span></a></th>")


def _headline(selection: Selection[Any]) -> str:
    counts = selection.counts
    bad = [f"{counts[s]} {s}" for s in STATES[:-1] if counts.get(s)]
    return ", ".join(bad) if bad else ("all ok" if selection.matched else "no targets")


def status_page_parts(selection: Selection[Any], rows: Iterable[Mapping[str, Any]], *,
                      now: datetime, title: str = "certwatch", version: str = "",
                      ready: bool = True, notices: Sequence[str] = ()) -> Iterator[str]:
    """The page in pieces, one row at a time: `selection` says what is shown and `rows`
    are its rows' dicts (as the HTTP API returns them), in its order, so a server builds
    the whole dict of the rows on this page only."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    query = selection.query
    # A notice is certwatch's own text, one problem a line: each line is shown as a line
    # (escaped like any text, as a problem may quote the file), not as an escaped "\n".
    banners = [f'<div class="banner" role="alert">{"<br>".join(map(text, n.splitlines()))}'
               '</div>' for n in notices]
    if not ready:
        banners.insert(0, '<div class="banner starting" role="status">'
                          'starting: first sweep not finished</div>')
    version_text = f' <span class="meta">{text(version)}</span>' if version else ""
    yield page_start(f"{text(title)}: {_headline(selection)}",
                     f"<h1>{text(title)}</h1>{version_text}", now=now,
                     skip=("targets", "Skip to the targets"))
    yield _counters(selection)
    yield "".join(banners)
    if not selection.total:
        yield ('<div class="empty">' + ("no results yet: the first sweep is still running"
               if not ready else "no targets configured") + "</div>")
        yield page_end(links=FOOTER_LINKS)
        return
    yield _filters(selection)
    yield expiry_timeline(selection.days_left, now)
    last = selection.first + len(selection.rows) - 1
    of_all = f" (of {selection.total} in all)" if selection.matched != selection.total else ""
    range_words = (f"Targets {selection.first}–{last} of {selection.matched}{of_all}"
                   if selection.matched else
                   'No target matches this filter. <a href="/">Clear filters</a>')
    yield (f'<div class="range"><p role="status" id="targets">{range_words}</p>'
           f"{_pages(selection)}</div>")
    if selection.matched:
        heads = "".join(_head_cell(label, sort, query) for _, label, sort in COLUMNS)
        yield f'<div class="wrap"><table><thead><tr>{heads}</tr></thead><tbody>'
        yield from (_row(target, now, query) for target in rows)
        yield "</tbody></table></div>"
        if selection.pages > 1:
            yield f'<div class="range">{_pages(selection)}</div>'
    yield page_end(links=FOOTER_LINKS)


def render_status_page(targets: Sequence[Mapping[str, Any]], *, now: datetime,
                       query: Query | None = None, title: str = "certwatch",
                       version: str = "", ready: bool = True,
                       notices: Sequence[str] = ()) -> str:
    """The status page for `targets` (dicts as the HTTP API returns them) at `now`."""
    selection = select(((t, t) for t in targets), query or Query())
    return "".join(status_page_parts(selection, selection.rows, now=now, title=title,
                                     version=version, ready=ready, notices=notices))
