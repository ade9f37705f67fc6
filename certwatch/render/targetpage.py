"""One target's own page: everything certwatch knows of it, a section per concern.

It renders the API's dict of one target (:func:`certwatch.render.report.status_to_dict`):
each section in :data:`SECTIONS` reads the keys it knows, shows those present and says
nothing of those absent, and returns "" when it has nothing to show. A key that no
section claims is still shown, in "Other fields", so that a field added to the API is on
the page the day it lands; giving it a proper place is one entry here.

The revocation, renewal and source sections read the keys the work in progress adds
(issues 11, 12 and 13) defensively: a value of an unexpected shape is shown as data,
never trusted to be what it should be. Every value goes through :func:`pagekit.text`.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

from certwatch.render.lifetime import lifetime_bar
from certwatch.render.pagekit import (
    ago,
    badge,
    error_words,
    facts,
    page_end,
    page_start,
    parse_time,
    problem_words,
    span,
    text,
    utc,
)
from certwatch.render.selection import Query, source_location, source_of
from certwatch.render.statuspage import endpoint_words, label_tags

__all__ = ["SECTIONS", "render_target_page", "target_missing_page"]

Section = Callable[[Mapping[str, Any], datetime], str]
MAX_ITEMS = 50  # of any one list shown as data
MAX_DEPTH = 3


# --- values of any shape ---------------------------------------------------------------


def when(stamp: object, now: datetime) -> str:
    """A moment as UTC and in words: '2026-06-01 12:00 UTC (3 min ago)'."""
    moment = parse_time(stamp)
    if moment is None:
        return ""
    ahead = (moment - now).total_seconds()
    words = f"in {span(ahead)}" if ahead >= 1 else ago(stamp, now)
    return f'<time datetime="{text(stamp)}">{text(utc(stamp))}</time> ({words})'


def value(data: object, now: datetime, depth: int = 0) -> str:
    """Any JSON value as HTML: times in words, lists and mappings nested, all bounded."""
    if data is None or data == "" or data == [] or data == {}:
        return ""
    if isinstance(data, bool):
        return "yes" if data else "no"
    if isinstance(data, (int, float)):
        return text(data)
    if isinstance(data, str):
        return when(data, now) if parse_time(data) and "T" in data else text(data)
    if depth >= MAX_DEPTH:
        return text(data)
    if isinstance(data, Mapping):
        return facts((text(k), value(v, now, depth + 1)) for k, v in data.items())
    if isinstance(data, (list, tuple)):
        items = [value(item, now, depth + 1) for item in data[:MAX_ITEMS]]
        more = f"<li>and {len(data) - MAX_ITEMS} more</li>" if len(data) > MAX_ITEMS else ""
        return f'<ul class="list">{"".join(f"<li>{i}</li>" for i in items if i)}{more}</ul>'
    return text(data)


def _known(target: Mapping[str, Any], now: datetime,
           rows: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(term, key) rows: each key's value, shown when present."""
    return [(term, value(target.get(key), now)) for term, key in rows]


def _yes_no(flag: object, yes: str, no: str) -> str:
    return "" if flag is None else (yes if flag else no)


# --- the sections ------------------------------------------------------------------------


def _summary(target: Mapping[str, Any], now: datetime) -> str:
    reasons = target.get("reasons") or []
    days = target.get("days_left")
    position = target.get("earliest_position")
    first = ""
    if isinstance(position, int):
        which = "the leaf" if position == 0 else f"chain certificate {position}"
        first = f'{when(target.get("earliest_not_after"), now)}: {which}, ' \
                f'{text(target.get("earliest_subject") or "")}'
    return facts([
        ("State", f'{badge(target.get("state"))} {text(target.get("summary") or "")}'),
        ("Reasons", text(", ".join(str(r).replace("_", " ") for r in reasons))
         if isinstance(reasons, list) else text(reasons)),
        ("Days left", f"{days:.1f}" if isinstance(days, (int, float)) else ""),
        ("Expires first", first),
    ])


