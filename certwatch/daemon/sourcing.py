"""The running endpoints: the inventory's, plus those the sources discover, swapped whole.

The sources that follow their certificates (files rewritten, Secrets updated) say so
through a :class:`~certwatch.sources.Listener`: a changed entry is probed at once, and a
changed set of discovered endpoints (an Ingress's hosts) is swapped in like an edit of
the inventory, without re-reading it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Callable, Iterable, Mapping

from certwatch.alerting.notifier import Notifier
from certwatch.core.inventory import Endpoint
from certwatch.daemon.schedule import Schedule, utcnow
from certwatch.daemon.store import Store

__all__ = ["FIRST_SWEEP_SPREAD", "endpoint_map", "swap_endpoints"]

log = logging.getLogger(__name__)

FIRST_SWEEP_SPREAD = 2.0  # seconds over which the first probes of a (re)load are spread


def endpoint_map(inventory: Iterable[Endpoint], discovered: Iterable[Endpoint]) -> dict[str, Endpoint]:
    """By name; a name the inventory uses is the inventory's."""
    endpoints = {e.name: e for e in inventory}
    for endpoint in discovered:
        endpoints.setdefault(endpoint.name, endpoint)
    return endpoints


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
    await schedule.schedule_soon([name for name, endpoint in new.items()
                                  if old.get(name) != endpoint], FIRST_SWEEP_SPREAD)
    return now
