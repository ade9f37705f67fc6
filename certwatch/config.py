"""The inventory: a YAML file of endpoints, validated into immutable values.

Loading never stops at the first problem: every problem is gathered into one
:class:`ConfigError` whose lines name the file, the line and the endpoint, so an
operator fixes a file in one pass. Nothing here touches the network; `ca_file` and
client certificate paths are only checked for readability.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import yaml

__all__ = [
    "ADDRESS_MODES",
    "ConfigError",
    "Defaults",
    "Endpoint",
    "AlertSettings",
    "Inventory",
    "Problems",
    "build_inventory",
    "load_yaml",
    "read_text",
    "unknown_keys",
    "describe",
    "is_ip",
    "line_of",
    "split_listen",
    "PROTOCOLS",
    "load_inventory",
    "parse_inventory",
]

# STARTTLS protocols and the port each is usually found on.
PROTOCOLS: dict[str, int] = {
    "tls": 443,
    "smtp": 25,
    "imap": 143,
    "pop3": 110,
    "ftp": 21,
    "ldap": 389,
    "postgres": 5432,
    "xmpp": 5222,
}
# Implicit-TLS names people write: they are plain `tls` on their own port.
TLS_ALIASES: dict[str, int] = {
    "https": 443,
    "smtps": 465,
    "submissions": 465,
    "imaps": 993,
    "pop3s": 995,
    "ldaps": 636,
    "ftps": 990,
}
URL_SCHEMES: dict[str, str] = {
    **{alias: "tls" for alias in TLS_ALIASES},
    **{name: name for name in PROTOCOLS},
    "postgresql": "postgres",
}
ADDRESS_MODES = ("all", "first", "ipv4", "ipv6")
# Label names certwatch itself puts on every series; user labels may not shadow them.
RESERVED_LABELS = frozenset(
    {"name", "host", "port", "address", "server_name", "protocol", "job", "instance",
     # labels certwatch's own series add beside the target's
     "state", "problem", "position", "role", "serial", "fingerprint_sha256", "subject",
     "issuer", "key_type", "signature_algorithm", "kind", "phase", "version", "cipher"}
)
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MAX_DAYS = 36500


class ConfigError(ValueError):
    """The inventory cannot be used; `problems` lists every reason, one line each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        # One printable line each: a key or value from the file may hold newlines or
        # terminal escape sequences, which an operator's terminal must not act on.
        problems = ["".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in p) for p in problems]
        self.problems = tuple(problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{source}: {count}:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class Defaults:
    """Settings every endpoint inherits unless it overrides them."""

    timeout: float = 10.0  # seconds, for each phase: DNS, connect, STARTTLS, handshake
    warn_days: float = 30.0
    critical_days: float = 7.0
    verify: bool = True
    system_trust: bool = True  # trust the operating system's roots as well as ca_file
    ca_file: Path | None = None
    addresses: str = "all"
    interval: float = 3600.0  # seconds between probes of a target
    retry_interval: float = 300.0  # sooner, after a failed probe


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One inventory entry. It expands to one target per address when probed."""

    name: str
    host: str
    port: int
    protocol: str = "tls"
    # SNI and the name verified against the certificate; None sends no SNI (the host
    # is then verified, which is how an IP literal is checked against IP SANs).
    server_name: str | None = None
    addresses: str = "all"
    timeout: float = 10.0
    warn_days: float = 30.0
    critical_days: float = 7.0
    verify: bool = True
    system_trust: bool = True
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    labels: tuple[tuple[str, str], ...] = ()
    interval: float = 3600.0
    retry_interval: float = 300.0

    @property
    def verify_name(self) -> str:
        """The name the certificate must match."""
        return self.server_name or self.host


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """The `alerts:` section. Sink entries stay raw here: certwatch.sinks validates them
    (and reads their secrets from the environment or files) when the daemon loads."""

    state_dir: Path = Path("/var/lib/certwatch")
    external_url: str | None = None
    repeat_warning: float = 86400.0  # re-send an open warning daily
    repeat_critical: float = 4 * 3600.0
    probe_failures: int = 3  # consecutive failed probes before a probe alert
    retry_initial: float = 5.0
    retry_max: float = 300.0
    give_up_after: float = 86400.0
    sinks: tuple[Any, ...] = ()


DEFAULT_LISTEN = ":9795"  # no well-known exporter uses 9795 (blackbox 9115, ssl_exporter 9219)


@dataclass(frozen=True, slots=True)
class Inventory:
    endpoints: tuple[Endpoint, ...]
    defaults: Defaults = field(default_factory=Defaults)
    max_concurrency: int = 100
    listen: str = DEFAULT_LISTEN  # the daemon's HTTP server: "HOST:PORT" or ":PORT"
    demo: bool = False  # start local demo endpoints and watch them too
    alerts: AlertSettings | None = None  # None: no notifications, no state database
    source: str = "<inventory>"


# --- YAML with line numbers -------------------------------------------------------


class _Mapping(dict):  # type: ignore[type-arg]
    """A YAML mapping that remembers the line of itself and of each key."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.line = 0
        self.key_lines: dict[Any, int] = {}


class _Built(yaml.nodes.Node):
    """A sequence item already turned into its Python value (see _LineLoader)."""

    id = "built"
    TAG = "tag:certwatch,2026:built"

    def __init__(self, value: Any, start_mark: Any) -> None:
        super().__init__(self.TAG, value, start_mark, start_mark)


# libyaml (C) reads the events when present: a 10,000-endpoint inventory parses several
# times faster. The node tree is composed by PyYAML's Python composer instead of
# libyaml's so that each sequence item is turned into its value as soon as it is
# composed and its nodes are freed: a whole tree of 10,000 endpoints is ~50 MB of
# nodes and marks, and the few megabytes of values built among them kept the memory
# of all of it from returning to the system (RSS +44 MB after loading, now +8 MB).
class _LineLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    compose_document = yaml.composer.Composer.compose_document
    compose_node = yaml.composer.Composer.compose_node
    compose_scalar_node = yaml.composer.Composer.compose_scalar_node
    compose_mapping_node = yaml.composer.Composer.compose_mapping_node
    get_single_node = yaml.composer.Composer.get_single_node

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.anchors: dict[str, yaml.Node] = {}

    def compose_sequence_node(self, anchor: str | None) -> yaml.SequenceNode:
        start = self.get_event()
        tag = start.tag
        if tag is None or tag == "!":
            tag = self.resolve(yaml.SequenceNode, None, start.implicit)
        node = yaml.SequenceNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        while not self.check_event(yaml.SequenceEndEvent):
            item = self.compose_node(node, len(node.value))
            node.value.append(_Built(self.construct_document(item), item.start_mark))
        node.end_mark = self.get_event().end_mark
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:  # type: ignore[override]
        mapping = _Mapping(super().construct_mapping(node, deep=True))
        mapping.line = node.start_mark.line + 1
        mapping.key_lines = {}
        for key_node, _ in node.value:
            try:
                key = self.construct_object(key_node, deep=True)
                mapping.key_lines[key] = key_node.start_mark.line + 1
            except Exception:  # an unhashable key is reported by construct_mapping
                continue
        return mapping


class _Sequence(list):  # type: ignore[type-arg]
    """A YAML sequence that remembers the line of each item."""

    item_lines: list[int]


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> _Sequence:
    sequence = _Sequence(loader.construct_sequence(node, deep=True))
    sequence.item_lines = [item.start_mark.line + 1 for item in node.value]
    return sequence


_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _LineLoader.construct_mapping
)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
_LineLoader.add_constructor(_Built.TAG, lambda loader, node: node.value)


