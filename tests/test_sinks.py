"""Sinks against real loopback receivers: an aiohttp app for the HTTP sinks, an SMTP
server with a real STARTTLS for email, and (when installed) a real Alertmanager.

Every payload is checked against the receiver's documented schema, field by field:
PagerDuty Events API v2, Alertmanager API v2 postableAlert, Slack Block Kit limits.
pytest-asyncio is not used: each test runs its own loop with asyncio.run.
"""

from __future__ import annotations

import asyncio
import base64
import email
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email import policy as email_policy
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx
import pytest
import yaml
from aiohttp import web

from certwatch.core.alerts import Notification
from certwatch.config.yamlfile import load_yaml
from certwatch.alerting.sinks import AlertmanagerSink, EmailSink, PAGERDUTY_URL, PagerDutySink, Sink, SinkError, SlackSink, WebhookSink, parse_sinks
from tests.pki import make_leaf, make_root
from tests.servers import closed_port

T = TypeVar("T")
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
STARTED = NOW - timedelta(days=2)
HOSTILE = "<!channel> & <https://evil.example|click here> <@U024BE7LH>"
STATUS_URL = "https://certwatch.example/status?target=shop&x=1"


def notification(action: str = "trigger", severity: str = "warning", kind: str = "expiry", *,
                 target: dict[str, Any] | None = None, details: dict[str, Any] | None = None,
                 **changes: Any) -> Notification:
    base_target = {"key": "shop/192.0.2.10", "name": "shop", "host": "shop.example", "port": 443,
                   "address": "192.0.2.10", "server_name": "shop.example", "protocol": "tls",
                   "labels": {"team": "payments", "env": "prod"}}
    base_details = {"state": "warning", "reasons": ["expires in 20.0 days"],
                    "subject": "CN=shop.example", "issuer": "CN=Test Issuing CA",
                    "not_after": "2030-01-22T03:04:05Z", "days_left": 20.0,
                    "fingerprint_sha256": "ab" * 32, "verify_error": None, "error": None,
                    "consecutive_failures": 0}
    values: dict[str, Any] = {
        "id": f"n-{kind}-{action}-{severity}", "alert_key": f"shop/192.0.2.10/{kind}",
        "kind": kind, "action": action, "severity": severity, "created_at": NOW,
        "started_at": STARTED, "summary": f"shop/192.0.2.10: certificate {kind} ({severity})",
        "target": {**base_target, **(target or {})}, "details": {**base_details, **(details or {})},
        "url": STATUS_URL,
    }
    values.update(changes)
    return Notification(**values)


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def fixed_clock() -> datetime:
    return NOW


# --- loopback receivers -------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """An aiohttp app on 127.0.0.1:0 that records every request and answers as told."""

    def __init__(self, status: int = 200, body: str = "ok", *, headers: dict[str, str] | None = None,
                 hang: bool = False) -> None:
        self.status, self.body, self.headers, self.hang = status, body, headers or {}, hang
        self.requests: list[Received] = []
        self.arrived = asyncio.Event()
        self._release = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Received(request.method, request.path_qs, dict(request.headers),
                                      await request.read()))
        self.arrived.set()
        if self.hang:
            await self._release.wait()
        return web.Response(status=self.status, text=self.body, headers=self.headers)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        await self._runner.cleanup()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


async def send(sink: Sink, n: Notification) -> None:
    async with httpx.AsyncClient() as client:
        await sink.send(n, client)


def webhook(url: str, **kw: Any) -> WebhookSink:
    return WebhookSink(name="hook", url=url, endpoint="x", clock=fixed_clock, **kw)


# --- schema checks, written out from each vendor's documentation --------------------------

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def parse_time(value: str) -> datetime:
    assert RFC3339.match(value), value
    return datetime.fromisoformat(value)


def check_pagerduty_trigger(event: dict[str, Any]) -> None:
    """Events API v2, alert event, trigger."""
    assert set(event) <= {"routing_key", "event_action", "dedup_key", "payload", "client",
                          "client_url", "links", "images"}
    assert isinstance(event["routing_key"], str) and event["routing_key"]
    assert event["event_action"] == "trigger"
    assert isinstance(event["dedup_key"], str) and 0 < len(event["dedup_key"]) <= 255
    payload = event["payload"]
    assert set(payload) <= {"summary", "source", "severity", "timestamp", "component", "group",
                            "class", "custom_details"}
    for required in ("summary", "source", "severity"):
        assert isinstance(payload[required], str) and payload[required], required
    assert len(payload["summary"]) <= 1024
    assert payload["severity"] in {"critical", "error", "warning", "info"}
    parse_time(payload["timestamp"])
    for optional in ("component", "group", "class"):
        assert isinstance(payload.get(optional, ""), str)
    assert isinstance(payload["custom_details"], dict)
    for link in event.get("links", []):
        assert set(link) <= {"href", "text"} and isinstance(link["href"], str) and link["href"]


