"""What was judged beyond expiry, as values: the root-program lints and a target's
refusals. Below both :mod:`~certwatch.core.assess`, whose assessments carry them, and
:mod:`~certwatch.core.refusals`, which judges them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from certwatch.core.revocation import Revocation
from certwatch.core.vocabulary import State

__all__ = ["Lint", "LintCode", "Refusals"]


class LintCode(StrEnum):
    """Root-program lints. Bounded: each is a reason and a metric label."""

    CT_NOT_COMPLIANT = "ct_not_compliant"
    VALIDITY_TOO_LONG = "validity_too_long"
    DISTRUSTED_CA = "distrusted_ca"
    DISTRUSTED_AT_RENEWAL = "distrusted_at_renewal"


@dataclass(frozen=True, slots=True)
class Lint:
    code: LintCode
    state: State  # WARNING, or CRITICAL when clients already refuse the certificate
    detail: str


@dataclass(frozen=True, slots=True)
class Refusals:
    """What was judged beyond expiry, for one target."""

    revocation: Revocation | None  # None when the target had no readable leaf
    public: bool  # the chain verified to a publicly trusted root
    sct_count: int | None  # SCTs embedded in the leaf
    sct_operators: tuple[str, ...]
    lints: tuple[Lint, ...]
