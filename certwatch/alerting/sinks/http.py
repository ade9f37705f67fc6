"""The sinks that deliver over HTTP: webhook, Slack, PagerDuty, Alertmanager.

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
import email.utils
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx

from certwatch.alerting.sinks.base import SNIPPET, SinkError, redact, secrets_of, utcnow
from certwatch.alerting.sinks.payloads import (
    alertmanager_alert,
    alertmanager_alerts,
    clip,
    pagerduty_event,
    slack_payload,
)
from certwatch.config.sinks import (
    AlertmanagerSettings,
    PagerDutySettings,
    SinkSettings,
    SlackSettings,
    WebhookSettings,
    safe_url,
    single_line,
)
from certwatch.core.alerts import Notification
from certwatch.core.vocabulary import Action

__all__ = ["AlertmanagerSink", "PagerDutySink", "SlackSink", "WebhookSink", "post",
           "webhook_signature"]

_USER_AGENT = "certwatch"
Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSink(WebhookSettings):
    """POSTs ``{"version": 1, **notification.to_dict()}`` as JSON."""

    clock: Clock = field(default=utcnow, repr=False, compare=False)

    async def send(self, n: Notification, client: httpx.AsyncClient) -> None:
        body = _json({"version": 1, **n.to_dict()})
        headers = {"Content-Type": "application/json", "Idempotency-Key": n.id}
        if self.hmac_secret is not None:
            timestamp = str(int(self.clock().timestamp()))
            headers["X-Certwatch-Timestamp"] = timestamp
            headers["X-Certwatch-Signature"] = webhook_signature(self.hmac_secret, timestamp, body)
        await post(self, client, self.url, body, headers,
                   secrets=secrets_of(self.url, self.hmac_secret))


def webhook_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Certwatch-Signature value: ``sha256=`` + hex HMAC-SHA256 over
    ``timestamp + "." + body``. A receiver recomputes it over the raw body it got and
    compares with :func:`hmac.compare_digest`, and rejects stale timestamps."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class SlackSink(SlackSettings):
    """A Slack incoming webhook: Block Kit sections in mrkdwn, every string escaped."""

    clock: Clock = field(default=utcnow, repr=False, compare=False)

    async def send(self, n: Notification, client: httpx.AsyncClient) -> None:
        await post(self, client, self.url, _json(slack_payload(n)),
                   {"Content-Type": "application/json"}, secrets=secrets_of(self.url))


@dataclass(frozen=True, slots=True, kw_only=True)
class PagerDutySink(PagerDutySettings):
    """PagerDuty Events API v2: trigger (also for remind and escalate) and resolve, with the
    alert key as dedup_key so PagerDuty folds them into one incident."""

    clock: Clock = field(default=utcnow, repr=False, compare=False)

    async def send(self, n: Notification, client: httpx.AsyncClient) -> None:
        await post(self, client, self.url, _json(pagerduty_event(n, self.routing_key)),
                   {"Content-Type": "application/json"}, secrets=secrets_of(self.routing_key))


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertmanagerSink(AlertmanagerSettings):
    """Alertmanager API v2. Firing alerts carry endsAt = now + active_for and must be
    re-posted (:meth:`refresh`) every refresh_interval; a resolve sets endsAt to the
    moment it resolved."""

    clock: Clock = field(default=utcnow, repr=False, compare=False)

    async def send(self, n: Notification, client: httpx.AsyncClient) -> None:
        await self._post(alertmanager_alerts(n, self.clock(), self.active_for), client)

    async def refresh(self, active: Sequence[Notification], client: httpx.AsyncClient) -> None:
        """Re-posts every still-firing alert this sink accepts, in one request."""
        now = self.clock()
        alerts = [alertmanager_alert(n, now, self.active_for) for n in active
                  if n.action != Action.RESOLVE and self.accepts(n)]
        if alerts:
            await self._post(alerts, client)

    async def _post(self, alerts: list[dict[str, Any]], client: httpx.AsyncClient) -> None:
        await post(self, client, self.alerts_url, _json(alerts),
                   {"Content-Type": "application/json"}, secrets=secrets_of(self.url))


async def post(sink: SinkSettings, client: httpx.AsyncClient, url: str, body: bytes,
               headers: dict[str, str], *, secrets: tuple[str, ...]) -> httpx.Response:
    """One POST under the sink's deadline; any failure is a SinkError that names the
    receiver by scheme://host:port and shows none of `secrets`."""
    where = f"{sink.type} sink '{sink.name}' ({safe_url(url)})"
    headers = {"User-Agent": _USER_AGENT, **headers}
    try:
        async with asyncio.timeout(sink.timeout):
            response = await client.post(url, content=body, headers=headers,
                                         timeout=sink.timeout, follow_redirects=False)
    except (TimeoutError, httpx.TimeoutException):
        raise SinkError(f"{where}: no answer within {sink.timeout:g}s", retryable=True) from None
    except httpx.HTTPError as exc:
        detail = clip(redact(str(exc) or type(exc).__name__, secrets), SNIPPET)
        raise SinkError(f"{where}: {type(exc).__name__}: {detail}", retryable=True) from None
    status = response.status_code
    if 200 <= status < 300:
        return response
    retryable = status in (408, 429) or status >= 500
    snippet = clip(redact(single_line(response.text), secrets), SNIPPET)
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
    return max(0.0, (moment - utcnow()).total_seconds())


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode()
