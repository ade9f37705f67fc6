"""What a source of certificates saw of one target: pure data, no judgement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from certwatch.core.inventory import Endpoint
from certwatch.core.vocabulary import ErrorKind, Phase

__all__ = ["Observation", "ProbeError", "Target"]


@dataclass(frozen=True, slots=True)
class Target:
    """One (endpoint, address) pair: the unit that is probed, assessed and reported."""

    endpoint: Endpoint
    address: str | None  # None when the name did not resolve

    @property
    def key(self) -> str:
        """Stable identity: the same endpoint and address give the same key across restarts."""
        return f"{self.endpoint.name}@{self.address or '-'}"


@dataclass(frozen=True, slots=True)
class Observation:
    """What the wire said about one target."""

    target: Target
    started_at: datetime
    duration_seconds: float
    chain: tuple[bytes, ...] = ()  # DER, as presented, leaf first
    tls_version: str | None = None
    cipher: str | None = None
    error: ProbeError | None = None
    # The stapled OCSP response (DER) when one was asked for: b"" when the server sent
    # none; None when none was asked for (or the handshake did not get that far).
    ocsp_staple: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class ProbeError:
    """Why a probe failed (the kind, for machines), where, and in words (the detail)."""

    kind: ErrorKind
    phase: Phase
    detail: str

    def __str__(self) -> str:
        where = "" if str(self.kind) == str(self.phase) else f" ({self.phase})"
        return f"{self.kind}{where}: {self.detail}"
