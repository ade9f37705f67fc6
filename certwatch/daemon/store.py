"""The latest status of every target; readers get a snapshot that never changes.

Everything runs on one event loop, so an update never interleaves with a reader's copy:
the metrics exposition and the HTTP API take their list or mapping of statuses in one
step (statuses(), snapshot()) and render from that, without locks. Updating one endpoint
changes one entry in place: copying the whole mapping on every probe made a sweep cost
O(N^2) (a tenth of a millisecond a probe at 10,000 targets, a millisecond at 100,000).
The update rule itself is pure (:func:`certwatch.core.status.merge`).
"""

from __future__ import annotations

from typing import Iterable, Mapping

from certwatch.core.status import Change, TargetStatus

__all__ = ["Store"]


class Store:
    """Latest statuses, by endpoint name (each endpoint's a tuple, replaced whole)."""

    def __init__(self) -> None:
        self._by_endpoint: dict[str, tuple[TargetStatus, ...]] = {}

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
        self._by_endpoint[name] = statuses
        return [Change(before.get(s.target.key), s) for s in statuses
                if before.get(s.target.key) is not s.state]

    def retain(self, names: set[str]) -> list[str]:
        """Drops targets of endpoints no longer in the inventory; returns their keys."""
        gone = [s.target.key for name, statuses in self._by_endpoint.items()
                if name not in names for s in statuses]
        if any(name not in names for name in self._by_endpoint):
            self._by_endpoint = {n: s for n, s in self._by_endpoint.items() if n in names}
        return gone
