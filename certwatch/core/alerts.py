"""Alert decisions: from each target's status to notifications. Pure; `now` is passed in.

Per target and kind there is at most one open alert (an incident):
    expiry        the certificate is within warn_days (warning), critical_days
                  (critical) or expired (critical)
    verification  clients reject the certificate (untrusted, name mismatch, ...): critical
    probe         the probe failed `after_failures` times in a row: critical
    revocation    a certificate of the chain is revoked, or a must-staple leaf is served
                  without its staple: critical
    policy        a root-program lint (CT policy, maximum validity, distrusted CA): its
                  severity, warning unless clients already refuse the certificate
    renewal_overdue  the leaf is still served after it should have been replaced
                  (the CA's renewal window ended, or 70% of its life went by): warning

An alert triggers when its condition starts, escalates within the same incident
(warning -> critical, e.g. 29 -> 6 days), is re-sent at the repeat interval of its
severity, and resolves when the condition ends (a renewal: "old -> new expiry") or when
the target leaves the inventory. Keys are stable across restarts (target key + kind), so
a pager's deduplication works.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping

from certwatch.core.refusals import alert_conditions, alert_details
from certwatch.core.status import TargetStatus
from certwatch.core.timestamps import minute_utc, rfc3339
from certwatch.core.vocabulary import Action, AlertKind, Severity

__all__ = ["Alert", "AlertPolicy", "Notification", "decide"]


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    repeat: Mapping[str, timedelta] = field(default_factory=lambda: {
        Severity.WARNING: timedelta(hours=24), Severity.CRITICAL: timedelta(hours=4)})
    probe_failures: int = 3  # consecutive failed probes before a probe alert
    external_url: str | None = None  # the status page, linked from notifications


@dataclass(frozen=True, slots=True)
class Alert:
    """One open incident, as persisted."""

    key: str  # "<target key>/<kind>": stable across restarts
    kind: str
    severity: str
    started_at: datetime
    last_sent_at: datetime
    summary: str
    details: Mapping[str, Any]
    target: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Notification:
    """One message to deliver: what a sink needs to act, no more."""

    id: str  # unique per notification; the outbox's idempotency key
    alert_key: str  # stable per incident: PagerDuty dedup_key, Alertmanager labels
    kind: str
    action: str  # trigger | escalate | remind | resolve
    severity: str  # for resolve: the severity the alert had
    created_at: datetime
    started_at: datetime  # when the incident began
    summary: str  # one line for a person
    target: Mapping[str, Any]  # name, host, port, address, server_name, protocol, labels
    details: Mapping[str, Any]  # subject, issuer, not_after, days_left, state, reasons, ...
    url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "alert_key": self.alert_key, "kind": self.kind,
            "action": self.action, "severity": self.severity,
            "created_at": rfc3339(self.created_at), "started_at": rfc3339(self.started_at),
            "summary": self.summary, "target": dict(self.target), "details": dict(self.details),
            "url": self.url,
        }


def _target_fields(status: TargetStatus) -> dict[str, Any]:
    endpoint = status.target.endpoint
    return {
        "key": status.target.key, "name": endpoint.name, "host": endpoint.host,
        "port": endpoint.port, "address": status.target.address,
        "server_name": endpoint.server_name, "protocol": endpoint.protocol,
        "labels": dict(endpoint.labels),
    }


def _details(status: TargetStatus) -> dict[str, Any]:
    a = status.assessment
    days = a.days_left
    return {
        "state": a.state.value,
        "reasons": list(a.reasons),
        "subject": a.earliest.subject if a.earliest else None,
        "issuer": a.earliest.issuer if a.earliest else None,
        "not_after": rfc3339(a.earliest.not_after) if a.earliest else None,
        "days_left": round(days, 2) if days is not None else None,
        "fingerprint_sha256": a.earliest.fingerprint_sha256 if a.earliest else None,
        "verify_error": a.verification.detail if a.verification and a.verification.detail else None,
        "error": str(status.last_error) if status.last_error else None,
        "consecutive_failures": status.consecutive_failures,
        **alert_details(a),
        "renewal_due_at": rfc3339(a.renewal.due_at) if a.renewal else None,
        "leaf_fingerprint_sha256": a.leaf.fingerprint_sha256 if a.leaf else None,
    }


def conditions(status: TargetStatus, policy: AlertPolicy) -> dict[AlertKind, tuple[Severity, str]]:
    """The alert kinds whose condition holds now: kind -> (severity, summary). Expiry
    and rejection are the assessment's judgement, read here, not judged again."""
    a, name = status.assessment, status.target.key
    found: dict[AlertKind, tuple[Severity, str]] = {}
    expiry = a.expiry
    if expiry is not None and expiry.severity is not None:
        days = expiry.days_left
        summary = (f"{name}: certificate expired {-days:.1f} days ago" if expiry.expired
                   else f"{name}: certificate expires in {days:.1f} days")
        found[AlertKind.EXPIRY] = (expiry.severity, summary)
    if expiry is not None and a.rejections:
        found[AlertKind.VERIFICATION] = (
            Severity.CRITICAL,
            f"{name}: clients reject the certificate ({', '.join(a.rejections)})")
    found.update(alert_conditions(a, name))
    if a.renewal is not None and a.renewal.overdue:
        basis = "the CA's renewal window ended" if a.renewal.basis == "ari" else "due"
        found[AlertKind.RENEWAL_OVERDUE] = (
            Severity.WARNING,
            f"{name}: certificate not renewed: {basis} {minute_utc(a.renewal.due_at)}")
    if status.consecutive_failures >= policy.probe_failures and status.last_error is not None:
        found[AlertKind.PROBE] = (Severity.CRITICAL,
                                  f"{name}: {status.consecutive_failures} probes failed in a "
                                  f"row: {status.last_error}")
    return found


