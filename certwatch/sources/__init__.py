"""Where observations come from: the sources of certificates.

Every source has one signature, :class:`Source`: given an endpoint, it says what it
saw, as :class:`~certwatch.core.observation.Observation` values, and never raises.
The sources are looked up by name in one map (:mod:`~certwatch.sources.registry`, as
blackbox_exporter's probers are), so a new source is one module:

- ``tls`` (:mod:`~certwatch.sources.wire`): a TLS handshake, directly or after STARTTLS;
- ``file`` (:mod:`~certwatch.sources.files`): PEM, DER and PKCS#12 files, directories, globs;
- ``kubernetes`` (:mod:`~certwatch.sources.kubernetes`): Secrets and ConfigMaps through
  the API, and the TLS endpoints its Ingresses and Gateways name.

A source that notices changes by itself (a file rewritten, a Secret updated) is also
:class:`Following`: it is told which endpoints to follow and whom to tell.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Protocol, Sequence, runtime_checkable

from certwatch.core.inventory import Endpoint
from certwatch.core.observation import Observation

__all__ = ["Following", "Listener", "Source", "SourceHealth"]


class Source(Protocol):
    async def observe(self, endpoint: Endpoint) -> tuple[Observation, ...]:
        """What the endpoint presents now, one observation per target; never raises."""
        ...


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """Whether a source could read what it reads (the Kubernetes API answered, every file
    could be read), and when it last could."""

    up: bool
    last_success: datetime | None
    detail: str = ""  # why it is down, for the log and the page


@dataclass(frozen=True, slots=True)
class Listener:
    """Whom a following source tells: `changed(name)` when an entry's certificates
    changed (it is probed at once), `discovered()` when the endpoints it discovers
    changed (the daemon asks :meth:`Following.discovered` again)."""

    changed: Callable[[str], None]
    discovered: Callable[[], None] = lambda: None


@runtime_checkable
class Following(Protocol):
    def follow(self, endpoints: Sequence[Endpoint], listener: Listener) -> None:
        """(Re)sets the endpoints of this source to follow; called again on every reload.
        Needs a running event loop; never raises."""
        ...

    def health(self) -> SourceHealth: ...

    def discovered(self) -> tuple[Endpoint, ...]:
        """The endpoints this source found (Ingress hosts, say), for the wire to probe."""
        ...

    async def close(self) -> None: ...
