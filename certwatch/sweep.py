"""The sweep: observe endpoints and judge what was seen, at the moment it was seen.

The one path from an endpoint to its assessments, used by `certwatch check`, by the
daemon for each due endpoint, and by the tests and benchmarks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable

from certwatch.core.assess import Assessment, assess
from certwatch.core.inventory import Endpoint
from certwatch.core.observation import Observation
from certwatch.core.verify import TrustStore
from certwatch.sources import Source
from certwatch.sources.trust import TrustStores

__all__ = ["Judged", "Progress", "judge_endpoint", "sweep"]

Clock = Callable[[], datetime]
Progress = Callable[["Judged"], None]  # told of each endpoint as soon as it is judged


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class Judged:
    """One endpoint's fresh assessments, and how to judge an older observation alike."""

    endpoint: Endpoint
    assessments: tuple[Assessment, ...]
    now: datetime
    trust: TrustStore

    def rejudge(self, observation: Observation) -> Assessment:
        """An earlier observation judged at this moment (a certificate still known after
        a failed probe must still cross its thresholds on time)."""
        return assess(observation, self.now, self.trust)


async def judge_endpoint(endpoint: Endpoint, source: Source, trust: TrustStores,
                         clock: Clock = utcnow) -> Judged:
    """Observes one endpoint and assesses each of its targets."""
    observations = await source.observe(endpoint)
    now = clock()
    store = trust.for_endpoint(endpoint)
    return Judged(endpoint, tuple(assess(o, now, store) for o in observations), now, store)


async def sweep(endpoints: Iterable[Endpoint], source: Source, trust: TrustStores | None = None,
                clock: Clock = utcnow, progress: Progress | None = None) -> list[Assessment]:
    """Every endpoint observed concurrently (the source bounds its own connections);
    `progress`, if given, hears of each endpoint as it is done (a progress bar)."""
    stores = trust or TrustStores()

    async def judge(endpoint: Endpoint) -> Judged:
        judged = await judge_endpoint(endpoint, source, stores, clock)
        if progress is not None:
            progress(judged)
        return judged

    judged = await asyncio.gather(*(judge(e) for e in endpoints))
    return [a for one in judged for a in one.assessments]