def _notification_id(alert_key: str, action: str, now: datetime) -> str:
    return hashlib.sha256(f"{alert_key}|{action}|{now.isoformat()}".encode()).hexdigest()[:32]


def decide(open_alerts: Mapping[str, Alert], statuses: Iterable[TargetStatus], now: datetime,
           policy: AlertPolicy, *, removed_targets: Iterable[str] = (),
           handed_over_targets: Iterable[str] = ()
           ) -> tuple[dict[str, Alert | None], list[Notification]]:
    """The alerts to store (None: delete) and the notifications to send.

    `statuses` are the targets just probed; `removed_targets` are target keys that left
    the inventory, `handed_over_targets` those another shard watches now (the open
    alerts of both resolve).
    """
    changes: dict[str, Alert | None] = {}
    notices: list[Notification] = []

    def notify(alert: Alert, action: Action, summary: str, details: Mapping[str, Any]) -> None:
        notices.append(Notification(
            id=_notification_id(alert.key, action, now), alert_key=alert.key, kind=alert.kind,
            action=action, severity=alert.severity, created_at=now, started_at=alert.started_at,
            summary=summary, target=alert.target, details=details, url=policy.external_url))

    for status in statuses:
        target = _target_fields(status)
        details = _details(status)
        holding = conditions(status, policy)
        for kind in AlertKind:
            key = f"{status.target.key}/{kind}"
            alert = open_alerts.get(key)
            if kind in holding:
                severity, summary = holding[kind]
                if alert is None:
                    alert = Alert(key, kind, severity, now, now, summary, details, target)
                    changes[key] = alert
                    notify(alert, Action.TRIGGER, summary, details)
                elif severity.rank > Severity(alert.severity).rank:
                    alert = dataclasses.replace(alert, severity=severity, last_sent_at=now,
                                                summary=summary, details=details, target=target)
                    changes[key] = alert
                    notify(alert, Action.ESCALATE, summary, details)
                elif now - alert.last_sent_at >= policy.repeat[alert.severity]:
                    # Severity never drops within an incident: a renewal that still
                    # leaves a warning keeps the critical open until it clears.
                    alert = dataclasses.replace(alert, last_sent_at=now, summary=summary,
                                                details=details, target=target)
                    changes[key] = alert
                    notify(alert, Action.REMIND, summary, details)
                else:
                    changes[key] = dataclasses.replace(alert, summary=summary, details=details,
                                                       target=target)
            elif alert is not None:
                changes[key] = None
                notify(alert, Action.RESOLVE, _resolution(alert, status, details, now), details)

    gone = [(key, "removed from the inventory", "removed") for key in removed_targets]
    gone += [(key, "now watched by another shard", "handed_over") for key in handed_over_targets]
    for target_key, why, flag in gone:
        for kind in AlertKind:
            alert = open_alerts.get(f"{target_key}/{kind}")
            if alert is not None:
                changes[alert.key] = None
                notify(alert, Action.RESOLVE, f"{target_key}: {why}",
                       {**alert.details, flag: True})
    return changes, notices


def _resolution(alert: Alert, status: TargetStatus, details: Mapping[str, Any],
                now: datetime) -> str:
    name = status.target.key
    renewed = status.renewed
    if (alert.kind in (AlertKind.EXPIRY, AlertKind.RENEWAL_OVERDUE) and renewed is not None
            and renewed.current.first_seen >= alert.started_at):
        return f"{name}: {renewed.summary(now)}"  # the history knows when and what
    if alert.kind == AlertKind.RENEWAL_OVERDUE:
        return f"{name}: certificate renewal no longer overdue"
    if alert.kind == AlertKind.EXPIRY:
        old, new = alert.details.get("not_after"), details.get("not_after")
        if old != new:
            return f"{name}: certificate renewed, expiry {old} -> {new}"
        return f"{name}: certificate expiry is no longer within the thresholds"
    if alert.kind == AlertKind.VERIFICATION:
        return f"{name}: clients accept the certificate again"
    if alert.kind == AlertKind.REVOCATION:
        return f"{name}: the certificate served is no longer revoked (renewed or replaced)"
    if alert.kind == AlertKind.POLICY:
        return f"{name}: the certificate no longer breaks a root-program rule"
    return f"{name}: probes succeed again"
