"""Alert persistence: open alerts and an outbox of notifications, in the state database.

Nothing lost, nothing twice: a notification is written to the outbox in the same
transaction as the alert change that caused it, before any attempt to send it, and is
marked delivered only after its sink accepted it. A crash before the mark means it is
sent again (every sink carries the notification id or a stable dedup key, so receivers
can drop that one repeat); a crash anywhere else loses and repeats nothing.

Written once against :class:`certwatch.state.Database`, for SQLite and PostgreSQL alike.
With replicas sharing the database (PostgreSQL):

- a decision (:meth:`Outbox.decide`) locks its targets, reads their open alerts and
  writes what it decided in one transaction, so a second replica that probed the same
  target decides from what the first wrote;
- a delivery is claimed (:meth:`Outbox.claim`: row locks that skip rows another replica
  holds) for a lease on the database's clock, and the claim bumps the row's fencing
  token. The sender checks that its token is still the row's just before sending
  (:meth:`Outbox.still_claimed`), and marks the outcome only with it: a replica that
  stalled past its lease while another claimed and sent the notification neither sends
  it again nor overwrites the outcome. (A stall in the middle of a send can still
  repeat it: with the same idempotency key.)
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from certwatch.core.alerts import Alert, Notification
from certwatch.core.vocabulary import AlertKind
from certwatch.state import Database, DatabaseError, StateError
from certwatch.state.sqlite import SQLiteDatabase

__all__ = ["SCHEMA", "Delivery", "Outbox", "StateError"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, severity TEXT NOT NULL,
    started_at TEXT NOT NULL, last_sent_at TEXT NOT NULL, summary TEXT NOT NULL,
    details TEXT NOT NULL, target TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT NOT NULL, sink TEXT NOT NULL, alert_key TEXT NOT NULL,
    notification TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at DOUBLE PRECISION NOT NULL,
    last_error TEXT, delivered_at DOUBLE PRECISION,
    claim_token BIGINT NOT NULL DEFAULT 0, claimed_until DOUBLE PRECISION, claimed_by TEXT,
    PRIMARY KEY (id, sink)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt_at)
"""
# status: pending | delivered | dead. Columns an older certwatch's file lacks:
_ADDED_COLUMNS = (("claim_token", "BIGINT NOT NULL DEFAULT 0"),
                  ("claimed_until", "DOUBLE PRECISION"), ("claimed_by", "TEXT"))

# Due deliveries nobody holds: at most `per_sink` of each sink, oldest first.
_DUE = """
SELECT notification, sink, attempts, created_at, claim_token FROM outbox
WHERE status = 'pending' AND next_attempt_at <= ? AND {free}
  AND (id, sink) IN (
    SELECT id, sink FROM (
      SELECT id, sink, ROW_NUMBER() OVER (PARTITION BY sink ORDER BY created_at) AS n
      FROM outbox WHERE status = 'pending' AND next_attempt_at <= ? AND {free}) AS ranked
    WHERE n <= ?)
ORDER BY created_at LIMIT ?"""
_FREE = "(claimed_until IS NULL OR claimed_until < {now})"