def line_of(mapping: Any, key: str | None = None) -> int:
    """The YAML line of a mapping, or of one of its keys (0 when unknown)."""
    if isinstance(mapping, _Mapping):
        return mapping.key_lines.get(key, mapping.line) if key is not None else mapping.line
    return 0


# --- validation --------------------------------------------------------------------


class Problems:
    """Collects problems, each with its line and the entry it belongs to."""

    def __init__(self) -> None:
        self._items: list[tuple[int, int, str]] = []

    def add(self, line: int, where: str, message: str) -> None:
        place = f"line {line}" if line else "top"
        text = f"{place}: {where}: {message}" if where else f"{place}: {message}"
        self._items.append((line, len(self._items), text))

    @property
    def items(self) -> list[str]:
        """In file order, so a reader can walk down the file fixing them."""
        return [text for _, _, text in sorted(self._items)]

    def __len__(self) -> int:
        return len(self._items)


_DEFAULT_KEYS = ("timeout", "warn_days", "critical_days", "verify", "system_trust",
                 "ca_file", "addresses", "interval", "retry_interval")
_ENDPOINT_KEYS = ("name", "host", "port", "url", "server_name", "protocol", "addresses",
                  "timeout", "warn_days", "critical_days", "verify", "system_trust",
                  "ca_file", "client_cert", "client_key", "labels", "interval",
                  "retry_interval")
