"""The inventory: a YAML file of endpoints, validated into immutable values.

Loading never stops at the first problem: every problem is gathered into one
:class:`ConfigError` whose lines name the file, the line and the endpoint, so an
operator fixes a file in one pass. Nothing here touches the network; `ca_file` and
client certificate paths are only checked for readability. With `environ` given, the
alert sinks are read too (their secrets come from it or from files), in the same pass.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from certwatch.config.kit import ConfigError, Problems, Reader, describe, line_of, suggest
from certwatch.config.sinks import SinkSettings, read_sinks
from certwatch.config.yamlfile import Mapping as LineMapping
from certwatch.config.yamlfile import item_lines, parse, read_text
from certwatch.core.inventory import (
    ADDRESS_MODES,
    DEFAULT_LISTEN,
    PROTOCOLS,
    RESERVED_LABELS,
    TLS_ALIASES,
    URL_SCHEMES,
    AlertSettings,
    Defaults,
    Endpoint,
    Inventory,
    is_ip,
    split_listen,
)

__all__ = ["build_inventory", "listen_problem", "load_inventory", "parse_inventory"]

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MAX_DAYS = 36500

_DEFAULT_KEYS = ("timeout", "warn_days", "critical_days", "verify", "system_trust",
                 "ca_file", "addresses", "interval", "retry_interval")
_ENDPOINT_KEYS = ("name", "host", "port", "url", "server_name", "protocol", "addresses",
                  "timeout", "warn_days", "critical_days", "verify", "system_trust",
                  "ca_file", "client_cert", "client_key", "labels", "interval",
                  "retry_interval")
_TOP_KEYS = ("defaults", "endpoints", "max_concurrency", "listen", "demo", "alerts")
_ALERT_KEYS = ("state_dir", "external_url", "repeat", "probe_failures", "retry", "sinks")


def _mapping_or_none(raw: Any, where: str, problems: Problems) -> Mapping[Any, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.add(line_of(raw), where, f"must be a mapping, not {describe(raw)}")
        return None
    return raw


def _thresholds_problem(read: Reader, warn: float, critical: float) -> None:
    if critical > warn:
        read.problem("critical_days", f"critical_days ({critical:g}) must not exceed "
                                      f"warn_days ({warn:g})")


def _read_defaults(raw: Any, problems: Problems, base: Path) -> Defaults:
    mapping = _mapping_or_none(raw, "defaults", problems)
    if mapping is None:
        return Defaults()
    read = Reader(mapping, "defaults", problems, base)
    read.unknown_keys(_DEFAULT_KEYS)
    fallback = Defaults()
    defaults = Defaults(
        timeout=read.number("timeout", fallback.timeout, minimum=0.1, maximum=600),
        warn_days=read.number("warn_days", fallback.warn_days, minimum=0, maximum=MAX_DAYS),
        critical_days=read.number("critical_days", fallback.critical_days, minimum=0,
                                  maximum=MAX_DAYS),
        verify=read.boolean("verify", fallback.verify),
        system_trust=read.boolean("system_trust", fallback.system_trust),
        ca_file=read.path("ca_file", None),
        addresses=read.choice("addresses", fallback.addresses, ADDRESS_MODES),
        interval=read.duration("interval", fallback.interval),
        retry_interval=read.duration("retry_interval", fallback.retry_interval),
    )
    _thresholds_problem(read, defaults.warn_days, defaults.critical_days)
    return defaults


def _read_alerts(raw: Any, problems: Problems, base: Path,
                 environ: Mapping[str, str] | None) -> AlertSettings | None:
    mapping = _mapping_or_none(raw, "alerts", problems)
    if mapping is None:
        return None
    read = Reader(mapping, "alerts", problems, base)
    read.unknown_keys(_ALERT_KEYS)
    fallback = AlertSettings()
    state_dir = mapping.get("state_dir", str(fallback.state_dir))
    if not isinstance(state_dir, str) or not state_dir:
        read.problem("state_dir", "'state_dir' must be a directory path")
        state_dir = str(fallback.state_dir)
    url = mapping.get("external_url")
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
        read.problem("external_url", f"'external_url' must be an http(s) URL, not {describe(url)}")
        url = None
    nested = {}
    for section, keys in (("repeat", ("warning", "critical")),
                          ("retry", ("initial", "maximum", "give_up_after"))):
        value = mapping.get(section) or LineMapping()
        if not isinstance(value, dict):
            read.problem(section, f"'{section}' must be a mapping")
            value = LineMapping()
        nested[section] = Reader(value, f"alerts.{section}", problems, base)
        nested[section].unknown_keys(keys)
    sinks: tuple[SinkSettings, ...] = ()
    if environ is not None:  # `check` has no use for sinks, nor the secrets they need
        sinks = read_sinks(mapping.get("sinks"), line_of(mapping, "sinks"), "alerts.sinks",
                           Reader(mapping, "alerts", problems, base, environ))
    elif "sinks" in mapping and not isinstance(mapping["sinks"], list):
        read.problem("sinks", "'sinks' must be a list")
    repeat, retry = nested["repeat"], nested["retry"]
    return AlertSettings(
        state_dir=read.resolve(state_dir),
        external_url=url.rstrip("/") if url else None,
        repeat_warning=repeat.duration("warning", fallback.repeat_warning),
        repeat_critical=repeat.duration("critical", fallback.repeat_critical),
        probe_failures=int(read.number("probe_failures", fallback.probe_failures, minimum=1,
                                       maximum=1000)),
        retry_initial=retry.duration("initial", fallback.retry_initial),
        retry_max=retry.duration("maximum", fallback.retry_max),
        give_up_after=retry.duration("give_up_after", fallback.give_up_after),
        sinks=sinks,
    )


def _host_problem(host: Any) -> str | None:
    if not isinstance(host, str) or not host.strip():
        return f"'host' must be a host name or IP address, not {describe(host)}"
    if is_ip(host):
        return None
    if len(host) > 253 or not all(
        re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", label)
        for label in host.rstrip(".").split(".")
    ):
        return f"'host' is not a valid host name: {describe(host)}"
    return None


def _from_url(read: Reader) -> dict[str, Any]:
    """Expands `url: scheme://host:port` into host, port and protocol."""
    raw, url = read.mapping, read.mapping["url"]
    fields: dict[str, Any] = {}
    if not isinstance(url, str):
        read.problem("url", f"'url' must be a string, not {describe(url)}")
        return fields
    for key in ("host", "port", "protocol"):
        if key in raw:
            read.problem(key, f"give either 'url' or '{key}', not both")
    try:
        parts = urlsplit(url if "://" in url else f"https://{url}")
    except ValueError as exc:  # an unclosed "[" of an IPv6 address, say
        read.problem("url", f"'url' is not a valid URL ({exc}): {describe(url)}")
        return fields
    scheme = parts.scheme.lower()
    if scheme not in URL_SCHEMES:
        read.problem("url", f"'url' scheme {describe(scheme)} is not one of "
                            f"{', '.join(sorted(URL_SCHEMES))}")
        return fields
    try:
        port = parts.port
    except ValueError:
        read.problem("url", f"'url' has a bad port: {describe(url)}")
        return fields
    if not parts.hostname:
        read.problem("url", f"'url' has no host: {describe(url)}")
        return fields
    fields["host"] = parts.hostname
    fields["protocol"] = URL_SCHEMES[scheme]
    fields["port"] = port or TLS_ALIASES.get(scheme) or PROTOCOLS[URL_SCHEMES[scheme]]
    return fields


def _protocol(read: Reader, values: dict[str, Any]) -> tuple[str, int | None]:
    """The protocol and the port it implies."""
    protocol = values.get("protocol", read.mapping.get("protocol", "tls"))
    if isinstance(protocol, str) and protocol in TLS_ALIASES:
        return "tls", TLS_ALIASES[protocol]
    if isinstance(protocol, str) and protocol in PROTOCOLS:
        return protocol, PROTOCOLS[protocol]
    known = [*PROTOCOLS, *TLS_ALIASES]
    read.problem("protocol", f"unknown protocol {describe(protocol)}{suggest(protocol, known)}"
                             f"; known: {', '.join(known)}")
    return "tls", 443


def _server_name(read: Reader, host: Any) -> str | None:
    raw = read.mapping
    server_name: Any = raw.get("server_name", host)
    if raw.get("server_name", True) in (False, None, ""):
        return None  # explicitly turned off
    if isinstance(server_name, str) and is_ip(server_name):
        return None  # SNI never carries an IP literal (RFC 6066 section 3)
    if server_name is not None and _host_problem(server_name) is not None:
        read.problem("server_name",
                     f"'server_name' must be a host name or false, not {describe(server_name)}")
        return None
    # An absolute name (example.com.) is a DNS spelling: SNI carries the name without the
    # trailing dot (RFC 6066 section 3), and certificates name it so.
    return server_name.rstrip(".") if isinstance(server_name, str) else None


def _read_endpoint(raw: Any, index: int, line: int, defaults: Defaults, problems: Problems,
                   base: Path) -> tuple[str | None, Endpoint | None]:
    """The endpoint's name (for duplicate checks) and the endpoint, None if invalid."""
    label = raw.get("name") if isinstance(raw, dict) else None
    where = f"endpoint {index + 1}" + (f" {describe(label)}" if isinstance(label, str) else "")
    if isinstance(raw, str):  # a bare "host:port" or URL is accepted as a shorthand
        raw = LineMapping(url=raw)
        raw.line = line
    if not isinstance(raw, dict):
        problems.add(line, where, f"must be a mapping or a URL, not {describe(raw)}")
        return None, None
    read = Reader(raw, where, problems, base)
    read.unknown_keys(_ENDPOINT_KEYS)
    values = _from_url(read) if "url" in raw else {}
    protocol, port_default = _protocol(read, values)

    host = values.get("host", raw.get("host"))
    if "url" not in raw or values:
        if (message := _host_problem(host)) is not None:
            read.problem("host", message)
            host = None

    port = values.get("port", raw.get("port", port_default))
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        read.problem("port", f"'port' must be a whole number from 1 to 65535, not {describe(port)}")
        port = None

    server_name = _server_name(read, host)
    warn = read.number("warn_days", defaults.warn_days, minimum=0, maximum=MAX_DAYS)
    critical = read.number("critical_days", defaults.critical_days, minimum=0, maximum=MAX_DAYS)
    if "warn_days" in raw or "critical_days" in raw:
        _thresholds_problem(read, warn, critical)

    client_cert = read.path("client_cert", None)
    client_key = read.path("client_key", None)
    if ("client_key" in raw) and ("client_cert" not in raw):
        read.problem("client_key", "'client_key' needs 'client_cert'")

    labels = _read_labels(read)
    name = raw.get("name")
    if name is None and host is not None and port is not None:
        name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    elif name is not None and (not isinstance(name, str) or not name.strip()):
        read.problem("name", f"'name' must be text, not {describe(name)}")
        name = None

    endpoint = Endpoint(
        name=name or "", host=host or "", port=port or 0, protocol=protocol,
        server_name=server_name,
        addresses=read.choice("addresses", defaults.addresses, ADDRESS_MODES),
        timeout=read.number("timeout", defaults.timeout, minimum=0.1, maximum=600),
        warn_days=warn,
        critical_days=critical,
        verify=read.boolean("verify", defaults.verify),
        system_trust=read.boolean("system_trust", defaults.system_trust),
        ca_file=read.path("ca_file", defaults.ca_file),
        client_cert=client_cert,
        client_key=client_key,
        labels=labels,
        interval=read.duration("interval", defaults.interval),
        retry_interval=read.duration("retry_interval", defaults.retry_interval),
    )
    if read.failed or name is None or host is None or port is None:
        return name, None
    return name, endpoint


