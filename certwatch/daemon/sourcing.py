"""The running endpoints: the inventory's, plus those the sources discover, swapped whole.

The sources that follow their certificates (files rewritten, Secrets updated) say so
through a :class:`~certwatch.sources.Listener`: a changed entry is probed at once, and a
changed set of discovered endpoints (an Ingress's hosts) is swapped in like an edit of
the inventory, without re-reading it.

A sharded replica (`--shard INDEX/COUNT`) keeps only the endpoints its shard owns, the
inventory's (already filtered when it was loaded, but for the Kubernetes entries) and
the discovered ones alike (:mod:`certwatch.core.sharding`): the filter is applied here,
where the running endpoints are made, so nothing after it needs to know.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

from certwatch.core.inventory import Endpoint
from certwatch.core.sharding import WHOLE, Shard
from certwatch.daemon.schedule import Schedule, utcnow
from certwatch.daemon.store import Store

if TYPE_CHECKING:
    from certwatch.alerting.notifier import Notifier

__all__ = ["FIRST_SWEEP_SPREAD", "endpoint_map", "invalid_entries", "swap_endpoints"]

log = logging.getLogger(__name__)

# Seconds over which the first probes of a (re)load are spread, at the least: a few
# endpoints behind one server do not arrive at once, and a large inventory is spread by
# the schedule's rate instead (SOON_RATE). At 2 s, 2,000 endpoints took 2 s however many
# cores probed them.
FIRST_SWEEP_SPREAD = 0.5


def endpoint_map(inventory: Iterable[Endpoint], discovered: Iterable[Endpoint],
                 shard: Shard = WHOLE) -> dict[str, Endpoint]:
    """By name, those `shard` owns; a name the inventory uses is the inventory's."""
    endpoints = {e.name: e for e in inventory}
    for endpoint in discovered:
        endpoints.setdefault(endpoint.name, endpoint)
    if shard.whole:
        return endpoints
    return {name: e for name, e in endpoints.items() if shard.owns(name)}


def invalid_entries(entries: Sequence[Endpoint], shard: Shard) -> int:
    """The entries validation rejected that this shard owns (each is its target in error):
    every shard counting all of them would alert once per shard."""
    return sum(1 for e in entries if e.rejected and shard.owns(e.name))


async def swap_endpoints(old: Mapping[str, Endpoint], new: Mapping[str, Endpoint], *,
                         schedule: Schedule, store: Store, notifier: Notifier | None,
                         forget: Callable[[str], None],
                         removed: Callable[[list[str]], None] | None = None) -> datetime:
    """New and changed endpoints are probed promptly, removed ones vanish (their alerts
    resolve, `removed` hears of their targets), unchanged ones keep their state and
    schedule."""
    for name in old.keys() - new.keys():
        schedule.unschedule(name)
        forget(name)
    gone = store.retain(set(new))
    for key in gone:
        log.info("target removed", extra={"target": key})
    if removed is not None:
        removed(gone)
    if notifier is not None:
        notifier.observe([], gone)
    now = utcnow()
    await schedule.schedule_soon({name: endpoint.interval for name, endpoint in new.items()
                                  if old.get(name) != endpoint}, FIRST_SWEEP_SPREAD)
    return now
