"""Refusals that are not about dates: revocation and root-program policy, added to an
assessment. Pure: the evidence fetched so far and the policy data are arguments.

An :class:`~certwatch.core.assess.Assessment` judges expiry and verification; this
module judges what else makes clients refuse a certificate, and returns the assessment
with :class:`Refusals` attached and its state and reasons amended:

- revocation (:mod:`certwatch.core.revocation`): `revoked` makes the target critical;
  a leaf that demands a staple (must-staple) served without one is critical too
  (Firefox refuses it); `unknown` leaves the state as it was (soft-fail);
- lints, for publicly trusted chains only (the path ends at one of the operating
  system's roots, not at a private `ca_file` root): Chrome's CT policy
  (:mod:`certwatch.core.ctpolicy`), the maximum validity for the issuance date and
  distrusted CAs (:mod:`certwatch.core.rootprograms`). Each is a warning unless clients
  already refuse the certificate.

The expiry judgement is never touched: the days left, the earliest expiry and its
threshold state come from the assessment as it was.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from cryptography import x509

from certwatch.core.assess import Assessment
from certwatch.core.ctpolicy import SCT, CTLogList, CTVerdict, embedded_scts, judge_ct
from certwatch.core.findings import Lint, LintCode, Refusals
from certwatch.core.inventory import RevocationSettings
from certwatch.core.revocation import (
    CERTIFICATE_MEMO,
    CRLIndex,
    FetchFailure,
    Revocation,
    RevocationCheck,
    RevocationSource,
    RevocationStatus,
    Unknown,
    check_crl,
    check_ocsp,
    combine,
    crl_urls,
    failed,
    must_staple,
    ocsp_request,
    ocsp_urls,
)
from certwatch.core.sharing import shared
from certwatch.core.rootprograms import (
    DistrustRule,
    distrust_findings,
    maximum_validity,
    validity_of,
)
from certwatch.core.verify import TrustStore
from certwatch.core.timestamps import rfc3339
from certwatch.core.vocabulary import AlertKind, Reason, Severity, State
from certwatch.core.x509 import sha256_hex

__all__ = ["Evidence", "PathCertificates", "Policy", "Wanted", "alert_conditions",
           "alert_details", "judge_refusals", "path_certificates", "revocation_summary", "wanted"]


@dataclass(frozen=True, slots=True)
class Policy:
    """The data the lints judge against: the shipped tables plus the inventory's."""

    logs: CTLogList = CTLogList()
    distrust: tuple[DistrustRule, ...] = ()


class Evidence(Protocol):
    """What the shell has fetched so far (read only here)."""

    def crl(self, url: str) -> CRLIndex | FetchFailure | None: ...  # None: not fetched yet
    def ocsp(self, url: str, request: bytes) -> tuple[bytes, datetime] | FetchFailure | None: ...


@dataclass(frozen=True, slots=True)
class Wanted:
    """What the shell should fetch for one target."""

    crls: tuple[str, ...] = ()
    ocsp: tuple[tuple[str, bytes], ...] = ()  # (responder URL, DER request)


@functools.lru_cache(maxsize=16)
def _roots_by_fingerprint(trust: TrustStore) -> dict[str, x509.Certificate]:
    return {sha256_hex(root): root for root in trust.roots}


class Presented:
    """A presented certificate, loaded once, and what the checks read of it every probe,
    each read once. (Those look-ups are memoised in certwatch.core.revocation and
    ctpolicy too, but keyed by the x509 object, whose hash digests the whole DER at every
    look-up, ~1.5 us; this is found by its DER bytes, whose hash Python keeps.)"""

    def __init__(self, cert: x509.Certificate) -> None:
        self.cert = cert

    @functools.cached_property
    def crl_urls(self) -> tuple[str, ...]:
        return crl_urls(self.cert)

    @functools.cached_property
    def ocsp_urls(self) -> tuple[str, ...]:
        return ocsp_urls(self.cert)

    @functools.cached_property
    def must_staple(self) -> bool:
        return must_staple(self.cert)

    @functools.cached_property
    def scts(self) -> tuple[SCT, ...]:
        return embedded_scts(self.cert)


@functools.lru_cache(maxsize=CERTIFICATE_MEMO)  # see certwatch.core.revocation
def _presented(der: bytes) -> Presented:
    """A certificate loaded once: a CA's for every target it issued for, a leaf for the
    look-ups before and after the fetches."""
    return Presented(x509.load_der_x509_certificate(der))


PathCertificates = list[tuple[int, Presented, x509.Certificate | None]]