def _read_labels(read: Reader) -> tuple[tuple[str, str], ...]:
    labels = read.mapping.get("labels")
    if labels is None:
        return ()
    if not isinstance(labels, dict):
        read.problem("labels", f"'labels' must be a mapping of name: value, not {describe(labels)}")
        return ()
    result = []
    for key, value in labels.items():
        key_line = line_of(labels, key)
        if not isinstance(key, str) or not LABEL_NAME.match(key) or key.startswith("__"):
            read.problems.add(key_line, read.where, f"label name {describe(key)} must match "
                                                    "[a-zA-Z_][a-zA-Z0-9_]* and not start with '__'")
        elif key in RESERVED_LABELS:
            read.problems.add(key_line, read.where, f"label name '{key}' is reserved by certwatch")
        elif isinstance(value, (dict, list)) or value is None:
            read.problems.add(key_line, read.where,
                              f"label '{key}' must be a single value, not {describe(value)}")
        elif isinstance(value, int) and value.bit_length() > 64:
            read.problems.add(key_line, read.where, f"label '{key}' is too long a number")
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            result.append((key, text))
    return tuple(sorted(result))


def parse_inventory(text: str, source: str = "<inventory>", base: Path | None = None,
                    environ: Mapping[str, str] | None = None) -> Inventory:
    """Validates inventory YAML; raises ConfigError listing every problem."""
    return parse(text, source, lambda document: build_inventory(document, source, base, environ))


