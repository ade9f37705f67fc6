"""The inventory: a YAML file of endpoints, validated into immutable values.

Loading never stops at the first problem: every problem is gathered into one
:class:`ConfigError` whose lines name the file, the line and the endpoint, so an
operator fixes a file in one pass. Nothing here touches the network; `ca_file` and
client certificate paths are only checked for readability. With `environ` given, the
alert sinks are read too (their secrets come from it or from files), in the same pass.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from certwatch.config.alerts import mapping_or_none, read_alerts, state_dir_of
from certwatch.config.kit import (
    ConfigError, Problems, Reader, describe, line_of, read_choices, suggest,
)
from certwatch.config.selections import (
    AT_REST_KEYS,
    FILE_KEYS,
    KUBERNETES_KEYS,
    read_file_selection,
    read_kubernetes_access,
    read_kubernetes_selection,
    source_of,
)
from certwatch.config.probing import read_probe, read_state
from certwatch.config.proxy import PROXY_KEYS, read_proxy
from certwatch.config.refusals import read_ct_log_list, read_distrust_rules, read_revocation
from certwatch.config.yamlfile import Mapping as LineMapping
from certwatch.config.yamlfile import item_lines, parse, read_text
from certwatch.core.names import a_label
from certwatch.core.inventory import (
    ADDRESS_MODES,
    DEFAULT_LISTEN,
    METRIC_GROUPS,
    PROTOCOLS,
    RESERVED_LABELS,
    TLS_ALIASES,
    URL_SCHEMES,
    Defaults,
    Endpoint,
    Inventory,
    is_ip,
    split_listen,
)
from certwatch.core.selections import FileSelection
from certwatch.core.vocabulary import SourceKind

__all__ = ["build_inventory", "listen_problem", "load_inventory", "parse_inventory"]

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MAX_DAYS = 36500

_DEFAULT_KEYS = ("timeout", "warn_days", "critical_days", "verify", "system_trust",
                 "ca_file", "addresses", "interval", "retry_interval", "revocation",
                 "warn_fraction", "critical_fraction", "acme_directory",
                 "renewal_due_fraction", *PROXY_KEYS)
_ENDPOINT_KEYS = ("name", "host", "port", "url", "server_name", "protocol", "addresses",
                  "timeout", "warn_days", "critical_days", "verify", "system_trust",
                  "ca_file", "client_cert", "client_key", "labels", "interval",
                  "retry_interval", "revocation", "warn_fraction", "critical_fraction",
                  "acme_directory", "renewal_due_fraction", *PROXY_KEYS)
_TOP_KEYS = ("defaults", "endpoints", "max_concurrency", "listen", "demo", "alerts",
             "kubernetes", "strict", "distrust", "ct_log_list", "state_dir", "state",
             "state_password_env", "state_password_file", "probe", "metrics")


def _thresholds_problem(read: Reader, warn: float, critical: float) -> None:
    if critical > warn:
        read.problem("critical_days", f"critical_days ({critical:g}) must not exceed "
                                      f"warn_days ({warn:g})")


def _fractions(read: Reader, fallback: Defaults) -> tuple[float, float]:
    """warn_fraction and critical_fraction (of the lifetime left), the second no larger."""
    warn = read.fraction("warn_fraction", fallback.warn_fraction)
    critical = read.fraction("critical_fraction", fallback.critical_fraction)
    if ("warn_fraction" in read.mapping or "critical_fraction" in read.mapping) and critical > warn:
        read.problem("critical_fraction", f"critical_fraction ({critical:.3g}) must not "
                                          f"exceed warn_fraction ({warn:.3g})")
    return warn, critical


def _read_defaults(raw: Any, problems: Problems, base: Path,
                   environ: Mapping[str, str] | None = None) -> Defaults:
    mapping = mapping_or_none(raw, "defaults", problems)
    if mapping is None:
        return Defaults()
    read = Reader(mapping, "defaults", problems, base, environ)
    read.unknown_keys(_DEFAULT_KEYS)
    fallback = Defaults()
    addresses = read.choice("addresses", fallback.addresses, ADDRESS_MODES)
    warn_fraction, critical_fraction = _fractions(read, fallback)
    defaults = Defaults(
        timeout=read.number("timeout", fallback.timeout, minimum=0.1, maximum=600),
        warn_days=read.number("warn_days", fallback.warn_days, minimum=0, maximum=MAX_DAYS),
        critical_days=read.number("critical_days", fallback.critical_days, minimum=0,
                                  maximum=MAX_DAYS),
        verify=read.boolean("verify", fallback.verify),
        system_trust=read.boolean("system_trust", fallback.system_trust),
        ca_file=read.path("ca_file", None),
        addresses=addresses,
        interval=read.duration("interval", fallback.interval),
        retry_interval=read.duration("retry_interval", fallback.retry_interval),
        proxy=read_proxy(read, None, addresses),
        revocation=read_revocation(read, fallback.revocation),
        warn_fraction=warn_fraction,
        critical_fraction=critical_fraction,
        acme_directory=read.url("acme_directory", None),
        renewal_due_fraction=read.fraction("renewal_due_fraction", fallback.renewal_due_fraction),
    )
    _thresholds_problem(read, defaults.warn_days, defaults.critical_days)
    return defaults


def _host_problem(host: Any, key: str = "host") -> str | None:
    if not isinstance(host, str) or not host.strip():
        return f"'host' must be a host name or IP address, not {describe(host)}"
    if is_ip(host):
        return None
    try:
        a_label(host)
    except ValueError as exc:
        return f"'{key}' is {exc}: {describe(host)}"
    return None


def _wire_name(host: str) -> str:
    """A valid host name as DNS, SNI and the proxy get it: international names as A-labels,
    and an absolute name (example.com.) without its trailing dot, as SNI must carry it
    (RFC 6066 section 3) and certificates name it."""
    return host if is_ip(host) else a_label(host.rstrip("."))


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
    if server_name is None:
        return None  # the host was invalid, and said so
    if not isinstance(server_name, str) or not server_name.strip():
        read.problem("server_name",
                     f"'server_name' must be a host name or false, not {describe(server_name)}")
        return None
    if (message := _host_problem(server_name, "server_name")) is not None:
        read.problem("server_name", message)
        return None
    return _wire_name(server_name)


def _read_endpoint(raw: Any, index: int, line: int, defaults: Defaults, problems: Problems,
                   base: Path, environ: Mapping[str, str],
                   where: str | None = None) -> tuple[str | None, Endpoint | None]:
    """The endpoint's name (for duplicate checks) and the endpoint, None if invalid."""
    label = raw.get("name") if isinstance(raw, dict) else None
    where = where or (f"endpoint {index + 1}"
                      + (f" {describe(label)}" if isinstance(label, str) else ""))
    if isinstance(raw, str):  # a bare "host:port" or URL is accepted as a shorthand
        raw = LineMapping(url=raw)
        raw.line = line
    if not isinstance(raw, dict):
        problems.add(line, where, f"must be a mapping or a URL, not {describe(raw)}")
        return None, None
    if source_of(raw) != SourceKind.TLS:
        return _read_at_rest(Reader(raw, where, problems, base, environ), defaults)
    read = Reader(raw, where, problems, base, environ)
    read.unknown_keys(_ENDPOINT_KEYS)
    values = _from_url(read) if "url" in raw else {}
    protocol, port_default = _protocol(read, values)

    host = values.get("host", raw.get("host"))
    if "url" not in raw or values:
        if (message := _host_problem(host)) is not None:
            read.problem("url" if "url" in raw else "host", message)
            host = None
        else:
            host = _wire_name(str(host))

    port = values.get("port", raw.get("port", port_default))
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        read.problem("port", f"'port' must be a whole number from 1 to 65535, not {describe(port)}")
        port = None

    server_name = _server_name(read, host)
    warn = read.number("warn_days", defaults.warn_days, minimum=0, maximum=MAX_DAYS)
    critical = read.number("critical_days", defaults.critical_days, minimum=0, maximum=MAX_DAYS)
    if "warn_days" in raw or "critical_days" in raw:
        _thresholds_problem(read, warn, critical)
    warn_fraction, critical_fraction = _fractions(read, defaults)

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

    addresses = read.choice("addresses", defaults.addresses, ADDRESS_MODES)
    endpoint = Endpoint(
        name=name or "", host=host or "", port=port or 0, protocol=protocol,
        server_name=server_name,
        addresses=addresses,
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
        proxy=read_proxy(read, defaults.proxy, addresses),
        revocation=read_revocation(read, defaults.revocation),
        warn_fraction=warn_fraction,
        critical_fraction=critical_fraction,
        acme_directory=read.url("acme_directory", defaults.acme_directory),
        renewal_due_fraction=read.fraction("renewal_due_fraction", defaults.renewal_due_fraction),
    )
    if read.failed or name is None or host is None or port is None:
        return name, None
    return name, endpoint