def path_certificates(a: Assessment, trust: TrustStore) -> PathCertificates:
    """(position, certificate, issuer) for each presented certificate on the path clients
    build, leaf first; the issuer None when it is not at hand. (Loaded, not parsed: the
    assessment has parsed them already.) Both `wanted` and `judge_refusals` need them: a
    caller that runs both on one assessment computes them once and hands them to each."""
    ders = a.observation.chain

    def load(position: int) -> Presented | None:
        try:
            return _presented(ders[position])
        except (ValueError, IndexError):
            return None

    path = a.verification.path if a.verification is not None else ()
    if not path:  # no trusted path: the leaf alone, with an issuer from the chain if any
        leaf = load(0)
        if leaf is None:
            return []
        issuer = next((cert.cert for info in a.chain[1:] if (cert := load(info.position))
                       is not None and cert.cert.subject == leaf.cert.issuer), None)
        return [(0, leaf, issuer)]
    roots = _roots_by_fingerprint(trust)
    presented = [load(info.position) if info.position >= 0 else None for info in path]
    # Each one's issuer is the next on the path: presented, or a root of the store.
    issuers = [roots.get(info.fingerprint_sha256) if info.position < 0
               else loaded.cert if loaded is not None else None
               for info, loaded in zip(path[1:], presented[1:])] + [None]
    result = []
    for info, loaded, issuer in zip(path, presented, issuers):
        if info.position < 0 or loaded is None or info.self_issued:
            continue
        result.append((info.position, loaded, issuer))
    return result


def wanted(a: Assessment, trust: TrustStore, settings: RevocationSettings, *,
           certificates: PathCertificates | None = None) -> Wanted:
    """The CRLs and OCSP responses the target's revocation checks need; `certificates`,
    if given, are the assessment's :func:`path_certificates` under `trust`."""
    if a.leaf is None or not (settings.crl or settings.ocsp):
        return Wanted()
    crls: list[str] = []
    requests: list[tuple[str, bytes]] = []
    if certificates is None:
        certificates = path_certificates(a, trust)
    for position, presented, issuer in certificates:
        if settings.crl:
            crls.extend(presented.crl_urls)
        if settings.ocsp and position == 0 and issuer is not None:
            request = ocsp_request(presented.cert, issuer)
            requests.extend((url, request) for url in presented.ocsp_urls)
    return Wanted(tuple(dict.fromkeys(crls)), tuple(requests))


def _revocation(a: Assessment, certificates: PathCertificates, settings: RevocationSettings,
                evidence: Evidence, now: datetime) -> Revocation:
    checks: list[RevocationCheck] = []
    leaf_demands_staple = False
    for position, presented, issuer in certificates:
        cert = presented.cert
        staple = a.observation.ocsp_staple
        if position == 0 and settings.staple and staple:
            checks.append(check_ocsp(staple, cert, issuer, position=0,
                                     source=RevocationSource.STAPLE, now=now,
                                     obtained_at=a.observation.started_at))
        if position == 0 and settings.staple and staple is not None:  # asked for
            leaf_demands_staple = presented.must_staple
        if settings.ocsp and position == 0 and issuer is not None:
            request = ocsp_request(cert, issuer)
            for url in presented.ocsp_urls:
                got = evidence.ocsp(url, request)
                checks.append(_pending(url, RevocationSource.OCSP, position, now) if got is None
                              else failed(got, RevocationSource.OCSP, position)
                              if isinstance(got, FetchFailure)
                              else check_ocsp(got[0], cert, issuer, position=0,
                                              source=RevocationSource.OCSP, now=now,
                                              obtained_at=got[1], url=url))
        for url in presented.crl_urls if settings.crl else ():
            crl = evidence.crl(url)
            checks.append(_pending(url, RevocationSource.CRL, position, now) if crl is None
                          else failed(crl, RevocationSource.CRL, position)
                          if isinstance(crl, FetchFailure)
                          else check_crl(crl, cert, issuer, position=position, now=now))
    stapled_good = any(c.source is RevocationSource.STAPLE and c.status is not
                       RevocationStatus.UNKNOWN for c in checks)
    return combine(checks, must_staple_missing=leaf_demands_staple and not stapled_good)


def _pending(url: str, source: RevocationSource, position: int, now: datetime) -> RevocationCheck:
    return RevocationCheck(source, position, RevocationStatus.UNKNOWN, now, Unknown.PENDING,
                           f"{url}: not fetched yet (still under way)", url)


def _lints(a: Assessment, ct: CTVerdict, policy: Policy, now: datetime) -> list[Lint]:
    leaf = a.leaf
    assert leaf is not None
    lints = []
    if not ct.compliant:
        lints.append(Lint(LintCode.CT_NOT_COMPLIANT, State.WARNING,
                          f"not CT compliant as Chrome requires: {ct.detail}"))
    rule = maximum_validity(leaf)
    days = validity_of(leaf).total_seconds() / 86400
    if rule is not None and days > rule.days:
        lints.append(Lint(LintCode.VALIDITY_TOO_LONG,
                          State.CRITICAL if rule.refused else State.WARNING,
                          f"valid for {days:.0f} days, over the {rule.days} days allowed for "
                          f"certificates issued from {rule.since:%Y-%m-%d} ({rule.source})"))
    path = frozenset(c.fingerprint_sha256 for c in a.verification.path) if a.verification else \
        frozenset()
    for finding in distrust_findings(policy.distrust, path, leaf, ct.earliest, now):
        lints.append(Lint(LintCode.DISTRUSTED_CA if finding.distrusted
                          else LintCode.DISTRUSTED_AT_RENEWAL,
                          State.CRITICAL if finding.distrusted else State.WARNING, finding.detail))
    return lints


