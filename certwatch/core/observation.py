"""What a source of certificates saw of one target: pure data, no judgement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from certwatch.core.inventory import Endpoint
from certwatch.core.vocabulary import ErrorKind, Phase, Reason

__all__ = ["KeyCheck", "Observation", "ProbeError", "Target"]


@dataclass(frozen=True, slots=True)
class Target:
    """One (endpoint, address) pair: the unit that is probed, assessed and reported."""

    endpoint: Endpoint
    address: str | None  # None when the name did not resolve
    # Where a certificate at rest was found: "<path>#<position>" for a file,
    # "secret/<namespace>/<name>/<key>#<position>" for Kubernetes; None on the wire.
    location: str | None = None

    @property
    def key(self) -> str:
        """Stable identity: the same endpoint and address (or location) give the same key
        across restarts. A location keeps its position, not the certificate's fingerprint,
        so a renewed certificate is the same target (its alerts resolve as renewed)."""
        if self.location is not None:
            return f"{self.endpoint.name}@{self.location}"
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
    key_check: KeyCheck | None = None  # the private key found with the certificate, if any
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


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """A private key found with a certificate (in the same file, `key_file`, a Secret's
    tls.key), compared with it. `problem` is None when it is the certificate's key."""

    where: str  # the key's file or object, for messages
    problem: Reason | None = None  # KEY_MISMATCH or KEY_UNREADABLE
    detail: str = ""
