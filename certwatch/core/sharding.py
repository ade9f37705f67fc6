"""Shards: which replica owns which endpoint, by rendezvous (highest random weight) hashing.

Each endpoint is owned by the shard whose weight for it is highest, the weight being a
hash of (shard index, endpoint name). When the count grows from N to N+1, an endpoint
moves only if the new shard outweighs its owner: about 1/(N+1) of them, all to the new
shard; none moves between the old ones (with `hash mod N`, about N/(N+1) would move).

The key is the endpoint's name, the inventory's key: it is known before any DNS look-up,
stays the same while the addresses behind it change, and keeps all of an endpoint's
targets (one per address) on one shard, where they are judged together. (An entry that
expands to many targets by itself, a Kubernetes Secret selection, is therefore one
shard's; the wire endpoints its Ingresses name are sharded one by one.)

Pure: no I/O, nothing random.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

__all__ = ["WHOLE", "Shard", "owner", "parse_shard"]

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
MAX_SHARDS = 10_000


def _weight(key: str, index: int) -> int:
    digest = hashlib.blake2b(f"{index}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(key: str, count: int) -> int:
    """The index of the shard, of `count`, that owns `key`."""
    if count == 1:
        return 0
    return max(range(count), key=lambda index: _weight(key, index))


@dataclass(frozen=True, slots=True)
class Shard:
    """One replica's share of the inventory: shard `index` of `count` (from 0)."""

    index: int = 0
    count: int = 1
    _owned: dict[str, bool] = field(default_factory=dict, init=False, repr=False,
                                    compare=False, hash=False)

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ValueError(f"the shard count must be from 1 to {MAX_SHARDS}, not {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"the shard index must be from 0 to {self.count - 1}, "
                             f"not {self.index}")

    @property
    def whole(self) -> bool:
        return self.count == 1

    def owns(self, key: str) -> bool:
        """Whether this shard owns the endpoint named `key` (remembered: a reload asks
        again for every endpoint)."""
        if self.count == 1:
            return True
        owned = self._owned.get(key)
        if owned is None:
            owned = self._owned[key] = owner(key, self.count) == self.index
        return owned

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


WHOLE = Shard()  # one replica owns everything


def parse_shard(text: str) -> Shard:
    """ "INDEX/COUNT" (INDEX from 0), as `--shard` takes it; ValueError says what is wrong."""
    match = _SHARD.match(text)
    if match is None:
        raise ValueError(f"a shard is INDEX/COUNT, such as 0/3, not {text!r}")
    return Shard(int(match.group(1)), int(match.group(2)))
