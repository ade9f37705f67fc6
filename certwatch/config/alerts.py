"""The `alerts:` section and where the state database lives, validated.

With `environ` given the sinks are read too (their secrets come from it or from files),
in the same pass as the rest of the inventory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from certwatch.config.kit import Problems, Reader, describe, line_of
from certwatch.config.sinks import SinkSettings, read_sinks
from certwatch.config.yamlfile import Mapping as LineMapping
from certwatch.core.inventory import AlertSettings

__all__ = ["mapping_or_none", "read_alerts", "state_dir_of"]

_ALERT_KEYS = ("state_dir", "external_url", "repeat", "probe_failures", "retry", "sinks")


def mapping_or_none(raw: Any, where: str, problems: Problems) -> Mapping[Any, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.add(line_of(raw), where, f"must be a mapping, not {describe(raw)}")
        return None
    return raw


def read_alerts(raw: Any, problems: Problems, base: Path,
                 environ: Mapping[str, str] | None) -> AlertSettings | None:
    mapping = mapping_or_none(raw, "alerts", problems)
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


def state_dir_of(top: Reader, alerts: AlertSettings | None, raw_alerts: Any) -> Path | None:
    """The state database's directory: `state_dir`, else the `alerts:` section's (given
    or its default), else none (the certificate history is kept in memory)."""
    raw = top.mapping.get("state_dir")
    if raw is None:
        return alerts.state_dir if alerts is not None else None
    if not isinstance(raw, str) or not raw.strip():
        top.problem("state_dir", f"'state_dir' must be a directory path, not {describe(raw)}")
        return None
    state_dir = top.resolve(raw)
    given = raw_alerts.get("state_dir") if isinstance(raw_alerts, dict) else None
    if alerts is not None and given is not None and alerts.state_dir != state_dir:
        top.problem("state_dir", "'state_dir' and 'alerts.state_dir' name different "
                                 "directories; there is one state database: keep 'state_dir'")
    return state_dir
