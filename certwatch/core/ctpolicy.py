"""Certificate Transparency: the leaf's embedded SCTs against Chrome's CT policy. Pure.

Chrome refuses a publicly trusted certificate that is not *CT compliant*. For a
certificate issued since 2022-04-15 with embedded SCTs that means (Chrome CT Policy):

1. at least one SCT from a log that is Qualified, Usable or ReadOnly now;
2. SCTs from at least N distinct logs that are Qualified, Usable, ReadOnly or Retired
   (an SCT from a Retired log counts only if the earliest SCT predates the retirement),
   N = 2 for a lifetime of at most 180 days, 3 beyond;
3. among them, SCTs from at least two distinct log operators.

certwatch reads only the SCTs embedded in the certificate: SCTs delivered in the TLS
extension or in a stapled OCSP response are not seen, so a shortfall is a warning, never
"clients refuse it". SCT signatures are not verified (that needs the precertificate).
The log list (which log ID is whose, in which state) is a value; the configuration
loads Chrome's `log_list.json` (v3 format) into it.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Mapping

from cryptography import x509

from certwatch.core.revocation import CERTIFICATE_MEMO

__all__ = ["CTLog", "CTLogList", "CTVerdict", "SCT", "embedded_scts", "judge_ct"]

COUNTED_STATES = frozenset({"qualified", "usable", "readonly", "retired"})
CURRENT_STATES = frozenset({"qualified", "usable", "readonly"})
SHORT_LIFETIME = timedelta(days=180)


@dataclass(frozen=True, slots=True)
class CTLog:
    log_id: bytes  # SHA-256 of the log's public key
    operator: str
    description: str
    state: str  # pending, qualified, usable, readonly, retired, rejected
    state_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class CTLogList:
    logs: Mapping[bytes, CTLog] = field(default_factory=dict)
    version: str = ""
    timestamp: datetime | None = None  # log_list_timestamp: how fresh the list is
    source: str = ""


@dataclass(frozen=True, slots=True)
class CTVerdict:
    """What the embedded SCTs amount to."""

    count: int  # embedded SCTs
    operators: tuple[str, ...]  # distinct operators of the logs that count, sorted
    compliant: bool
    detail: str  # why not, in words; "" when compliant
    unknown_logs: int = 0  # SCTs from logs the list does not know
    earliest: datetime | None = None  # the earliest SCT's time (root programs cut off by it)


@dataclass(frozen=True, slots=True)
class SCT:
    """One signed certificate timestamp embedded in a certificate: which log, and when."""

    log_id: bytes
    timestamp: datetime


@functools.lru_cache(maxsize=CERTIFICATE_MEMO)  # see certwatch.core.revocation
def embedded_scts(cert: x509.Certificate) -> tuple[SCT, ...]:
    """The SCTs in the certificate's SignedCertificateTimestampList extension."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = cert.extensions.get_extension_for_class(
                x509.PrecertificateSignedCertificateTimestamps).value
        return tuple(SCT(sct.log_id, _utc(sct.timestamp)) for sct in value)
    except (x509.ExtensionNotFound, ValueError):
        return ()


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def judge_ct(scts: tuple[SCT, ...], lifetime: timedelta, logs: CTLogList) -> CTVerdict:
    """Chrome's policy for embedded SCTs, over the log list as it stands."""
    earliest = min((s.timestamp for s in scts), default=None)
    if not scts:
        return CTVerdict(0, (), False, "the certificate has no embedded SCTs", 0, None)
    counted: dict[bytes, CTLog] = {}
    unknown = 0
    current = False
    for sct in scts:
        log = logs.logs.get(sct.log_id)
        if log is None:
            # A log newer than the list cannot be judged: it is given the benefit of the
            # doubt rather than a warning that only a refreshed list would take back.
            unknown += 1
            if logs.timestamp is not None and sct.timestamp > logs.timestamp:
                counted[sct.log_id] = CTLog(sct.log_id, f"unknown log {sct.log_id.hex()[:12]}",
                                            "", "usable")
                current = True
            continue
        if log.state not in COUNTED_STATES:
            continue
        if log.state == "retired" and log.state_since is not None and earliest is not None \
                and earliest >= log.state_since:
            continue
        counted[sct.log_id] = log
        current = current or log.state in CURRENT_STATES
    needed = 2 if lifetime <= SHORT_LIFETIME else 3
    operators = tuple(sorted({log.operator for log in counted.values()}))
    problems = []
    if len(counted) < needed:
        problems.append(f"SCTs from {len(counted)} qualifying log{'s' if len(counted) != 1 else ''}"
                        f" where Chrome needs {needed}")
    if len(operators) < 2:
        problems.append(f"{len(operators)} log operator{'s' if len(operators) != 1 else ''} "
                        "where Chrome needs 2")
    if counted and not current:
        problems.append("no SCT from a log that is qualified, usable or read-only now")
    if unknown:
        problems.append(f"{unknown} SCT{'s' if unknown != 1 else ''} from logs not in the log "
                        f"list{f' (version {logs.version})' if logs.version else ''}")
    compliant = len(counted) >= needed and len(operators) >= 2 and current
    return CTVerdict(len(scts), operators, compliant, "" if compliant else "; ".join(problems),
                     unknown, earliest)