def _verdict(target: Mapping[str, Any]) -> str:
    problems = target.get("verify_problems") or []
    if target.get("verified") is None and not problems:
        return "Not verified: no certificate was read."
    if not problems:
        anchor = target.get("trust_anchor")
        root = f", which chains to the trusted root {text(anchor)}" if anchor else ""
        return (f"Clients will accept this certificate: the chain is trusted{root}, the "
                "name matches and every certificate is valid now.")
    words = problem_words(problems)
    enforced = (" This endpoint has verify: false, so these problems do not raise its "
                "state." if target.get("verify") is False else "")
    return f"Clients will refuse this certificate: {text(words)}.{enforced}"


def _verification(target: Mapping[str, Any], now: datetime) -> str:
    if not any(key in target for key in ("verified", "verify_problems", "trusted")):
        return ""
    return f"<p>{_verdict(target)}</p>" + facts([
        ("Detail", text(target.get("verify_error") or "")),
        ("Trusted chain", _yes_no(target.get("trusted"), "yes", "no")),
        ("Name matches", _yes_no(target.get("hostname_match"), "yes", "no")),
        ("Trusted root", text(target.get("trust_anchor") or "")),
        ("Key matches", _yes_no(target.get("key_match"), "yes", "no")),  # a file's key
        ("Key problem", text(target.get("key_problem") or "")),
    ])


def _role(cert: Mapping[str, Any]) -> str:
    if cert.get("position") == 0:
        return "leaf"
    if cert.get("self_issued"):
        return "root"
    return "intermediate" if cert.get("is_ca") else "certificate"


def _certificate(cert: Mapping[str, Any], target: Mapping[str, Any], now: datetime) -> str:
    sans = [*(cert.get("dns_names") or []), *(cert.get("ip_addresses") or [])]
    bits = cert.get("key_bits")
    key = f'{text(cert.get("key_type") or "")}{f" {text(bits)} bits" if bits else ""}'
    lifetime = cert.get("lifetime_days")
    heading = text(cert.get("common_name") or cert.get("subject") or "")
    rows = facts([
        ("Subject", text(cert.get("subject") or "")),
        ("Issuer", text(cert.get("issuer") or "")),
        ("SANs", ", ".join(text(s) for s in sans[:MAX_ITEMS])
         + (f" and {len(sans) - MAX_ITEMS} more" if len(sans) > MAX_ITEMS else "")),
        ("Valid from", when(cert.get("not_before"), now)),
        ("Valid until", when(cert.get("not_after"), now)),
        ("Lifetime", f"{text(lifetime)} days" if isinstance(lifetime, (int, float)) else ""),
        ("Key", key),
        ("Signature", text(cert.get("signature_algorithm") or "")),
        ("Serial", f'<span class="mono">{text(cert.get("serial") or "")}</span>'),
        ("SHA-256", f'<span class="mono">{text(cert.get("fingerprint_sha256") or "")}</span>'),
        ("SHA-1", f'<span class="mono">{text(cert.get("fingerprint_sha1"))}</span>'
         if cert.get("fingerprint_sha1") else ""),
    ])
    return (f'<article class="cert"><h3>{text(cert.get("position"))} · {_role(cert)}: '
            f"{heading}</h3>{lifetime_bar(cert, target, now)}{rows}</article>")


def _chain(target: Mapping[str, Any], now: datetime) -> str:
    chain = [c for c in target.get("chain") or [] if isinstance(c, Mapping)]
    return "".join(_certificate(cert, target, now) for cert in chain)


def _renewal(target: Mapping[str, Any], now: datetime) -> str:
    used = target.get("lifetime_used")
    rows = _known(target, now, [
        ("Lifetime (days)", "lifetime_days"), ("Warns with days left", "warn_days_in_force"),
        ("Pages with days left", "critical_days_in_force"), ("Warning from", "warning_at"),
        ("Critical from", "critical_at"), ("ACME directory", "acme_directory"),
        ("Renewal", "renewal"), ("Renewed", "renewed"),
        ("Certificate history", "certificate_history")])
    if isinstance(used, (int, float)) and not isinstance(used, bool):
        rows.insert(1, ("Lifetime used", f"{used * 100 if used <= 1 else used:.0f}%"))
    return facts(rows)