def _read_at_rest(read: Reader, defaults: Defaults) -> tuple[str | None, Endpoint | None]:
    """An entry of certificates at rest: `files:` or `kubernetes:`, and the settings of
    judging them (no host, port or protocol)."""
    raw, source = read.mapping, source_of(read.mapping)
    own = FILE_KEYS if source == SourceKind.FILE else KUBERNETES_KEYS
    read.unknown_keys([*AT_REST_KEYS, *own], kind=f" for a {source} entry")
    selection = (read_file_selection(read) if source == SourceKind.FILE
                 else read_kubernetes_selection(read))
    name = raw.get("name")
    if name is None and isinstance(selection, FileSelection) and len(selection.patterns) == 1:
        name = selection.patterns[0]
    if not isinstance(name, str) or not name.strip():
        read.problem("name", f"a {source} entry needs a 'name' (text), not {describe(name)}")
        name = None
    warn = read.number("warn_days", defaults.warn_days, minimum=0, maximum=MAX_DAYS)
    critical = read.number("critical_days", defaults.critical_days, minimum=0, maximum=MAX_DAYS)
    if "warn_days" in raw or "critical_days" in raw:
        _thresholds_problem(read, warn, critical)
    endpoint = Endpoint(
        name=name or "", host="", port=0, protocol="", server_name=None,
        timeout=read.number("timeout", defaults.timeout, minimum=0.1, maximum=600),
        warn_days=warn, critical_days=critical,
        verify=read.boolean("verify", defaults.verify),
        system_trust=read.boolean("system_trust", defaults.system_trust),
        ca_file=read.path("ca_file", defaults.ca_file),
        labels=_read_labels(read),
        interval=read.duration("interval", defaults.interval),
        retry_interval=read.duration("retry_interval", defaults.retry_interval),
        source=source, selection=selection)
    return name, None if read.failed or name is None or selection is None else endpoint


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
                    environ: Mapping[str, str] | None = None, *, strict: bool = False,
                    with_sinks: bool = True) -> Inventory:
    """Validates inventory YAML; raises ConfigError listing every problem."""
    return parse(text, source, lambda document: build_inventory(
        document, source, base, environ, strict=strict, with_sinks=with_sinks))