_TOP_KEYS = ("defaults", "endpoints", "max_concurrency", "listen", "demo", "alerts")
_ALERT_KEYS = ("state_dir", "external_url", "repeat", "probe_failures", "retry", "sinks")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT_SECONDS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_INTERVAL, MAX_INTERVAL = 1.0, 30 * 86400.0


def unknown_keys(mapping: dict, allowed: tuple[str, ...], where: str, problems: Problems,
                 skip: tuple[str, ...] = ()) -> None:
    """Reports keys not in `allowed`, suggesting the closest; `skip` keys are the
    caller's to report (with a reason of their own)."""
    for key in mapping:
        if key in allowed or key in skip:
            continue
        hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6) if isinstance(key, str) else []
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        known = "" if hint else f"; known keys: {', '.join(allowed)}"
        problems.add(line_of(mapping, key), where, f"unknown key {describe(key)}{suggestion}{known}")


def _number(value: Any, *, minimum: float, maximum: float) -> float | str:
    """The value as a float, or a message saying why it is not acceptable."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, not {describe(value)}"
    if not minimum <= value <= maximum:
        try:
            shown = f"{value:g}"
        except OverflowError:  # an integer too large for a float
            shown = describe(value)
        return f"must be between {minimum:g} and {maximum:g}, not {shown}"
    return float(value)


def describe(value: Any) -> str:
    """A short, safe description of a wrong value for an error message."""
    if value is None:
        return "empty"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    try:
        text = repr(value)
    except ValueError:  # an integer of more digits than Python converts (4,300)
        return "a very long integer"
    text = text[:60] + ("..." if len(text) > 60 else "")
    return text if isinstance(value, str) else f"{type(value).__name__} {text}"


def _readable_file(value: Any, base: Path) -> Path | str:
    if not isinstance(value, str) or not value:
        return f"must be a file path, not {describe(value)}"
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        path = base / path
    try:
        found = path.is_file()
    except OSError as exc:  # a name too long, say
        return f"file cannot be looked up: {exc.strerror or exc}"
    if not found:
        return f"file not found: {path}"
    if not os.access(path, os.R_OK):
        return f"file not readable: {path}"
    return path


class _Reader:
    """Reads typed values out of one mapping, recording problems instead of raising."""

    def __init__(self, mapping: dict, where: str, problems: Problems, base: Path) -> None:
        self.mapping, self.where, self.problems, self.base = mapping, where, problems, base

    def number(self, key: str, fallback: float, *, minimum: float, maximum: float) -> float:
        if key not in self.mapping:
            return fallback
        result = _number(self.mapping[key], minimum=minimum, maximum=maximum)
        if isinstance(result, str):
            self.problems.add(line_of(self.mapping, key), self.where, f"'{key}' {result}")
            return fallback
        return result

    def duration(self, key: str, fallback: float) -> float:
        """Seconds, written as a number or as "90s", "5m", "1h", "1d"."""
        if key not in self.mapping:
            return fallback
        value = self.mapping[key]
        match = _DURATION.match(value) if isinstance(value, str) else None
        if match:
            value = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        result = _number(value, minimum=MIN_INTERVAL, maximum=MAX_INTERVAL)
        if isinstance(result, str):
            self.problems.add(line_of(self.mapping, key), self.where,
                              f"'{key}' must be a duration such as 300, \"5m\" or \"1h\" "
                              f"between 1s and 30d, not {describe(self.mapping[key])}")
            return fallback
        return result

    def boolean(self, key: str, fallback: bool) -> bool:
        if key not in self.mapping:
            return fallback
        value = self.mapping[key]
        if not isinstance(value, bool):
            self.problems.add(line_of(self.mapping, key), self.where,
                              f"'{key}' must be true or false, not {describe(value)}")
            return fallback
        return value

    def choice(self, key: str, fallback: str, choices: tuple[str, ...]) -> str:
        if key not in self.mapping:
            return fallback
        value = self.mapping[key]
        if value not in choices:
            self.problems.add(line_of(self.mapping, key), self.where,
                              f"'{key}' must be one of {', '.join(choices)}, not {describe(value)}")
            return fallback
        return str(value)

    def path(self, key: str, fallback: Path | None) -> Path | None:
        if key not in self.mapping or self.mapping[key] is None:
            return fallback
        result = _readable_file(self.mapping[key], self.base)
        if isinstance(result, str):
            self.problems.add(line_of(self.mapping, key), self.where, f"'{key}' {result}")
            return fallback
        return result


def _read_defaults(raw: Any, problems: Problems, base: Path) -> Defaults:
    if raw is None:
        return Defaults()
    if not isinstance(raw, dict):
        problems.add(line_of(raw), "defaults", f"must be a mapping, not {describe(raw)}")
        return Defaults()
    unknown_keys(raw, _DEFAULT_KEYS, "defaults", problems)
    read = _Reader(raw, "defaults", problems, base)
    base_defaults = Defaults()
    defaults = Defaults(
        timeout=read.number("timeout", base_defaults.timeout, minimum=0.1, maximum=600),
        warn_days=read.number("warn_days", base_defaults.warn_days, minimum=0, maximum=MAX_DAYS),
        critical_days=read.number("critical_days", base_defaults.critical_days, minimum=0,
                                  maximum=MAX_DAYS),
        verify=read.boolean("verify", base_defaults.verify),
        system_trust=read.boolean("system_trust", base_defaults.system_trust),
        ca_file=read.path("ca_file", None),
        addresses=read.choice("addresses", base_defaults.addresses, ADDRESS_MODES),
        interval=read.duration("interval", base_defaults.interval),
        retry_interval=read.duration("retry_interval", base_defaults.retry_interval),
    )
    if defaults.critical_days > defaults.warn_days:
        problems.add(line_of(raw, "critical_days"), "defaults",
                     f"critical_days ({defaults.critical_days:g}) must not exceed "
                     f"warn_days ({defaults.warn_days:g})")
    return defaults


def _read_alerts(raw: Any, problems: Problems, base: Path) -> AlertSettings | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.add(line_of(raw), "alerts", f"must be a mapping, not {describe(raw)}")
        return None
    unknown_keys(raw, _ALERT_KEYS, "alerts", problems)
    read = _Reader(raw, "alerts", problems, base)
    fallback = AlertSettings()
    state_dir = raw.get("state_dir", str(fallback.state_dir))
    if not isinstance(state_dir, str) or not state_dir:
        problems.add(line_of(raw, "state_dir"), "alerts", "'state_dir' must be a directory path")
        state_dir = str(fallback.state_dir)
    url = raw.get("external_url")
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
        problems.add(line_of(raw, "external_url"), "alerts",
                     f"'external_url' must be an http(s) URL, not {describe(url)}")
        url = None
    nested = {}
    for section, keys in (("repeat", ("warning", "critical")),
                          ("retry", ("initial", "maximum", "give_up_after"))):
        value = raw.get(section) or _Mapping()
        if not isinstance(value, dict):
            problems.add(line_of(raw, section), "alerts", f"'{section}' must be a mapping")
            value = _Mapping()
        unknown_keys(value, keys, f"alerts.{section}", problems)
        nested[section] = _Reader(value, f"alerts.{section}", problems, base)
    sinks = raw.get("sinks", [])
    if not isinstance(sinks, list):
        problems.add(line_of(raw, "sinks"), "alerts", "'sinks' must be a list")
        sinks = []
    path = Path(os.path.expanduser(state_dir))
    return AlertSettings(
        state_dir=path if path.is_absolute() else base / path,
        external_url=url.rstrip("/") if url else None,
        repeat_warning=nested["repeat"].duration("warning", fallback.repeat_warning),
        repeat_critical=nested["repeat"].duration("critical", fallback.repeat_critical),
        probe_failures=int(read.number("probe_failures", fallback.probe_failures, minimum=1,
                                       maximum=1000)),
        retry_initial=nested["retry"].duration("initial", fallback.retry_initial),
        retry_max=nested["retry"].duration("maximum", fallback.retry_max),
        give_up_after=nested["retry"].duration("give_up_after", fallback.give_up_after),
        sinks=tuple(sinks),
    )


def is_ip(text: str) -> bool:
    """True for an IPv4 or IPv6 literal."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


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