def _revocation(target: Mapping[str, Any], now: datetime) -> str:
    return facts(_known(target, now, [
        ("Status", "revocation_status"), ("Settled by", "revocation_source"),
        ("Checked", "revocation_checked_at"), ("Why unknown", "revocation_reason"),
        ("Detail", "revocation_detail"), ("Checks", "revocation_checks"),
        ("Must-staple without a staple", "must_staple_missing"),
        ("Publicly trusted", "publicly_trusted"), ("SCTs", "sct_count"),
        ("SCT log operators", "sct_operators"), ("Lints", "lints")]))


def _alert(alert: Mapping[str, Any], now: datetime) -> str:
    last = alert.get("last_notification")
    sinks = last.get("sinks") if isinstance(last, Mapping) else None
    deliveries = []
    for name, info in sorted(sinks.items()) if isinstance(sinks, Mapping) else ():
        if not isinstance(info, Mapping):
            continue
        attempts = info.get("attempts")
        tried = f", {text(attempts)} attempt{'' if attempts == 1 else 's'}" if attempts else ""
        delivered = when(info.get("delivered_at"), now)
        error = info.get("error")
        deliveries.append(
            f"<li>{text(name)}: {text(info.get('status'))}{tried}"
            f"{f', delivered {delivered}' if delivered else ''}"
            f"{f': <span class=failed>{text(error)}</span>' if error else ''}</li>")
    action = last.get("action") if isinstance(last, Mapping) else None
    sent = (f"<p>Last notification ({text(action)}):</p><ul class=list>{''.join(deliveries)}</ul>"
            if deliveries else "")
    return (f'<article class="cert"><h3>{text(alert.get("kind"))} · '
            f'{badge(alert.get("severity"))}</h3>' + facts([
                ("Summary", text(alert.get("summary") or "")),
                ("Open since", when(alert.get("started_at"), now)),
                ("Key", f'<span class="mono">{text(alert.get("key") or "")}</span>')]) + sent
            + "</article>")


def _alerts(target: Mapping[str, Any], now: datetime) -> str:
    alerts = [a for a in target.get("alerts") or [] if isinstance(a, Mapping)]
    return "".join(_alert(a, now) for a in alerts)


def _probe(target: Mapping[str, Any], now: datetime) -> str:
    error = target.get("last_error")
    failures = target.get("consecutive_failures")
    recent = [e for e in target.get("recent_errors") or [] if isinstance(e, Mapping)]
    duration = target.get("probe_duration_seconds")
    read = target.get("certificate_read_at")
    due = target.get("next_probe_at")
    return facts([
        ("Last probe", when(target.get("last_probe_at") or target.get("checked_at"), now)),
        ("Result", "" if "probe_success" not in target else
         _yes_no(target.get("probe_success"), '<span class="good">succeeded</span>',
                 '<span class="failed">failed</span>')),
        ("Duration", f"{duration * 1000:.0f} ms" if isinstance(duration, (int, float)) else ""),
        ("Error", f'<span class="failed">{text(error_words(error))}</span>'
         if isinstance(error, Mapping) else ""),
        ("Failures in a row", text(failures) if isinstance(failures, int) and failures else ""),
        ("Recent errors", '<ul class="list">' + "".join(
            f"<li>{when(e.get('at'), now)}: {text(error_words(e))}</li>" for e in recent)
         + "</ul>" if recent else ""),
        ("Certificate read", when(read, now) if read != target.get("last_probe_at") else ""),
        ("TLS", " · ".join(text(target[k]) for k in ("tls_version", "cipher") if target.get(k))),
        ("Next probe", when(due, now)),
    ])


def _endpoint(target: Mapping[str, Any], now: datetime) -> str:
    warn, critical = target.get("warn_days"), target.get("critical_days")
    location = source_location(target)
    return facts([
        ("Name", text(target.get("name") or "")),
        ("Where", endpoint_words(target)),
        ("Host", text(target.get("host") or "")),
        ("Source", text(source_of(target)) + (f": {text(location)}" if location else "")),
        ("Found at", text(target.get("origin") or "")),
        ("Labels", label_tags(target)),
        ("Thresholds", f"warning at {text(warn)} days left, critical at {text(critical)}"
         if warn is not None and critical is not None else ""),
        ("Verification", "" if target.get("verify") is not False else
         "not enforced (verify: false)"),
        ("Target key", f'<span class="mono">{text(target.get("key") or "")}</span>'),
    ])


