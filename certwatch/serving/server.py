"""Starting certwatch's HTTP server: plain or TLS, with the web configuration's security,
its connections bounded by :mod:`~certwatch.serving.listener`."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web

from certwatch.config.web import WebConfig
from certwatch.core.inventory import split_listen
from certwatch.serving.listener import ConnectionGuard, GuardedSite, ListenerLimits
from certwatch.serving.tls import ServerTLS, log_serving
from certwatch.serving.web import DaemonView, Handler, create_app

__all__ = ["ListenerLimits", "Serving", "serve"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Serving:
    runner: web.AppRunner
    port: int  # the port bound (the one asked for, or the one given for port 0)
    guard: ConnectionGuard

    async def close(self) -> None:
        """Stops listening, lets aiohttp finish its connections, closes the rest."""
        await self.runner.cleanup()
        self.guard.abort_all()


async def serve(view: DaemonView, listen: str, web_config: WebConfig | None,
                server_tls: ServerTLS | None,
                limits: ListenerLimits = ListenerLimits(), probe: Handler | None = None) -> Serving:
    """Listens on `listen` ("HOST:PORT" or ":PORT") and serves `view` (and /probe);
    OSError when the address cannot be listened on (in use, not this machine's, not
    allowed)."""
    guard = ConnectionGuard(limits, server_tls.context if server_tls else None)
    app = create_app(view, web_config, probe=probe)
    app.middlewares.insert(0, guard.track)  # outermost: busy while basic auth runs too
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=limits.idle_timeout)
    await runner.setup()
    host, port = split_listen(listen)
    site = GuardedSite(runner, host, port, guard)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = site.bound_port
    scheme = "https" if server_tls else "http"
    log.info("listening on %s://%s:%s/", scheme, host or "0.0.0.0", bound,
             extra={"port": bound, "scheme": scheme,
                    "basic_auth": bool(web_config and web_config.basic_auth_users),
                    "max_connections": limits.max_connections,
                    # uvloop or asyncio (certwatch.eventloop)
                    "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0]})
    if server_tls is not None:
        log_serving(server_tls)
    elif web_config is not None and web_config.basic_auth_users:
        log.warning("basic auth without TLS: passwords cross the network in clear text")
    return Serving(runner, bound, guard)
