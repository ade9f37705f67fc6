"""Basic auth of certwatch's own endpoints: bcrypt hashes, checked off the event loop."""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hashlib
import secrets
import time
from typing import Any, Callable

import bcrypt

__all__ = ["BasicAuth"]


class BasicAuth:
    """Checks `Authorization: Basic` headers against bcrypt hashes.

    bcrypt costs 50-250 ms by design, and a Prometheus scraping every 15 s would pay it
    on every scrape. So a *successful* check is remembered for `cache_ttl` seconds (at most
    `cache_size` entries), keyed by a salted SHA-256 of (user, password, stored hash): the
    cache holds no password, a wrong password never hits it, and a changed hash misses it.
    Failures are not cached; every one costs a bcrypt, run in a worker thread (never on the
    event loop) with at most `max_concurrent` at once, so a password-guessing client slows
    itself down, not the scrapes. Credentials that have worked before (their key is kept,
    at most `cache_size` of them, after the cache entry expires) are checked in a lane
    of their own, so a scraper whose entry expires while someone guesses waits for one
    bcrypt, not behind every guess queued. An unknown user is checked against a dummy
    hash so the answer takes as long as for a known one. bcrypt compares in constant
    time. Passwords longer than 72 bytes are cut to 72, as bcrypt (and htpasswd) always did.
    """

    REALM = "certwatch"

    def __init__(self, users: tuple[tuple[str, bytes], ...], *, cache_ttl: float = 300.0,
                 cache_size: int = 256, max_concurrent: int = 2,
                 clock: Callable[[], float] = time.monotonic,
                 checkpw: Callable[[bytes, bytes], bool] = bcrypt.checkpw) -> None:
        self._users = dict(users)
        self._cache: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self._cache_ttl, self._cache_size = cache_ttl, cache_size
        self._clock = clock
        self._checkpw = checkpw
        self._salt = secrets.token_bytes(32)
        self._slots = asyncio.Semaphore(max_concurrent)
        # Keys of credentials that have worked, and the lane they are checked in again.
        self._proven: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._proven_slots = asyncio.Semaphore(1)
        self._dummy: bytes | None = None

    @property
    def challenge(self) -> str:
        return f'Basic realm="{self.REALM}", charset="UTF-8"'

    @staticmethod
    def parse(header: str | None) -> tuple[str, bytes] | None:
        """(user, password) from an Authorization header, or None."""
        if not header:
            return None
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        user, colon, password = decoded.partition(b":")
        if not colon:
            return None
        try:
            return user.decode("utf-8"), password
        except UnicodeDecodeError:
            return None

    async def check(self, header: str | None) -> bool:
        credentials = self.parse(header)
        if credentials is None:
            return False
        user, password = credentials
        password = password[:72]
        stored = self._users.get(user)
        if stored is None:
            if self._dummy is None:
                self._dummy = await asyncio.to_thread(self._make_dummy)
            await self._bcrypt(password, self._dummy, self._slots)
            return False
        key = self._key(user, password, stored)
        now = self._clock()
        expires = self._cache.get(key)
        if expires is not None and expires > now:
            return True
        lane = self._proven_slots if key in self._proven else self._slots
        if not await self._bcrypt(password, stored, lane):
            return False
        self._remember(self._cache, key, now + self._cache_ttl)
        self._remember(self._proven, key, None)
        return True

    def _remember(self, entries: collections.OrderedDict[bytes, Any], key: bytes,
                  value: Any) -> None:
        entries[key] = value
        entries.move_to_end(key)
        while len(entries) > self._cache_size:
            entries.popitem(last=False)

    def _key(self, user: str, password: bytes, stored: bytes) -> bytes:
        digest = hashlib.sha256(self._salt)
        for part in (user.encode("utf-8"), password, stored):
            digest.update(len(part).to_bytes(4, "big"))
            digest.update(part)
        return digest.digest()

    def _make_dummy(self) -> bytes:
        """A hash of a random password at the highest configured cost."""
        cost = max([int(h[4:6]) for h in self._users.values()] or [10])
        return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))

    async def _bcrypt(self, password: bytes, stored: bytes, lane: asyncio.Semaphore) -> bool:
        async with lane:
            try:
                return await asyncio.to_thread(self._checkpw, password, stored)
            except ValueError:  # a malformed hash cannot get past validation; refuse anyway
                return False
