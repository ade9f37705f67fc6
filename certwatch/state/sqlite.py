"""The embedded engine: one SQLite file (WAL) under `state_dir`, one writer process.

SQLite waits for another process's lock by blocking the thread; certwatch is the file's
only writer, so the wait is short (a lock held elsewhere is a backup or an operator's
shell) and a write that cannot get it fails and is tried again later. A write
transaction (`BEGIN IMMEDIATE`) holds the whole file, so :meth:`lock` has nothing to add
and no row lock is needed.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from certwatch.state.database import Database, DatabaseError, Row, StateError

__all__ = ["SQLiteDatabase"]


class SQLiteDatabase(Database):
    shared = False
    now_sql = "((julianday('now') - 2440587.5) * 86400.0)"
    for_update = ""

    def __init__(self, path: Path | None, schema: str, *, busy_timeout: float = 5.0,
                 synchronous: str = "FULL") -> None:
        """The database at `path` (WAL, checked, with `schema` created), or in memory;
        StateError says which file cannot be used and why."""
        self.path = path
        self.where = str(path) if path is not None else "memory"
        try:
            if path is None:
                self._db = sqlite3.connect(":memory:", isolation_level=None)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(f"PRAGMA synchronous={synchronous}")
                check = self._db.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise sqlite3.DatabaseError(check)
            self._db.executescript(schema)
        except (sqlite3.Error, OSError) as exc:
            reason = _os_reason(path) if isinstance(exc, sqlite3.Error) and path else ""
            raise StateError(f"state database {path} cannot be used: {exc}{reason}") from None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with _translated():
            return self._db.execute(sql, params).fetchall()

    def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        with _translated():
            return self._db.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with _translated():
            self._db.executemany(sql, rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with _translated():
            self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            with _translated():
                self._db.execute("COMMIT")
        finally:
            # A failed COMMIT (disk full, I/O error) must not leave the transaction open,
            # or every later BEGIN fails ("within a transaction") long after the cause is
            # gone. SQLite may already have rolled back by itself after SQLITE_FULL.
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # keep the original error
                    self._db.execute("ROLLBACK")

    def lock(self, keys: Sequence[str]) -> None:
        """BEGIN IMMEDIATE already holds the file's write lock."""

    def add_column(self, table: str, column: str, definition: str) -> None:
        columns = {row[1] for row in self.execute(f"PRAGMA table_info({table})")}
        if column not in columns:
            self.write(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    def set_lock_timeout(self, seconds: float) -> None:
        self.write(f"PRAGMA busy_timeout = {int(seconds * 1000)}")

    def close(self) -> None:
        self._db.close()


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise DatabaseError(str(exc)) from exc


def _os_reason(path: Path) -> str:
    """What the operating system says about opening `path` for writing ("unable to open
    database file" alone does not say that the file system is read-only, for instance)."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # an empty file is a valid database
    except OSError as exc:
        return f" ({exc.strerror})"
    return ""
