"""What each receiver is sent: pure renderings of a Notification, within each API's limits.

Every string that can come from a certificate or a peer is made one line of printable
text and clipped, then escaped as its receiver needs (Slack's three control
characters, email headers that cannot start a new header).
"""

from __future__ import annotations

import email.policy
import email.utils
import hashlib
import re
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from typing import Any, Sequence

from certwatch.config.sinks import host_port as _host_port
from certwatch.config.sinks import single_line as _text
from certwatch.core.alerts import Notification
from certwatch.core.timestamps import rfc3339
from certwatch.core.vocabulary import Action, AlertKind, Severity

__all__ = ["alertmanager_alert", "alertmanager_alerts", "clip", "email_message",
           "pagerduty_event", "slack_escape", "slack_payload"]


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_LABEL: dict[str, str] = {Severity.WARNING: "WARNING", Severity.CRITICAL: "CRITICAL"}
_ACTION_WORDS: dict[str, str] = {Action.ESCALATE: " (escalated)", Action.REMIND: " (reminder)"}
_ACTION_SENTENCES: dict[str, str] = {Action.ESCALATE: "Escalated.",
                                     Action.REMIND: "Reminder: still open."}
_KIND_TITLE: dict[str, str] = {AlertKind.EXPIRY: "certificate expiry",
                               AlertKind.VERIFICATION: "certificate rejected by clients",
                               AlertKind.PROBE: "TLS probe failing",
                               AlertKind.REVOCATION: "certificate revocation",
                               AlertKind.POLICY: "root-program policy"}


def _label(n: Notification) -> str:
    return "RESOLVED" if n.action == Action.RESOLVE else _LABEL.get(n.severity, n.severity.upper())


def _endpoint(n: Notification) -> str:
    t = n.target
    where = _host_port(str(t.get("host") or "?"), t.get("port"))
    name = t.get("name")
    return f"{name} ({where})" if name and name != t.get("host") else where


def _facts(n: Notification) -> list[tuple[str, str]]:
    """The facts a person needs to act, in reading order, as plain (unescaped) text."""
    t, d = n.target, n.details
    facts = [("Endpoint", _endpoint(n))]
    if t.get("address"):
        facts.append(("Address", _host_port(str(t["address"]), t.get("port"))))
    if t.get("server_name") and t.get("server_name") != t.get("host"):
        facts.append(("Server name", str(t["server_name"])))
    if t.get("protocol") and t.get("protocol") != "tls":
        facts.append(("Protocol", str(t["protocol"])))
    facts.append(("State", str(d.get("state") or "unknown")))
    if d.get("days_left") is not None:
        facts.append(("Days left", f"{d['days_left']}"))
    if d.get("not_after"):
        facts.append(("Expires", str(d["not_after"])))
    if d.get("subject"):
        facts.append(("Subject", str(d["subject"])))
    if d.get("issuer"):
        facts.append(("Issuer", str(d["issuer"])))
    reasons = [str(r) for r in d.get("reasons") or ()]
    for extra in (d.get("verify_error"), d.get("error")):
        if extra and str(extra) not in reasons:
            reasons.append(str(extra))
    if reasons:
        facts.append(("Reason", "; ".join(reasons)))
    return facts


def slack_escape(text: str) -> str:
    """Slack's three control characters, so peer text cannot ping (<!channel>) or link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_url(url: str) -> str:
    # Inside <url|label>: escape the control characters and keep '|' out of the URL part.
    return slack_escape(url).replace("|", "%7C")


_SLACK_EMOJI = {"RESOLVED": ":white_check_mark:", "CRITICAL": ":rotating_light:",
                "WARNING": ":warning:"}


def slack_payload(n: Notification) -> dict[str, Any]:
    """{"text": fallback, "blocks": [...]} within Block Kit's limits: header plain_text
    <= 150 characters, section text <= 3000, at most 10 fields of <= 2000 each. Every
    string from the notification is clipped, then escaped."""
    label = _label(n)
    title = f"{_SLACK_EMOJI.get(label, '')} {label}: {_KIND_TITLE.get(n.kind, n.kind)}".strip()
    summary = slack_escape(clip(_text(n.summary), 500))
    if n.action == Action.RESOLVE:
        headline = f":white_check_mark: *Resolved:* ~{n.severity}~ {summary}"
    else:
        action = _ACTION_WORDS.get(n.action, "")
        headline = f"*{label}{action}:* {summary}"
    fields = [{"type": "mrkdwn", "text": f"*{name}*\n{slack_escape(clip(_text(value), 300))}"}
              for name, value in _facts(n)][:10]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
        {"type": "section", "fields": fields},
    ]
    context = f"alert `{slack_escape(clip(_text(n.alert_key), 200))}` · since {rfc3339(n.started_at)}"
    if n.url:
        context += f" · <{_slack_url(n.url)}|status page>"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    fallback = f"{label}: {summary}"
    return {"text": fallback, "blocks": blocks, "unfurl_links": False, "unfurl_media": False}


def _details(n: Notification) -> dict[str, Any]:
    t = n.target
    details = {
        "endpoint": _endpoint(n), "address": t.get("address"), "port": t.get("port"),
        "server_name": t.get("server_name"), "protocol": t.get("protocol"),
        "labels": dict(t.get("labels") or {}), "kind": n.kind, "action": n.action,
        "started_at": rfc3339(n.started_at), "alert_key": n.alert_key, "status_page": n.url,
        **{k: v for k, v in n.details.items()},
    }
    return {k: v for k, v in details.items() if v not in (None, "", [], {})}


def _dedup_key(alert_key: str) -> str:
    """PagerDuty's dedup_key holds 255 characters; a longer key is cut, stably."""
    if len(alert_key) <= 255:
        return alert_key
    return alert_key[:230] + "#" + hashlib.sha256(alert_key.encode()).hexdigest()[:24]