def _from_url(raw: dict, where: str, problems: Problems) -> dict:
    """Expands `url: scheme://host:port` into host, port and protocol."""
    url = raw["url"]
    line = line_of(raw, "url")
    fields: dict[str, Any] = {}
    if not isinstance(url, str):
        problems.add(line, where, f"'url' must be a string, not {describe(url)}")
        return fields
    for key in ("host", "port", "protocol"):
        if key in raw:
            problems.add(line_of(raw, key), where, f"give either 'url' or '{key}', not both")
    try:
        parts = urlsplit(url if "://" in url else f"https://{url}")
    except ValueError as exc:  # an unclosed "[" of an IPv6 address, say
        problems.add(line, where, f"'url' is not a valid URL ({exc}): {describe(url)}")
        return fields
    scheme = parts.scheme.lower()
    if scheme not in URL_SCHEMES:
        problems.add(line, where, f"'url' scheme '{scheme}' is not one of "
                                  f"{', '.join(sorted(URL_SCHEMES))}")
        return fields
    try:
        port = parts.port
    except ValueError:
        problems.add(line, where, f"'url' has a bad port: {url!r}")
        return fields
    if not parts.hostname:
        problems.add(line, where, f"'url' has no host: {url!r}")
        return fields
    fields["host"] = parts.hostname
    fields["protocol"] = URL_SCHEMES[scheme]
    fields["port"] = port or TLS_ALIASES.get(scheme) or PROTOCOLS[URL_SCHEMES[scheme]]
    return fields


