"""What the daemon opens once it has a configuration: its HTTP server and its state.

Each step that can fail says why in one log line and makes `run` exit 2, with nothing
left open behind it. The alerting package (its sinks, httpx) is imported only when the
inventory has an `alerts:` section: without one it was ~2 MB of memory for nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from certwatch.config.web import WebConfig
from certwatch.core.inventory import Inventory
from certwatch.daemon.history import CertificateHistory
from certwatch.serving.listener import ListenerLimits
from certwatch.serving.server import Serving, serve
from certwatch.serving.tls import ServerTLS, TLSLoadError
from certwatch.serving.web import DaemonView, Handler
from certwatch.state import DB_FILE, StateError, open_database

if TYPE_CHECKING:
    from certwatch.alerting.notifier import AlertsConfig, Notifier
    from certwatch.alerting.outbox import Outbox

__all__ = ["open_server", "open_state"]

log = logging.getLogger(__name__)


async def open_server(view: DaemonView, listen: str, web_config: WebConfig | None,
                      limits: ListenerLimits, probe: Handler | None = None) -> Serving | None:
    """The HTTP server on `listen` (TLS as the web configuration says), or None."""
    server_tls = None
    if web_config is not None and web_config.tls is not None:
        try:  # validated at loading; the files may have changed since
            server_tls = ServerTLS(web_config.tls)
        except TLSLoadError as exc:
            log.error("web configuration %s: %s", web_config.source, exc)
            return None
    try:
        return await serve(view, listen, web_config, server_tls, limits, probe)
    except OSError as exc:  # in use, not an address of this machine, not allowed
        log.error("cannot listen on %s: %s", listen, exc.strerror or exc,
                  extra={"listen": listen})
        return None


def open_outbox(inventory: Inventory, alerts: AlertsConfig) -> Outbox:
    """The alert state: in the shared PostgreSQL database, or the SQLite file."""
    from certwatch.alerting.outbox import SCHEMA as OUTBOX_SCHEMA, Outbox

    if inventory.state is not None:
        return Outbox(open_database(inventory.state, OUTBOX_SCHEMA))
    return Outbox(alerts.state_dir / DB_FILE)


def open_state(inventory: Inventory, alerts: AlertsConfig | None, registry: CollectorRegistry
               ) -> tuple[CertificateHistory, Notifier | None] | None:
    """The certificate history and, with an `alerts:` section, the notifier over its
    outbox; or None."""
    try:
        history = CertificateHistory(inventory.state_location)
        outbox = open_outbox(inventory, alerts) if alerts is not None else None
    except StateError as exc:
        log.error("%s", exc)
        return None
    if alerts is None or outbox is None:
        return history, None
    from certwatch.alerting.notifier import Notifier

    return history, Notifier(alerts, outbox, registry)
