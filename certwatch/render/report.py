"""Renderings of assessments: JSON-ready dicts for machines, a table for people.

The JSON shape is shared by `certwatch check --format json` and the HTTP API (which
adds what the daemon knows: :func:`status_to_dict`). The
table makes every peer-supplied string harmless on a terminal (control characters and
escape sequences are shown, not interpreted).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from certwatch.core.alerts import Alert
from certwatch.core.assess import Assessment
from certwatch.core.observation import Target
from certwatch.core.names import for_people
from certwatch.core.renewal import Renewal
from certwatch.core.status import TargetStatus
from certwatch.core.timestamps import rfc3339
from certwatch.core.verify import Verification
from certwatch.core.vocabulary import State
from certwatch.core.x509 import CertInfo
from certwatch.render.refusals import refusal_fields, revocation_cell, sct_cell

__all__ = ["assessment_to_dict", "location_of", "open_alerts_by_target", "render_table",
           "reported_days_left", "safe_text", "sort_key", "status_facts", "status_to_dict"]


def cert_to_dict(cert: CertInfo) -> dict[str, Any]:
    return {
        "position": cert.position,
        "subject": cert.subject,
        "issuer": cert.issuer,
        "issuer_name": cert.issuer_name,
        "common_name": cert.common_name,
        "dns_names": list(cert.dns_names),
        "ip_addresses": list(cert.ip_addresses),
        "serial": cert.serial,
        "not_before": rfc3339(cert.not_before),
        "not_after": rfc3339(cert.not_after),
        "lifetime_days": round(cert.lifetime_seconds / 86400, 2),
        "fingerprint_sha256": cert.fingerprint_sha256,
        "fingerprint_sha1": cert.fingerprint_sha1,
        "key_type": cert.key_type,
        "key_bits": cert.key_bits,
        "signature_algorithm": cert.signature_algorithm,
        "version": cert.version,
        "is_ca": cert.is_ca,
        "self_issued": cert.self_issued,
        "authority_key_id": cert.authority_key_id,
    }


def reported_days_left(a: Assessment) -> float | None:
    """Days left as the JSON shape (and what is sorted by it) shows them: 2 decimals."""
    return round(a.days_left, 2) if a.days_left is not None else None


def location_of(target: Target) -> str | None:
    """Where the certificate was found: a file or object ("path#0"), or the address and
    port of a handshake (the host's name when it did not resolve)."""
    if target.location is not None:
        return target.location
    endpoint = target.endpoint
    where = target.address or endpoint.host
    if not where or not endpoint.port:
        return None
    return f"[{where}]:{endpoint.port}" if ":" in where else f"{where}:{endpoint.port}"


def assessment_to_dict(a: Assessment) -> dict[str, Any]:
    endpoint, observation, verification = a.target.endpoint, a.observation, a.verification
    error = observation.error
    key = observation.key_check
    named = verification is not None and verification.name_checked
    return {
        "key": a.target.key,
        "name": endpoint.name,
        "host": endpoint.host,
        "port": endpoint.port,
        "address": a.target.address,
        "server_name": endpoint.server_name,
        "protocol": endpoint.protocol,
        "source": endpoint.source,
        "location": location_of(a.target),
        "origin": endpoint.origin,
        "proxy": endpoint.proxy.url if endpoint.proxy else None,
        "state": a.state.value,
        "reasons": list(a.reasons),
        "summary": a.summary,
        "days_left": reported_days_left(a),
        "leaf_not_before": rfc3339(a.leaf.not_before) if a.leaf else None,
        "leaf_not_after": rfc3339(a.leaf.not_after) if a.leaf else None,
        "earliest_not_after": rfc3339(a.earliest.not_after) if a.earliest else None,
        "earliest_subject": a.earliest.subject if a.earliest else None,
        "earliest_position": a.earliest.position if a.earliest else None,
        "verify": endpoint.verify,
        "verified": verification.ok if verification else None,
        "trusted": verification.trusted if verification else None,
        "verify_error": (verification.detail or None) if verification else None,
        "verify_problems": list(verification.problems) if verification else [],
        "hostname_match": verification.hostname_match if verification and named else None,
        "trust_anchor": _trust_anchor(verification),
        "key_match": (key.problem is None) if key is not None else None,
        "key_problem": key.detail if key is not None and key.problem else None,
        "tls_version": observation.tls_version,
        "cipher": observation.cipher,
        "error_kind": error.kind if error else None,
        "error_phase": error.phase if error else None,
        "error": error.detail if error else None,
        "checked_at": rfc3339(a.checked_at),
        "probe_started_at": rfc3339(observation.started_at),
        "probe_duration_seconds": round(observation.duration_seconds, 4),
        "warn_days": endpoint.warn_days,
        "critical_days": endpoint.critical_days,
        "labels": dict(endpoint.labels),
        "chain": [cert_to_dict(c) for c in a.chain],
        **refusal_fields(a),
        **_policy_fields(a),
        "certificate_history": None,  # a one-shot check keeps none; the daemon does
        "renewed": None,
    }


def _policy_fields(a: Assessment) -> dict[str, Any]:
    """The lifetime of the certificate judged, the share of it used, the thresholds in
    force for it, and when the leaf should be (or should have been) replaced."""
    endpoint, expiry = a.target.endpoint, a.expiry
    return {
        # four decimals: a certificate of minutes is still told apart (0.0001 d = 8.6 s)
        "lifetime_days": round(expiry.lifetime_days, 4) if expiry else None,
        "lifetime_used": round(expiry.used, 4) if expiry else None,
        "warn_fraction": round(endpoint.warn_fraction, 4),
        "critical_fraction": round(endpoint.critical_fraction, 4),
        "renewal_due_fraction": round(endpoint.renewal_due_fraction, 4),
        "warn_days_in_force": round(expiry.warn_days, 4) if expiry else None,
        "critical_days_in_force": round(expiry.critical_days, 4) if expiry else None,
        "warning_at": rfc3339(expiry.warning_at) if expiry else None,
        "critical_at": rfc3339(expiry.critical_at) if expiry else None,
        "acme_directory": endpoint.acme_directory,
        "renewal": _renewal(a.renewal),
    }


def _renewal(renewal: Renewal | None) -> dict[str, Any] | None:
    if renewal is None:
        return None
    info = renewal.info
    window = info.window if info else None
    planned = info.planned if info else None
    return {
        "due_at": rfc3339(renewal.due_at),
        "basis": renewal.basis,
        "overdue": renewal.overdue,
        "window_start": rfc3339(window.start) if window else None,
        "window_end": rfc3339(window.end) if window else None,
        "window_moved_earlier": renewal.window_moved_earlier,
        "planned_window_start": rfc3339(planned.start) if planned else None,
        "planned_window_end": rfc3339(planned.end) if planned else None,
        "explanation_url": info.explanation_url if info else None,
        "checked_at": rfc3339(info.checked_at) if info else None,
        "next_check_at": rfc3339(info.next_check_at) if info else None,
        "error": info.error if info else None,
    }


def _trust_anchor(verification: Verification | None) -> str | None:
    """The subject of the trusted root the chain verified to (servers seldom send it)."""
    path = verification.path if verification else ()
    return path[-1].subject if path and path[-1].position < 0 else None


def status_to_dict(status: TargetStatus, next_probe_at: datetime | None,
                   alerts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The API shape: the `check --format json` fields plus the daemon's own."""
    error = status.last_error
    return {
        **assessment_to_dict(status.assessment),
        "probe_success": status.probe_success,
        "last_probe_at": rfc3339(status.last_probe_at),
        "next_probe_at": rfc3339(next_probe_at),
        "last_error": ({"kind": error.kind, "phase": error.phase, "detail": error.detail}
                       if error else None),
        "consecutive_failures": status.consecutive_failures,
        "certificate_read_at": rfc3339(status.certificate_read_at),
        "recent_errors": [{"at": rfc3339(at), "kind": e.kind, "phase": e.phase, "detail": e.detail}
                          for at, e in status.recent_errors],
        "alerts": alerts or [],
        "certificate_history": ([seen.to_dict() for seen in status.history]
                                if status.history is not None else None),
        "renewed": status.renewed.to_dict() if status.renewed else None,
    }


def status_facts(status: TargetStatus) -> dict[str, Any]:
    """What the status page filters, sorts and counts by (:mod:`certwatch.render.selection`
    reads these keys only), with the API's values, at a fraction of the cost of
    :func:`status_to_dict`: a page of 10,000 targets selects over these, and builds the
    whole dict only for the rows it shows."""
    a = status.assessment
    endpoint = a.target.endpoint
    return {
        "key": a.target.key,
        "name": endpoint.name,
        "host": endpoint.host,
        "address": a.target.address,
        "server_name": endpoint.server_name,
        "state": a.state.value,
        "days_left": reported_days_left(a),
        "labels": dict(endpoint.labels),
        "source": endpoint.source,
        "location": location_of(a.target),
        "origin": endpoint.origin,
        "last_probe_at": rfc3339(status.last_probe_at),
        # The names as the parsed certificate holds them (tuples, not copied into lists):
        # the same values, read only.
        "chain": [{"dns_names": c.dns_names, "ip_addresses": c.ip_addresses,
                   "issuer": c.issuer, "issuer_name": c.issuer_name} for c in a.chain],
    }


def sort_key(a: Assessment) -> tuple[float, int, str]:
    """Soonest expiry first; targets with no certificate after them, by name."""
    days = a.days_left
    return (days if days is not None else float("inf"), -a.state.rank, a.target.key)


def safe_text(text: str) -> str:
    """Makes a peer-supplied string harmless on a terminal: control characters escaped."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


_COLOURS = {
    State.OK: "\033[32m",
    State.WARNING: "\033[33m",
    State.CRITICAL: "\033[31m",
    State.EXPIRED: "\033[1;31m",
    State.ERROR: "\033[35m",
}
_RESET = "\033[0m"


def _where(a: Assessment) -> str:
    """Where the certificate was found, for people: international names in Unicode, and
    through a proxy, the name the proxy resolved and the proxy."""
    location = location_of(a.target)
    if location is None:
        return "-"
    proxy = a.target.endpoint.proxy
    return f"{for_people(location)} via {proxy.url}" if proxy else for_people(location)


def _row(a: Assessment) -> list[str]:
    days, expiry, renewal = a.days_left, a.expiry, a.renewal
    expires = a.earliest.not_after.strftime("%Y-%m-%d") if a.earliest else "-"
    issuer = a.earliest.issuer if a.earliest else ""
    detail = ", ".join(a.reasons) if a.state is not State.ERROR else a.summary
    return [
        a.state.value.upper(),
        f"{days:.1f}" if days is not None else "-",
        expires,
        for_people(a.target.endpoint.name),
        a.target.endpoint.source,
        _where(a),
        a.target.endpoint.protocol or "-",
        f"{round(expiry.lifetime_days, 1):g}d {expiry.used:.0%}" if expiry else "-",
        f"{round(expiry.warn_days, 1):g}/{round(expiry.critical_days, 1):g}d" if expiry else "-",
        (renewal.due_at.strftime("%Y-%m-%d") + (" (ARI)" if renewal.basis == "ari" else ""))
        if renewal else "-",
        issuer,
        revocation_cell(a),
        sct_cell(a),
        detail,
    ]


def _fit(cell: str, width: int, *, keep_end: bool = False) -> str:
    """A cell cut to `width`; a location keeps its end (the file name and position)."""
    if len(cell) <= width:
        return cell
    return "…" + cell[len(cell) - width + 1:] if keep_end else cell[: width - 1] + "…"


HISTORY_NOTE = ("renewals: a one-shot check keeps no certificate history "
                "(`certwatch run` does, and shows them)")


def render_table(assessments: Iterable[Assessment], *, colour: bool = False) -> str:
    """LIFE is the certificate's lifetime and the share used, WARN/CRIT the thresholds in
    force for it (days left), RENEW BY when the leaf should be replaced."""
    headers = ["STATE", "DAYS", "EXPIRES", "NAME", "SOURCE", "LOCATION", "PROTO", "LIFE",
               "WARN/CRIT", "RENEW BY", "ISSUER", "REVOCATION", "SCTS", "DETAIL"]
    ordered: Sequence[Assessment] = sorted(assessments, key=sort_key)
    rows = [[safe_text(cell) for cell in _row(a)] for a in ordered]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    widths[5] = min(widths[5], 60)  # a deep path; the JSON output has it whole
    widths[10] = min(widths[10], 40)  # issuers are long; the JSON output has them whole
    lines = []
    for cells, a in [(headers, None), *zip(rows, ordered)]:
        text = "  ".join(_fit(c, widths[i], keep_end=i == 5).ljust(widths[i])
                         if i < len(cells) - 1 else c for i, c in enumerate(cells))
        if colour and a is not None:
            text = f"{_COLOURS[a.state]}{text}{_RESET}"
        lines.append(text.rstrip())
    counts: dict[str, int] = {}
    for a in ordered:
        counts[a.state.value] = counts.get(a.state.value, 0) + 1
    lines.append("")
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()) or "no targets")
    if any(a.leaf is not None for a in ordered):
        lines.append(HISTORY_NOTE)
    return "\n".join(lines)


def open_alerts_by_target(open_alerts: Mapping[str, Alert],
                          last: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Open alerts grouped by target key, each with its last notification, for the API."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for alert in open_alerts.values():
        grouped.setdefault(alert.target.get("key", ""), []).append({
            "key": alert.key, "kind": alert.kind, "severity": alert.severity,
            "started_at": rfc3339(alert.started_at), "summary": alert.summary,
            "last_notification": _last_notification(last.get(alert.key))})
    return grouped


def _last_notification(last: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The outbox's last notification of an alert, its times in RFC 3339 as every time in
    the API (the outbox keeps seconds since the epoch)."""
    if last is None:
        return None
    sinks = {name: {**info, "delivered_at": _epoch_rfc3339(info.get("delivered_at"))}
             for name, info in (last.get("sinks") or {}).items()}
    return {**last, "sinks": sinks}


def _epoch_rfc3339(seconds: Any) -> str | None:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return None
    return rfc3339(datetime.fromtimestamp(seconds, timezone.utc))