def _read_endpoint(raw: Any, index: int, line: int, defaults: Defaults, problems: Problems,
                   base: Path) -> tuple[str | None, Endpoint | None]:
    """The endpoint's name (for duplicate checks) and the endpoint, None if invalid."""
    label = raw.get("name") if isinstance(raw, dict) else None
    where = f"endpoint {index + 1}" + (f" {describe(label)}" if isinstance(label, str) else "")
    if isinstance(raw, str):  # a bare "host:port" or URL is accepted as a shorthand
        raw = _Mapping(url=raw)
        raw.line = line
    if not isinstance(raw, dict):
        problems.add(line, where, f"must be a mapping or a URL, not {describe(raw)}")
        return None, None
    before = len(problems)
    unknown_keys(raw, _ENDPOINT_KEYS, where, problems)
    read = _Reader(raw, where, problems, base)
    values = _from_url(raw, where, problems) if "url" in raw else {}

    protocol = values.get("protocol", raw.get("protocol", "tls"))
    port_default = PROTOCOLS.get(protocol) if isinstance(protocol, str) else None
    if isinstance(protocol, str) and protocol in TLS_ALIASES:
        protocol, port_default = "tls", TLS_ALIASES[protocol]
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        hint = difflib.get_close_matches(str(protocol), [*PROTOCOLS, *TLS_ALIASES], n=1)
        problems.add(line_of(raw, "protocol"), where,
                     f"unknown protocol {describe(protocol)}"
                     + (f" (did you mean '{hint[0]}'?)" if hint else "")
                     + f"; known: {', '.join([*PROTOCOLS, *TLS_ALIASES])}")
        protocol, port_default = "tls", 443

    host = values.get("host", raw.get("host"))
    if "url" not in raw or values:
        if (message := _host_problem(host)) is not None:
            problems.add(line_of(raw, "host"), where, message)
            host = None

    port = values.get("port", raw.get("port", port_default))
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        problems.add(line_of(raw, "port"), where,
                     f"'port' must be a whole number from 1 to 65535, not {describe(port)}")
        port = None

    server_name: Any = raw.get("server_name", host)
    if raw.get("server_name", True) in (False, None, ""):
        server_name = None  # explicitly turned off
    elif isinstance(server_name, str) and is_ip(server_name):
        server_name = None  # SNI never carries an IP literal (RFC 6066 section 3)
    elif server_name is not None and _host_problem(server_name) is not None:
        problems.add(line_of(raw, "server_name"), where,
                     f"'server_name' must be a host name or false, not {describe(server_name)}")
        server_name = None

    warn = read.number("warn_days", defaults.warn_days, minimum=0, maximum=MAX_DAYS)
    critical = read.number("critical_days", defaults.critical_days, minimum=0, maximum=MAX_DAYS)
    if critical > warn and ("warn_days" in raw or "critical_days" in raw):
        problems.add(line_of(raw, "critical_days"), where,
                     f"critical_days ({critical:g}) must not exceed warn_days ({warn:g})")

    client_cert = read.path("client_cert", None)
    client_key = read.path("client_key", None)
    if ("client_key" in raw) and ("client_cert" not in raw):
        problems.add(line_of(raw, "client_key"), where, "'client_key' needs 'client_cert'")

    labels = _read_labels(raw, where, problems)
    name = raw.get("name")
    if name is None and host is not None and port is not None:
        name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    elif name is not None and (not isinstance(name, str) or not name.strip()):
        problems.add(line_of(raw, "name"), where, f"'name' must be text, not {describe(name)}")
        name = None

    endpoint_kwargs = dict(
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
    if len(problems) > before or name is None or host is None or port is None:
        return name, None
    return name, Endpoint(name=name, host=host, port=port, protocol=protocol,
                          server_name=server_name, **endpoint_kwargs)


def _read_labels(raw: dict, where: str, problems: Problems) -> tuple[tuple[str, str], ...]:
    labels = raw.get("labels")
    if labels is None:
        return ()
    line = line_of(raw, "labels")
    if not isinstance(labels, dict):
        problems.add(line, where, f"'labels' must be a mapping of name: value, not {describe(labels)}")
        return ()
    result = []
    for key, value in labels.items():
        key_line = line_of(labels, key)
        if not isinstance(key, str) or not LABEL_NAME.match(key) or key.startswith("__"):
            problems.add(key_line, where, f"label name {describe(key)} must match [a-zA-Z_][a-zA-Z0-9_]*"
                                          " and not start with '__'")
        elif key in RESERVED_LABELS:
            problems.add(key_line, where, f"label name '{key}' is reserved by certwatch")
        elif isinstance(value, (dict, list)) or value is None:
            problems.add(key_line, where, f"label '{key}' must be a single value, not {describe(value)}")
        elif isinstance(value, int) and value.bit_length() > 64:
            problems.add(key_line, where, f"label '{key}' is too long a number")
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            result.append((key, text))
    return tuple(sorted(result))


def parse_inventory(text: str, source: str = "<inventory>", base: Path | None = None) -> Inventory:
    """Validates inventory YAML; raises ConfigError listing every problem."""
    return build_inventory(load_yaml(text, source), source, base)


def load_yaml(text: str, source: str) -> Any:
    """YAML (mappings and lists remember their lines); any bad input is one ConfigError."""
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "top"
        reason = getattr(exc, "problem", None) or str(exc).partition("\n")[0]
        raise ConfigError(source, [f"{where}: not valid YAML: {reason}"]) from None
    except RecursionError:
        raise ConfigError(source, ["top: YAML nested too deeply"]) from None
    except Exception as exc:  # noqa: BLE001 - any bad input is one ConfigError
        # PyYAML's constructors raise plain exceptions for a value that only looks like
        # its tag or type: 2001-13-45, !!int x, an empty !!float, !!bool maybe, an
        # integer of 5,000 digits.
        raise ConfigError(source, [f"top: not valid YAML: a value cannot be read "
                                   f"({type(exc).__name__}: {exc})"]) from None


def build_inventory(document: Any, source: str = "<inventory>", base: Path | None = None) -> Inventory:
    """Validates an already-parsed document (from YAML, or built by the CLI)."""
    base = base or Path.cwd()
    problems = Problems()
    if document is None:
        raise ConfigError(source, ["top: the file is empty; it needs an 'endpoints:' list"])
    if not isinstance(document, dict):
        raise ConfigError(source, [f"top: must be a mapping with 'endpoints:', not {describe(document)}"])
    unknown_keys(document, _TOP_KEYS, "", problems)
    defaults = _read_defaults(document.get("defaults"), problems, base)
    top = _Reader(document, "", problems, base)
    concurrency = top.number("max_concurrency", 100, minimum=1, maximum=100_000)
    demo = top.boolean("demo", False)
    alerts = _read_alerts(document.get("alerts"), problems, base)
    listen = document.get("listen", DEFAULT_LISTEN)
    if (message := listen_problem(listen)) is not None:
        problems.add(line_of(document, "listen"), "", message)
        listen = DEFAULT_LISTEN
    raw_endpoints = document.get("endpoints")
    if not isinstance(raw_endpoints, list):
        problems.add(line_of(document, "endpoints"), "",
                     f"'endpoints' must be a list, not {describe(raw_endpoints)}")
        raw_endpoints = []
    endpoints: list[Endpoint] = []
    seen: dict[str, int] = {}
    lines = getattr(raw_endpoints, "item_lines", [0] * len(raw_endpoints))
    for index, (raw, line) in enumerate(zip(raw_endpoints, lines)):
        name, endpoint = _read_endpoint(raw, index, line, defaults, problems, base)
        if name is not None and name in seen:
            problems.add(line, f"endpoint {index + 1} '{name}'",
                         f"duplicate name (first used by endpoint {seen[name] + 1}); "
                         "give each a distinct 'name'")
        elif name is not None:
            seen[name] = index
        if endpoint is not None:
            endpoints.append(endpoint)
    if len(problems):
        raise ConfigError(source, problems.items)
    return Inventory(endpoints=tuple(endpoints), defaults=defaults,
                     max_concurrency=int(concurrency), listen=listen, demo=demo,
                     alerts=alerts, source=source)


def split_listen(listen: str) -> tuple[str | None, int]:
    """ "HOST:PORT", "[V6]:PORT" or ":PORT" (every interface) as (host or None, port)."""
    host, _, port = listen.rpartition(":")
    return (host.strip("[]") or None), int(port)


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


def read_text(path: Path, read: Callable[[Path], bytes] = Path.read_bytes) -> str:
    """A configuration file's text; unreadable or non-UTF-8 is a ConfigError."""
    try:
        data = read(path)
    except OSError as exc:
        raise ConfigError(str(path), [f"top: cannot read the file: {exc.strerror or exc}"]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"top: not UTF-8 text (byte {exc.start})"]) from None


def load_inventory(path: Path | str, *, read: Callable[[Path], bytes] = Path.read_bytes) -> Inventory:
    """Reads and validates an inventory file; relative paths in it are relative to it."""
    path = Path(path)
    return parse_inventory(read_text(path, read), source=str(path), base=path.parent.resolve())
