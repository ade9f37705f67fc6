"""Alert persistence: open alerts and an outbox of notifications, in SQLite (WAL).

Nothing lost, nothing twice: a notification is written to the outbox in the same
transaction as the alert change that caused it, before any attempt to send it, and is
marked delivered only after its sink accepted it. A crash before the mark means it is
sent again after restart (every sink carries the notification id or a stable dedup key,
so receivers can drop that one repeat); a crash anywhere else loses and repeats nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from certwatch.core.alerts import Alert, Notification

__all__ = ["Delivery", "Outbox", "StateError", "connect", "transaction"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, severity TEXT NOT NULL,
    started_at TEXT NOT NULL, last_sent_at TEXT NOT NULL, summary TEXT NOT NULL,
    details TEXT NOT NULL, target TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT NOT NULL, sink TEXT NOT NULL, alert_key TEXT NOT NULL,
    notification TEXT NOT NULL, created_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',          -- pending | delivered | dead
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
    last_error TEXT, delivered_at REAL,
    PRIMARY KEY (id, sink)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt_at);
"""


class StateError(Exception):
    """The state database cannot be used; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One notification waiting for one sink."""

    notification: Notification
    sink: str
    attempts: int
    created_at: float


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat()


def _notification_from(data: Mapping[str, Any]) -> Notification:
    return Notification(
        id=data["id"], alert_key=data["alert_key"], kind=data["kind"], action=data["action"],
        severity=data["severity"], created_at=datetime.fromisoformat(data["created_at"]),
        started_at=datetime.fromisoformat(data["started_at"]), summary=data["summary"],
        target=data["target"], details=data["details"], url=data.get("url"))


def _notification_json(n: Notification) -> str:
    return json.dumps({**n.to_dict(), "created_at": _iso(n.created_at),
                       "started_at": _iso(n.started_at)})


