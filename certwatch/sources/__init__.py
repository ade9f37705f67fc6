"""Where observations come from: the sources of certificates.

Every source has one signature, :class:`Source`: given an endpoint, it says what it
saw, as :class:`~certwatch.core.observation.Observation` values, and never raises.
The wire (:mod:`~certwatch.sources.wire`: a TLS handshake, directly or after
STARTTLS) is the source today; certificates in files and in Kubernetes Secrets enter
the same flow as sources of their own.
"""

from __future__ import annotations

from typing import Protocol

from certwatch.core.inventory import Endpoint
from certwatch.core.observation import Observation

__all__ = ["Source"]


class Source(Protocol):
    async def observe(self, endpoint: Endpoint) -> tuple[Observation, ...]:
        """What the endpoint presents now, one observation per target; never raises."""
        ...
