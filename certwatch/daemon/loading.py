"""The daemon's configuration: reading it (with the demo endpoints), and noticing edits.

Every load validates the whole file, sinks and secrets included; at start-up the web
configuration is read in the same pass, so every problem of both files is reported at
once. A file that cannot be used raises ConfigError, and the caller keeps what it had.

A shard keeps only the entries it owns (and every Kubernetes entry, whose Ingresses may
name endpoints it owns; :mod:`certwatch.daemon.sourcing` filters what they discover):
with 100,000 entries and four shards, each holds a quarter of them, not all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Mapping

from certwatch.alerting.notifier import AlertsConfig, alerts_config
from certwatch.config import ConfigError, build_inventory, load_configuration
from certwatch.config.web import WebConfig
from certwatch.core.inventory import Inventory
from certwatch.core.sharding import WHOLE, Shard
from certwatch.core.vocabulary import SourceKind
from certwatch.daemon.demo import DemoEndpoints
from certwatch.serving.tls import tls_problem

__all__ = ["Loaded", "Loader", "owned_entries"]

log = logging.getLogger(__name__)

Signature = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Loaded:
    """A validated configuration, ready to run."""

    inventory: Inventory
    alerts: AlertsConfig | None
    web: WebConfig | None  # read at start-up only


def owned_entries(inventory: Inventory, shard: Shard) -> Inventory:
    """The inventory as a shard runs it: its own entries, and every Kubernetes entry."""
    if shard.whole:
        return inventory
    return dataclasses.replace(inventory, endpoints=tuple(
        e for e in inventory.endpoints
        if e.source == SourceKind.KUBERNETES or shard.owns(e.name)))


class Loader:
    """Reads the inventory (and, once, the web configuration) as the daemon runs it."""

    def __init__(self, config_path: Path, web_path: Path | None = None,
                 environ: Mapping[str, str] | None = None, *, strict: bool = False,
                 shard: Shard = WHOLE) -> None:
        self.config_path = config_path
        self.strict = strict
        self.shard = shard
        self.web_path = web_path
        self.environ = environ if environ is not None else os.environ
        self.file_signature: Signature | None = None
        self._demo: DemoEndpoints | None = None
        self._demo_dir: tempfile.TemporaryDirectory[str] | None = None

    def signature(self) -> Signature | None:
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def load(self, *, with_web: bool = False) -> Loaded:
        self.file_signature = self.signature()
        inventory, web = load_configuration(self.config_path, self.web_path if with_web else None,
                                            self.environ, tls_problem, strict=self.strict)
        inventory = owned_entries(await self._with_demo(inventory), self.shard)
        for problem in inventory.problems:
            log.error("invalid inventory entry; it is reported as a target in error",
                      extra={"source": inventory.source, "problem": problem})
        alerts = alerts_config(inventory.alerts) if inventory.alerts is not None else None
        return Loaded(inventory, alerts, web)

    async def _with_demo(self, inventory: Inventory) -> Inventory:
        if not inventory.demo:
            return inventory
        if self._demo is None:
            self._demo_dir = tempfile.TemporaryDirectory(prefix="certwatch-demo-")
            self._demo = await DemoEndpoints(Path(self._demo_dir.name)).__aenter__()
            log.info("demo endpoints started", extra={"count": len(self._demo.inventory_entries())})
        # The demo endpoints follow the inventory's defaults (its interval above all),
        # except for the trust settings each of them brings.
        d = inventory.defaults
        defaults = {"timeout": d.timeout, "warn_days": d.warn_days,
                    "critical_days": d.critical_days, "interval": d.interval,
                    "retry_interval": d.retry_interval, "warn_fraction": d.warn_fraction,
                    "critical_fraction": d.critical_fraction,
                    "renewal_due_fraction": d.renewal_due_fraction}
        demo = build_inventory({"defaults": defaults, "endpoints": self._demo.inventory_entries()},
                               source="demo")
        clash = {e.name for e in demo.endpoints} & {e.name for e in inventory.endpoints}
        if clash:
            raise ConfigError(str(self.config_path),
                              [f"endpoint names {sorted(clash)} are used by the demo endpoints"])
        return dataclasses.replace(inventory, endpoints=inventory.endpoints + demo.endpoints)

    async def watch(self, stop: asyncio.Event, poll: float,
                    reload: Callable[[str], Awaitable[bool]], missing: Callable[[], None]) -> None:
        """Polls the file: an edit reloads, as SIGHUP does; a vanished file is reported."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll)
            signature = self.signature()
            if signature is None and self.file_signature is not None:
                self.file_signature = None
                missing()
            elif signature is not None and signature != self.file_signature:
                await reload("file changed")

    async def close(self) -> None:
        if self._demo is not None:
            await self._demo.__aexit__(None, None, None)
        if self._demo_dir is not None:
            self._demo_dir.cleanup()