def judge_refusals(a: Assessment, trust: TrustStore, settings: RevocationSettings,
                   evidence: Evidence, policy: Policy, now: datetime, *,
                   public_roots: frozenset[str],
                   certificates: PathCertificates | None = None) -> Assessment:
    """The assessment with revocation and the root-program lints judged and applied.
    `public_roots` are the SHA-256 fingerprints of the publicly trusted roots: a chain
    that ends at another root is a private CA's, and gets no lints. `certificates`, if
    given, are the assessment's :func:`path_certificates` under `trust`."""
    if a.leaf is None:
        return a
    if certificates is None:
        certificates = path_certificates(a, trust)
    revocation = _revocation(a, certificates, settings, evidence, now)
    leaf = certificates[0][1] if certificates and certificates[0][0] == 0 else None
    scts = leaf.scts if leaf is not None else ()
    path = a.verification.path if a.verification is not None else ()
    public = bool(path) and path[-1].fingerprint_sha256 in public_roots
    operators: tuple[str, ...] = ()
    lints: tuple[Lint, ...] = ()
    if public:  # a private CA's chain is not held to Chrome's CT policy: no verdict needed
        ct = judge_ct(scts, validity_of(a.leaf), policy.logs)
        operators, lints = ct.operators, tuple(_lints(a, ct, policy, now))
    refusals = shared(Refusals(revocation, public, len(scts), operators, lints))

    state, reasons, summary = a.state, list(a.reasons), a.summary
    if revocation.status is RevocationStatus.REVOKED:
        reasons.append(Reason.REVOKED)
        state = state.worse(State.CRITICAL)
        summary += f"; {revocation.detail}"
    if revocation.must_staple_missing:
        reasons.append(Reason.MUST_STAPLE_MISSING)
        state = state.worse(State.CRITICAL)
        summary += ("; the certificate demands an OCSP staple (must-staple) and no valid one was "
                    "served")
    for lint in lints:
        reasons.append(lint.code)
        state = state.worse(lint.state)
    if any(lint.state is State.CRITICAL for lint in lints):
        summary += "; " + "; ".join(lint.detail for lint in lints if lint.state is State.CRITICAL)
    return dataclasses.replace(a, state=state, reasons=tuple(reasons), summary=shared(summary),
                               refusals=refusals)


# --- alerts -------------------------------------------------------------------------------


def alert_conditions(a: Assessment, name: str) -> dict[AlertKind, tuple[Severity, str]]:
    """The alert kinds the refusals call for: `revocation` (critical: revoked, or a
    must-staple leaf without its staple) and `policy` (the worst lint's severity)."""
    found: dict[AlertKind, tuple[Severity, str]] = {}
    refusals = a.refusals
    if refusals is None or a.leaf is None:
        return found
    revocation = refusals.revocation
    if revocation is not None and revocation.status is RevocationStatus.REVOKED:
        found[AlertKind.REVOCATION] = (Severity.CRITICAL, f"{name}: {revocation.detail}")
    elif revocation is not None and revocation.must_staple_missing:
        found[AlertKind.REVOCATION] = (Severity.CRITICAL, f"{name}: the certificate demands an "
                                                          "OCSP staple and none valid was served")
    if refusals.lints:
        worst = max(refusals.lints, key=lambda lint: lint.state.rank)
        severity = Severity.CRITICAL if worst.state is State.CRITICAL else Severity.WARNING
        found[AlertKind.POLICY] = (severity, f"{name}: {worst.detail}")
    return found


def revocation_summary(a: Assessment) -> dict[str, Any]:
    """The revocation status, its source and when it was checked, as JSON values (None
    where nothing was judged): the part notifications, check JSON and the API share."""
    revocation = a.refusals.revocation if a.refusals is not None else None
    return {
        "revocation_status": revocation.status.value if revocation else None,
        "revocation_source": revocation.source.value if revocation and revocation.source else None,
        "revocation_checked_at": rfc3339(revocation.checked_at) if revocation else None,
    }


def alert_details(a: Assessment) -> dict[str, Any]:
    """What a notification says of the refusals."""
    refusals = a.refusals
    return {
        **revocation_summary(a),
        "sct_count": refusals.sct_count if refusals is not None else None,
        "lints": [lint.code.value for lint in refusals.lints] if refusals is not None else [],
    }
