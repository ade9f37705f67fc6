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
import functools
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, TypeVar

from certwatch.config import ConfigError, load_configuration
from certwatch.config.web import WebConfig
from certwatch.core.inventory import Inventory
from certwatch.core.sharding import WHOLE, Shard
from certwatch.core.vocabulary import SourceKind
from certwatch.memory import frozen_meanwhile
from certwatch.serving.tls import tls_problem

if TYPE_CHECKING:  # imported when the inventory asks for them
    from certwatch.alerting.notifier import AlertsConfig
    from certwatch.daemon.demo import DemoEndpoints

__all__ = ["Loaded", "Loader", "owned_entries"]

log = logging.getLogger(__name__)

Signature = tuple[int, int, int]
T = TypeVar("T")
PARSE_SWITCH_INTERVAL = 0.001  # seconds a thread may hold the GIL while a file is parsed


@dataclass(frozen=True, slots=True)
class Loaded:
    """A validated configuration, ready to run."""

    inventory: Inventory
    alerts: AlertsConfig | None
    web: WebConfig | None  # read at start-up only


def _handing_over(load: Callable[..., T], *args: Any) -> T:
    """`load(*args)`, in a worker thread, handing the GIL over more often: the event
    loop, woken for a request, waits for the parsing thread to let go of it a few times
    a request, at most 1 ms each instead of the default 5."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, PARSE_SWITCH_INTERVAL))
    try:
        return load(*args)
    except BaseException as exc:
        raise exc.with_traceback(None)  # noqa: B904 - its frames hold the parsed document
    finally:
        sys.setswitchinterval(interval)


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
        """The configuration as the files say now; one load at a time (the caller's).
        Anything that goes wrong, even MemoryError, is a ConfigError naming the file."""
        self.file_signature = self.signature()
        # Reading and parsing take seconds for a large file: in a thread, so the event
        # loop keeps serving /healthz, scrapes and probes meanwhile.
        try:
            load = functools.partial(load_configuration, self.config_path,
                                     self.web_path if with_web else None, self.environ,
                                     tls_problem, strict=self.strict)
            inventory, web = await frozen_meanwhile(asyncio.to_thread(_handing_over, load))
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - MemoryError, a bug: this load fails, no more
            log.error("loading the configuration failed inside certwatch", exc_info=True)
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise ConfigError(str(self.config_path),
                              [f"top: the file could not be loaded ({reason})"]) from None
        inventory = owned_entries(await self._with_demo(inventory), self.shard)
        for problem in inventory.problems:
            log.error("invalid inventory entry; it is reported as a target in error",
                      extra={"source": inventory.source, "problem": problem})
        if inventory.alerts is None:
            return Loaded(inventory, None, web)
        from certwatch.alerting.notifier import alerts_config  # its sinks, httpx: when used

        return Loaded(inventory, alerts_config(inventory.alerts), web)

    async def _with_demo(self, inventory: Inventory) -> Inventory:
        if not inventory.demo:
            return inventory
        from certwatch.daemon.demo import DemoEndpoints, with_demo  # its own TLS servers

        if self._demo is None:
            self._demo_dir = tempfile.TemporaryDirectory(prefix="certwatch-demo-")
            self._demo = await DemoEndpoints(Path(self._demo_dir.name)).__aenter__()
            log.info("demo endpoints started", extra={"count": len(self._demo.inventory_entries())})
        return with_demo(inventory, self._demo)

    async def watch(self, stop: asyncio.Event, poll: float,
                    reload: Callable[[str], Awaitable[bool]], missing: Callable[[], None]) -> None:
        """Polls the file: an edit reloads, as SIGHUP does; a vanished file is reported.

        Nothing ends the watch but `stop`: `reload` reports its own failures, and anything
        else going wrong in one round is logged and the next round polls again (a watcher
        that died silently would leave every later edit unseen)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll)
            if stop.is_set():
                return
            try:
                signature = self.signature()
                if signature is None and self.file_signature is not None:
                    self.file_signature = None
                    missing()
                elif signature is not None and signature != self.file_signature:
                    await reload("file changed")
            except Exception:  # noqa: BLE001 - logged; the next round tries again
                log.exception("watching %s failed; watching on", self.config_path)

    async def close(self) -> None:
        if self._demo is not None:
            await self._demo.__aexit__(None, None, None)
        if self._demo_dir is not None:
            self._demo_dir.cleanup()