# What a decision returns from inside its transaction: the alert changes, the
# notifications, and the (notification, sink) deliveries to write.
Decision = tuple[dict[str, Alert | None], list[Notification], list[tuple[Notification, str]]]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One notification waiting for one sink, with the fencing token of its claim."""

    notification: Notification
    sink: str
    attempts: int
    created_at: float
    token: int = 0


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


def _alert(row: Sequence[Any]) -> Alert:
    return Alert(row[0], row[1], row[2], datetime.fromisoformat(row[3]),
                 datetime.fromisoformat(row[4]), row[5], json.loads(row[6]), json.loads(row[7]))


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


class Outbox:
    """The alert state and the outbox. One connection, used from the event loop's thread."""

    def __init__(self, where: Path | Database, busy_timeout: float = 5.0) -> None:
        # FULL: a delivered mark must survive power loss
        self.db = where if isinstance(where, Database) else SQLiteDatabase(
            where, SCHEMA, busy_timeout=busy_timeout, synchronous="FULL")
        self.path = self.db.where
        self.shared = self.db.shared
        self.owner = f"{socket.gethostname()}/{os.getpid()}"  # who holds a claim, for people
        try:
            for column, definition in _ADDED_COLUMNS:
                self.db.add_column("outbox", column, definition)
            if not self.shared:  # the file's only writer: claims of an earlier run are void
                self.db.write("UPDATE outbox SET claimed_until = NULL "
                              "WHERE claimed_until IS NOT NULL")
        except DatabaseError as exc:
            raise StateError(f"state database {self.path} cannot be used: {exc}") from None
        self._due = _DUE.format(free=_FREE.format(now=self.db.now_sql))

    def close(self) -> None:
        self.db.close()

    def set_busy_timeout(self, seconds: float) -> None:
        """How long a write waits for another's lock before failing. The wait blocks the
        calling thread."""
        self.db.set_lock_timeout(seconds)

    # --- alerts -------------------------------------------------------------------------

    def open_alerts(self) -> dict[str, Alert]:
        rows = self.db.execute(
            "SELECT key, kind, severity, started_at, last_sent_at, summary, details, target "
            "FROM alerts")
        return {row[0]: _alert(row) for row in rows}

    def alerts_of(self, targets: Sequence[str]) -> dict[str, Alert]:
        """The open alerts of these targets (by target key)."""
        keys = [f"{target}/{kind}" for target in targets for kind in AlertKind]
        if not keys:
            return {}
        rows = self.db.execute(
            "SELECT key, kind, severity, started_at, last_sent_at, summary, details, target "
            f"FROM alerts WHERE key IN ({_placeholders(len(keys))})", keys)
        return {row[0]: _alert(row) for row in rows}

    def apply(self, changes: Mapping[str, Alert | None],
              deliveries: Iterable[tuple[Notification, str]], now: datetime) -> None:
        """Alert changes and their outbox entries, in one transaction."""
        with self.db.transaction():
            self._write(changes, deliveries, now)

    def decide(self, targets: Sequence[str],
               decide: Callable[[Mapping[str, Alert], datetime], Decision],
               clock: Callable[[], datetime]) -> Decision:
        """Decides about `targets` from their open alerts as stored, and writes the
        decision, in one transaction that holds the targets' locks. The decision's
        moment is read once the locks are held: a replica that waited for them (or was
        stalled) must not date its notification before the one it waited for, or a
        receiver ordering by time would see a resolve before its trigger."""
        with self.db.transaction():
            self.db.lock(targets)
            now = clock()
            decision = decide(self.alerts_of(targets), now)
            self._write(decision[0], decision[2], now)
        return decision

    def _write(self, changes: Mapping[str, Alert | None],
               deliveries: Iterable[tuple[Notification, str]], now: datetime) -> None:
        for key, alert in changes.items():
            if alert is None:
                self.db.write("DELETE FROM alerts WHERE key = ?", (key,))
                continue
            self.db.write(
                "INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE "
                "SET kind = excluded.kind, severity = excluded.severity, "
                "started_at = excluded.started_at, last_sent_at = excluded.last_sent_at, "
                "summary = excluded.summary, details = excluded.details, target = excluded.target",
                (alert.key, alert.kind, alert.severity, _iso(alert.started_at),
                 _iso(alert.last_sent_at), alert.summary, json.dumps(dict(alert.details)),
                 json.dumps(dict(alert.target))))
        self.db.executemany(
            "INSERT INTO outbox (id, sink, alert_key, notification, created_at, next_attempt_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(n.id, sink, n.alert_key, _notification_json(n), now.timestamp(), now.timestamp())
             for n, sink in deliveries])

    # --- deliveries -----------------------------------------------------------------------

    def due(self, now: float, limit: int = 100, per_sink: int | None = None) -> list[Delivery]:
        """Pending deliveries due at `now` that nobody holds, oldest first; at most
        `per_sink` of each sink (so a backlog for one sink cannot fill `limit` and
        starve the others). Nothing is claimed."""
        per_sink = limit if per_sink is None else per_sink
        return [Delivery(_notification_from(json.loads(r[0])), r[1], r[2], r[3], r[4])
                for r in self.db.execute(self._due, (now, now, per_sink, limit))]

    def claim(self, now: float, lease: float, limit: int = 100,
              per_sink: int | None = None) -> list[Delivery]:
        """As :meth:`due`, and claimed for `lease` seconds of the database's clock: rows
        another replica holds are skipped, and each claim bumps the fencing token. Alone
        on its database, the process needs no claim (it knows what it is sending): the
        due ones are read, so deliveries go on while the database refuses writes."""
        if not self.shared:
            return self.due(now, limit, per_sink)
        per_sink = limit if per_sink is None else per_sink
        with self.db.transaction():
            rows = self.db.execute(self._due + self.db.for_update, (now, now, per_sink, limit))
            self.db.executemany(
                "UPDATE outbox SET claim_token = claim_token + 1, claimed_by = ?, "
                f"claimed_until = {self.db.now_sql} + ? WHERE id = ? AND sink = ?",
                [(self.owner, lease, json.loads(r[0])["id"], r[1]) for r in rows])
        return [Delivery(_notification_from(json.loads(r[0])), r[1], r[2], r[3], r[4] + 1)
                for r in rows]

    def still_claimed(self, delivery: Delivery, margin: float) -> bool:
        """Whether the claim is still ours, and lasts `margin` seconds more (the send's
        longest time): checked just before sending."""
        if not self.shared:
            return True
        return bool(self.db.execute(
            "SELECT 1 FROM outbox WHERE id = ? AND sink = ? AND status = 'pending' AND "
            f"claim_token = ? AND claimed_until > {self.db.now_sql} + ?",
            (delivery.notification.id, delivery.sink, delivery.token, margin)))

    def shift_pending(self, seconds: float) -> None:
        """Moves every pending retry by `seconds` (after the wall clock jumped)."""
        with self.db.transaction():
            self.db.write("UPDATE outbox SET next_attempt_at = next_attempt_at + ? "
                          "WHERE status = 'pending'", (seconds,))

    def delivered(self, delivery: Delivery, now: float) -> bool:
        """Marks it delivered; False if another claim has taken it over meanwhile."""
        with self.db.transaction():
            return self.db.write(
                "UPDATE outbox SET status = 'delivered', delivered_at = ?, attempts = attempts + 1,"
                " claimed_until = NULL WHERE id = ? AND sink = ? AND claim_token = ?",
                (now, delivery.notification.id, delivery.sink, delivery.token)) > 0

    def failed(self, delivery: Delivery, error: str, retry_at: float | None) -> bool:
        """Records a failed attempt: retried at `retry_at`, or dead-lettered when None;
        False if another claim has taken it over meanwhile."""
        with self.db.transaction():
            return self.db.write(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, status = ?,"
                " next_attempt_at = COALESCE(?, next_attempt_at), claimed_until = NULL"
                " WHERE id = ? AND sink = ? AND claim_token = ?",
                (error, "pending" if retry_at is not None else "dead", retry_at,
                 delivery.notification.id, delivery.sink, delivery.token)) > 0

    def prune(self, before: float) -> int:
        """Forgets delivered and dead notifications created before `before`."""
        with self.db.transaction():
            return self.db.write(
                "DELETE FROM outbox WHERE status != 'pending' AND created_at < ?", (before,))

    def pending_stats(self) -> tuple[int, float | None]:
        """(undelivered count, creation time of the oldest undelivered)."""
        ((count, oldest),) = self.db.execute(
            "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE status = 'pending'")
        return int(count), oldest

    def last_notifications(self) -> dict[str, dict[str, Any]]:
        """The newest outbox entry per alert key, for the API and the status page."""
        rows = self.db.execute(
            "SELECT alert_key, sink, status, attempts, last_error, delivered_at, notification "
            "FROM outbox o WHERE created_at = (SELECT MAX(created_at) FROM outbox p "
            "WHERE p.alert_key = o.alert_key)")
        result: dict[str, dict[str, Any]] = {}
        for key, sink, status, attempts, error, delivered_at, notification in rows:
            entry = result.setdefault(key, {"action": json.loads(notification)["action"],
                                            "sinks": {}})
            entry["sinks"][sink] = {"status": status, "attempts": attempts, "error": error,
                                    "delivered_at": delivered_at}
        return result
