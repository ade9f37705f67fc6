"""The exposition families of revocation and the root-program lints (entries of
:data:`certwatch.render.exposition.FAMILIES`). Every label is from a bounded vocabulary:
status, method and reason of the revocation status, lint code and severity."""

from __future__ import annotations

from typing import Callable, Sequence

from certwatch.core.findings import Refusals
from certwatch.core.revocation import Revocation, RevocationStatus, Unknown
from certwatch.core.status import TargetStatus

__all__ = ["refusal_families", "revocation_worth_a_look"]

Samples = Callable[[str, Sequence[TargetStatus], Sequence[str]], list[str]]
Value = Callable[[TargetStatus], "float | None"]


def _refusals(status: TargetStatus) -> Refusals | None:
    a = status.assessment
    return a.refusals if a.leaf is not None else None


def _revocation(status: TargetStatus) -> Revocation | None:
    refusals = _refusals(status)
    return refusals.revocation if refusals is not None else None


def _revoked(status: TargetStatus) -> float | None:
    revocation = _revocation(status)
    if revocation is None or revocation.status is RevocationStatus.UNKNOWN:
        return None
    return 1.0 if revocation.status is RevocationStatus.REVOKED else 0.0


def revocation_worth_a_look(status: TargetStatus) -> bool:
    """Whether the revocation status says something: revoked, or unknown for a reason
    other than that there was nothing to check."""
    a = status.assessment  # the leaf is looked at last: most statuses say nothing
    revocation = a.refusals.revocation if a.refusals is not None else None
    return (revocation is not None and revocation.status is not RevocationStatus.GOOD
            and revocation.reason is not Unknown.NOT_CHECKED and a.leaf is not None)


def _status(family: str, statuses: Sequence[TargetStatus], labels: Sequence[str]) -> list[str]:
    return [f'{family}{{{label},status="{revocation.status.value}",'
            f'method="{revocation.source.value if revocation.source else ""}",'
            f'reason="{revocation.reason.value if revocation.reason else ""}"}} 1.0\n'
            for status, label in zip(statuses, labels)
            if (revocation := _revocation(status)) is not None]


def _checked(status: TargetStatus) -> float | None:
    revocation = _revocation(status)
    return revocation.checked_at.timestamp() if revocation and revocation.checked_at else None


def _must_staple(status: TargetStatus) -> float | None:
    revocation = _revocation(status)
    return None if revocation is None else float(revocation.must_staple_missing)


def _sct_count(status: TargetStatus) -> float | None:
    refusals = _refusals(status)
    return None if refusals is None or refusals.sct_count is None else float(refusals.sct_count)


def _lints(family: str, statuses: Sequence[TargetStatus], labels: Sequence[str]) -> list[str]:
    return [f'{family}{{{label},lint="{lint.code.value}",severity="{lint.state.value}"}} 1.0\n'
            for status, label in zip(statuses, labels)  # (most have no lint: asked first)
            if (refusals := status.assessment.refusals) is not None and refusals.lints
            and status.assessment.leaf is not None for lint in refusals.lints]


def refusal_families(gauge: Callable[[Value], Samples]) -> dict[str, tuple[str, Samples]]:
    """The families, with `gauge` (the exposition's) making one-sample families."""
    return {
        "certwatch_cert_revoked": (
            "1 if a certificate of the chain is revoked (stapled OCSP, CRL or OCSP), 0 if every "
            "one checked is good; absent while the status is unknown.", gauge(_revoked)),
        "certwatch_revocation_status": (
            "The revocation status (good, revoked, unknown), the method that settled it (staple, "
            "crl, ocsp) and why it is unknown.", _status),
        "certwatch_revocation_checked_timestamp_seconds": (
            "When the evidence behind the revocation status was obtained.", gauge(_checked)),
        "certwatch_cert_must_staple_missing": (
            "1 if the leaf demands an OCSP staple (must-staple) and none valid was served.",
            gauge(_must_staple)),
        "certwatch_cert_scts": ("SCTs embedded in the leaf.", gauge(_sct_count)),
        "certwatch_cert_lint": (
            "Present for each root-program lint of a publicly trusted chain (CT policy, maximum "
            "validity, distrusted CA), with its severity.", _lints),
    }
