"""Delivery of one notification to one receiver: webhook, Slack, PagerDuty, Alertmanager,
email. The outbox and its retries live in :mod:`certwatch.notifier`; a sink only sends.

Each sink is a frozen dataclass made by :func:`parse_sinks` from the `alerts.sinks` list
of the configuration. Secrets (webhook URLs, routing keys, HMAC keys, SMTP passwords) are
read from environment variables or files at parse time, are kept in fields hidden from
``repr``, and never appear in a problem message, a log line or a :class:`SinkError`:
messages name a receiver by ``scheme://host:port`` only, and any secret that a receiver
echoes back in its answer is replaced by ``[redacted]``.

Errors:

    SinkError(message, retryable, retry_after)
        retryable=True:  timeouts, connection errors, HTTP 408, 429 and 5xx, SMTP 4xx
        retryable=False: any other HTTP 4xx (and 3xx: redirects are not followed),
                         SMTP 5xx, an SMTP server without STARTTLS

Every send has one overall deadline (the sink's `timeout`), on top of httpx's per-phase
timeouts, so a receiver that trickles bytes cannot hold a delivery past it either.

Webhook signing: with `hmac_secret_env`/`hmac_secret_file` set, each request carries

    X-Certwatch-Timestamp: <unix seconds>
    X-Certwatch-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + raw body)>

The timestamp is part of what is signed, so a receiver that rejects timestamps older
than a few minutes cannot be fooled by a replayed request (see :func:`webhook_signature`).
"""

from __future__ import annotations

import asyncio
import difflib
import email.policy
import email.utils
import hashlib
import hmac
import json
import os
import re
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import httpx

from certwatch.alerts import SEVERITIES, Notification, severity_rank
from certwatch.config import describe, line_of
from certwatch.report import rfc3339

__all__ = [
    "SINK_TYPES",
    "AlertmanagerSink",
    "EmailSink",
    "PagerDutySink",
    "Sink",
    "SinkError",
    "SlackSink",
    "WebhookSink",
    "parse_sinks",
    "webhook_signature",
]

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
_USER_AGENT = "certwatch"
_HTTP_TIMEOUT = 10.0  # seconds per delivery; a pager API answers in well under a second
_SMTP_TIMEOUT = 30.0  # SMTP needs several round trips plus a TLS handshake
_REFRESH_INTERVAL = 60.0  # Alertmanager: re-post firing alerts this often ...
_ACTIVE_FOR = 3600.0  # ... each valid for this long (endsAt), so a dead certwatch's
#                       alerts resolve by themselves an hour later
_SNIPPET = 200  # characters of a receiver's error answer kept in a SinkError
_REDACTED = "[redacted]"


