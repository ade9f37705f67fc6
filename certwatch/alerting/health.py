"""Whether the state database takes writes, and what certwatch does while it does not.

Alerting degrades instead of stopping: a failed write is kept to be made later, and
attempts are spaced out, since each can block the event loop for the busy timeout.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from prometheus_client import Gauge

from certwatch.state import DatabaseError

__all__ = ["StateGuard", "WRITE_RETRY"]

log = logging.getLogger(__name__)

WRITE_RETRY = 1.0  # seconds between write attempts while the database fails


class StateGuard:
    """Runs the state database's writes and tracks its health (`degraded` says why not)."""

    def __init__(self, path: object, healthy: Gauge) -> None:
        self.path = path
        self.degraded: str | None = None
        self._healthy = healthy
        self._failed_at: float | None = None  # time.monotonic() of the latest failed write
        healthy.set(1)

    def may_write(self) -> bool:
        """False for WRITE_RETRY seconds after a failed write."""
        return self._failed_at is None or time.monotonic() - self._failed_at >= WRITE_RETRY

    def degrade(self, why: str, *, write: bool = True) -> None:
        if write:
            self._failed_at = time.monotonic()
        if self.degraded is None:
            log.error("alerting degraded: %s", why, extra={"path": str(self.path)})
        self.degraded = why
        self._healthy.set(0)

    def recover(self) -> None:
        self._failed_at = None
        if self.degraded is not None:
            log.info("alerting recovered: the state database accepts writes again")
        self.degraded = None
        self._healthy.set(1)

    def record(self, write: Callable[[], Any]) -> bool:
        """Runs one write; False (and degraded) if the database refused it."""
        try:
            write()
        except DatabaseError as exc:
            self.degrade(f"state database write failed: {exc}")
            return False
        self.recover()
        return True

    def read(self, read: Callable[[], Any], fallback: Any) -> Any:
        """Runs one read; `fallback` (and degraded) if the database refused it."""
        try:
            return read()
        except DatabaseError as exc:
            self.degrade(f"state database read failed: {exc}", write=False)
            return fallback
