"""Starting certwatch's HTTP server: plain or TLS, with the web configuration's security."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web

from certwatch.config.web import WebConfig
from certwatch.core.inventory import split_listen
from certwatch.serving.tls import ServerTLS, log_serving
from certwatch.serving.web import DaemonView, Handler, create_app

__all__ = ["Serving", "serve"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Serving:
    runner: web.AppRunner
    port: int  # the port bound (the one asked for, or the one given for port 0)


async def serve(view: DaemonView, listen: str, web_config: WebConfig | None,
                server_tls: ServerTLS | None, probe: Handler | None = None) -> Serving:
    """Listens on `listen` ("HOST:PORT" or ":PORT") and serves `view` (and /probe)."""
    runner = web.AppRunner(create_app(view, web_config, probe=probe), access_log=None)
    await runner.setup()
    host, port = split_listen(listen)
    site = web.TCPSite(runner, host, port, ssl_context=server_tls.context if server_tls else None)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    scheme = "https" if server_tls else "http"
    log.info("listening on %s://%s:%s/", scheme, host or "0.0.0.0", bound,
             extra={"port": bound, "scheme": scheme,
                    "basic_auth": bool(web_config and web_config.basic_auth_users)})
    if server_tls is not None:
        log_serving(server_tls)
    elif web_config is not None and web_config.basic_auth_users:
        log.warning("basic auth without TLS: passwords cross the network in clear text")
    return Serving(runner, bound)
