"""The state database: open alerts, the notification outbox, the certificate history.

One interface (:class:`~certwatch.state.database.Database`), two engines:

- :mod:`~certwatch.state.sqlite`: a file under `state_dir` (WAL), the embedded default,
  for one replica (or for shards, each with its own file);
- :mod:`~certwatch.state.postgres`: `state: postgresql://...`, shared by replicas that
  watch the same endpoints. Decisions take row locks on their targets (advisory
  transaction locks), deliveries are claimed with `FOR UPDATE SKIP LOCKED` and carry a
  fencing token.

The logic that uses them (the outbox in :mod:`certwatch.alerting.outbox`, the history
in :mod:`certwatch.daemon.history`) is written once, against the interface; the engines
differ only in connecting, locking and a few words of SQL.
"""

from __future__ import annotations

from pathlib import Path

from certwatch.core.inventory import SharedState
from certwatch.state.database import Database, DatabaseError, StateError

__all__ = ["DB_FILE", "Database", "DatabaseError", "StateError", "open_database"]

DB_FILE = "certwatch.db"


def open_database(where: Path | SharedState | None, schema: str, *, durable: bool = True,
                  busy_timeout: float = 5.0) -> Database:
    """The state database: PostgreSQL for a SharedState, else the SQLite file in the
    directory `where` (in memory when None). `durable` asks SQLite to sync every commit
    (a delivered mark must survive power loss; the history need not). StateError says
    why it cannot be used."""
    if isinstance(where, SharedState):
        from certwatch.state.postgres import PostgresDatabase  # its driver only when used

        return PostgresDatabase(where, schema)
    from certwatch.state.sqlite import SQLiteDatabase

    path = where / DB_FILE if where is not None else None
    return SQLiteDatabase(path, schema, busy_timeout=busy_timeout,
                          synchronous="FULL" if durable else "NORMAL")