class Outbox:
    """The state database. One connection, used from the event loop's thread only."""

    def __init__(self, path: Path, busy_timeout: float = 5.0) -> None:
        self.path = path
        # FULL: a delivered mark must survive power loss
        self._db = connect(path, SCHEMA, busy_timeout=busy_timeout, synchronous="FULL")

    def close(self) -> None:
        self._db.close()

    def set_busy_timeout(self, seconds: float) -> None:
        """How long a write waits for another process's lock before failing with
        "database is locked". The wait blocks the calling thread."""
        self._db.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")

    def open_alerts(self) -> dict[str, Alert]:
        rows = self._db.execute(
            "SELECT key, kind, severity, started_at, last_sent_at, summary, details, target "
            "FROM alerts").fetchall()
        return {
            row[0]: Alert(row[0], row[1], row[2], datetime.fromisoformat(row[3]),
                          datetime.fromisoformat(row[4]), row[5], json.loads(row[6]),
                          json.loads(row[7]))
            for row in rows
        }

    def apply(self, changes: Mapping[str, Alert | None],
              deliveries: Iterable[tuple[Notification, str]], now: datetime) -> None:
        """Alert changes and their outbox entries, in one transaction."""
        with self._transaction():
            for key, alert in changes.items():
                if alert is None:
                    self._db.execute("DELETE FROM alerts WHERE key = ?", (key,))
                    continue
                self._db.execute(
                    "INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (alert.key, alert.kind, alert.severity, _iso(alert.started_at),
                     _iso(alert.last_sent_at), alert.summary, json.dumps(dict(alert.details)),
                     json.dumps(dict(alert.target))))
            for notification, sink in deliveries:
                self._db.execute(
                    "INSERT OR IGNORE INTO outbox (id, sink, alert_key, notification, created_at,"
                    " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (notification.id, sink, notification.alert_key,
                     _notification_json(notification), now.timestamp(), now.timestamp()))

    def due(self, now: float, limit: int = 100, per_sink: int | None = None) -> list[Delivery]:
        """Pending deliveries due at `now`, oldest first; at most `per_sink` of each sink
        (so a backlog for one sink cannot fill `limit` and starve the others)."""
        per_sink = limit if per_sink is None else per_sink
        rows = self._db.execute(
            "SELECT notification, sink, attempts, created_at FROM ("
            " SELECT *, ROW_NUMBER() OVER (PARTITION BY sink ORDER BY created_at) AS n"
            " FROM outbox WHERE status = 'pending' AND next_attempt_at <= ?) "
            "WHERE n <= ? ORDER BY created_at LIMIT ?", (now, per_sink, limit)).fetchall()
        return [Delivery(_notification_from(json.loads(r[0])), r[1], r[2], r[3]) for r in rows]

    def shift_pending(self, seconds: float) -> None:
        """Moves every pending retry by `seconds` (after the wall clock jumped)."""
        with self._transaction():
            self._db.execute("UPDATE outbox SET next_attempt_at = next_attempt_at + ? "
                             "WHERE status = 'pending'", (seconds,))

    def delivered(self, delivery: Delivery, now: float) -> None:
        with self._transaction():
            self._db.execute(
                "UPDATE outbox SET status = 'delivered', delivered_at = ?, attempts = attempts + 1"
                " WHERE id = ? AND sink = ?", (now, delivery.notification.id, delivery.sink))

    def failed(self, delivery: Delivery, error: str, retry_at: float | None) -> None:
        """Records a failed attempt: retried at `retry_at`, or dead-lettered when None."""
        with self._transaction():
            self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, status = ?,"
                " next_attempt_at = COALESCE(?, next_attempt_at) WHERE id = ? AND sink = ?",
                (error, "pending" if retry_at is not None else "dead", retry_at,
                 delivery.notification.id, delivery.sink))

    def prune(self, before: float) -> int:
        """Forgets delivered and dead notifications created before `before`."""
        with self._transaction():
            cursor = self._db.execute(
                "DELETE FROM outbox WHERE status != 'pending' AND created_at < ?", (before,))
        return cursor.rowcount

    def pending_stats(self) -> tuple[int, float | None]:
        """(undelivered count, creation time of the oldest undelivered)."""
        count, oldest = self._db.execute(
            "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE status = 'pending'").fetchone()
        return int(count), oldest

    def last_notifications(self) -> dict[str, dict[str, Any]]:
        """The newest outbox entry per alert key, for the API and the status page."""
        rows = self._db.execute(
            "SELECT alert_key, sink, status, attempts, last_error, delivered_at, notification "
            "FROM outbox o WHERE created_at = (SELECT MAX(created_at) FROM outbox p "
            "WHERE p.alert_key = o.alert_key)").fetchall()
        result: dict[str, dict[str, Any]] = {}
        for key, sink, status, attempts, error, delivered_at, notification in rows:
            entry = result.setdefault(key, {"action": json.loads(notification)["action"],
                                            "sinks": {}})
            entry["sinks"][sink] = {"status": status, "attempts": attempts, "error": error,
                                    "delivered_at": delivered_at}
        return result

    def _transaction(self) -> "_Transaction":
        return transaction(self._db)


def connect(path: Path, schema: str, *, busy_timeout: float = 5.0,
            synchronous: str = "FULL") -> sqlite3.Connection:
    """The state database at `path` (WAL, checked, with `schema` created); StateError
    says which file cannot be used and why."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(check)
        db.executescript(schema)
    except (sqlite3.Error, OSError) as exc:
        reason = _os_reason(path) if isinstance(exc, sqlite3.Error) else ""
        raise StateError(f"state database {path} cannot be used: {exc}{reason}") from None
    return db


def _os_reason(path: Path) -> str:
    """What the operating system says about opening `path` for writing ("unable to open
    database file" alone does not say that the file system is read-only, for instance)."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # an empty file is a valid database
    except OSError as exc:
        return f" ({exc.strerror})"
    return ""


def transaction(db: sqlite3.Connection) -> "_Transaction":
    """`with transaction(db):` one write transaction (BEGIN IMMEDIATE ... COMMIT)."""
    return _Transaction(db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # A failed COMMIT (disk full, I/O error) must not leave the transaction open, or
        # every later BEGIN fails ("within a transaction") long after the cause is gone.
        # SQLite may already have rolled back by itself after SQLITE_FULL or an I/O error.
        try:
            if exc_type is None:
                self._db.execute("COMMIT")
        finally:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # keep the original error
                    self._db.execute("ROLLBACK")
