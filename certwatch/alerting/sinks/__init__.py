"""Delivery of one notification to one receiver: webhook, Slack, PagerDuty, Alertmanager,
email. The outbox and its retries live in :mod:`certwatch.alerting.notifier`; a sink only
sends.

Each sink is its settings (:mod:`certwatch.config.sinks`, validated with the inventory)
plus a `send`; :data:`SINK_TYPES` maps a `type:` to its class, so a new kind of receiver
is one settings class and one sink class.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Mapping

from certwatch.alerting.sinks.base import Refreshing, Sink, SinkError
from certwatch.alerting.sinks.http import (
    AlertmanagerSink,
    PagerDutySink,
    SlackSink,
    WebhookSink,
    webhook_signature,
)
from certwatch.alerting.sinks.payloads import slack_payload
from certwatch.alerting.sinks.smtp import EmailSink
from certwatch.config.kit import Problems, Reader
from certwatch.config.sinks import PAGERDUTY_URL, SinkSettings, read_sinks

__all__ = [
    "PAGERDUTY_URL",
    "SINK_TYPES",
    "AlertmanagerSink",
    "EmailSink",
    "PagerDutySink",
    "Refreshing",
    "Sink",
    "SinkError",
    "SlackSink",
    "WebhookSink",
    "build_sinks",
    "parse_sinks",
    "slack_payload",
    "webhook_signature",
]

SINK_TYPES: dict[str, type[Any]] = {
    "webhook": WebhookSink,
    "slack": SlackSink,
    "pagerduty": PagerDutySink,
    "alertmanager": AlertmanagerSink,
    "email": EmailSink,
}


def build_sinks(settings: Iterable[SinkSettings]) -> tuple[Sink, ...]:
    """The sink that delivers for each validated settings value."""
    built = []
    for one in settings:
        values = {f.name: getattr(one, f.name) for f in dataclasses.fields(one) if f.init}
        built.append(SINK_TYPES[one.type](**values))
    return tuple(built)


def parse_sinks(raw: Any, where: str, environ: Mapping[str, str],
                base: Path) -> tuple[list[Sink], list[str]]:
    """The sinks of an `alerts.sinks` list and every problem found, one line each (never
    raises); `where` names the list in messages. A sink with a problem is left out."""
    problems = Problems()
    settings = read_sinks(raw, 0, where, Reader({}, "", problems, base, environ))
    return list(build_sinks(settings)), problems.items
