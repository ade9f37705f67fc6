"""The sweep: observe endpoints and judge what was seen, at the moment it was seen.

The one path from an endpoint to its assessments, used by `certwatch check`, by the
daemon for each due endpoint, and by the tests and benchmarks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Callable, Iterable, Mapping

from certwatch.core.assess import Assessment, assess
from certwatch.core.inventory import Endpoint
from certwatch.core.observation import Observation
from certwatch.core.renewal import RenewalInfo
from certwatch.core.verify import TrustStore
from certwatch.sources import Source
from certwatch.sources.ari import RenewalInfoFetcher
from certwatch.sources.trust import TrustStores

__all__ = ["Judged", "judge_endpoint", "sweep"]

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class Judged:
    """One endpoint's fresh assessments, and how to judge an older observation alike."""

    endpoint: Endpoint
    assessments: tuple[Assessment, ...]
    now: datetime
    trust: TrustStore
    renewal_info: Mapping[str, RenewalInfo] | None = None  # what CAs said, by fingerprint

    def rejudge(self, observation: Observation) -> Assessment:
        """An earlier observation judged at this moment (a certificate still known after
        a failed probe must still cross its thresholds on time), with what is known of
        the CA's renewal windows now."""
        return assess(observation, self.now, self.trust, self.renewal_info)


async def judge_endpoint(endpoint: Endpoint, source: Source, trust: TrustStores,
                         clock: Clock = utcnow,
                         renewal_info: Mapping[str, RenewalInfo] | None = None) -> Judged:
    """Observes one endpoint and assesses each of its targets, with the renewal windows
    already known (`renewal_info`: nothing here waits for a CA)."""
    observations = await source.observe(endpoint)
    now = clock()
    store = trust.for_endpoint(endpoint)
    return Judged(endpoint, tuple(assess(o, now, store, renewal_info) for o in observations),
                  now, store, renewal_info)


async def with_renewal_info(judged: Judged, fetcher: RenewalInfoFetcher) -> Judged:
    """The endpoint judged again, at the same moment, once the renewalInfo its leaves are
    due for has been fetched (bounded; a failure leaves the judgement as it was)."""
    leaves = [a.leaf for a in judged.assessments if a.leaf is not None]
    if not await fetcher.refresh(judged.endpoint, leaves):
        return judged
    return replace(judged, assessments=tuple(judged.rejudge(a.observation)
                                             for a in judged.assessments))


async def sweep(endpoints: Iterable[Endpoint], source: Source, trust: TrustStores | None = None,
                clock: Clock = utcnow,
                renewal: RenewalInfoFetcher | None = None) -> list[Assessment]:
    """Every endpoint observed concurrently (the source bounds its own connections);
    with `renewal`, the leaves' renewalInfo is fetched for those that name a directory."""
    trust = trust or TrustStores()

    async def one(endpoint: Endpoint) -> Judged:
        judged = await judge_endpoint(endpoint, source, trust, clock,
                                      renewal.known if renewal else None)
        return await with_renewal_info(judged, renewal) if renewal else judged

    judged = await asyncio.gather(*(one(e) for e in endpoints))
    return [a for one in judged for a in one.assessments]
