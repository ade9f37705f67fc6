"""What every sink is to the notifier, how a delivery fails, and how secrets stay unseen.

Errors:

    SinkError(message, retryable, retry_after)
        retryable=True:  timeouts, connection errors, HTTP 408, 429 and 5xx, SMTP 4xx
        retryable=False: any other HTTP 4xx (and 3xx: redirects are not followed),
                         SMTP 5xx, an SMTP server without STARTTLS

A message names a receiver by ``scheme://host:port`` only, and any secret that a
receiver echoes back in its answer is replaced by ``[redacted]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

import httpx

from certwatch.core.alerts import Notification

__all__ = ["REDACTED", "SNIPPET", "Refreshing", "Sink", "SinkError", "redact", "secrets_of",
           "utcnow"]

SNIPPET = 200  # characters of a receiver's error answer kept in a SinkError
REDACTED = "[redacted]"


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

    @property
    def timeout(self) -> float: ...

    def accepts(self, n: Notification) -> bool: ...

    async def send(self, n: Notification, client: httpx.AsyncClient) -> None: ...


@runtime_checkable
class Refreshing(Sink, Protocol):
    """A sink whose receiver forgets firing alerts unless they are re-posted
    (Alertmanager): the notifier calls :meth:`refresh` every `refresh_interval`."""

    @property
    def refresh_interval(self) -> float: ...

    async def refresh(self, active: Sequence[Notification], client: httpx.AsyncClient) -> None: ...


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def secrets_of(*values: str | bytes | None) -> tuple[str, ...]:
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


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text
