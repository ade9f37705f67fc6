"""The certificate history of every target, kept in the state database.

Each target remembers the leaves it has served (fingerprint, first and last seen,
validity), at most HISTORY_PER_TARGET of them; the rules are pure
(:func:`certwatch.core.renewal.record_seen`), this module only stores. It lives in the
same state database as the alert state (`state_dir`/certwatch.db, or the PostgreSQL
database of `state:`), so a restart keeps it; without either it is kept in memory only
(no database is opened: SQLite's code alone was ~1.2 MB of memory), and a restart
forgets it. In a shared database another replica may have recorded a target this one
has not seen yet (a shard that took it over): its history is read the first time it is
asked for.

A write that fails is logged and the history goes on in memory: it informs (renewals,
first seen), it never decides whether a certificate expires.

A new certificate is written within WRITE_WINDOW, together with the others seen
meanwhile, in one transaction (outside an event loop, at once): a transaction each was a
fifth of a first sighting's CPU, and a first sweep sees every certificate anew. A probe
that sees the same certificate again only moves its last_seen, and those are written
together, at most every FLUSH_INTERVAL. Both are written on close; a crash loses at most
the window's new sightings, which the next probe of each target records again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Sequence

from certwatch.core.inventory import SharedState
from certwatch.core.renewal import SeenCertificate, record_seen
from certwatch.core.x509 import CertInfo
from certwatch.state import Database, DatabaseError, StateError, open_database

__all__ = ["CertificateHistory"]

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS certificate_history (
    target TEXT NOT NULL, fingerprint TEXT NOT NULL,
    first_seen TEXT NOT NULL, last_seen TEXT NOT NULL,
    not_before TEXT NOT NULL, not_after TEXT NOT NULL,
    PRIMARY KEY (target, fingerprint)
)
"""
_COLUMNS = "target, fingerprint, first_seen, last_seen, not_before, not_after"
BUSY_TIMEOUT = 0.25  # seconds; as the outbox: never stall the event loop on a lock
FLUSH_INTERVAL = 10.0  # seconds between writes of the last_seen refreshes
WRITE_WINDOW = 0.5  # seconds a new certificate waits for others to share its transaction


