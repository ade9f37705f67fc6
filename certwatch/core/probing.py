"""`/probe` mode: a scrape's target as an endpoint (its modules and allow-list are values
of the inventory, :class:`~certwatch.core.inventory.ProbeSettings`).

Prometheus' multi-target exporter pattern (as blackbox_exporter and ssl_exporter do it):
Prometheus asks `GET /probe?target=host:port&module=NAME`, certwatch probes that target
once and answers with its metrics. A module is a named set of endpoint options declared
in the configuration file (protocol, server_name, ca_file, thresholds, timeout, proxy,
...); without `module` the file's `defaults` apply. Either way the endpoint is the one
the inventory would make of `- host: HOST\\n  port: PORT` with those options, so its
series carry the same names and labels as the daemon's.

So that `/probe` is no open relay, a target must be allowed: an IP literal by a network
of the allow-list, a host name by one of its name patterns, or, with `networks`, a name
whose addresses lie in them (only those addresses are probed: a name that resolves
elsewhere at probe time is refused there, not here). Nothing is allowed by default.

Pure: no look-ups, no I/O.
"""

from __future__ import annotations

import dataclasses

from certwatch.core.inventory import PROTOCOLS, Endpoint, ProbeModule, is_ip
from certwatch.core.names import a_label

__all__ = ["parse_target", "probe_endpoint"]

MAX_TARGET = 300  # characters of a target: a host name is at most 253


def parse_target(text: str) -> tuple[str, int | None]:
    """ "host", "host:port", "[v6]:port", "v6" as (host, port or None); ValueError says
    what is wrong."""
    text = text.strip()
    if not text or len(text) > MAX_TARGET or any(not ch.isprintable() or ch.isspace()
                                                  for ch in text):
        raise ValueError("target must be host, host:port or [IPv6]:port")
    port: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"target {text!r}: an IPv6 address is written [address]:port")
        port = rest[1:] if rest else None
    elif text.count(":") > 1:
        host = text  # a bare IPv6 literal
    else:
        host, sep, after = text.partition(":")
        port = after if sep else None
    if port is not None and (not port.isdigit() or not 1 <= int(port) <= 65535):
        raise ValueError(f"target {text!r}: the port must be a number from 1 to 65535")
    if not is_ip(host):
        a_label(host)  # raises ValueError in words for a name that is not valid
    return host, int(port) if port is not None else None


def probe_endpoint(module: ProbeModule, host: str, port: int | None) -> Endpoint:
    """The endpoint for one probe: the module's options, this host and port, named as
    the inventory names an entry without a name ("host:port")."""
    template = module.template
    wire = host if is_ip(host) else a_label(host)
    port = port or template.port or PROTOCOLS.get(template.protocol, 443)
    server_name = template.server_name if module.fixed_server_name else (
        None if is_ip(wire) else wire)
    name = f"[{wire}]:{port}" if ":" in wire else f"{wire}:{port}"
    return dataclasses.replace(template, name=name, host=wire, port=port,
                               server_name=server_name)
