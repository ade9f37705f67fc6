"""The sources by name: one signature, one map (as blackbox_exporter's probers are).

:data:`REGISTRY` maps each :class:`~certwatch.core.vocabulary.SourceKind` to a factory
that makes the source from the running inventory; :class:`Sources` holds the sources an
inventory uses and is itself a :class:`~certwatch.sources.Source`: it hands each
endpoint to the source its entry names. An entry that validation rejected is observed
as its problems (a target in state error), by no source at all.

A new source is one module with a class that observes endpoints, plus its line here.
A source's module is imported when an inventory first uses it: the Kubernetes one (and
its HTTP client) was ~2 MB of memory for the inventories, most of them, that have no
Kubernetes entry.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from certwatch.core.inventory import Endpoint, Inventory
from certwatch.core.observation import Observation, ProbeError, Target
from certwatch.core.vocabulary import ErrorKind, Phase, SourceKind
from certwatch.sources import Following, Listener, Source, SourceHealth
from certwatch.sources.wire import Prober

if TYPE_CHECKING:
    from certwatch.sources.kubernetes import KubernetesSource

__all__ = ["REGISTRY", "Sources", "rejected_observation"]

Factory = Callable[[Inventory], Source]


def _files(inventory: Inventory) -> Source:
    from certwatch.sources.files import FileSource

    return FileSource()


def _kubernetes(inventory: Inventory) -> KubernetesSource:
    from certwatch.sources.kubernetes import KubernetesSource

    return KubernetesSource(inventory.kubernetes)


REGISTRY: Mapping[str, Factory] = {
    SourceKind.TLS: lambda inventory: Prober(max_concurrency=inventory.max_concurrency),
    SourceKind.FILE: _files,
    SourceKind.KUBERNETES: _kubernetes,
}


def _settings(kind: str, inventory: Inventory) -> object:
    """What a source is made from: a source is kept across a reload while this is equal."""
    if kind == SourceKind.TLS:
        return inventory.max_concurrency
    if kind == SourceKind.KUBERNETES:
        return inventory.kubernetes
    return None


def rejected_observation(endpoint: Endpoint) -> Observation:
    """An entry validation refused: its problems, as the error of one target."""
    return Observation(Target(endpoint, None), datetime.now(timezone.utc), 0.0,
                       error=ProbeError(ErrorKind.INVALID, Phase.CONFIG,
                                        "; ".join(endpoint.rejected)))


class Sources:
    """The sources of one inventory, by name; observes any endpoint with the right one."""

    def __init__(self, inventory: Inventory, previous: Sources | None = None,
                 registry: Mapping[str, Factory] = REGISTRY) -> None:
        self._made: dict[str, tuple[object, Source]] = {}
        kept = previous._made if previous is not None else {}
        used = {e.source for e in inventory.endpoints} | {SourceKind.TLS}
        for kind in sorted(used & set(registry)):
            settings = _settings(kind, inventory)
            if kind in kept and kept[kind][0] == settings:
                self._made[kind] = kept[kind]
            else:
                self._made[kind] = (settings, registry[kind](inventory))
        self.replaced = [source for kind, (_, source) in kept.items()
                         if self._made.get(kind, (None, None))[1] is not source]

    def get(self, kind: str) -> Source | None:
        made = self._made.get(kind)
        return made[1] if made else None

    async def observe(self, endpoint: Endpoint) -> tuple[Observation, ...]:
        if endpoint.rejected:
            return (rejected_observation(endpoint),)
        source = self.get(endpoint.source)
        if source is None:  # validation knows the registry; this is a bug
            error = ProbeError(ErrorKind.INTERNAL, Phase.SETUP, f"no source {endpoint.source!r}")
            return (Observation(Target(endpoint, None), datetime.now(timezone.utc), 0.0,
                                error=error),)
        return await source.observe(endpoint)

    # --- the following sources, in the daemon --------------------------------------------

    def following(self) -> dict[str, Following]:
        return {kind: source for kind, (_, source) in self._made.items()
                if isinstance(source, Following)}

    def follow(self, endpoints: Sequence[Endpoint], listener: Listener) -> None:
        for kind, source in self.following().items():
            source.follow([e for e in endpoints if e.source == kind and not e.rejected], listener)

    def health(self) -> dict[str, SourceHealth]:
        """Each following source's health (the wire has none of its own: its failures
        are each target's)."""
        return {kind: source.health() for kind, source in self.following().items()}

    def discovered(self) -> tuple[Endpoint, ...]:
        return tuple(e for source in self.following().values() for e in source.discovered())

    async def discover(self, endpoints: Sequence[Endpoint]) -> tuple[Endpoint, ...]:
        """The endpoints the entries discover, found now (for `check`, which follows
        nothing)."""
        kubernetes = self.get(SourceKind.KUBERNETES)
        if kubernetes is None:
            return ()
        from certwatch.sources.kubernetes import KubernetesSource  # imported: it was made

        if not isinstance(kubernetes, KubernetesSource):
            return ()
        entries = [e for e in endpoints if e.source == SourceKind.KUBERNETES and not e.rejected]
        return await kubernetes.discover(entries)

    async def close(self, sources: Sequence[Source] | None = None) -> None:
        for source in (sources if sources is not None
                       else [s for _, s in self._made.values()]):
            if isinstance(source, Following):
                with contextlib.suppress(Exception):
                    await source.close()
