"""The sweep: observe endpoints and judge what was seen, at the moment it was seen.

The one path from an endpoint to its assessments, used by `certwatch check`, by the
daemon for each due endpoint, and by the tests and benchmarks.

The expiry judgement is made first, from the observation alone. Revocation and the
root-program lints (:class:`~certwatch.sources.revocation.RefusalChecks`) come after it:
their fetches wait at most the endpoint's `revocation.timeout`, and whatever fails there
leaves the expiry judgement as it was.
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
from certwatch.config.refusals import shipped_policy
from certwatch.sources import Source
from certwatch.sources.revocation import RefusalChecks
from certwatch.sources.ari import RenewalInfoFetcher
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
    stores: TrustStores | None = None
    refusals: RefusalChecks | None = None
    renewal_info: Mapping[str, RenewalInfo] | None = None  # what CAs said, by fingerprint

    def rejudge(self, observation: Observation,
                previous: Assessment | None = None) -> Assessment:
        """An earlier observation judged at this moment (a certificate still known after
        a failed probe must still cross its thresholds on time), with the revocation
        evidence at hand (nothing is fetched for it) and what is known of the CA's
        renewal windows now; `previous` (its last assessment) may spare the verification."""
        assessment = assess(observation, self.now, self.trust, self.renewal_info, previous)
        if self.refusals is None or self.stores is None:
            return assessment
        return self.refusals.judge(assessment, self.endpoint, self.stores, self.now)


async def judge_endpoint(endpoint: Endpoint, source: Source, trust: TrustStores,
                         clock: Clock = utcnow, refusals: RefusalChecks | None = None,
                         renewal_info: Mapping[str, RenewalInfo] | None = None,
                         previous: Mapping[str, Assessment] | None = None) -> Judged:
    """Observes one endpoint and assesses each of its targets, with the renewal windows
    already known (`renewal_info`: nothing here waits for a CA); then the refusal checks
    (revocation, lints), whose fetches are bounded. `previous` holds the targets' last
    assessments (by target key): a chain seen before is not verified again while
    nothing it depends on changed (:class:`~certwatch.core.verify.VerificationKey`)."""
    observations = await source.observe(endpoint)
    now = clock()
    store = trust.for_endpoint(endpoint)
    earlier = previous or {}
    assessments = tuple(assess(o, now, store, renewal_info, earlier.get(o.target.key))
                        for o in observations)
    if refusals is not None:
        assessments = await refusals.check(assessments, endpoint, trust, now)
    return Judged(endpoint, assessments, now, store, trust, refusals, renewal_info)


async def with_renewal_info(judged: Judged, fetcher: RenewalInfoFetcher) -> Judged:
    """The endpoint judged again, at the same moment, once the renewalInfo its leaves are
    due for has been fetched (bounded; a failure leaves the judgement as it was)."""
    leaves = [a.leaf for a in judged.assessments if a.leaf is not None]
    if not await fetcher.refresh(judged.endpoint, leaves):
        return judged
    return replace(judged, assessments=tuple(judged.rejudge(a.observation, a)
                                             for a in judged.assessments))


async def sweep(endpoints: Iterable[Endpoint], source: Source, trust: TrustStores | None = None,
                clock: Clock = utcnow, refusals: RefusalChecks | None = None,
                progress: Progress | None = None,
                renewal: RenewalInfoFetcher | None = None) -> list[Assessment]:
    """Every endpoint observed concurrently (the source bounds its own connections).
    Without `refusals`, revocation is checked with the shipped policy data and a
    fetcher of this sweep's own; with `renewal`, the leaves' renewalInfo is fetched for
    those that name a directory; `progress`, if given, hears of each endpoint as it is
    done (a progress bar)."""
    stores = trust or TrustStores()
    own = refusals is None
    checks = refusals or RefusalChecks(shipped_policy())

    async def judge(endpoint: Endpoint) -> Judged:
        judged = await judge_endpoint(endpoint, source, stores, clock, checks,
                                      renewal.known if renewal else None)
        if renewal is not None:
            judged = await with_renewal_info(judged, renewal)
        if progress is not None:
            progress(judged)
        return judged

    try:
        judged = await asyncio.gather(*(judge(e) for e in endpoints))
    finally:
        if own:
            await checks.aclose()
    return [a for one in judged for a in one.assessments]