SECTIONS: tuple[tuple[str, str, Section], ...] = (
    ("summary", "Summary", _summary),
    ("verification", "Verification", _verification),
    ("chain", "Certificate chain", _chain),
    ("renewal", "Renewal", _renewal),
    ("revocation", "Revocation and policy", _revocation),
    ("alerts", "Open alerts", _alerts),
    ("probe", "Probe", _probe),
    ("endpoint", "Endpoint", _endpoint),
)
# Every key a section above shows (or that repeats another: the leaf's dates are in the
# chain, the error fields in last_error); the rest are "Other fields".
CLAIMED = frozenset({
    "key", "name", "host", "port", "address", "server_name", "protocol", "state", "reasons",
    "summary", "days_left", "leaf_not_before", "leaf_not_after", "earliest_not_after",
    "earliest_subject", "earliest_position", "verify", "verified", "trusted", "verify_error",
    "verify_problems", "hostname_match", "trust_anchor", "tls_version", "cipher",
    "error_kind", "error_phase", "error", "checked_at", "probe_started_at",
    "probe_duration_seconds", "warn_days", "critical_days", "labels", "chain",
    "probe_success", "last_probe_at", "next_probe_at", "last_error", "consecutive_failures",
    "certificate_read_at", "alerts", "recent_errors", "source", "source_location",
    "location", "origin", "key_match", "key_problem",
    "lifetime_days", "lifetime_used", "warn_fraction", "critical_fraction",
    "renewal_due_fraction", "warn_days_in_force", "critical_days_in_force", "warning_at",
    "critical_at", "acme_directory", "renewal", "renewed", "certificate_history",
    "revocation_status", "revocation_source", "revocation_checked_at", "revocation_reason",
    "revocation_detail", "revocation_checks", "must_staple_missing", "publicly_trusted",
    "sct_count", "sct_operators", "lints", "proxy",
})


def _others(target: Mapping[str, Any], now: datetime) -> str:
    return facts((text(k), value(v, now)) for k, v in target.items() if k not in CLAIMED)


def _back(query: Query) -> str:
    return html.escape(query.href("/", page=query.page), quote=True)


def render_target_page(target: Mapping[str, Any], *, now: datetime, back: Query | None = None,
                       title: str = "certwatch") -> str:
    """The page of one target (a dict as the HTTP API returns it) at `now`; `back` is the
    view of the status page it was opened from."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    back = back or Query()
    name = text(target.get("name") or target.get("key") or "")
    sections = [(sid, heading, body) for sid, heading, render in
                (*SECTIONS, ("more", "Other fields", _others)) if (body := render(target, now))]
    index = " · ".join(f'<a href="#{sid}">{heading}</a>' for sid, heading, _ in sections)
    parts = [page_start(f"{name}: {text(target.get('state') or '')} · {text(title)}",
                        f'<a href="{_back(back)}">← all targets</a><br><h1>{name}</h1> '
                        f'{badge(target.get("state"))}',
                        subtitle=f'<div class="sub">{endpoint_words(target)}</div>'
                                 f'<nav aria-label="Sections" class="sub">{index}</nav>', now=now)]
    parts += [f'<section class="panel" id="{sid}" aria-labelledby="h-{sid}">'
              f'<h2 id="h-{sid}">{heading}</h2>{body}</section>' for sid, heading, body in sections]
    parts.append(page_end(links=(("/api/v1/targets/" + _path_name(target), "this target as JSON"),)))
    return "".join(parts)


def _path_name(target: Mapping[str, Any]) -> str:
    return html.escape(quote(str(target.get("name") or ""), safe=""), quote=True)


def target_missing_page(key: str, *, now: datetime, back: Query | None = None) -> str:
    """The answer (with a 404) for a key that names no target, or no longer does."""
    shown = text(key)
    return (page_start("no such target · certwatch",
                       f'<a href="{_back(back or Query())}">← all targets</a><br>'
                       "<h1>No such target</h1>", now=now)
            + f'<p class="panel">No target has the key <span class="mono">{shown}</span>. It '
              "may have been removed from the inventory.</p>" + page_end())