def pagerduty_event(n: Notification, routing_key: str) -> dict[str, Any]:
    """An Events API v2 event. Remind and escalate re-trigger the same dedup_key (PagerDuty
    updates the open alert); a resolve carries only what identifies the alert."""
    dedup_key = _dedup_key(n.alert_key)
    if n.action == Action.RESOLVE:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key}
    t = n.target
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": clip(_text(n.summary), 1024) or "certwatch alert",
            "source": clip(_text(t.get("host") or t.get("address") or "certwatch"), 255),
            "severity": n.severity if n.severity in ("critical", "error", "warning", "info")
            else "critical",
            "timestamp": rfc3339(n.created_at),
            "component": _host_port(str(t.get("address") or t.get("host") or "?"), t.get("port")),
            "group": str(t.get("name") or t.get("host") or "certwatch"),
            "class": _KIND_TITLE.get(n.kind, n.kind),
            "custom_details": _details(n),
        },
        "client": "certwatch",
    }
    if n.url:
        event["client_url"] = n.url
        event["links"] = [{"href": n.url, "text": "certwatch"}]
    return event


_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def alertmanager_alert(n: Notification, now: datetime, active_for: float, *,
                       severity: str | None = None, resolved: bool | None = None) -> dict[str, Any]:
    """One postableAlert. Labels identify the alert (Alertmanager's fingerprint): the
    target's own labels, then certwatch's, which win on a clash."""
    t, d = n.target, n.details
    labels = {str(k): _text(v) for k, v in (t.get("labels") or {}).items()
              if _LABEL_NAME.match(str(k)) and not str(k).startswith("__")}
    labels.update({
        "alertname": "Certificate" + n.kind.capitalize(),
        "severity": severity or n.severity,
        "name": _text(t.get("name") or ""),
        "host": _text(t.get("host") or ""),
        "port": str(t.get("port") or ""),
        "address": _text(t.get("address") or ""),
        "certwatch_key": n.alert_key,
    })
    annotations = {
        "summary": _text(n.summary),
        "description": "\n".join(f"{k}: {_text(v)}" for k, v in _facts(n)),
        "subject": d.get("subject"), "issuer": d.get("issuer"), "not_after": d.get("not_after"),
        "days_left": None if d.get("days_left") is None else str(d["days_left"]),
        "state": d.get("state"), "reasons": "; ".join(str(r) for r in d.get("reasons") or ()),
        "fingerprint_sha256": d.get("fingerprint_sha256"), "verify_error": d.get("verify_error"),
        "error": d.get("error"), "status_page": n.url,
    }
    is_resolved = n.action == Action.RESOLVE if resolved is None else resolved
    ends = n.created_at if n.action == Action.RESOLVE else now
    if not is_resolved:
        ends = now + timedelta(seconds=active_for)
    return {
        # An empty label value means "no such label" to Alertmanager: leave it out.
        "labels": {k: v for k, v in labels.items() if v},
        "annotations": {k: str(v) for k, v in annotations.items() if v not in (None, "")},
        "startsAt": rfc3339(min(n.started_at, ends)),
        "endsAt": rfc3339(ends),
        "generatorURL": n.url or "",
    }


def alertmanager_alerts(n: Notification, now: datetime, active_for: float) -> list[dict[str, Any]]:
    """What one notification posts. Severity is a label, so an escalated alert is a new
    Alertmanager alert: the warning one it replaces is resolved in the same request, or
    it would fire on until its endsAt."""
    alerts = [alertmanager_alert(n, now, active_for)]
    if n.action == Action.ESCALATE and n.severity in tuple(Severity):
        alerts += [alertmanager_alert(n, now, active_for, severity=lower, resolved=True)
                   for lower in list(Severity)[:Severity(n.severity).rank]]
    return alerts


def _header(text: str, limit: int = 200) -> str:
    """A header value: no CR, LF or other control character can start a new header."""
    return clip(_text(text), limit)


def email_message(n: Notification, sender: str, to: Sequence[str]) -> EmailMessage:
    """Subject "[certwatch] WARNING|CRITICAL|RESOLVED: <summary>", plain-text body."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["Subject"] = _header(f"[certwatch] {_label(n)}: {n.summary}")
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Date"] = email.utils.format_datetime(n.created_at.astimezone(timezone.utc))
    message["Message-ID"] = f"<{re.sub(r'[^A-Za-z0-9.-]', '', n.id) or 'x'}@certwatch>"
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation auto-replies
    message["X-Certwatch-Alert-Key"] = _header(n.alert_key)
    lines = [f"{_label(n)}: {_text(n.summary)}", ""]
    if n.action == Action.RESOLVE:
        lines += [f"The {n.severity} alert is resolved.", ""]
    elif n.action in (Action.ESCALATE, Action.REMIND):
        lines += [_ACTION_SENTENCES[n.action], ""]
    width = max(len(name) for name, _ in _facts(n))
    lines += [f"{name + ':':<{width + 1}} {_text(value)}" for name, value in _facts(n)]
    lines += ["", f"Alert:   {_text(n.alert_key)} (since {rfc3339(n.started_at)})"]
    if n.url:
        lines.append(f"Status:  {_text(n.url)}")
    lines += ["", "-- ", "certwatch"]
    message.set_content("\n".join(lines) + "\n")
    return message