def build_inventory(document: Any, source: str = "<inventory>", base: Path | None = None,
                    environ: Mapping[str, str] | None = None, *, strict: bool = False,
                    with_sinks: bool = True) -> Inventory:
    """Validates an already-parsed document (from YAML, or built by the CLI). With
    `environ`, the alert sinks are read as well (see :mod:`certwatch.config.sinks`)
    unless `with_sinks` is false; the PKCS#12 passwords of file entries come from it.

    An endpoint entry with problems costs only itself: it becomes an endpoint in error
    (its `rejected` says why, with file and line) and the inventory lists its problems,
    unless `strict` (or `strict: true` in the file) asks for all or nothing. Any other
    problem (the defaults, the alerts, the file's shape) rejects the whole file.
    """
    base = base or Path.cwd()
    problems = Problems()
    if document is None:
        raise ConfigError(source, ["top: the file is empty; it needs an 'endpoints:' list"])
    if not isinstance(document, dict):
        raise ConfigError(source, [f"top: must be a mapping with 'endpoints:', not {describe(document)}"])
    top = Reader(document, "", problems, base)
    top.unknown_keys(_TOP_KEYS)
    defaults = _read_defaults(document.get("defaults"), problems, base, environ)
    concurrency = top.number("max_concurrency", 100, minimum=1, maximum=100_000)
    demo = top.boolean("demo", False)
    strict = top.boolean("strict", False) or strict
    alerts = read_alerts(document.get("alerts"), problems, base,
                          environ if with_sinks else None)
    kubernetes = read_kubernetes_access(document.get("kubernetes"), problems, base)
    state_dir = state_dir_of(top, alerts, document.get("alerts"))
    if alerts is not None and state_dir is not None:
        alerts = dataclasses.replace(alerts, state_dir=state_dir)
    probe = read_probe(document.get("probe"), problems, base,
                       lambda raw, where: _read_endpoint(raw, 0, line_of(raw), defaults, problems,
                                                         base, environ or {}, where)[1])
    state = read_state(Reader(document, "", problems, base, environ))
    listen = document.get("listen", DEFAULT_LISTEN)
    if (message := listen_problem(listen)) is not None:
        top.problem("listen", message)
        listen = DEFAULT_LISTEN
    raw_endpoints = document.get("endpoints")
    if not isinstance(raw_endpoints, list):
        top.problem("endpoints", f"'endpoints' must be a list, not {describe(raw_endpoints)}")
        raw_endpoints = []
    entry_problems = Problems()
    endpoints = _read_endpoints(raw_endpoints, defaults, entry_problems, base, source,
                                environ or {})
    distrust = read_distrust_rules(document.get("distrust"), "distrust", problems, base)
    log_list = read_ct_log_list(top)
    metrics_extra = _read_metrics(document.get("metrics"), problems, base)
    if len(problems) or (strict and len(entry_problems)):
        problems.extend(entry_problems)
        problems.raise_for(source)
    uses_kubernetes = any(e.source == SourceKind.KUBERNETES for e in endpoints)
    return Inventory(endpoints=tuple(endpoints), defaults=defaults,
                     max_concurrency=int(concurrency), listen=listen, demo=demo,
                     alerts=alerts, source=source,
                     kubernetes=kubernetes if uses_kubernetes else None, strict=strict,
                     problems=tuple(entry_problems.items), distrust=distrust,
                     ct_log_list=log_list, state_dir=state_dir, state=state, probe=probe,
                     metrics_extra=metrics_extra)