def build_inventory(document: Any, source: str = "<inventory>", base: Path | None = None,
                    environ: Mapping[str, str] | None = None) -> Inventory:
    """Validates an already-parsed document (from YAML, or built by the CLI). With
    `environ`, the alert sinks are read as well (see :mod:`certwatch.config.sinks`)."""
    base = base or Path.cwd()
    problems = Problems()
    if document is None:
        raise ConfigError(source, ["top: the file is empty; it needs an 'endpoints:' list"])
    if not isinstance(document, dict):
        raise ConfigError(source, [f"top: must be a mapping with 'endpoints:', not {describe(document)}"])
    top = Reader(document, "", problems, base)
    top.unknown_keys(_TOP_KEYS)
    defaults = _read_defaults(document.get("defaults"), problems, base)
    concurrency = top.number("max_concurrency", 100, minimum=1, maximum=100_000)
    demo = top.boolean("demo", False)
    alerts = _read_alerts(document.get("alerts"), problems, base, environ)
    listen = document.get("listen", DEFAULT_LISTEN)
    if (message := listen_problem(listen)) is not None:
        top.problem("listen", message)
        listen = DEFAULT_LISTEN
    raw_endpoints = document.get("endpoints")
    if not isinstance(raw_endpoints, list):
        top.problem("endpoints", f"'endpoints' must be a list, not {describe(raw_endpoints)}")
        raw_endpoints = []
    endpoints: list[Endpoint] = []
    seen: dict[str, int] = {}
    for index, (raw, line) in enumerate(zip(raw_endpoints, item_lines(raw_endpoints))):
        name, endpoint = _read_endpoint(raw, index, line, defaults, problems, base)
        if name is not None and name in seen:
            problems.add(line, f"endpoint {index + 1} '{name}'",
                         f"duplicate name (first used by endpoint {seen[name] + 1}); "
                         "give each a distinct 'name'")
        elif name is not None:
            seen[name] = index
        if endpoint is not None:
            endpoints.append(endpoint)
    problems.raise_for(source)
    return Inventory(endpoints=tuple(endpoints), defaults=defaults,
                     max_concurrency=int(concurrency), listen=listen, demo=demo,
                     alerts=alerts, source=source)


def listen_problem(listen: Any) -> str | None:
    """Why `listen` is not a usable address, or None."""
    try:
        if not isinstance(listen, str):
            raise ValueError
        _, port = split_listen(listen)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        return f"'listen' must be HOST:PORT or :PORT, not {describe(listen)}"
    return None


def load_inventory(path: Path | str, *, environ: Mapping[str, str] | None = None,
                   read: Callable[[Path], bytes] | None = None) -> Inventory:
    """Reads and validates an inventory file; relative paths in it are relative to it.
    `read` replaces the bounded read of the file (a test's fault injection)."""
    path = Path(path)
    text = read_text(path) if read is None else read_text(path, read)
    return parse_inventory(text, source=str(path), base=path.parent.resolve(), environ=environ)
