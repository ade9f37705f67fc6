"""The latest status of every target, as one snapshot that readers never see change.

The store's mapping is replaced whole on every update (copy on write), so the metrics
exposition and the HTTP API read a consistent snapshot without locks. The update rule
itself is pure (:func:`certwatch.core.status.merge`).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Iterable, Mapping

from certwatch.core.status import Change, TargetStatus

__all__ = ["Store"]


class Store:
    """Latest statuses, by endpoint name, as an immutable snapshot replaced on each update.

    Updating one endpoint copies only the outer mapping (a C-level dict copy), so a sweep
    of N endpoints costs O(N) copies of pointers, not O(N) Python work per update.
    """

    def __init__(self) -> None:
        self._by_endpoint: MappingProxyType[str, tuple[TargetStatus, ...]] = MappingProxyType({})

    def snapshot(self) -> Mapping[str, TargetStatus]:
        """Every target's status by target key (built per call: for scrapes and the API)."""
        return {s.target.key: s for statuses in self._by_endpoint.values() for s in statuses}

    def statuses(self) -> list[TargetStatus]:
        return [s for statuses in self._by_endpoint.values() for s in statuses]

    def of_endpoint(self, name: str) -> list[TargetStatus]:
        return list(self._by_endpoint.get(name, ()))

    def replace_endpoint(self, name: str, statuses: Iterable[TargetStatus]) -> list[Change]:
        """Sets the endpoint's statuses (dropping addresses it no longer has)."""
        before = {s.target.key: s.state for s in self._by_endpoint.get(name, ())}
        statuses = tuple(statuses)
        updated = self._by_endpoint.copy()  # dict(proxy) takes a slow path: 15x slower
        updated[name] = statuses
        self._by_endpoint = MappingProxyType(updated)
        return [Change(before.get(s.target.key), s) for s in statuses
                if before.get(s.target.key) is not s.state]

    def retain(self, names: set[str]) -> list[str]:
        """Drops targets of endpoints no longer in the inventory; returns their keys."""
        gone = [s.target.key for name, statuses in self._by_endpoint.items()
                if name not in names for s in statuses]
        if any(name not in names for name in self._by_endpoint):
            self._by_endpoint = MappingProxyType(
                {n: s for n, s in self._by_endpoint.items() if n in names})
        return gone
