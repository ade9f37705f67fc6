"""The event loop the commands run on: uvloop when it is installed, else asyncio's own.

uvloop (libuv under asyncio's API) is an optional accelerator: `pip install
certwatch[fast]`. It cuts the CPU the probes spend in the event loop (connecting,
reading, writing, timers) by about a fifth; nothing else changes, and without it
asyncio's loop runs the same code. `CERTWATCH_EVENT_LOOP` chooses: `auto` (the default:
uvloop if it can be imported), `asyncio` or `uvloop` (which falls back, with a
warning, when uvloop is missing).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from typing import Any, Callable, Coroutine, TypeVar

__all__ = ["ENVIRONMENT", "loop_factory", "run"]

log = logging.getLogger(__name__)

ENVIRONMENT = "CERTWATCH_EVENT_LOOP"
T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: str | None = None) -> tuple[str, LoopFactory | None]:
    """The loop to use (its name, and its factory; None for asyncio's default)."""
    wanted = (choice if choice is not None else os.environ.get(ENVIRONMENT, "auto")) or "auto"
    if wanted not in ("auto", "asyncio", "uvloop"):
        log.warning("%s=%r is not auto, asyncio or uvloop; using auto", ENVIRONMENT, wanted)
        wanted = "auto"
    if wanted == "asyncio":
        return "asyncio", None
    try:
        uvloop: Any = importlib.import_module("uvloop")
    except ImportError:
        if wanted == "uvloop":
            log.warning("%s=uvloop, but uvloop is not installed: using asyncio's event loop",
                        ENVIRONMENT)
        return "asyncio", None
    factory: LoopFactory = uvloop.new_event_loop
    return "uvloop", factory


def run(main: Coroutine[Any, Any, T], choice: str | None = None) -> T:
    """asyncio.run(main) on the chosen loop."""
    name, factory = loop_factory(choice)
    log.debug("event loop: %s", name)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