def check_postable_alerts(body: Any) -> list[dict[str, Any]]:
    """Alertmanager API v2: postableAlerts, a list of postableAlert."""
    assert isinstance(body, list) and body
    for alert in body:
        assert set(alert) <= {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
        labels = alert["labels"]
        assert isinstance(labels, dict) and labels, "at least one label is required"
        for mapping in (labels, alert.get("annotations", {})):
            for key, value in mapping.items():
                assert LABEL_NAME.match(key) and not key.startswith("__"), key
                assert isinstance(value, str), (key, value)
        assert all(labels.values()), "an empty label value means no label"
        assert parse_time(alert["startsAt"]) <= parse_time(alert["endsAt"])
        assert isinstance(alert.get("generatorURL", ""), str)
    return body


def check_block_kit(payload: dict[str, Any]) -> None:
    """Incoming webhook message: text fallback plus Block Kit blocks within their limits."""
    assert set(payload) <= {"text", "blocks", "unfurl_links", "unfurl_media"}
    assert isinstance(payload["text"], str) and payload["text"]
    blocks = payload["blocks"]
    assert 0 < len(blocks) <= 50
    for block in blocks:
        kind = block["type"]
        assert kind in {"header", "section", "context", "divider"}
        if kind == "header":
            assert block["text"]["type"] == "plain_text" and len(block["text"]["text"]) <= 150
        elif kind == "section":
            assert "text" in block or "fields" in block
            if "text" in block:
                assert block["text"]["type"] == "mrkdwn" and 0 < len(block["text"]["text"]) <= 3000
            fields = block.get("fields", [])
            assert len(fields) <= 10
            for item in fields:
                assert item["type"] == "mrkdwn" and 0 < len(item["text"]) <= 2000
        elif kind == "context":
            assert 0 < len(block["elements"]) <= 10
            for item in block["elements"]:
                assert item["type"] in {"mrkdwn", "plain_text"} and len(item["text"]) <= 3000


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


# --- configuration ------------------------------------------------------------------------

SLACK_SECRET = "https://hooks.slack.example/services/T000/B000/XXXXslacksecretXXXX"
PD_SECRET = "pdroutingkeysecret0123456789abcd"
HMAC_SECRET = "hmac-secret-value-42"
SMTP_SECRET = "smtp-password-value-42"
SECRETS = (SLACK_SECRET, PD_SECRET, HMAC_SECRET, SMTP_SECRET, "XXXXslacksecretXXXX")


def full_config(tmp_path: Path) -> list[dict[str, Any]]:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "smtp").write_text(SMTP_SECRET + "\n")
    return [
        {"name": "hook", "type": "webhook", "url": "http://hooks.internal:8080/certwatch",
         "hmac_secret_env": "HOOK_HMAC", "timeout": "2s"},
        {"name": "chat", "type": "slack", "url_env": "SLACK_URL", "min_severity": "warning"},
        {"name": "pager", "type": "pagerduty", "routing_key_env": "PD_KEY",
         "min_severity": "critical", "match": {"team": "payments"}},
        {"name": "am", "type": "alertmanager", "url": "http://alertmanager:9093",
         "refresh_interval": "30s"},
        {"name": "mail", "type": "email", "smtp_host": "smtp.example", "username": "certwatch",
         "password_file": "secrets/smtp", "from": "certwatch <certwatch@example.com>",
         "to": ["ops@example.com", "pki@example.com"]},
    ]


ENV = {"HOOK_HMAC": HMAC_SECRET, "SLACK_URL": SLACK_SECRET, "PD_KEY": PD_SECRET}


def test_every_sink_type_parses_with_its_defaults(tmp_path: Path) -> None:
    sinks, problems = parse_sinks(full_config(tmp_path), "alerts.sinks", ENV, tmp_path)
    assert problems == []
    by_name = {s.name: s for s in sinks}
    assert [s.type for s in sinks] == ["webhook", "slack", "pagerduty", "alertmanager", "email"]
    hook = by_name["hook"]
    assert isinstance(hook, WebhookSink) and hook.hmac_secret == HMAC_SECRET.encode()
    assert hook.timeout == 2.0 and hook.endpoint == "http://hooks.internal:8080"
    chat = by_name["chat"]
    assert isinstance(chat, SlackSink) and chat.url == SLACK_SECRET and chat.timeout == 10.0
    pager = by_name["pager"]
    assert isinstance(pager, PagerDutySink) and pager.routing_key == PD_SECRET
    assert pager.url == PAGERDUTY_URL and pager.min_severity == "critical"
    assert dict(pager.match) == {"team": "payments"}
    am = by_name["am"]
    assert isinstance(am, AlertmanagerSink) and am.refresh_interval == 30.0
    assert am.active_for == 3600.0 and am.alerts_url == "http://alertmanager:9093/api/v2/alerts"
    mail = by_name["mail"]
    assert isinstance(mail, EmailSink) and mail.password == SMTP_SECRET
    assert (mail.smtp_port, mail.starttls, mail.timeout) == (587, True, 30.0)
    assert mail.to == ("ops@example.com", "pki@example.com")
    shown = repr(sinks) + str(sinks)
    for secret in SECRETS:
        assert secret not in shown
    assert "hooks.internal:8080" in shown  # what is safe to show still is


def test_missing_secrets_are_problems_that_name_the_sink_and_key(tmp_path: Path) -> None:
    raw = full_config(tmp_path)
    (tmp_path / "secrets" / "smtp").unlink()
    environ = {"SLACK_URL": SLACK_SECRET}  # PD_KEY and HOOK_HMAC unset
    sinks, problems = parse_sinks(raw, "alerts.sinks", environ, tmp_path)
    assert [s.name for s in sinks] == ["chat", "am"]
    text = "\n".join(problems)
    assert "alerts.sinks[0] 'hook': 'hmac_secret_env': environment variable HOOK_HMAC is not set" in text
    assert "alerts.sinks[2] 'pager': 'routing_key_env': environment variable PD_KEY is not set" in text
    assert f"alerts.sinks[4] 'mail': 'password_file': cannot read {tmp_path / 'secrets' / 'smtp'}" in text
    assert len(problems) == 3


