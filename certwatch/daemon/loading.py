"""The daemon's configuration: reading it (with the demo endpoints), and noticing edits.

Every load validates the whole file, sinks and secrets included; at start-up the web
configuration is read in the same pass, so every problem of both files is reported at
once. A file that cannot be used raises ConfigError, and the caller keeps what it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, TypeVar

from certwatch.alerting.notifier import AlertsConfig, alerts_config
from certwatch.config import ConfigError, load_configuration
from certwatch.config.web import WebConfig
from certwatch.core.inventory import Inventory
from certwatch.daemon.demo import DemoEndpoints, with_demo
from certwatch.serving.tls import tls_problem

__all__ = ["Loaded", "Loader"]

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


def _without_collector(load: Callable[..., T], *args: Any) -> T:
    """`load(*args)` with the cyclic garbage collector paused, and the GIL handed over
    more often. A collection holds the GIL for as long as it takes, and with the
    millions of objects of a large file being parsed one took up to a second: the event
    loop, in the other thread, stood still with it. Parsing makes no cycles to collect;
    collection resumes afterwards. And the loop, waking for a request, waits for the
    parsing thread to let go of the GIL: at most 1 ms instead of the default 5, a few
    times per request."""
    enabled, interval = gc.isenabled(), sys.getswitchinterval()
    gc.disable()
    sys.setswitchinterval(min(interval, PARSE_SWITCH_INTERVAL))
    try:
        return load(*args)
    except BaseException as exc:
        # Its traceback's frames hold the parsed document: let it go before collecting
        # resumes, or the first collection would walk all of it.
        raise exc.with_traceback(None)  # noqa: B904 - the context is the error itself
    finally:
        sys.setswitchinterval(interval)
        if enabled:
            gc.enable()


class Loader:
    """Reads the inventory (and, once, the web configuration) as the daemon runs it."""

    def __init__(self, config_path: Path, web_path: Path | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.config_path = config_path
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
            inventory, web = await asyncio.to_thread(
                _without_collector, load_configuration, self.config_path,
                self.web_path if with_web else None, self.environ, tls_problem)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - MemoryError, a bug: this load fails, no more
            log.error("loading the configuration failed inside certwatch", exc_info=True)
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise ConfigError(str(self.config_path),
                              [f"top: the file could not be loaded ({reason})"]) from None
        inventory = await self._with_demo(inventory)
        alerts = alerts_config(inventory.alerts) if inventory.alerts is not None else None
        return Loaded(inventory, alerts, web)

    async def _with_demo(self, inventory: Inventory) -> Inventory:
        if not inventory.demo:
            return inventory
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
