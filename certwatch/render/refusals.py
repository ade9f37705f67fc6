"""Revocation and root-program lints as the JSON shape and the table show them.

The fields join `check --format json` and the API (the status page renders from the
API's JSON): the revocation status, its source and when it was checked, each check made
(staple, CRL, OCSP, per certificate), whether the chain is publicly trusted, the SCT
count and the log operators, and the lints. Every one is null (or empty) for a target
whose certificate was not read or not judged.
"""

from __future__ import annotations

from typing import Any

from certwatch.core.assess import Assessment
from certwatch.core.refusals import revocation_summary
from certwatch.core.revocation import RevocationCheck
from certwatch.core.timestamps import rfc3339

__all__ = ["refusal_fields", "revocation_cell", "sct_cell"]


def _check(check: RevocationCheck) -> dict[str, Any]:
    return {
        "source": check.source.value,
        "position": check.position,
        "status": check.status.value,
        "checked_at": rfc3339(check.checked_at),
        "reason": check.reason.value if check.reason else None,
        "detail": check.detail,
        "url": check.url,
        "revoked_at": rfc3339(check.revoked_at),
        "revocation_reason": check.revocation_reason,
        "next_update": rfc3339(check.next_update),
    }


def refusal_fields(a: Assessment) -> dict[str, Any]:
    refusals = a.refusals
    revocation = refusals.revocation if refusals is not None else None
    return {
        **revocation_summary(a),
        "revocation_reason": revocation.reason.value if revocation and revocation.reason else None,
        "revocation_detail": revocation.detail if revocation else None,
        "revocation_checks": [_check(c) for c in revocation.checks] if revocation else [],
        "must_staple_missing": revocation.must_staple_missing if revocation else None,
        "publicly_trusted": refusals.public if refusals is not None else None,
        "sct_count": refusals.sct_count if refusals is not None else None,
        "sct_operators": list(refusals.sct_operators) if refusals is not None else [],
        "lints": [{"code": lint.code.value, "severity": lint.state.value, "detail": lint.detail}
                  for lint in refusals.lints] if refusals is not None else [],
    }


def revocation_cell(a: Assessment) -> str:
    """The table's REVOCATION column: "good (crl)", "revoked (staple)", "unknown"."""
    revocation = a.refusals.revocation if a.refusals is not None else None
    if revocation is None:
        return "-"
    return f"{revocation.status.value} ({revocation.source.value})" if revocation.source \
        else revocation.status.value


def sct_cell(a: Assessment) -> str:
    count = a.refusals.sct_count if a.refusals is not None else None
    return "-" if count is None else str(count)