def _read_metrics(raw: Any, problems: Problems, base: Path) -> frozenset[str]:
    """`metrics: {extra: [...]}`: the opt-in groups of per-target families."""
    if raw is None:
        return frozenset()
    if not isinstance(raw, dict):
        problems.add(getattr(raw, "line", 0), "metrics", f"must be a mapping, not {describe(raw)}")
        return frozenset()
    read = Reader(raw, "metrics", problems, base)
    read.unknown_keys(("extra",))
    return read_choices(read, "extra", METRIC_GROUPS)


def _read_endpoints(raw_endpoints: list[Any], defaults: Defaults, problems: Problems,
                    base: Path, source: str, environ: Mapping[str, str]) -> list[Endpoint]:
    """Every entry: valid ones as they are, invalid ones as endpoints in error."""
    endpoints: list[Endpoint] = []
    seen: dict[str, int] = {}
    for index, (raw, line) in enumerate(zip(raw_endpoints, item_lines(raw_endpoints))):
        mine = Problems()
        name, endpoint = _read_endpoint(raw, index, line, defaults, mine, base, environ)
        duplicate = name is not None and name in seen
        if duplicate:
            assert name is not None
            mine.add(line, f"endpoint {index + 1} '{name}'",
                     f"duplicate name (first used by endpoint {seen[name] + 1}); "
                     "give each a distinct 'name'")
        elif name is not None:
            seen[name] = index
        if endpoint is not None and not len(mine):
            endpoints.append(endpoint)
            continue
        problems.extend(mine)
        shown = f"{name} (endpoint {index + 1})" if duplicate else name or f"endpoint {index + 1}"
        endpoints.append(_rejected(raw, shown, tuple(f"{source}: {p}" for p in mine.items)))
    return endpoints


def _rejected(raw: Any, name: str, why: tuple[str, ...]) -> Endpoint:
    """An entry validation refused, as an endpoint that only says why (what of it can
    be shown is kept: its host and port, for the page)."""
    mapping = raw if isinstance(raw, dict) else {}
    host, port = mapping.get("host"), mapping.get("port")
    return Endpoint(name=name, host=host if isinstance(host, str) and _host_problem(host) is None
                    else "",
                    port=port if isinstance(port, int) and not isinstance(port, bool) else 0,
                    protocol="", source=source_of(mapping), rejected=why)


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
                   read: Callable[[Path], bytes] | None = None, strict: bool = False,
                   with_sinks: bool = True) -> Inventory:
    """Reads and validates an inventory file; relative paths in it are relative to it.
    `read` replaces the bounded read of the file (a test's fault injection)."""
    path = Path(path)
    text = read_text(path) if read is None else read_text(path, read)
    return parse_inventory(text, source=str(path), base=path.parent.resolve(), environ=environ,
                           strict=strict, with_sinks=with_sinks)
