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
from certwatch.core.status import TargetStatus
from certwatch.core.timestamps import rfc3339
from certwatch.core.vocabulary import State
from certwatch.core.x509 import CertInfo

__all__ = ["assessment_to_dict", "open_alerts_by_target", "render_table", "reported_days_left",
           "safe_text", "sort_key", "status_to_dict"]


def cert_to_dict(cert: CertInfo) -> dict[str, Any]:
    return {
        "position": cert.position,
        "subject": cert.subject,
        "issuer": cert.issuer,
        "common_name": cert.common_name,
        "dns_names": list(cert.dns_names),
        "ip_addresses": list(cert.ip_addresses),
        "serial": cert.serial,
        "not_before": rfc3339(cert.not_before),
        "not_after": rfc3339(cert.not_after),
        "lifetime_days": round(cert.lifetime_seconds / 86400, 2),
        "fingerprint_sha256": cert.fingerprint_sha256,
        "key_type": cert.key_type,
        "key_bits": cert.key_bits,
        "signature_algorithm": cert.signature_algorithm,
        "version": cert.version,
        "is_ca": cert.is_ca,
        "self_issued": cert.self_issued,
    }


def reported_days_left(a: Assessment) -> float | None:
    """Days left as the JSON shape (and what is sorted by it) shows them: 2 decimals."""
    return round(a.days_left, 2) if a.days_left is not None else None


def assessment_to_dict(a: Assessment) -> dict[str, Any]:
    endpoint, observation, verification = a.target.endpoint, a.observation, a.verification
    error = observation.error
    return {
        "key": a.target.key,
        "name": endpoint.name,
        "host": endpoint.host,
        "port": endpoint.port,
        "address": a.target.address,
        "server_name": endpoint.server_name,
        "protocol": endpoint.protocol,
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
        "hostname_match": verification.hostname_match if verification else None,
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
    }


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
        "alerts": alerts or [],
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


def _row(a: Assessment) -> list[str]:
    days = a.days_left
    expiry = a.earliest.not_after.strftime("%Y-%m-%d") if a.earliest else "-"
    issuer = a.earliest.issuer if a.earliest else ""
    detail = ", ".join(a.reasons) if a.state is not State.ERROR else a.summary
    return [
        a.state.value.upper(),
        f"{days:.1f}" if days is not None else "-",
        expiry,
        a.target.endpoint.name,
        a.target.address or "-",
        a.target.endpoint.protocol,
        issuer,
        detail,
    ]


def render_table(assessments: Iterable[Assessment], *, colour: bool = False) -> str:
    headers = ["STATE", "DAYS", "EXPIRES", "NAME", "ADDRESS", "PROTO", "ISSUER", "DETAIL"]
    ordered: Sequence[Assessment] = sorted(assessments, key=sort_key)
    rows = [[safe_text(cell) for cell in _row(a)] for a in ordered]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    widths[6] = min(widths[6], 40)  # issuers are long; the JSON output has them whole
    lines = []
    for cells, a in [(headers, None), *zip(rows, ordered)]:
        text = "  ".join(
            (c if len(c) <= widths[i] else c[: widths[i] - 1] + "…").ljust(widths[i])
            if i < len(cells) - 1 else c
            for i, c in enumerate(cells)
        )
        if colour and a is not None:
            text = f"{_COLOURS[a.state]}{text}{_RESET}"
        lines.append(text.rstrip())
    counts: dict[str, int] = {}
    for a in ordered:
        counts[a.state.value] = counts.get(a.state.value, 0) + 1
    lines.append("")
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()) or "no targets")
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
