"""The `probe:` section (`/probe` mode) and the `state:` key (a shared state database).

```yaml
probe:
  allow:
    networks: [10.0.0.0/8, "2001:db8::/32"]   # IP literals, and names resolving there
    names: ["*.example.com", db.internal]    # host names (glob patterns)
  max_concurrency: 16
  modules:
    smtp: {protocol: smtp}
    internal: {ca_file: /etc/pki/root.pem, server_name: internal.example, timeout: 5}
state: postgresql://certwatch@db.internal:5432/certwatch
state_password_env: CERTWATCH_DB_PASSWORD     # or state_password_file
```

A module is read as an endpoint entry is (the same keys, defaults and checks, every
problem with its line), with the target's host standing in for `host`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from certwatch.config.alerts import mapping_or_none
from certwatch.config.kit import Problems, Reader, describe, line_of
from certwatch.config.yamlfile import Mapping as LineMapping
from certwatch.core.inventory import Endpoint, SharedState
from certwatch.core.inventory import AllowList, ProbeModule, ProbeSettings

__all__ = ["MODULE_HOST", "read_probe", "read_state"]

MODULE_HOST = "module.invalid"  # the host a module is read with (RFC 2606: never resolves)
_PROBE_KEYS = ("allow", "max_concurrency", "timeout_offset", "modules")
_ALLOW_KEYS = ("networks", "names")
_NOT_IN_MODULES = ("name", "host", "url")  # the target gives those
_MODULE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9*?._-]{1,253}$")

# Reads one entry as an endpoint: (mapping, where) -> the endpoint, or None if invalid.
ReadEndpoint = Callable[[Mapping[Any, Any], str], "Endpoint | None"]


def read_probe(raw: Any, problems: Problems, base: Any,
               read_endpoint: ReadEndpoint) -> ProbeSettings | None:
    mapping = mapping_or_none(raw, "probe", problems)
    if mapping is None:
        return None
    read = Reader(mapping, "probe", problems, base)
    read.unknown_keys(_PROBE_KEYS)
    allow = _read_allow(mapping.get("allow"), line_of(mapping, "allow"), problems, base)
    modules: dict[str, ProbeModule] = {}
    raw_modules = mapping.get("modules") or LineMapping()
    if not isinstance(raw_modules, dict):
        read.problem("modules", f"'modules' must be a mapping of name: options, not "
                                f"{describe(raw_modules)}")
        raw_modules = LineMapping()
    for name, options in raw_modules.items():
        where = f"probe.modules.{name}"
        if not isinstance(name, str) or not _MODULE_NAME.match(name):
            problems.add(line_of(raw_modules, name), "probe.modules",
                         f"module name {describe(name)} must be letters, digits, '.', '_' or '-'")
            continue
        module = _read_module(options, line_of(raw_modules, name), where, problems, name,
                              read_endpoint)
        if module is not None:
            modules[name] = module
    default = _read_module(LineMapping(), 0, "probe (the defaults)", problems, "",
                           read_endpoint)
    return ProbeSettings(
        allow=allow, modules=modules, default=default,
        max_concurrency=int(read.number("max_concurrency", 16, minimum=1, maximum=10_000)),
        timeout_offset=read.number("timeout_offset", 0.5, minimum=0, maximum=60))


def _read_module(options: Any, line: int, where: str, problems: Problems, name: str,
                 read_endpoint: ReadEndpoint) -> ProbeModule | None:
    if not isinstance(options, dict):
        problems.add(line, where, f"a module must be a mapping of endpoint options, not "
                                  f"{describe(options)}")
        return None
    entry = LineMapping(options)
    entry.line, entry.key_lines = line, dict(getattr(options, "key_lines", {}))
    for key in _NOT_IN_MODULES:
        if key in entry:
            problems.add(line_of(options, key), where,
                         f"'{key}' comes from the probe's target, not from a module")
            del entry[key]
    entry["host"] = MODULE_HOST
    before = len(problems)
    endpoint = read_endpoint(entry, where)
    if endpoint is None or len(problems) > before:
        return None
    return ProbeModule(name, endpoint, fixed_server_name="server_name" in options)


def _read_allow(raw: Any, line: int, problems: Problems, base: Any) -> AllowList:
    mapping = mapping_or_none(raw, "probe.allow", problems)
    if mapping is None:
        return AllowList()
    read = Reader(mapping, "probe.allow", problems, base)
    read.unknown_keys(_ALLOW_KEYS)
    networks = []
    for item in _list(read, "networks"):
        try:
            networks.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            read.problem("networks", f"{describe(item)} is not a network such as 10.0.0.0/8 "
                                     "or 2001:db8::/32")
    names = []
    for item in _list(read, "names"):
        if not isinstance(item, str) or not _NAME_PATTERN.match(item):
            read.problem("names", f"{describe(item)} is not a host name pattern such as "
                                  "*.example.com")
        else:
            names.append(item.lower().rstrip("."))
    return AllowList(tuple(networks), tuple(names))


def _list(read: Reader, key: str) -> list[Any]:
    value = read.mapping.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        read.problem(key, f"'{key}' must be a list, not {describe(value)}")
        return []
    return value


def read_state(top: Reader) -> SharedState | None:
    """`state: postgresql://user@host:port/db`, its password from `state_password_env`
    or `state_password_file`; None when the state is the SQLite file under state_dir."""
    raw = top.mapping.get("state")
    if raw is None:
        for key in ("state_password_env", "state_password_file"):
            if key in top.mapping:
                top.problem(key, f"'{key}' is for a PostgreSQL 'state:'")
        return None
    url = top.string("state")
    parts = urlsplit(url) if url else None
    if url is None or parts is None or parts.scheme not in ("postgresql", "postgres") \
            or not parts.hostname or not parts.path.strip("/"):
        top.problem("state", "'state' must be a PostgreSQL URL such as "
                             "postgresql://certwatch@db.example:5432/certwatch, not "
                             f"{describe(raw)}")
        return None
    if parts.password is not None:
        top.problem("state", "'state' must not hold the password: set 'state_password_env' "
                             "or 'state_password_file'")
        return None
    password = top.secret("state_password", required=False, what="the state database password")
    return SharedState(url, password)