class SinkError(Exception):
    """A delivery failed. `retryable` says whether sending the same thing again later
    can succeed; `retry_after` is the receiver's Retry-After, in seconds, if it sent one."""

    def __init__(self, message: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


@runtime_checkable
class Sink(Protocol):
    """What the notifier needs of a sink. Attributes are read-only (sinks are frozen)."""

    @property
    def name(self) -> str: ...  # unique: the outbox and the metrics key deliveries by it

    @property
    def type(self) -> str: ...  # webhook | slack | pagerduty | alertmanager | email

    @property
    def min_severity(self) -> str: ...

    @property
    def match(self) -> Mapping[str, str]: ...

    def accepts(self, n: Notification) -> bool: ...

    async def send(self, n: Notification, client: httpx.AsyncClient) -> None: ...


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _empty_labels() -> Mapping[str, str]:
    return MappingProxyType({})


# --- the sinks ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Routing:
    """What every sink has: a name, routing rules, a deadline and a clock."""

    type: str = field(default="", init=False)
    name: str
    min_severity: str = "warning"
    match: Mapping[str, str] = field(default_factory=_empty_labels)
    timeout: float = _HTTP_TIMEOUT
    clock: Callable[[], datetime] = field(default=_utcnow, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Sinks with a secret `url` show only its scheme://host:port, as `endpoint`.
        url = getattr(self, "url", None)
        if isinstance(url, str) and getattr(self, "endpoint", None) == "":
            object.__setattr__(self, "endpoint", _safe_url(url))

    def accepts(self, n: Notification) -> bool:
        """At or above min_severity (a resolve carries the severity the alert had, so it
        goes exactly where the alert went) and every `match` label equal."""
        if severity_rank(n.severity) < severity_rank(self.min_severity):
            return False
        labels = n.target.get("labels") or {}
        return all(k in labels and str(labels[k]) == v for k, v in self.match.items())


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSink(_Routing):
    """POSTs ``{"version": 1, **notification.to_dict()}`` as JSON."""

    type: str = field(default="webhook", init=False)
    url: str = field(repr=False)
    endpoint: str = ""  # scheme://host:port, safe to show; derived from url
    hmac_secret: bytes | None = field(default=None, repr=False)

    async def send(self, n: Notification, client: httpx.AsyncClient) -> None:
        body = _json({"version": 1, **n.to_dict()})
        headers = {"Content-Type": "application/json", "Idempotency-Key": n.id}
        if self.hmac_secret is not None:
            timestamp = str(int(self.clock().timestamp()))
            headers["X-Certwatch-Timestamp"] = timestamp
            headers["X-Certwatch-Signature"] = webhook_signature(self.hmac_secret, timestamp, body)
        await _post(self, client, self.url, body, headers, secrets=_secrets(self.url, self.hmac_secret))


def webhook_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Certwatch-Signature value: ``sha256=`` + hex HMAC-SHA256 over
    ``timestamp + "." + body``. A receiver recomputes it over the raw body it got and
    compares with :func:`hmac.compare_digest`, and rejects stale timestamps."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class SlackSink(_Routing):
    """A Slack incoming webhook: Block Kit sections in mrkdwn, every string escaped."""

    type: str = field(default="slack", init=False)
    url: str = field(repr=False)  # the URL is the credential
    endpoint: str = ""

    async def send(self, n: Notification, client: httpx.AsyncClient) -> None:
        body = _json(slack_payload(n))
        await _post(self, client, self.url, body, {"Content-Type": "application/json"},
                    secrets=_secrets(self.url))


@dataclass(frozen=True, slots=True, kw_only=True)
class PagerDutySink(_Routing):
    """PagerDuty Events API v2: trigger (also for remind and escalate) and resolve, with the
    alert key as dedup_key so PagerDuty folds them into one incident."""

    type: str = field(default="pagerduty", init=False)
    routing_key: str = field(repr=False)
    url: str = PAGERDUTY_URL

    async def send(self, n: Notification, client: httpx.AsyncClient) -> None:
        body = _json(pagerduty_event(n, self.routing_key))
        await _post(self, client, self.url, body, {"Content-Type": "application/json"},
                    secrets=_secrets(self.routing_key))


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertmanagerSink(_Routing):
    """Alertmanager API v2. Firing alerts carry endsAt = now + active_for and must be
    re-posted (:meth:`refresh`) every refresh_interval; a resolve sets endsAt to the
    moment it resolved."""

    type: str = field(default="alertmanager", init=False)
    url: str = field(repr=False)  # base URL (http://am:9093) or the full .../api/v2/alerts
    endpoint: str = ""
    refresh_interval: float = _REFRESH_INTERVAL
    active_for: float = _ACTIVE_FOR

    @property
    def alerts_url(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/api/v2/alerts") else base + "/api/v2/alerts"

    async def send(self, n: Notification, client: httpx.AsyncClient) -> None:
        await self._post(alertmanager_alerts(n, self.clock(), self.active_for), client)

    async def refresh(self, active: Sequence[Notification], client: httpx.AsyncClient) -> None:
        """Re-posts every still-firing alert this sink accepts, in one request."""
        now = self.clock()
        alerts = [alertmanager_alert(n, now, self.active_for) for n in active
                  if n.action != "resolve" and self.accepts(n)]
        if alerts:
            await self._post(alerts, client)

    async def _post(self, alerts: list[dict[str, Any]], client: httpx.AsyncClient) -> None:
        await _post(self, client, self.alerts_url, _json(alerts),
                    {"Content-Type": "application/json"}, secrets=_secrets(self.url))


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailSink(_Routing):
    """A plain-text email over SMTP, with STARTTLS (verified against the system trust
    store or `ca_file`) before any password is sent."""

    type: str = field(default="email", init=False)
    smtp_host: str
    smtp_port: int = 587
    starttls: bool = True
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str  # the `from` key
    to: tuple[str, ...]
    ca_file: Path | None = None
    timeout: float = _SMTP_TIMEOUT

    async def send(self, n: Notification, client: httpx.AsyncClient) -> None:
        message = email_message(n, self.sender, self.to)
        attempt = _SmtpAttempt()
        where = f"email sink '{self.name}' (smtp://{_host_port(self.smtp_host, self.smtp_port)})"
        finished = False
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.to_thread(self._deliver, message, attempt)
            finished = True
        except TimeoutError:
            raise SinkError(f"{where}: no answer within {self.timeout:g}s", retryable=True) from None
        except SinkError as exc:
            raise SinkError(f"{where}: {exc.message}", exc.retryable) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            detail = "; ".join(f"{rcpt}: {code} {_text(msg)}"
                               for rcpt, (code, msg) in exc.recipients.items())
            raise SinkError(f"{where}: recipients refused: "
                            f"{_clip(_redact(detail, self._secrets()), _SNIPPET)}",
                            retryable=all(400 <= c < 500 for c in codes)) from None
        except smtplib.SMTPResponseException as exc:
            detail = _clip(_redact(_text(exc.smtp_error), self._secrets()), _SNIPPET)
            raise SinkError(f"{where}: {exc.smtp_code} {detail}",
                            retryable=not 500 <= exc.smtp_code < 600) from None
        except smtplib.SMTPNotSupportedError as exc:  # e.g. no AUTH offered: configuration
            raise SinkError(f"{where}: {_text(exc)}", retryable=False) from None
        except (smtplib.SMTPException, OSError) as exc:
            detail = _clip(_redact(str(exc) or type(exc).__name__, self._secrets()), _SNIPPET)
            raise SinkError(f"{where}: {type(exc).__name__}: {detail}", retryable=True) from None
        finally:
            if not finished:
                # Timed out or cancelled: wake the worker thread blocked on its socket
                # (the thread is not ours to cancel); it then ends on its own.
                attempt.abort()

    def _secrets(self) -> tuple[str, ...]:
        return _secrets(self.password)

    def _deliver(self, message: EmailMessage, attempt: _SmtpAttempt) -> None:
        """Blocking: runs in a worker thread, every socket operation under `timeout`."""
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        # local_hostname: smtplib's default, socket.getfqdn(), may block on DNS.
        smtp = _SMTP(attempt, self.smtp_host, self.smtp_port, timeout=self.timeout,
                     local_hostname=socket.gethostname() or "certwatch")
        try:
            smtp.ehlo()
            if self.starttls:
                if not smtp.has_extn("starttls"):
                    raise SinkError("the server does not offer STARTTLS", retryable=False)
                smtp.starttls(context=context)
                attempt.register(smtp.sock)
                smtp.ehlo()
            if self.username is not None:
                smtp.login(self.username, self.password or "")
            smtp.send_message(message, from_addr=self.sender, to_addrs=list(self.to))
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass  # the message was accepted; a rude goodbye changes nothing
        finally:
            smtp.close()


class _SMTP(smtplib.SMTP):
    """smtplib.SMTP that hands its socket to the attempt before waiting for the greeting
    (the constructor connects; passing the host there also sets the name STARTTLS checks)."""

    def __init__(self, attempt: _SmtpAttempt, host: str, port: int, **kwargs: Any) -> None:
        self._attempt = attempt
        super().__init__(host, port, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        self._attempt.register(sock)
        return sock


class _SmtpAttempt:
    """Lets the event loop wake a worker thread blocked on its SMTP socket."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._aborted = False
        self._lock = threading.Lock()

    def register(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            aborted = self._aborted
        if aborted:
            self._shutdown(sock)

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            sock = self._sock
        self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket | None) -> None:
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed


SINK_TYPES: dict[str, type] = {
    "webhook": WebhookSink,
    "slack": SlackSink,
    "pagerduty": PagerDutySink,
    "alertmanager": AlertmanagerSink,
    "email": EmailSink,
}


# --- HTTP delivery -------------------------------------------------------------------------


async def _post(sink: _Routing, client: httpx.AsyncClient, url: str, body: bytes,
                headers: dict[str, str], *, secrets: tuple[str, ...]) -> httpx.Response:
    where = f"{sink.type} sink '{sink.name}' ({_safe_url(url)})"
    headers = {"User-Agent": _USER_AGENT, **headers}
    try:
        async with asyncio.timeout(sink.timeout):
            response = await client.post(url, content=body, headers=headers,
                                         timeout=sink.timeout, follow_redirects=False)
    except (TimeoutError, httpx.TimeoutException):
        raise SinkError(f"{where}: no answer within {sink.timeout:g}s", retryable=True) from None
    except httpx.HTTPError as exc:
        detail = _clip(_redact(str(exc) or type(exc).__name__, secrets), _SNIPPET)
        raise SinkError(f"{where}: {type(exc).__name__}: {detail}", retryable=True) from None
    status = response.status_code
    if 200 <= status < 300:
        return response
    retryable = status in (408, 429) or status >= 500
    snippet = _clip(_redact(_text(response.text), secrets), _SNIPPET)
    message = f"{where}: HTTP {status}" + (f": {snippet}" if snippet else "")
    raise SinkError(message, retryable, _retry_after(response) if retryable else None)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - _utcnow()).total_seconds())


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def _secrets(*values: str | bytes | None) -> tuple[str, ...]:
    """The strings that must never be shown: each secret, and for a URL its path, its
    longer path segments and its query too (a Slack webhook's credential is its path)."""
    found: list[str] = []
    for value in values:
        if value is None:
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if not text:
            continue
        found.append(text)
        if "://" in text:
            parts = urlsplit(text)
            found += [p for p in (parts.path.strip("/"), parts.query, parts.password or "")
                      if len(p) >= 4]
            found += [p for p in parts.path.split("/") if len(p) >= 8]  # e.g. the token alone
    return tuple(sorted(set(found), key=len, reverse=True))


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, _REDACTED)
    return text


def _safe_url(url: str) -> str:
    """scheme://host:port: no credentials, no path, no query."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or "?"
    return f"{parts.scheme}://{_host_port(host, port) if port else _host(host)}"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _host_port(host: str, port: int | None) -> str:
    return f"{_host(host)}:{port}" if port else _host(host)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def _text(value: Any) -> str:
    """One line of printable text."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return _CONTROL.sub(" ", str(value)).strip()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- payloads ------------------------------------------------------------------------------

_LABEL = {"warning": "WARNING", "critical": "CRITICAL"}
_KIND_TITLE = {"expiry": "certificate expiry", "verification": "certificate rejected by clients",
               "probe": "TLS probe failing"}


def _label(n: Notification) -> str:
    return "RESOLVED" if n.action == "resolve" else _LABEL.get(n.severity, n.severity.upper())


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
    summary = slack_escape(_clip(_text(n.summary), 500))
    if n.action == "resolve":
        headline = f":white_check_mark: *Resolved:* ~{n.severity}~ {summary}"
    else:
        action = {"escalate": " (escalated)", "remind": " (reminder)"}.get(n.action, "")
        headline = f"*{label}{action}:* {summary}"
    fields = [{"type": "mrkdwn", "text": f"*{name}*\n{slack_escape(_clip(_text(value), 300))}"}
              for name, value in _facts(n)][:10]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
        {"type": "section", "fields": fields},
    ]
    context = f"alert `{slack_escape(_clip(_text(n.alert_key), 200))}` · since {rfc3339(n.started_at)}"
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
    if n.action == "resolve":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key}
    t = n.target
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": _clip(_text(n.summary), 1024) or "certwatch alert",
            "source": _clip(_text(t.get("host") or t.get("address") or "certwatch"), 255),
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
    is_resolved = n.action == "resolve" if resolved is None else resolved
    ends = n.created_at if n.action == "resolve" else now
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
    if n.action == "escalate" and n.severity in SEVERITIES:
        alerts += [alertmanager_alert(n, now, active_for, severity=lower, resolved=True)
                   for lower in SEVERITIES[:severity_rank(n.severity)]]
    return alerts


def _header(text: str, limit: int = 200) -> str:
    """A header value: no CR, LF or other control character can start a new header."""
    return _clip(_text(text), limit)


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
    if n.action == "resolve":
        lines += [f"The {n.severity} alert is resolved.", ""]
    elif n.action in ("escalate", "remind"):
        lines += [{"escalate": "Escalated.", "remind": "Reminder: still open."}[n.action], ""]
    width = max(len(name) for name, _ in _facts(n))
    lines += [f"{name + ':':<{width + 1}} {_text(value)}" for name, value in _facts(n)]
    lines += ["", f"Alert:   {_text(n.alert_key)} (since {rfc3339(n.started_at)})"]
    if n.url:
        lines.append(f"Status:  {_text(n.url)}")
    lines += ["", "-- ", "certwatch"]
    message.set_content("\n".join(lines) + "\n")
    return message


# --- configuration -------------------------------------------------------------------------

_COMMON_KEYS = ("name", "type", "min_severity", "match", "timeout")
_KEYS: dict[str, tuple[str, ...]] = {
    "webhook": (*_COMMON_KEYS, "url", "url_env", "url_file", "hmac_secret_env",
                "hmac_secret_file"),
    "slack": (*_COMMON_KEYS, "url_env", "url_file"),
    "pagerduty": (*_COMMON_KEYS, "routing_key_env", "routing_key_file", "url"),
    "alertmanager": (*_COMMON_KEYS, "url", "url_env", "url_file", "refresh_interval",
                     "active_for"),
    "email": (*_COMMON_KEYS, "smtp_host", "smtp_port", "starttls", "username", "password_env",
              "password_file", "from", "to", "ca_file"),
}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_ADDRESS = re.compile(r"^[^\s<>@,;\"]+@[^\s<>@,;\"]+$")


class _Entry:
    """Reads one sink entry, recording problems (never a secret's value) as it goes."""

    def __init__(self, raw: dict[Any, Any], where: str, problems: list[str], environ: Mapping[str, str],
                 base: Path) -> None:
        self.raw, self.where, self.problems, self.environ, self.base = (
            raw, where, problems, environ, base)
        self.failed = False

    def problem(self, key: str | None, message: str) -> None:
        line = line_of(self.raw, key)
        self.problems.append(f"line {line}: {self.where}: {message}" if line
                             else f"{self.where}: {message}")
        self.failed = True

    def string(self, key: str, *, required: bool = False) -> str | None:
        value = self.raw.get(key)
        if value is None:
            if required:
                self.problem(None, f"'{key}' is required")
            return None
        if not isinstance(value, str) or not value.strip() or _CONTROL.search(value):
            self.problem(key, f"'{key}' must be a non-empty single-line string, "
                              f"not {describe(value)}")
            return None
        return value.strip()

    def seconds(self, key: str, fallback: float, *, minimum: float, maximum: float) -> float:
        if key not in self.raw:
            return fallback
        value = self.raw[key]
        match = _DURATION.match(value) if isinstance(value, str) else None
        if match:
            value = float(match.group(1)) * _UNIT[match.group(2)]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not minimum <= value <= maximum:
            self.problem(key, f"'{key}' must be a duration such as 10, \"10s\" or \"5m\" between "
                              f"{minimum:g}s and {maximum:g}s, not {describe(self.raw[key])}")
            return fallback
        return float(value)

    def boolean(self, key: str, fallback: bool) -> bool:
        value = self.raw.get(key, fallback)
        if not isinstance(value, bool):
            self.problem(key, f"'{key}' must be true or false, not {describe(value)}")
            return fallback
        return value

    def path(self, key: str) -> Path:
        path = Path(os.path.expanduser(str(self.raw[key])))
        return path if path.is_absolute() else self.base / path

    def secret(self, stem: str, *, required: bool, what: str) -> str | None:
        """The value of `<stem>_env` or `<stem>_file`. Messages name the variable or the
        file, never what it holds."""
        env_key, file_key = f"{stem}_env", f"{stem}_file"
        given = [k for k in (env_key, file_key) if self.raw.get(k) is not None]
        if len(given) > 1:
            self.problem(file_key, f"give either '{env_key}' or '{file_key}', not both")
            return None
        if not given:
            if required:
                self.problem(None, f"{what} is a secret: set '{env_key}' (an environment "
                                   f"variable's name) or '{file_key}'")
            return None
        key = given[0]
        ref = self.raw[key]
        if not isinstance(ref, str) or not ref.strip():
            self.problem(key, f"'{key}' must be a non-empty string, not {describe(ref)}")
            return None
        if key == env_key:
            if not _ENV_NAME.match(ref):
                self.problem(key, f"'{key}' must name an environment variable, "
                                  f"not {describe(ref)}")
                return None
            value = self.environ.get(ref)
            if value is None:
                self.problem(key, f"'{key}': environment variable {ref} is not set")
                return None
            source = f"environment variable {ref}"
        else:
            path = self.path(key)
            try:
                value = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                self.problem(key, f"'{key}': {path} is not UTF-8 text")
                return None
            except OSError as exc:
                self.problem(key, f"'{key}': cannot read {path}: {exc.strerror or type(exc).__name__}")
                return None
            source = str(path)
        value = value.strip()
        if not value:
            self.problem(key, f"'{key}': {source} is empty")
            return None
        if _CONTROL.search(value):
            self.problem(key, f"'{key}': {source} must hold one line")
            return None
        return value

    def url(self, *, secret_only: bool, required: bool = True, default: str | None = None) -> str | None:
        """`url` (where allowed) or `url_env`/`url_file`: an http(s) URL."""
        plain = self.raw.get("url")
        referenced = any(self.raw.get(k) is not None for k in ("url_env", "url_file"))
        if plain is not None and referenced:
            self.problem("url", "give one of 'url', 'url_env' or 'url_file'")
            return None
        if plain is not None and secret_only:
            self.problem("url", "this URL is a credential: put it in an environment variable "
                                "('url_env') or a file ('url_file'), not in the configuration")
            return None
        if plain is not None:
            value = self.string("url")
            origin = "'url'"
        elif referenced:
            value = self.secret("url", required=True, what="the URL")
            origin = "'url_env'" if self.raw.get("url_env") is not None else "'url_file'"
        else:
            if default is None and required:
                self.problem(None, "'url', 'url_env' or 'url_file' is required"
                             if not secret_only else
                             "the webhook URL is a credential: set 'url_env' or 'url_file'")
            return default
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            # Do not echo the value: it may be a credential.
            self.problem("url" if plain is not None else None,
                         f"{origin} must hold an http:// or https:// URL with a host")
            return None
        if plain is not None and (parts.password or parts.username):
            self.problem("url", "'url' holds credentials: move the URL to 'url_env' or "
                                "'url_file'")
            return None
        return value


def parse_sinks(raw: Any, where: str, environ: Mapping[str, str],
                base: Path) -> tuple[list[Sink], list[str]]:
    """The sinks of the `alerts.sinks` list and every problem found, one line each (never
    raises). `where` names the list in messages ("config.yaml: alerts.sinks"); relative
    `*_file` paths are relative to `base`. A sink with a problem is left out."""
    problems: list[str] = []
    sinks: list[Sink] = []
    if raw is None:
        return sinks, problems
    if not isinstance(raw, list):
        line = line_of(raw)
        problems.append((f"line {line}: " if line else "")
                        + f"{where}: must be a list of sinks, not {describe(raw)}")
        return sinks, problems
    seen: dict[str, str] = {}
    for index, item in enumerate(raw):
        label = f"{where}[{index}]"
        if not isinstance(item, dict):
            line = line_of(raw)
            problems.append((f"line {line}: " if line else "")
                            + f"{label}: must be a mapping, not {describe(item)}")
            continue
        name = item.get("name")
        if isinstance(name, str) and name.strip():
            label = f"{label} '{_text(name)[:60]}'"
        entry = _Entry(item, label, problems, environ, base)
        sink = _parse_one(entry)
        if isinstance(name, str) and name.strip():
            if name.strip() in seen:
                entry.problem("name", f"the name '{_text(name)[:60]}' is already used by "
                                      f"{seen[name.strip()]}")
                continue
            seen[name.strip()] = f"{where}[{index}]"
        if sink is not None and not entry.failed:
            sinks.append(sink)
    return sinks, problems


def _parse_one(entry: _Entry) -> Sink | None:
    raw = entry.raw
    kind = raw.get("type")
    if kind not in _KEYS:
        if kind is None:
            entry.problem(None, f"'type' is required: one of {', '.join(_KEYS)}")
        else:
            hint = difflib.get_close_matches(str(kind), list(_KEYS), n=1, cutoff=0.6)
            entry.problem("type", f"unknown type {describe(kind)}"
                                  + (f" (did you mean '{hint[0]}'?)" if hint
                                     else f"; known types: {', '.join(_KEYS)}"))
        return None
    allowed = _KEYS[kind]
    for key in raw:
        if key in allowed:
            continue
        hint = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        entry.problem(str(key), f"unknown key {describe(key)} for a {kind} sink"
                      + (f" (did you mean '{hint[0]}'?)" if hint
                         else f"; known keys: {', '.join(allowed)}"))

    name = entry.string("name", required=True)
    if name is not None and len(name) > 64:
        entry.problem("name", "'name' must be at most 64 characters")
    min_severity = raw.get("min_severity", "warning")
    if min_severity not in SEVERITIES:
        entry.problem("min_severity", f"'min_severity' must be one of {', '.join(SEVERITIES)}, "
                                      f"not {describe(min_severity)}")
        min_severity = "warning"
    match = _read_match(entry)
    default_timeout = _SMTP_TIMEOUT if kind == "email" else _HTTP_TIMEOUT
    timeout = entry.seconds("timeout", default_timeout, minimum=0.05, maximum=300)
    common: dict[str, Any] = {"name": name or "", "min_severity": min_severity, "match": match,
                              "timeout": timeout}

    if kind == "webhook":
        url = entry.url(secret_only=False)
        secret = entry.secret("hmac_secret", required=False, what="the HMAC key")
        if url is None:
            return None
        return WebhookSink(**common, url=url,
                           hmac_secret=secret.encode() if secret is not None else None)
    if kind == "slack":
        url = entry.url(secret_only=True)
        return None if url is None else SlackSink(**common, url=url)
    if kind == "pagerduty":
        key = entry.secret("routing_key", required=True, what="the routing key")
        url = entry.url(secret_only=False, required=False, default=PAGERDUTY_URL)
        if key is None or url is None:
            return None
        return PagerDutySink(**common, routing_key=key, url=url)
    if kind == "alertmanager":
        url = entry.url(secret_only=False)
        refresh = entry.seconds("refresh_interval", _REFRESH_INTERVAL, minimum=1, maximum=86400)
        active_for = entry.seconds("active_for", max(_ACTIVE_FOR, 3 * refresh),
                                   minimum=1, maximum=7 * 86400)
        if active_for < 2 * refresh:
            entry.problem("active_for", f"'active_for' ({active_for:g}s) must be at least twice "
                                        f"'refresh_interval' ({refresh:g}s), or alerts resolve "
                                        "between two re-posts")
        if url is None:
            return None
        return AlertmanagerSink(**common, url=url,
                                refresh_interval=refresh, active_for=active_for)
    return _parse_email(entry, common)


def _read_match(entry: _Entry) -> Mapping[str, str]:
    raw = entry.raw.get("match")
    if raw is None:
        return _empty_labels()
    if not isinstance(raw, dict):
        entry.problem("match", f"'match' must be a mapping of label: value, not {describe(raw)}")
        return _empty_labels()
    result: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _LABEL_NAME.match(key):
            entry.problem("match", f"'match' label name {describe(key)} must match "
                                   "[a-zA-Z_][a-zA-Z0-9_]*")
        elif isinstance(value, (dict, list)) or value is None:
            entry.problem("match", f"'match' label '{key}' must be a single value, "
                                   f"not {describe(value)}")
        else:
            # The same spelling the inventory gives label values (true -> "true").
            result[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return MappingProxyType(dict(sorted(result.items())))


def _parse_email(entry: _Entry, common: dict[str, Any]) -> EmailSink | None:
    raw = entry.raw
    host = entry.string("smtp_host", required=True)
    port = raw.get("smtp_port", 587)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        entry.problem("smtp_port", f"'smtp_port' must be a port number, not {describe(port)}")
    starttls = entry.boolean("starttls", True)
    username = entry.string("username")
    password = entry.secret("password", required=username is not None, what="the SMTP password")
    if username is None and any(raw.get(k) is not None for k in ("password_env", "password_file")):
        entry.problem("username", "a password is set but no 'username'")
    if username is not None and not starttls:
        entry.problem("starttls", "'starttls: false' would send the password in clear text")
    sender = entry.string("from", required=True)
    if sender is not None and not _ADDRESS.match(email.utils.parseaddr(sender)[1] or "-"):
        entry.problem("from", f"'from' must be an email address, not {describe(sender)}")
    to_raw = raw.get("to")
    to: list[str] = []
    if isinstance(to_raw, str):
        to_raw = [to_raw]
    if not isinstance(to_raw, list) or not to_raw:
        entry.problem("to" if "to" in raw else None,
                      f"'to' must be a list of email addresses, not {describe(to_raw)}")
    else:
        for address in to_raw:
            if not isinstance(address, str) or _CONTROL.search(address) \
                    or not _ADDRESS.match(email.utils.parseaddr(address)[1] or "-"):
                entry.problem("to", f"'to' entry {describe(address)} is not an email address")
            else:
                to.append(address.strip())
    ca_file = None
    if raw.get("ca_file") is not None:
        ca_file = entry.path("ca_file")
        if not os.access(ca_file, os.R_OK) or not ca_file.is_file():
            entry.problem("ca_file", f"'ca_file': cannot read {ca_file}")
    if entry.failed or host is None or sender is None:
        return None
    return EmailSink(**common, smtp_host=host, smtp_port=port, starttls=starttls,
                     username=username, password=password, sender=sender, to=tuple(to),
                     ca_file=ca_file)
