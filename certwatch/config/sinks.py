"""The `alerts.sinks` list: where notifications go, validated into settings values.

Secrets (webhook URLs, routing keys, HMAC keys, SMTP passwords) are read from
environment variables or files here, are kept in fields hidden from ``repr``, and never
appear in a problem message: messages name the variable or the file, and a receiver
by ``scheme://host:port`` only. :mod:`certwatch.alerting.sinks` gives each kind of
settings its delivery.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping
from urllib.parse import urlsplit

from certwatch.config.kit import Reader, describe, line_of, split_http_url, suggest
from certwatch.config.yamlfile import item_lines
from certwatch.core.alerts import Notification
from certwatch.core.vocabulary import Severity

__all__ = [
    "PAGERDUTY_URL",
    "AlertmanagerSettings",
    "EmailSettings",
    "PagerDutySettings",
    "SinkSettings",
    "SlackSettings",
    "WebhookSettings",
    "host_port",
    "read_sinks",
    "safe_url",
    "single_line",
]

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
HTTP_TIMEOUT = 10.0  # seconds per delivery; a pager API answers in well under a second
SMTP_TIMEOUT = 30.0  # SMTP needs several round trips plus a TLS handshake
REFRESH_INTERVAL = 60.0  # Alertmanager: re-post firing alerts this often ...
ACTIVE_FOR = 3600.0  # ... each valid for this long (endsAt), so a dead certwatch's
#                      alerts resolve by themselves an hour later

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_ADDRESS = re.compile(r"^[^\s<>@,;\"]+@[^\s<>@,;\"]+$")


def single_line(value: Any) -> str:
    """One line of printable text."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return _CONTROL.sub(" ", str(value)).strip()


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def host_port(host: str, port: int | None) -> str:
    return f"{_host(host)}:{port}" if port else _host(host)