def test_secret_values_never_appear_in_messages(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("")
    environ = {"BAD_URL": "not a url " + SLACK_SECRET, "EMPTY": "   ", "PD": PD_SECRET}
    raw = [
        {"name": "a", "type": "slack", "url_env": "BAD_URL"},
        {"name": "b", "type": "slack", "url": SLACK_SECRET},
        {"name": "c", "type": "pagerduty", "routing_key_env": "EMPTY"},
        {"name": "d", "type": "pagerduty", "routing_key_file": "key"},
        {"name": "e", "type": "pagerduty", "routing_key": PD_SECRET},
        {"name": "f", "type": "webhook", "url": "https://user:" + HMAC_SECRET + "@hooks.example/x"},
        {"name": "g", "type": "webhook", "url_env": "BAD_URL", "url_file": "key"},
        {"name": "h", "type": "slack"},
    ]
    sinks, problems = parse_sinks(raw, "alerts.sinks", environ, tmp_path)
    assert sinks == []
    text = "\n".join(problems)
    for secret in SECRETS:
        assert secret not in text
    assert "'a': 'url_env' must hold an http:// or https:// URL with a host" in text
    assert "'b': this URL is a credential: put it in an environment variable ('url_env')" in text
    assert "'c': 'routing_key_env': environment variable EMPTY is empty" in text
    assert f"'d': 'routing_key_file': {tmp_path / 'key'} is empty" in text
    assert "'e': unknown key 'routing_key' for a pagerduty sink (did you mean 'routing_key_env'?)" in text
    assert "'e': the routing key is a secret: set 'routing_key_env'" in text
    assert "'f': 'url' holds credentials: move the URL to 'url_env' or 'url_file'" in text
    assert "'g': give either 'url_env' or 'url_file', not both" in text
    assert "'h': the webhook URL is a credential: set 'url_env' or 'url_file'" in text


def test_structural_problems_each_get_a_message_with_a_line(tmp_path: Path) -> None:
    text = """\
alerts:
  sinks:
    - name: chat
      type: slak
    - name: hook
      type: webhook
      url: http://127.0.0.1:9/x
      min_severty: critical
    - name: hook
      type: webhook
      url: ftp://127.0.0.1/x
      min_severity: page
      match: {team: [a, b]}
    - type: alertmanager
      url: http://am:9093
      refresh_interval: 10m
      active_for: 15m
    - name: mail
      type: email
      smtp_host: smtp.example
      username: me
      starttls: false
      password_env: PW
      from: not an address
      to: []
      timeout: forever
    - just a string
"""
    raw = load_yaml(text, "certwatch.yaml")["alerts"]["sinks"]
    sinks, problems = parse_sinks(raw, "certwatch.yaml: alerts.sinks", {"PW": SMTP_SECRET},
                                  tmp_path)
    assert sinks == []
    joined = "\n".join(problems)
    assert SMTP_SECRET not in joined
    expected = [
        "line 4: certwatch.yaml: alerts.sinks[0] 'chat': unknown type 'slak' (did you mean 'slack'?)",
        ("line 8: certwatch.yaml: alerts.sinks[1] 'hook': unknown key 'min_severty' for a webhook "
         "sink (did you mean 'min_severity'?)"),
        "line 11: certwatch.yaml: alerts.sinks[2] 'hook': 'url' must hold an http:// or https:// URL",
        ("line 12: certwatch.yaml: alerts.sinks[2] 'hook': 'min_severity' must be one of warning, "
         "critical, not 'page'"),
        "line 13: certwatch.yaml: alerts.sinks[2] 'hook': 'match' label 'team' must be a single value",
        ("certwatch.yaml: alerts.sinks[2] 'hook': the name 'hook' is already used by "
         "certwatch.yaml: alerts.sinks[1]"),
        "line 14: certwatch.yaml: alerts.sinks[3]: 'name' is required",
        ("line 17: certwatch.yaml: alerts.sinks[3]: 'active_for' (900s) must be at least twice "
         "'refresh_interval' (600s)"),
        ("line 22: certwatch.yaml: alerts.sinks[4] 'mail': 'starttls: false' would send the "
         "password in clear text"),
        "line 24: certwatch.yaml: alerts.sinks[4] 'mail': 'from' must be an email address",
        "line 25: certwatch.yaml: alerts.sinks[4] 'mail': 'to' must be a list of email addresses",
        "line 26: certwatch.yaml: alerts.sinks[4] 'mail': 'timeout' must be a duration",
        "certwatch.yaml: alerts.sinks[5]: must be a mapping, not 'just a string'",
    ]
    for start in expected:
        assert any(start in p for p in problems), (start, problems)
    assert len(problems) == len(expected)
    assert all(p.startswith("line ") for p in problems), problems  # every one has its line
    assert parse_sinks(None, "alerts.sinks", {}, tmp_path) == ([], [])
    assert parse_sinks({"a": 1}, "alerts.sinks", {}, tmp_path)[1] == [
        "top: alerts.sinks: must be a list of sinks, not a mapping"]


def test_routing_by_severity_and_labels() -> None:
    chat = WebhookSink(name="chat", url="http://x/", min_severity="warning")
    pager = WebhookSink(name="pager", url="http://x/", min_severity="critical",
                        match={"team": "payments"})
    other_team = WebhookSink(name="other", url="http://x/", match={"team": "search"})
    two_labels = WebhookSink(name="two", url="http://x/", match={"team": "payments", "env": "prod"})
    missing = WebhookSink(name="missing", url="http://x/", match={"region": "eu"})
    warning, critical = notification(severity="warning"), notification(severity="critical")
    assert chat.accepts(warning) and chat.accepts(critical)
    assert not pager.accepts(warning) and pager.accepts(critical)
    assert pager.accepts(notification("resolve", "critical"))  # it went there, so does its end
    assert not pager.accepts(notification("resolve", "warning"))
    assert not other_team.accepts(critical)
    assert two_labels.accepts(warning)
    assert not two_labels.accepts(notification(target={"labels": {"team": "payments"}}))
    assert not missing.accepts(critical)
    assert not pager.accepts(notification(severity="critical", target={"labels": {}}))


# --- webhook ------------------------------------------------------------------------------


def test_webhook_posts_the_notification_signed_over_timestamp_and_body() -> None:
    async def main() -> None:
        async with Receiver() as hook:
            n = notification()
            await send(webhook(hook.url("/certwatch"), hmac_secret=HMAC_SECRET.encode()), n)
            await send(webhook(hook.url("/plain")), n)
        signed, plain = hook.requests
        assert (signed.method, signed.path) == ("POST", "/certwatch")
        assert signed.headers["Content-Type"] == "application/json"
        assert signed.headers["Idempotency-Key"] == n.id
        assert signed.json() == {"version": 1, **n.to_dict()}
        timestamp = signed.headers["X-Certwatch-Timestamp"]
        assert timestamp == str(int(NOW.timestamp()))
        expected = hmac.new(HMAC_SECRET.encode(), timestamp.encode() + b"." + signed.body,
                            hashlib.sha256).hexdigest()
        assert hmac.compare_digest(signed.headers["X-Certwatch-Signature"], "sha256=" + expected)
        # Without the timestamp the signature does not verify: a replay cannot reuse it.
        body_only = hmac.new(HMAC_SECRET.encode(), signed.body, hashlib.sha256).hexdigest()
        assert signed.headers["X-Certwatch-Signature"] != "sha256=" + body_only
        assert "X-Certwatch-Signature" not in plain.headers
        assert "X-Certwatch-Timestamp" not in plain.headers
        assert plain.json() == signed.json()

    run(main())


@pytest.mark.parametrize(("status", "retryable"), [
    (400, False), (401, False), (403, False), (404, False), (410, False), (301, False),
    (408, True), (429, True), (500, True), (502, True), (503, True),
])
def test_status_codes_decide_whether_to_retry(status: int, retryable: bool) -> None:
    async def main() -> SinkError:
        async with Receiver(status, "nope", headers={"Retry-After": "7"}) as hook:
            with pytest.raises(SinkError) as caught:
                await send(webhook(hook.url("/x")), notification())
        return caught.value

    error = run(main())
    assert error.retryable is retryable
    assert f"HTTP {status}" in str(error) and "webhook sink 'hook'" in str(error)
    assert error.retry_after == (7.0 if retryable else None)


def test_connection_refused_is_retryable() -> None:
    port = closed_port()
    with pytest.raises(SinkError) as caught:
        run(send(webhook(f"http://127.0.0.1:{port}/x", timeout=2.0), notification()))
    assert caught.value.retryable
    assert "ConnectError" in str(caught.value)


def test_a_receiver_that_hangs_costs_one_timeout() -> None:
    async def main() -> tuple[SinkError, float]:
        async with Receiver(hang=True) as hook:
            started = time.monotonic()
            with pytest.raises(SinkError) as caught:
                await send(webhook(hook.url("/x"), timeout=0.5), notification())
            return caught.value, time.monotonic() - started

    error, elapsed = run(main())
    assert error.retryable and "no answer within 0.5s" in str(error)
    assert 0.4 <= elapsed < 2.0


def test_a_receiver_that_trickles_is_cut_at_the_overall_deadline() -> None:
    """httpx's timeouts are per read; a byte every 0.1s would never trip them."""
    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.1)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def main() -> tuple[SinkError, float]:
        server = await asyncio.start_server(drip, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            started = time.monotonic()
            with pytest.raises(SinkError) as caught:
                await send(webhook(f"http://127.0.0.1:{port}/x", timeout=0.6), notification())
            return caught.value, time.monotonic() - started

    error, elapsed = run(main())
    assert error.retryable and elapsed < 1.5


# --- Slack --------------------------------------------------------------------------------


def hostile_notification(action: str = "trigger", severity: str = "critical") -> Notification:
    return notification(
        action, severity, summary=f"shop: {HOSTILE} expires",
        target={"name": "shop<!here>", "host": "shop.example", "labels": {}},
        details={"subject": f"CN={HOSTILE}", "issuer": "O=Evil & Co, CN=<!everyone>",
                 "reasons": ["expires in 3.0 days", "<https://x|y>"], "state": "critical",
                 "days_left": 3.0, "error": "peer said <!subteam^S123>"})


def test_slack_message_shape_and_content() -> None:
    async def main() -> Received:
        async with Receiver(200, "ok") as slack:
            sink = SlackSink(name="chat", url=slack.url("/services/T0/B0/secret"))
            await send(sink, notification("trigger", "critical"))
        return slack.requests[0]

    request = run(main())
    assert request.headers["Content-Type"] == "application/json"
    payload = request.json()
    check_block_kit(payload)
    text = "\n".join(strings(payload))
    for fact in ("shop (shop.example:443)", "192.0.2.10:443", "CN=shop.example",
                 "CN=Test Issuing CA", "2030-01-22T03:04:05Z", "20.0", "warning",
                 "expires in 20.0 days", "CRITICAL", "shop/192.0.2.10/expiry"):
        assert fact in text, fact
    assert "<https://certwatch.example/status?target=shop&amp;x=1|status page>" in text


def test_slack_escapes_every_peer_string() -> None:
    async def main() -> Received:
        async with Receiver(200, "ok") as slack:
            await send(SlackSink(name="chat", url=slack.url("/hook")), hostile_notification())
        return slack.requests[0]

    payload = run(main()).json()
    check_block_kit(payload)
    own_link = "<https://certwatch.example/status?target=shop&amp;x=1|status page>"
    for value in strings(payload):
        rest = value.replace(own_link, "")
        assert "<" not in rest and ">" not in rest, value
        assert "&" not in re.sub(r"&(amp|lt|gt);", "", rest), value
    text = "\n".join(strings(payload))
    assert "&lt;!channel&gt; &amp; &lt;https://evil.example|click here&gt;" in text
    assert "O=Evil &amp; Co, CN=&lt;!everyone&gt;" in text
    assert "&lt;https://x|y&gt;" in text and "&lt;!subteam^S123&gt;" in text
    assert "shop&lt;!here&gt;" in text


def test_slack_resolved_message_looks_different() -> None:
    from certwatch.alerting.sinks import slack_payload

    firing = slack_payload(notification("trigger", "critical"))
    resolved = slack_payload(notification("resolve", "critical",
                                          summary="shop: certificate renewed, expiry a -> b"))
    check_block_kit(resolved)
    assert firing["blocks"][0]["text"]["text"].startswith(":rotating_light: CRITICAL")
    assert resolved["blocks"][0]["text"]["text"].startswith(":white_check_mark: RESOLVED")
    assert "CRITICAL" not in resolved["blocks"][0]["text"]["text"]
    assert resolved["text"].startswith("RESOLVED: shop: certificate renewed")
    assert slack_payload(notification("trigger", "warning"))["blocks"][0]["text"]["text"] \
        .startswith(":warning: WARNING")


def test_slack_errors_never_show_the_webhook_url() -> None:
    secret_path = "/services/T000/B000/XXXXslacksecretXXXX"

    async def main() -> SinkError:
        # A receiver that echoes the path back, as a misbehaving proxy might.
        async with Receiver(404, f"no_service: {secret_path} (XXXXslacksecretXXXX)") as slack:
            with pytest.raises(SinkError) as caught:
                await send(SlackSink(name="chat", url=slack.url(secret_path)), notification())
        return caught.value

    error = run(main())
    assert not error.retryable
    assert "XXXXslacksecretXXXX" not in str(error) and "T000" not in str(error)
    assert "slack sink 'chat' (http://127.0.0.1:" in str(error) and "[redacted]" in str(error)


# --- PagerDuty ----------------------------------------------------------------------------


PD_ACCEPTED = json.dumps({"status": "success", "message": "Event processed",
                          "dedup_key": "shop/192.0.2.10/expiry"})


def test_pagerduty_trigger_remind_escalate_and_resolve() -> None:
    async def main() -> list[Received]:
        async with Receiver(202, PD_ACCEPTED) as pd:
            sink = PagerDutySink(name="pager", routing_key=PD_SECRET, url=pd.url("/v2/enqueue"))
            for action, severity in (("trigger", "warning"), ("remind", "warning"),
                                     ("escalate", "critical"), ("resolve", "critical")):
                await send(sink, notification(action, severity))
        return pd.requests

    trigger, remind, escalate, resolve = (r.json() for r in run(main()))
    for event in (trigger, remind, escalate):
        check_pagerduty_trigger(event)
        assert event["routing_key"] == PD_SECRET
        assert event["dedup_key"] == "shop/192.0.2.10/expiry"
    assert [e["payload"]["severity"] for e in (trigger, remind, escalate)] == [
        "warning", "warning", "critical"]
    payload = trigger["payload"]
    assert payload["summary"] == "shop/192.0.2.10: certificate expiry (warning)"
    assert payload["source"] == "shop.example"
    assert payload["component"] == "192.0.2.10:443"
    assert payload["group"] == "shop"
    assert payload["class"] == "certificate expiry"
    assert payload["timestamp"] == "2030-01-02T03:04:05Z"
    details = payload["custom_details"]
    assert details["subject"] == "CN=shop.example" and details["issuer"] == "CN=Test Issuing CA"
    assert details["not_after"] == "2030-01-22T03:04:05Z" and details["days_left"] == 20.0
    assert details["endpoint"] == "shop (shop.example:443)" and details["address"] == "192.0.2.10"
    assert details["state"] == "warning" and details["reasons"] == ["expires in 20.0 days"]
    assert "verify_error" not in details  # None values are left out
    assert trigger["links"] == [{"href": STATUS_URL, "text": "certwatch"}]
    assert resolve == {"routing_key": PD_SECRET, "event_action": "resolve",
                       "dedup_key": "shop/192.0.2.10/expiry"}


def test_pagerduty_limits_summary_and_dedup_key() -> None:
    from certwatch.alerting.sinks.payloads import pagerduty_event

    long_key = "x" * 300 + "/expiry"
    event = pagerduty_event(notification(summary="s" * 5000, alert_key=long_key, url=None), PD_SECRET)
    check_pagerduty_trigger(event)
    assert len(event["payload"]["summary"]) == 1024 and "links" not in event
    again = pagerduty_event(notification(alert_key=long_key, action="resolve"), PD_SECRET)
    assert again["dedup_key"] == event["dedup_key"]  # the same incident, cut the same way
    other = pagerduty_event(notification(alert_key="y" * 300 + "/expiry"), PD_SECRET)
    assert other["dedup_key"] != event["dedup_key"]


def test_pagerduty_rejection_does_not_leak_the_routing_key() -> None:
    answer = json.dumps({"status": "invalid event", "message": "Event object is invalid",
                         "errors": [f"routing_key {PD_SECRET} is unknown"]})

    async def main() -> SinkError:
        async with Receiver(400, answer) as pd:
            with pytest.raises(SinkError) as caught:
                await send(PagerDutySink(name="pager", routing_key=PD_SECRET, url=pd.url("/v2/enqueue")),
                           notification())
        return caught.value

    error = run(main())
    assert not error.retryable and "HTTP 400" in str(error) and "Event object is invalid" in str(error)
    assert PD_SECRET not in str(error) and "[redacted]" in str(error)


# --- Alertmanager -------------------------------------------------------------------------


def test_alertmanager_firing_resolved_and_escalated_alerts() -> None:
    async def main() -> list[Received]:
        async with Receiver(200, "") as am:
            sink = AlertmanagerSink(name="am", url=am.url("/"), clock=fixed_clock, active_for=600)
            await send(sink, notification("trigger", "warning"))
            await send(sink, notification("escalate", "critical"))
            await send(sink, notification("resolve", "critical",
                                          created_at=NOW + timedelta(hours=1)))
        return am.requests

    trigger, escalate, resolve = run(main())
    assert {r.path for r in (trigger, escalate, resolve)} == {"/api/v2/alerts"}
    [alert] = check_postable_alerts(trigger.json())
    assert alert["labels"] == {
        "alertname": "CertificateExpiry", "severity": "warning", "name": "shop",
        "host": "shop.example", "port": "443", "address": "192.0.2.10",
        "certwatch_key": "shop/192.0.2.10/expiry", "team": "payments", "env": "prod"}
    annotations = alert["annotations"]
    assert annotations["summary"] == "shop/192.0.2.10: certificate expiry (warning)"
    for fact in ("shop (shop.example:443)", "192.0.2.10:443", "CN=shop.example",
                 "CN=Test Issuing CA", "2030-01-22T03:04:05Z", "20.0", "expires in 20.0 days"):
        assert fact in annotations["description"], fact
    assert annotations["subject"] == "CN=shop.example" and annotations["days_left"] == "20.0"
    assert alert["startsAt"] == "2029-12-31T03:04:05Z"
    assert alert["endsAt"] == "2030-01-02T03:14:05Z"  # now + active_for
    assert alert["generatorURL"] == STATUS_URL

    # Severity is a label: the escalation resolves the warning alert in the same request.
    fired, ended = check_postable_alerts(escalate.json())
    assert fired["labels"]["severity"] == "critical" and fired["endsAt"] == "2030-01-02T03:14:05Z"
    assert ended["labels"] == {**alert["labels"], "severity": "warning"}
    assert ended["endsAt"] == "2030-01-02T03:04:05Z"

    [ended] = check_postable_alerts(resolve.json())
    assert ended["labels"] == fired["labels"]
    assert ended["endsAt"] == "2030-01-02T04:04:05Z"  # the resolve's created_at


def test_alertmanager_refresh_reposts_active_alerts_in_one_request() -> None:
    async def main() -> list[Received]:
        async with Receiver(200, "") as am:
            sink = AlertmanagerSink(name="am", url=am.url("/am/api/v2/alerts"), clock=fixed_clock,
                                    min_severity="critical")
            async with httpx.AsyncClient() as client:
                await sink.refresh([], client)
                await sink.refresh([notification("trigger", "warning")], client)  # not accepted
                await sink.refresh([notification("remind", "critical", kind="expiry"),
                                    notification("trigger", "critical", kind="probe"),
                                    notification("resolve", "critical", kind="verification")],
                                   client)
        return am.requests

    [request] = run(main())
    assert request.path == "/am/api/v2/alerts"
    alerts = check_postable_alerts(request.json())
    assert [a["labels"]["alertname"] for a in alerts] == ["CertificateExpiry", "CertificateProbe"]
    assert {a["endsAt"] for a in alerts} == {"2030-01-02T04:04:05Z"}  # now + 1h


# --- email over a real SMTP dialogue with STARTTLS ----------------------------------------


class SMTPReceiver:
    """A minimal SMTP server on asyncio streams: EHLO, STARTTLS, AUTH PLAIN, MAIL, RCPT,
    DATA, QUIT. It records the transcript (commands as received) and each message."""

    def __init__(self, tls: ssl.SSLContext | None, *, password: str | None = None,
                 offer_starttls: bool = True, rcpt_reply: str = "250 OK", hang: bool = False) -> None:
        self.tls, self.password, self.offer_starttls = tls, password, offer_starttls
        self.rcpt_reply, self.hang = rcpt_reply, hang
        self.transcript: list[str] = []
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.logins: list[tuple[str, str]] = []
        self._release = asyncio.Event()

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                if self.hang:
                    await self._release.wait()
                    return
                await self._dialogue(reader, writer)
        except (TimeoutError, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _dialogue(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def reply(*lines: str) -> None:
            writer.write("".join(line + "\r\n" for line in lines).encode())
            await writer.drain()

        await reply("220 test.invalid ESMTP ready")
        secure, sender, recipients = False, "", []
        while True:
            raw = await reader.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            self.transcript.append(line if verb != "AUTH" else "AUTH ...")
            if verb == "EHLO":
                extensions = ["8BITMIME", "SMTPUTF8"]
                if self.tls is not None and self.offer_starttls and not secure:
                    extensions.append("STARTTLS")
                if secure and self.password is not None:
                    extensions.append("AUTH PLAIN")
                await reply("250-test.invalid", *(f"250-{e}" for e in extensions[:-1]),
                            f"250 {extensions[-1]}")
            elif verb == "STARTTLS" and self.tls is not None and not secure:
                await reply("220 go ahead")
                await writer.start_tls(self.tls)
                secure = True
            elif verb == "AUTH" and secure:
                _, user, password = base64.b64decode(line.split()[2]).decode().split("\0")
                self.logins.append((user, password))
                await reply("235 ok" if password == self.password else "535 bad credentials")
            elif verb == "MAIL":
                sender = line[len("MAIL FROM:"):].split()[0]
                await reply("250 OK")
            elif verb == "RCPT":
                recipients.append(line[len("RCPT TO:"):].split()[0])
                await reply(self.rcpt_reply)
            elif verb == "DATA":
                await reply("354 end with .")
                data = b""
                while (chunk := await reader.readline()) not in (b".\r\n", b""):
                    data += chunk[1:] if chunk.startswith(b"..") else chunk
                self.messages.append((sender, recipients, data))
                await reply("250 queued")
            elif verb == "QUIT":
                await reply("221 bye")
                return
            elif verb in ("RSET", "NOOP"):
                await reply("250 OK")
            else:
                await reply("502 not here")


@pytest.fixture(scope="module")
def smtp_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    directory = tmp_path_factory.mktemp("smtp-pki")
    now = datetime.now(timezone.utc)
    root = make_root("SMTP Test Root", not_before=now - timedelta(days=1),
                     not_after=now + timedelta(days=30))
    leaf = make_leaf(root, ["localhost", "127.0.0.1"], not_before=now - timedelta(days=1),
                     not_after=now + timedelta(days=10))
    cert, key = leaf.write(directory, "smtp")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    ca_file = directory / "root.pem"
    ca_file.write_bytes(root.cert_pem)
    return context, ca_file


def mailer(port: int, ca_file: Path | None, **kw: Any) -> EmailSink:
    values: dict[str, Any] = {"name": "mail", "smtp_host": "127.0.0.1", "smtp_port": port,
                              "sender": "certwatch <certwatch@example.com>",
                              "to": ("ops@example.com", "pki@example.com"), "ca_file": ca_file,
                              "timeout": 5.0}
    values.update(kw)
    return EmailSink(**values)


def test_email_over_starttls_with_a_password_from_a_file(
        smtp_pki: tuple[ssl.SSLContext, Path], tmp_path: Path) -> None:
    context, ca_file = smtp_pki
    (tmp_path / "pw").write_text(SMTP_SECRET + "\n")

    async def main() -> SMTPReceiver:
        async with SMTPReceiver(context, password=SMTP_SECRET) as server:
            raw = [{"name": "mail", "type": "email", "smtp_host": "127.0.0.1",
                    "smtp_port": server.port, "username": "certwatch", "password_file": "pw",
                    "from": "certwatch <certwatch@example.com>", "to": ["ops@example.com"],
                    "ca_file": str(ca_file), "timeout": 5}]
            [sink], problems = parse_sinks(raw, "alerts.sinks", {}, tmp_path)
            assert problems == [] and SMTP_SECRET not in repr(sink)
            await send(sink, notification("trigger", "critical"))
            await send(sink, notification("resolve", "critical"))
        return server

    server = run(main())
    assert server.logins == [("certwatch", SMTP_SECRET), ("certwatch", SMTP_SECRET)]
    first = server.transcript[:6]
    assert [c.split(" ")[0].upper() for c in first] == [
        "EHLO", "STARTTLS", "EHLO", "AUTH", "MAIL", "RCPT"]
    (sender, recipients, data), (_, _, resolved_data) = server.messages
    assert sender == "<certwatch@example.com>" and recipients == ["<ops@example.com>"]
    message = email.message_from_bytes(data, policy=email_policy.default)
    assert message["Subject"] == "[certwatch] CRITICAL: shop/192.0.2.10: certificate expiry (critical)"
    assert message["From"] == "certwatch <certwatch@example.com>"
    assert message["To"] == "ops@example.com"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "text/plain"
    body = message.get_content()
    for fact in ("shop (shop.example:443)", "192.0.2.10:443", "CN=shop.example",
                 "CN=Test Issuing CA", "2030-01-22T03:04:05Z", "Days left:", "20.0",
                 "expires in 20.0 days", STATUS_URL):
        assert fact in body, fact
    resolved = email.message_from_bytes(resolved_data, policy=email_policy.default)
    assert resolved["Subject"].startswith("[certwatch] RESOLVED: ")
    assert "The critical alert is resolved." in resolved.get_content()


def test_email_headers_cannot_be_injected(smtp_pki: tuple[ssl.SSLContext, Path]) -> None:
    context, ca_file = smtp_pki
    evil = notification(
        summary="shop: expires\r\nBcc: victim@evil.example\r\nX-Injected: yes\n\nbody",
        alert_key="shop\r\nX-Key-Injected: 1",
        target={"name": "shop\nX-Name-Injected: 1"}, details={"subject": "CN=a\r\nX-Subj: 1"})

    async def main() -> SMTPReceiver:
        async with SMTPReceiver(context) as server:
            await send(mailer(server.port, ca_file), evil)
        return server

    server = run(main())
    [(_, recipients, data)] = server.messages
    assert recipients == ["<ops@example.com>", "<pki@example.com>"]
    message = email.message_from_bytes(data, policy=email_policy.default)
    header_names = {k.lower() for k in message}
    assert not header_names & {"bcc", "x-injected", "x-key-injected", "x-name-injected", "x-subj"}
    assert "\n" not in message["Subject"] and "\r" not in message["Subject"]
    assert message["Subject"].startswith("[certwatch] WARNING: shop: expires Bcc: victim@evil.example")
    assert message["X-Certwatch-Alert-Key"] == "shop X-Key-Injected: 1"


def test_email_refuses_a_server_without_starttls(
        smtp_pki: tuple[ssl.SSLContext, Path]) -> None:
    context, ca_file = smtp_pki

    async def main() -> tuple[SMTPReceiver, SinkError]:
        async with SMTPReceiver(context, offer_starttls=False, password=SMTP_SECRET) as server:
            with pytest.raises(SinkError) as caught:
                await send(mailer(server.port, ca_file, username="u", password=SMTP_SECRET),
                           notification())
        return server, caught.value

    server, error = run(main())
    assert not error.retryable and "does not offer STARTTLS" in str(error)
    assert server.logins == [] and server.messages == []
    assert not any(c.upper().startswith(("AUTH", "MAIL")) for c in server.transcript)


def test_email_verifies_the_server_certificate(smtp_pki: tuple[ssl.SSLContext, Path]) -> None:
    context, _ = smtp_pki

    async def main() -> tuple[SMTPReceiver, SinkError]:
        async with SMTPReceiver(context, password=SMTP_SECRET) as server:
            with pytest.raises(SinkError) as caught:  # system trust only: the test CA is unknown
                await send(mailer(server.port, None, username="u", password=SMTP_SECRET),
                           notification())
        return server, caught.value

    server, error = run(main())
    assert "CERTIFICATE_VERIFY_FAILED" in str(error)
    assert server.logins == [] and server.messages == []
    assert SMTP_SECRET not in str(error)


@pytest.mark.parametrize(("reply", "retryable"), [("550 no such user", False),
                                                   ("451 try again later", True)])
def test_email_refused_recipients(smtp_pki: tuple[ssl.SSLContext, Path], reply: str,
                                  retryable: bool) -> None:
    context, ca_file = smtp_pki

    async def main() -> SinkError:
        async with SMTPReceiver(context, rcpt_reply=reply) as server:
            with pytest.raises(SinkError) as caught:
                await send(mailer(server.port, ca_file), notification())
        return caught.value

    error = run(main())
    assert error.retryable is retryable and reply.split()[0] in str(error)


def test_email_to_a_silent_server_costs_one_timeout(smtp_pki: tuple[ssl.SSLContext, Path]) -> None:
    context, ca_file = smtp_pki

    async def main() -> tuple[SinkError, float]:
        async with SMTPReceiver(context, hang=True) as server:
            started = time.monotonic()
            with pytest.raises(SinkError) as caught:
                await send(mailer(server.port, ca_file, timeout=0.5), notification())
            return caught.value, time.monotonic() - started

    error, elapsed = run(main())
    assert error.retryable and "no answer within 0.5s" in str(error)
    assert 0.4 <= elapsed < 2.0


# --- a real Alertmanager ------------------------------------------------------------------

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(what: str, check: Callable[[], Awaitable[Any] | Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_real_alertmanager_groups_and_resolves(tmp_path: Path) -> None:
    if not os.access(ALERTMANAGER, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail("prometheus-alertmanager is missing: .ci/run must install the Debian "
                        "package prometheus-alertmanager")
        pytest.skip("prometheus-alertmanager is not installed (apt-get install "
                    "prometheus-alertmanager); CI runs this test")

    async def main() -> None:
        async with Receiver(200, "") as hook:
            config = tmp_path / "alertmanager.yml"
            config.write_text(yaml.safe_dump({
                "route": {"receiver": "hook", "group_by": ["name"], "group_wait": "1s",
                          "group_interval": "1s", "repeat_interval": "1h"},
                "receivers": [{"name": "hook", "webhook_configs": [
                    {"url": hook.url("/alertmanager"), "send_resolved": True}]}],
            }))
            port = free_port()
            log = (tmp_path / "alertmanager.log").open("w")
            process = subprocess.Popen(
                [ALERTMANAGER, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
                 "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
            try:
                base = f"http://127.0.0.1:{port}"
                async with httpx.AsyncClient(timeout=2.0) as client:
                    async def ready() -> bool:
                        if process.poll() is not None:
                            raise AssertionError("alertmanager exited: "
                                                 + (tmp_path / "alertmanager.log").read_text())
                        try:
                            return (await client.get(base + "/-/ready")).status_code == 200
                        except httpx.TransportError:
                            return False

                    await wait_until("alertmanager to be ready", ready, 20)
                    sink = AlertmanagerSink(name="am", url=base)
                    now = datetime.now(timezone.utc).replace(microsecond=0)
                    expiry = notification("trigger", "warning", "expiry", created_at=now,
                                          started_at=now - timedelta(minutes=5))
                    verification = notification("trigger", "critical", "verification",
                                                created_at=now, started_at=now, url=None)
                    await sink.send(expiry, client)
                    await sink.send(verification, client)

                    def notified(status: str) -> dict[str, Any] | None:
                        for request in hook.requests:
                            body: dict[str, Any] = request.json()
                            if body["status"] == status and len(body["alerts"]) == 2:
                                return body
                        return None

                    firing = await wait_until("a grouped firing notification",
                                              lambda: notified("firing"), 20)
                    assert firing["groupLabels"] == {"name": "shop"}
                    assert firing["commonLabels"]["name"] == "shop"
                    assert firing["receiver"] == "hook"
                    by_name = {a["labels"]["alertname"]: a for a in firing["alerts"]}
                    assert set(by_name) == {"CertificateExpiry", "CertificateVerification"}
                    assert by_name["CertificateExpiry"]["labels"]["severity"] == "warning"
                    assert by_name["CertificateVerification"]["labels"]["severity"] == "critical"
                    assert by_name["CertificateExpiry"]["labels"]["certwatch_key"] == \
                        "shop/192.0.2.10/expiry"
                    assert by_name["CertificateExpiry"]["annotations"]["summary"] == expiry.summary
                    assert by_name["CertificateExpiry"]["generatorURL"] == STATUS_URL
                    assert parse_time(by_name["CertificateExpiry"]["startsAt"]) == \
                        expiry.started_at
                    assert all(a["status"] == "firing" for a in firing["alerts"])

                    # The daemon's periodic re-post is accepted, and the alerts stay active.
                    await sink.refresh([expiry, verification], client)
                    listed = (await client.get(base + "/api/v2/alerts")).json()
                    assert sorted(a["labels"]["alertname"] for a in listed) == [
                        "CertificateExpiry", "CertificateVerification"]
                    assert {a["status"]["state"] for a in listed} == {"active"}

                    later = datetime.now(timezone.utc)
                    for n in (expiry, verification):
                        await sink.send(notification("resolve", n.severity, n.kind,
                                                     created_at=later, started_at=n.started_at),
                                        client)
                    resolved = await wait_until("the resolved notification",
                                                lambda: notified("resolved"), 20)
                    assert all(a["status"] == "resolved" for a in resolved["alerts"])
                    assert {a["labels"]["alertname"] for a in resolved["alerts"]} == set(by_name)
            finally:
                process.kill()
                process.wait(timeout=10)
                log.close()

    run(main())