class CertificateHistory:
    """Every target's history, read once at start-up and written through on each probe."""

    def __init__(self, where: Path | SharedState | Database | None) -> None:
        """`where`: the state directory, the shared database, an open database, or None
        (memory)."""
        if where is None:
            log.info("certificate history kept in memory only: set 'state_dir' to keep it "
                     "across restarts")
        # NORMAL: a power cut may lose the latest last_seen, which is harmless.
        self._db = where if isinstance(where, Database) or where is None else open_database(
            where, SCHEMA, durable=False, busy_timeout=BUSY_TIMEOUT)
        self.path = None if self._db is None else self._db.where
        self._by_target: dict[str, tuple[SeenCertificate, ...]] = {}
        try:
            rows = [] if self._db is None else self._db.execute(
                f"SELECT {_COLUMNS} FROM certificate_history ORDER BY target, last_seen")
        except DatabaseError as exc:
            raise StateError(f"state database {self.path} cannot be used: {exc}") from None
        for target, seen in _rows(rows):
            self._by_target[target] = (*self._by_target.get(target, ()), seen)
        self._failing = False
        self._refreshed: dict[str, SeenCertificate] = {}  # last_seen moves not written yet
        self._flushed = time.monotonic()
        # New sightings not written yet, by target: the rows to upsert (by fingerprint)
        # and the fingerprints to delete, disjoint, so their order does not matter.
        self._upserts: dict[str, dict[str, SeenCertificate]] = {}
        self._drops: dict[str, set[str]] = {}
        self._writing: asyncio.TimerHandle | None = None

    @property
    def persistent(self) -> bool:
        return self.path is not None

    def of(self, target: str) -> tuple[SeenCertificate, ...]:
        known = self._by_target.get(target)
        if known is None:
            known = self._by_target[target] = self._read(target)
        return known

    def _read(self, target: str) -> tuple[SeenCertificate, ...]:
        """A target not seen since start-up: what another replica recorded, if any."""
        if self._db is None or not self._db.shared:
            return ()
        try:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM certificate_history "
                                    "WHERE target = ? ORDER BY last_seen", (target,))
        except DatabaseError:
            return ()
        return tuple(seen for _, seen in _rows(rows))

    def record(self, target: str, leaf: CertInfo, now: datetime) -> tuple[SeenCertificate, ...]:
        """The target's history once `leaf` was read at `now` (stored, where it can be)."""
        before = self.of(target)
        after = record_seen(before, leaf, now)
        self._by_target[target] = after
        if self.path is None:
            return after  # the memory above is the whole history
        if before and before[-1].fingerprint_sha256 == after[-1].fingerprint_sha256:
            self._refreshed[target] = after[-1]  # the same certificate, seen again
            if time.monotonic() - self._flushed >= FLUSH_INTERVAL:
                self.flush()
            return after
        # The certificate served before keeps the last sighting not written yet.
        earlier = self._refreshed.pop(target, None)
        dropped = {c.fingerprint_sha256 for c in before} - {c.fingerprint_sha256 for c in after}
        kept = [earlier] if earlier and earlier.fingerprint_sha256 not in dropped else []
        upserts = self._upserts.setdefault(target, {})
        drops = self._drops.setdefault(target, set())
        for fingerprint in dropped:
            upserts.pop(fingerprint, None)
        drops.update(dropped)
        for seen in (*kept, after[-1]):
            drops.discard(seen.fingerprint_sha256)
            upserts[seen.fingerprint_sha256] = seen
        self._write_soon()
        return after

    def _write_soon(self) -> None:
        """The new sightings written within WRITE_WINDOW, or now outside an event loop."""
        if self._writing is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._writing = loop.call_later(WRITE_WINDOW, self.flush)

    def flush(self) -> None:
        """Writes the new sightings and the last_seen refreshes recorded since the last
        flush, in one transaction (the refreshes after the rows they refresh)."""
        if self._writing is not None:
            self._writing.cancel()
            self._writing = None
        self._flushed = time.monotonic()
        refreshed, self._refreshed = self._refreshed, {}
        upserts, self._upserts = self._upserts, {}
        drops, self._drops = self._drops, {}
        if not (refreshed or upserts or drops):
            return

        def write() -> None:
            with self._database.transaction():
                self._database.executemany(
                    "INSERT INTO certificate_history VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (target, fingerprint) DO UPDATE SET last_seen = excluded.last_seen",
                    [(target, seen.fingerprint_sha256, seen.first_seen.isoformat(),
                      seen.last_seen.isoformat(), seen.not_before.isoformat(),
                      seen.not_after.isoformat())
                     for target, rows in upserts.items() for seen in rows.values()])
                self._database.executemany(
                    "DELETE FROM certificate_history WHERE target = ? AND fingerprint = ?",
                    [(target, fingerprint)
                     for target, fingerprints in drops.items() for fingerprint in fingerprints])
                self._database.executemany(
                    "UPDATE certificate_history SET last_seen = ? "
                    "WHERE target = ? AND fingerprint = ?",
                    [(seen.last_seen.isoformat(), target, seen.fingerprint_sha256)
                     for target, seen in refreshed.items()])
        self._guard(write)

    def forget(self, targets: Iterable[str]) -> None:
        """Drops the history of targets that left the inventory."""
        gone = [t for t in targets if self._by_target.pop(t, None) is not None]
        for target in gone:
            self._refreshed.pop(target, None)
            self._upserts.pop(target, None)
            self._drops.pop(target, None)
        if gone and self.path is not None:
            self._guard(lambda: self._database.executemany(
                "DELETE FROM certificate_history WHERE target = ?", [(t,) for t in gone]))

    def close(self) -> None:
        if self.path is not None:
            self.flush()
        if self._db is not None:
            self._db.close()

    @property
    def _database(self) -> Database:
        """The database, where the history is kept in one (`path` is not None)."""
        assert self._db is not None
        return self._db

    def _guard(self, write: Callable[[], object]) -> None:
        try:
            write()
        except DatabaseError as exc:
            if not self._failing:
                log.error("certificate history write failed (kept in memory): %s", exc,
                          extra={"path": str(self.path)})
            self._failing = True
            return
        if self._failing:
            log.info("certificate history writes succeed again")
        self._failing = False


def _rows(rows: Sequence[Sequence[str]]) -> Iterable[tuple[str, SeenCertificate]]:
    for target, fingerprint, *moments in rows:
        yield target, SeenCertificate(fingerprint, *(datetime.fromisoformat(m) for m in moments))