def safe_url(url: str) -> str:
    """scheme://host:port: no credentials, no path, no query."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host_port(host, port) if port else _host(host)}"


def _empty_labels() -> Mapping[str, str]:
    return MappingProxyType({})


# --- the settings ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkSettings:
    """What every sink has: a name, routing rules and a deadline."""

    type: str = field(default="", init=False)
    name: str
    min_severity: str = Severity.WARNING
    match: Mapping[str, str] = field(default_factory=_empty_labels)
    timeout: float = HTTP_TIMEOUT

    def __post_init__(self) -> None:
        # Sinks with a secret `url` show only its scheme://host:port, as `endpoint`.
        url = getattr(self, "url", None)
        if isinstance(url, str) and getattr(self, "endpoint", None) == "":
            object.__setattr__(self, "endpoint", safe_url(url))

    def accepts(self, n: Notification) -> bool:
        """At or above min_severity (a resolve carries the severity the alert had, so it
        goes exactly where the alert went) and every `match` label equal."""
        if Severity(n.severity).rank < Severity(self.min_severity).rank:
            return False
        labels = n.target.get("labels") or {}
        return all(k in labels and str(labels[k]) == v for k, v in self.match.items())


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSettings(SinkSettings):
    type: str = field(default="webhook", init=False)
    url: str = field(repr=False)
    endpoint: str = ""  # scheme://host:port, safe to show; derived from url
    hmac_secret: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class SlackSettings(SinkSettings):
    type: str = field(default="slack", init=False)
    url: str = field(repr=False)  # the URL is the credential
    endpoint: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PagerDutySettings(SinkSettings):
    type: str = field(default="pagerduty", init=False)
    routing_key: str = field(repr=False)
    url: str = PAGERDUTY_URL


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertmanagerSettings(SinkSettings):
    type: str = field(default="alertmanager", init=False)
    url: str = field(repr=False)  # base URL (http://am:9093) or the full .../api/v2/alerts
    endpoint: str = ""
    refresh_interval: float = REFRESH_INTERVAL
    active_for: float = ACTIVE_FOR

    @property
    def alerts_url(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/api/v2/alerts") else base + "/api/v2/alerts"


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailSettings(SinkSettings):
    type: str = field(default="email", init=False)
    smtp_host: str
    smtp_port: int = 587
    starttls: bool = True
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str  # the `from` key
    to: tuple[str, ...]
    ca_file: Path | None = None
    timeout: float = SMTP_TIMEOUT


# --- reading -----------------------------------------------------------------------------

_COMMON_KEYS = ("name", "type", "min_severity", "match", "timeout")
KEYS: dict[str, tuple[str, ...]] = {
    "webhook": (*_COMMON_KEYS, "url", "url_env", "url_file", "hmac_secret_env",
                "hmac_secret_file"),
    "slack": (*_COMMON_KEYS, "url_env", "url_file"),
    "pagerduty": (*_COMMON_KEYS, "routing_key_env", "routing_key_file", "url"),
    "alertmanager": (*_COMMON_KEYS, "url", "url_env", "url_file", "refresh_interval",
                     "active_for"),
    "email": (*_COMMON_KEYS, "smtp_host", "smtp_port", "starttls", "username", "password_env",
              "password_file", "from", "to", "ca_file"),
}


def read_sinks(raw: Any, line: int, where: str, parent: Reader) -> tuple[SinkSettings, ...]:
    """The sinks of the `alerts.sinks` list; every problem goes to `parent`'s problems.
    `where` names the list in messages; `parent` carries the base path and environ. A
    sink with a problem is left out."""
    if raw is None:
        return ()
    problems = parent.problems
    if not isinstance(raw, list):
        problems.add(line or line_of(raw), where, f"must be a list of sinks, not {describe(raw)}")
        return ()
    sinks: list[SinkSettings] = []
    seen: dict[str, str] = {}
    for index, (item, item_line) in enumerate(zip(raw, item_lines(raw))):
        label = f"{where}[{index}]"
        if not isinstance(item, dict):
            problems.add(item_line, label, f"must be a mapping, not {describe(item)}")
            continue
        name = item.get("name")
        if isinstance(name, str) and name.strip():
            label = f"{label} '{single_line(name)[:60]}'"
        read = Reader(item, label, problems, parent.base, parent.environ)
        sink = _read_one(read)
        if isinstance(name, str) and name.strip():
            if name.strip() in seen:
                read.problem("name", f"the name '{single_line(name)[:60]}' is already used by "
                                     f"{seen[name.strip()]}")
                continue
            seen[name.strip()] = f"{where}[{index}]"
        if sink is not None and not read.failed:
            sinks.append(sink)
    return tuple(sinks)


def _read_one(read: Reader) -> SinkSettings | None:
    kind = read.mapping.get("type")
    if not isinstance(kind, str) or kind not in KEYS:  # a list or mapping is unhashable
        if kind is None:
            read.problem(None, f"'type' is required: one of {', '.join(KEYS)}")
        else:
            hint = suggest(kind, KEYS)
            read.problem("type", f"unknown type {describe(kind)}"
                                 + (hint or f"; known types: {', '.join(KEYS)}"))
        return None
    read.unknown_keys(KEYS[kind], kind=f" for a {kind} sink")
    name = read.string("name", required=True)
    if name is not None and len(name) > 64:
        read.problem("name", "'name' must be at most 64 characters")
    min_severity = read.mapping.get("min_severity", Severity.WARNING)
    if min_severity not in tuple(Severity):
        read.problem("min_severity", f"'min_severity' must be one of {', '.join(Severity)}, "
                                     f"not {describe(min_severity)}")
        min_severity = Severity.WARNING
    default_timeout = SMTP_TIMEOUT if kind == "email" else HTTP_TIMEOUT
    common: dict[str, Any] = {
        "name": name or "", "min_severity": Severity(min_severity), "match": _read_match(read),
        "timeout": read.duration("timeout", default_timeout, minimum=0.05, maximum=300)}
    return _READERS[kind](read, common)


def _webhook(read: Reader, common: dict[str, Any]) -> SinkSettings | None:
    url = _url(read, secret_only=False)
    secret = read.secret("hmac_secret", required=False, what="the HMAC key")
    if url is None:
        return None
    return WebhookSettings(**common, url=url,
                           hmac_secret=secret.encode() if secret is not None else None)


def _slack(read: Reader, common: dict[str, Any]) -> SinkSettings | None:
    url = _url(read, secret_only=True)
    return None if url is None else SlackSettings(**common, url=url)


def _pagerduty(read: Reader, common: dict[str, Any]) -> SinkSettings | None:
    key = read.secret("routing_key", required=True, what="the routing key")
    url = _url(read, secret_only=False, required=False, default=PAGERDUTY_URL)
    if key is None or url is None:
        return None
    return PagerDutySettings(**common, routing_key=key, url=url)


def _alertmanager(read: Reader, common: dict[str, Any]) -> SinkSettings | None:
    url = _url(read, secret_only=False)
    refresh = read.duration("refresh_interval", REFRESH_INTERVAL, minimum=1, maximum=86400)
    active_for = read.duration("active_for", max(ACTIVE_FOR, 3 * refresh),
                               minimum=1, maximum=7 * 86400)
    if active_for < 2 * refresh:
        read.problem("active_for", f"'active_for' ({active_for:g}s) must be at least twice "
                                   f"'refresh_interval' ({refresh:g}s), or alerts resolve "
                                   "between two re-posts")
    if url is None:
        return None
    return AlertmanagerSettings(**common, url=url, refresh_interval=refresh,
                                active_for=active_for)


def _email(read: Reader, common: dict[str, Any]) -> SinkSettings | None:
    raw = read.mapping
    host = read.string("smtp_host", required=True)
    port = raw.get("smtp_port", 587)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        read.problem("smtp_port", f"'smtp_port' must be a port number, not {describe(port)}")
    starttls = read.boolean("starttls", True)
    username = read.string("username")
    password = read.secret("password", required=username is not None, what="the SMTP password")
    if username is None and any(raw.get(k) is not None for k in ("password_env", "password_file")):
        read.problem("username", "a password is set but no 'username'")
    if username is not None and not starttls:
        read.problem("starttls", "'starttls: false' would send the password in clear text")
    sender = read.string("from", required=True)
    if sender is not None and not _ADDRESS.match(email.utils.parseaddr(sender)[1] or "-"):
        read.problem("from", f"'from' must be an email address, not {describe(sender)}")
    to = _recipients(read)
    ca_file = None
    if raw.get("ca_file") is not None:
        ca_file = read.path("ca_file", None)
    if read.failed or host is None or sender is None:
        return None
    return EmailSettings(**common, smtp_host=host, smtp_port=port, starttls=starttls,
                         username=username, password=password, sender=sender, to=to,
                         ca_file=ca_file)


def _recipients(read: Reader) -> tuple[str, ...]:
    raw = read.mapping.get("to")
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        read.problem("to" if "to" in read.mapping else None,
                     f"'to' must be a list of email addresses, not {describe(raw)}")
        return ()
    to = []
    for address in raw:
        if not isinstance(address, str) or _CONTROL.search(address) \
                or not _ADDRESS.match(email.utils.parseaddr(address)[1] or "-"):
            read.problem("to", f"'to' entry {describe(address)} is not an email address")
        else:
            to.append(address.strip())
    return tuple(to)


_READERS = {"webhook": _webhook, "slack": _slack, "pagerduty": _pagerduty,
            "alertmanager": _alertmanager, "email": _email}


def _read_match(read: Reader) -> Mapping[str, str]:
    raw = read.mapping.get("match")
    if raw is None:
        return _empty_labels()
    if not isinstance(raw, dict):
        read.problem("match", f"'match' must be a mapping of label: value, not {describe(raw)}")
        return _empty_labels()
    result: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _LABEL_NAME.match(key):
            read.problem("match", f"'match' label name {describe(key)} must match "
                                  "[a-zA-Z_][a-zA-Z0-9_]*")
        elif isinstance(value, (dict, list)) or value is None:
            read.problem("match", f"'match' label '{key}' must be a single value, "
                                  f"not {describe(value)}")
        else:
            # The same spelling the inventory gives label values (true -> "true").
            result[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return MappingProxyType(dict(sorted(result.items())))


def _url(read: Reader, *, secret_only: bool, required: bool = True,
         default: str | None = None) -> str | None:
    """`url` (where allowed) or `url_env`/`url_file`: an http(s) URL."""
    raw = read.mapping
    plain = raw.get("url")
    referenced = any(raw.get(k) is not None for k in ("url_env", "url_file"))
    if plain is not None and referenced:
        read.problem("url", "give one of 'url', 'url_env' or 'url_file'")
        return None
    if plain is not None and secret_only:
        read.problem("url", "this URL is a credential: put it in an environment variable "
                            "('url_env') or a file ('url_file'), not in the configuration")
        return None
    if plain is not None:
        value = read.string("url")
        origin = "'url'"
    elif referenced:
        value = read.secret("url", required=True, what="the URL")
        origin = "'url_env'" if raw.get("url_env") is not None else "'url_file'"
    else:
        if default is None and required:
            read.problem(None, "'url', 'url_env' or 'url_file' is required" if not secret_only
                         else "the webhook URL is a credential: set 'url_env' or 'url_file'")
        return default
    if value is None:
        return None
    parts = split_http_url(value)
    if parts is None:
        # Do not echo the value: it may be a credential.
        read.problem("url" if plain is not None else None,
                     f"{origin} must hold an http:// or https:// URL with a host")
        return None
    if plain is not None and (parts.password or parts.username):
        read.problem("url", "'url' holds credentials: move the URL to 'url_env' or 'url_file'")
        return None
    return value
