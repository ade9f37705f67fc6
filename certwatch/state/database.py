"""What the state's users need of a database engine, and nothing more.

Statements are written once, with `?` placeholders and SQL that SQLite and PostgreSQL
both speak; where they differ an engine supplies the words: :attr:`Database.now_sql`
(the database's own clock, so leases do not depend on a replica's), :attr:`for_update`
(row locks that skip rows another replica holds), :meth:`lock` (serialising decisions
about the same targets across replicas). A driver's error becomes a
:class:`DatabaseError` here, at one boundary, so the callers degrade the same way
whatever the engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import Any, Iterable, Sequence

__all__ = ["Database", "DatabaseError", "Row", "StateError"]

Row = tuple[Any, ...]


class StateError(Exception):
    """The state database cannot be used at all (start-up stops); the message says which
    database and why."""


class DatabaseError(Exception):
    """A statement failed (locked, the connection lost, the disk full): the caller keeps
    what it wanted to write and tries again later."""


class Database(ABC):
    """One connection to the state database, used from one thread (the event loop's)."""

    where: str  # for messages: the file, or postgresql://host:port/db (never a password)
    shared: bool  # other replicas use the same database
    now_sql: str  # an SQL expression: the database's clock, in seconds since the epoch
    for_update: str  # appended to a SELECT: lock the rows, skipping those locked elsewhere

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Runs one statement; its rows (none for a write)."""

    @abstractmethod
    def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Runs one statement; how many rows it changed."""

    @abstractmethod
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """`with db.transaction():` one write transaction, rolled back on any error."""

    @abstractmethod
    def lock(self, keys: Sequence[str]) -> None:
        """Inside a transaction: holds every key until it ends, so that decisions about
        the same targets are taken one after another, whichever replica takes them."""

    @abstractmethod
    def add_column(self, table: str, column: str, definition: str) -> None:
        """Adds a column to a table made by an older certwatch, unless it is there."""

    @abstractmethod
    def set_lock_timeout(self, seconds: float) -> None:
        """How long a statement waits for a lock held elsewhere before it fails."""

    @abstractmethod
    def close(self) -> None: ...
