"""The configuration kit: files in, validated values out, every problem with file and line.

- :mod:`~certwatch.config.kit`: the reader, problems, durations, "did you mean";
- :mod:`~certwatch.config.yamlfile`: YAML that remembers lines;
- :mod:`~certwatch.config.inventory`, :mod:`~certwatch.config.sinks`,
  :mod:`~certwatch.config.web`: the three schemas.

:func:`load_configuration` reads the inventory (with its sinks) and the web
configuration in one pass, so `validate` and start-up report every problem of both
files at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from certwatch.config.inventory import build_inventory, load_inventory, parse_inventory
from certwatch.config.kit import ConfigError
from certwatch.config.web import TLSCheck, WebConfig, load_web_config
from certwatch.core.inventory import Inventory

__all__ = ["ConfigError", "build_inventory", "load_configuration", "load_inventory",
           "load_web_config", "parse_inventory"]


def load_configuration(inventory_path: Path, web_path: Path | None, environ: Mapping[str, str],
                       check_tls: TLSCheck | None = None, *,
                       strict: bool = False) -> tuple[Inventory, WebConfig | None]:
    """The inventory, its sinks and the web configuration; ConfigError names every
    problem of every file."""
    # Kept without their tracebacks: a traceback through this frame, held in this frame's
    # `errors`, would be a cycle keeping the whole parsed document alive until the next
    # full garbage collection.
    errors: list[ConfigError] = []
    inventory = web = None
    try:
        inventory = load_inventory(inventory_path, environ=environ, strict=strict)
    except ConfigError as exc:
        errors.append(exc.with_traceback(None))
    if web_path is not None:
        try:
            web = load_web_config(web_path, check_tls)
        except ConfigError as exc:
            errors.append(exc.with_traceback(None))
    if errors:
        raise ConfigError.combine(errors)
    assert inventory is not None
    return inventory, web
