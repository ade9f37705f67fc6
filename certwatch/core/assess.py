"""Assessment: an Observation judged at `now` against the endpoint's thresholds.

Pure: no I/O, the clock and the trust store are arguments. The state comes from the
threshold policy (:func:`certwatch.core.policy.judge_expiry`) on the certificate that
expires first on the path clients build, made worse by what clients would refuse.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Mapping

from certwatch.core.atrest import verify_at_rest
from certwatch.core.findings import Refusals
from certwatch.core.observation import Observation, Target
from certwatch.core.policy import Expiry, judge_expiry
from certwatch.core.renewal import Renewal, RenewalInfo, judge_renewal
from certwatch.core.sharing import shared
from certwatch.core.timestamps import SECONDS_PER_DAY, minute_utc
from certwatch.core.verify import (
    WEB_PKI,
    TrustStore,
    Verification,
    VerificationKey,
    VerifyPolicy,
    verification_key,
    verify_chain,
)
from certwatch.core.vocabulary import ErrorKind, Problem, Reason, SourceKind, State
from certwatch.core.x509 import CertInfo, parse_chain

__all__ = ["Assessment", "assess"]


@dataclass(frozen=True, slots=True)
class Assessment:
    target: Target
    observation: Observation
    checked_at: datetime
    state: State
    reasons: tuple[str, ...]  # Reason, Problem and ErrorKind values
    summary: str  # one sentence for a person
    chain: tuple[CertInfo, ...] = ()
    verification: Verification | None = None
    earliest: CertInfo | None = None  # the certificate of the chain that expires first
    expiry: Expiry | None = None  # the threshold policy's judgement of `earliest`
    refusals: Refusals | None = None  # revocation and root-program lints, when judged
    renewal: Renewal | None = None  # whether the leaf should have been replaced by now
    # What `chain` and `verification` depend on: while it admits the next observation,
    # that observation's chain is not parsed nor verified again (see assess's `previous`).
    verification_key: VerificationKey | None = None

    @property
    def leaf(self) -> CertInfo | None:
        return self.chain[0] if self.chain and self.chain[0].position == 0 else None

    @property
    def days_left(self) -> float | None:
        if self.earliest is None:
            return None
        return (self.earliest.not_after - self.checked_at).total_seconds() / SECONDS_PER_DAY

    @property
    def rejections(self) -> tuple[Problem, ...]:
        """Why clients refuse the certificate today (time aside), when the endpoint
        asks for verification; empty otherwise."""
        if self.verification is None or not self.target.endpoint.verify:
            return ()
        return self.verification.rejections


def assess(observation: Observation, now: datetime, trust: TrustStore,
           renewal_info: Mapping[str, RenewalInfo] | None = None,
           previous: Assessment | None = None, policy: VerifyPolicy = WEB_PKI) -> Assessment:
    """Judges one observation. Never raises for any input the probe can produce.

    `renewal_info` holds what CAs said of leaves (RFC 9773), by SHA-256 fingerprint.
    `previous`, the target's last assessment, lends its parsed chain and verification
    when its verification key admits this observation (the same chain, trust store,
    name and policy, and no validity boundary crossed since): the result is the same
    as without it, for less work."""
    target = observation.target
    endpoint = target.endpoint
    key = previous.verification_key if previous is not None else None
    if key is not None and endpoint.source == SourceKind.TLS and key.admits(
            observation.chain, trust, endpoint.verify_name, policy, now):
        assert previous is not None and previous.verification is not None
        observation = _kept(observation, key.ders)
        return _judged(observation, now, previous.chain, (), previous.verification, key,
                       renewal_info)
    parsed = parse_chain(observation.chain)
    observation = _kept(observation, parsed.ders)
    chain, parse_problems = parsed.infos, parsed.problems
    leaf_readable = bool(chain) and chain[0].position == 0

    if not leaf_readable:
        reason: str
        if observation.error is not None:
            reason, summary = observation.error.kind, str(observation.error)
        elif parse_problems:
            reason, summary = Reason.MALFORMED_CERTIFICATE, parse_problems[0]
        else:
            reason, summary = ErrorKind.NO_CERTIFICATE, "the server presented no certificate"
        return Assessment(target, observation, now, State.ERROR, (reason,), summary, chain)

    key = None
    if endpoint.source == SourceKind.TLS:
        verification = verify_chain(parsed, trust, endpoint.verify_name, now, policy)
        if not parse_problems:
            key = verification_key(parsed.ders, chain, trust, endpoint.verify_name, policy, now)
    else:  # at rest: the chain and the dates, no host name
        verification = verify_at_rest(parsed, trust, now)
    return _judged(observation, now, chain, parse_problems, verification, key, renewal_info)


def _kept(observation: Observation, ders: tuple[bytes, ...]) -> Observation:
    """The observation as it is kept: with `ders`, the shared copies of its certificates
    (see parse_chain), not this probe's own, and its TLS version and cipher as the one
    string each that every target shares (a few dozen names; one copy a target was
    ~130 bytes)."""
    version, cipher = observation.tls_version, observation.cipher
    interned = (sys.intern(version) if version is not None else None,
                sys.intern(cipher) if cipher is not None else None)
    if interned[0] is version and interned[1] is cipher and all(
            kept is given for kept, given in zip(ders, observation.chain)):
        return observation
    return replace(observation, chain=ders, tls_version=interned[0], cipher=interned[1])


def _judged(observation: Observation, now: datetime, chain: tuple[CertInfo, ...],
            parse_problems: tuple[str, ...], verification: Verification,
            key: VerificationKey | None,
            renewal_info: Mapping[str, RenewalInfo] | None) -> Assessment:
    """The judgement of a readable chain, once it is parsed and verified."""
    target = observation.target
    endpoint = target.endpoint
    # What clients rely on is the path they build: a server may send certificates that
    # none needs (a whole CA bundle, an old expired root), which must not set the state.
    relied_on = tuple(c for c in verification.path if c.position >= 0) or chain
    earliest = min(relied_on, key=lambda c: c.not_after)
    expiry = judge_expiry(earliest, now, endpoint.thresholds)
    state = expiry.state
    reasons: list[str] = []
    if expiry.expired:
        reasons.append(Reason.EXPIRED)
    elif expiry.alerting:
        reasons.append(Reason.EXPIRING)
    leaf = chain[0]
    info = renewal_info.get(leaf.fingerprint_sha256) if renewal_info else None
    renewal = judge_renewal(leaf, now, info, endpoint.renewal_due_fraction)
    if renewal.overdue:
        # Whatever the days left: a renewal that silently stopped is caught early.
        reasons.append(Reason.RENEWAL_OVERDUE)
        state = state.worse(State.WARNING)
    if renewal.window_moved_earlier:
        reasons.append(Reason.RENEWAL_WINDOW_MOVED)

    rejected = verification.rejections if endpoint.verify else ()
    if rejected:
        # Clients reject this certificate today: that is an outage, whatever the expiry.
        reasons.extend(rejected)
        state = state.worse(State.CRITICAL)
    if parse_problems:
        reasons.append(Reason.MALFORMED_CERTIFICATE)
    if observation.error is not None:
        # The certificate was read, but the handshake did not complete (for example a
        # server that demands a client certificate we do not have).
        reasons.append(Reason.HANDSHAKE_INCOMPLETE)
    key_check = observation.key_check
    if key_check is not None and key_check.problem is not None:
        # A key that is not the certificate's: the service fails when it loads them.
        reasons.append(key_check.problem)
        state = state.worse(State.CRITICAL)

    days = expiry.days_left
    which = "leaf" if earliest.position == 0 else f"certificate {earliest.position} of the chain"
    when = minute_utc(earliest.not_after)
    summary = (f"{which} expired {-days:.1f} days ago ({when})" if days <= 0
               else f"{which} expires in {days:.1f} days ({when})")
    if renewal.overdue:
        summary += f"; renewal overdue since {minute_utc(renewal.due_at)}"
    if rejected:
        summary += f"; clients reject it: {verification.detail}"
    if observation.error is not None:
        summary += f"; {observation.error}"
    if key_check is not None and key_check.problem is not None:
        summary += f"; {key_check.detail}"
    return Assessment(target, observation, now, state, tuple(reasons), shared(summary), chain,
                      verification, earliest, expiry, renewal=renewal, verification_key=key)
