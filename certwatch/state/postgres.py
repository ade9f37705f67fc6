"""The shared engine: PostgreSQL (`state: postgresql://user@host:5432/db`), through psycopg 3.

Replicas that watch the same endpoints share their alert state, outbox and certificate
history here:

- a decision about a target holds an advisory transaction lock on the target's key
  (:meth:`lock`), so two replicas that probed it at once decide one after the other,
  the second from what the first wrote: one trigger, one resolve;
- a delivery is claimed with `SELECT ... FOR UPDATE SKIP LOCKED` (two replicas never
  claim the same row), for a lease on the database's clock, and each claim bumps the
  row's fencing token: a replica that stalled past its lease and came back finds its
  token outdated and neither sends nor marks (see :mod:`certwatch.alerting.outbox`).

The connection is synchronous and used from the event loop, as SQLite's is: statements
are short and bounded (`statement_timeout`, `lock_timeout`), and a replica stopped in a
transaction loses its session after `idle_in_transaction_session_timeout`, which frees
its locks. A lost connection is a :class:`DatabaseError` (alerting degrades); it is
opened again at the next statement, at most every RECONNECT seconds.
"""

from __future__ import annotations

import contextlib
import re
import time
from typing import Any, Iterable, Iterator, Sequence

import psycopg

from certwatch.core.inventory import SharedState
from certwatch.state.database import Database, DatabaseError, Row, StateError

__all__ = ["PostgresDatabase"]

CONNECT_TIMEOUT = 3  # seconds (libpq counts whole seconds)
RECONNECT = 5.0  # seconds between attempts to open a lost connection
STATEMENT_TIMEOUT_MS = 5000
LOCK_TIMEOUT_MS = 1000
IDLE_IN_TRANSACTION_MS = 10000  # a replica stopped mid-transaction frees its locks
SCHEMA_LOCK = 0x63657274  # an advisory lock held while the schema is created ("cert")
_PLACEHOLDER = re.compile(r"\?")
_CREATED = re.compile(r"CREATE\s+(?:TABLE|INDEX)\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.IGNORECASE)


def _sql(text: str) -> str:
    """The statements are written with `?`; psycopg wants `%s`."""
    return _PLACEHOLDER.sub("%s", text)


class PostgresDatabase(Database):
    shared = True
    now_sql = "extract(epoch from clock_timestamp())::double precision"
    for_update = " FOR UPDATE SKIP LOCKED"

    def __init__(self, state: SharedState, schema: str) -> None:
        self._state = state
        self.where = state.url
        self._conn: psycopg.Connection[Any] | None = None
        self._in_transaction = False
        self._retry_at = 0.0
        try:
            conn = self._connection()
            with conn.transaction():  # replicas starting together create it once
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                for statement in filter(str.strip, schema.split(";")):
                    # What exists is left alone: even CREATE INDEX IF NOT EXISTS waits
                    # for the table's lock, which a busy (or stalled) replica may hold.
                    made = _CREATED.search(statement)
                    if made is None or conn.execute("SELECT to_regclass(%s)", (
                            made.group(1),)).fetchone() == (None,):
                        conn.execute(statement)
        except (psycopg.Error, DatabaseError) as exc:
            raise StateError(f"state database {state.url} cannot be used: "
                             f"{_first_line(exc)}") from None

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and (self._in_transaction or not conn.closed and not conn.broken):
            # Inside a transaction, never another connection: its statements would run
            # outside the transaction, and without its locks. A broken one raises.
            return conn
        if time.monotonic() < self._retry_at:
            raise DatabaseError(f"no connection to {self.where} (trying again shortly)")
        self._retry_at = time.monotonic() + RECONNECT
        options = (f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS}"
                   f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}")
        try:
            self._conn = psycopg.connect(self._state.url, password=self._state.password,
                                         autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                         application_name="certwatch", options=options)
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot connect to {self.where}: {_first_line(exc)}") from None
        return self._conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._translated() as conn:
            cursor = conn.execute(_sql(sql), params)
            return cursor.fetchall() if cursor.description is not None else []

    def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._translated() as conn:
            return conn.execute(_sql(sql), params).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            with self._translated() as conn, conn.cursor() as cursor:
                cursor.executemany(_sql(sql), rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._translated() as conn, conn.transaction():
            self._in_transaction = True
            try:
                yield
            finally:
                self._in_transaction = False

    def lock(self, keys: Sequence[str]) -> None:
        # In a fixed order, so two replicas locking overlapping sets cannot deadlock.
        for key in sorted(set(keys)):
            self.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (key,))

    def add_column(self, table: str, column: str, definition: str) -> None:
        if not self.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = "
                            "current_schema() AND table_name = ? AND column_name = ?",
                            (table, column)):
            self.write(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {definition}")

    def set_lock_timeout(self, seconds: float) -> None:
        self.write(f"SET lock_timeout = {int(seconds * 1000)}")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    @contextlib.contextmanager
    def _translated(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            yield self._connection()
        except psycopg.Error as exc:
            raise DatabaseError(_first_line(exc)) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
