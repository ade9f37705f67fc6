"""Assessment: an Observation judged at `now` against the endpoint's thresholds.

Pure: no I/O, the clock and the trust store are arguments. The threshold policy is
one small function, :func:`expiry_state`, so other policies (a fraction of the
lifetime, ACME renewal info) can take its place without touching the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from certwatch.certs import CertInfo, TrustStore, Verification, parse_chain, verify_chain
from certwatch.probe import Observation, Target

__all__ = ["Assessment", "State", "assess", "expiry_state"]

SECONDS_PER_DAY = 86400.0


class State(StrEnum):
    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"
    EXPIRED = "expired"
    ERROR = "error"  # no certificate could be fetched

    @property
    def exit_code(self) -> int:
        """The monitoring-plugin convention: 0 ok, 1 warning, 2 critical, 3 unknown."""
        return {"ok": 0, "warning": 1, "critical": 2, "expired": 2, "error": 3}[self.value]

    @property
    def rank(self) -> int:
        """Badness for sorting and aggregation; a failing probe outranks a warning."""
        return {"ok": 0, "warning": 1, "error": 2, "critical": 3, "expired": 4}[self.value]


def expiry_state(not_after: datetime, now: datetime, *, warn_days: float,
                 critical_days: float) -> State:
    """The threshold policy: days left against the warn and critical thresholds."""
    days_left = (not_after - now).total_seconds() / SECONDS_PER_DAY
    if days_left <= 0:
        return State.EXPIRED
    if days_left < critical_days:
        return State.CRITICAL
    if days_left < warn_days:
        return State.WARNING
    return State.OK


@dataclass(frozen=True, slots=True)
class Assessment:
    target: Target
    observation: Observation
    checked_at: datetime
    state: State
    reasons: tuple[str, ...]  # codes: expired, expiring, untrusted, dns, timeout, ...
    summary: str  # one sentence for a person
    chain: tuple[CertInfo, ...] = ()
    verification: Verification | None = None
    earliest: CertInfo | None = None  # the certificate of the chain that expires first

    @property
    def leaf(self) -> CertInfo | None:
        return self.chain[0] if self.chain and self.chain[0].position == 0 else None

    @property
    def days_left(self) -> float | None:
        if self.earliest is None:
            return None
        return (self.earliest.not_after - self.checked_at).total_seconds() / SECONDS_PER_DAY


def _worse(a: State, b: State) -> State:
    return a if a.rank >= b.rank else b


def assess(observation: Observation, now: datetime, trust: TrustStore) -> Assessment:
    """Judges one observation. Never raises for any input the probe can produce."""
    target = observation.target
    endpoint = target.endpoint
    parsed = parse_chain(observation.chain)
    if any(kept is not given for kept, given in zip(parsed.ders, observation.chain)):
        # Keep the shared copies of the CA certificates, not this probe's own.
        observation = replace(observation, chain=parsed.ders)
    chain, parse_problems = parsed.infos, parsed.problems
    leaf_readable = bool(chain) and chain[0].position == 0

    if not leaf_readable:
        if observation.error is not None:
            reason, summary = observation.error.kind, str(observation.error)
        elif parse_problems:
            reason, summary = "malformed_certificate", parse_problems[0]
        else:
            reason, summary = "no_certificate", "the server presented no certificate"
        return Assessment(target, observation, now, State.ERROR, (reason,), summary, chain)

    verification = verify_chain(parsed, trust, endpoint.verify_name, now)
    # What clients rely on is the path they build: a server may send certificates that
    # none needs (a whole CA bundle, an old expired root), which must not set the state.
    relied_on = tuple(c for c in verification.path if c.position >= 0) or chain
    earliest = min(relied_on, key=lambda c: c.not_after)
    state = expiry_state(earliest.not_after, now, warn_days=endpoint.warn_days,
                         critical_days=endpoint.critical_days)
    reasons: list[str] = []
    if state is State.EXPIRED:
        reasons.append("expired")
    elif state is not State.OK:
        reasons.append("expiring")

    rejected = [p for p in verification.problems if p != "expired"]
    if endpoint.verify and rejected:
        # Clients reject this certificate today: that is an outage, whatever the expiry.
        reasons.extend(rejected)
        state = _worse(state, State.CRITICAL)
    if parse_problems:
        reasons.append("malformed_certificate")
    if observation.error is not None:
        # The certificate was read, but the handshake did not complete (for example a
        # server that demands a client certificate we do not have).
        reasons.append("handshake_incomplete")

    days = (earliest.not_after - now).total_seconds() / SECONDS_PER_DAY
    which = "leaf" if earliest.position == 0 else f"certificate {earliest.position} of the chain"
    when = earliest.not_after.strftime("%Y-%m-%d %H:%M UTC")
    summary = (f"{which} expired {-days:.1f} days ago ({when})" if days <= 0
               else f"{which} expires in {days:.1f} days ({when})")
    if endpoint.verify and rejected:
        summary += f"; clients reject it: {verification.detail}"
    if observation.error is not None:
        summary += f"; {observation.error}"
    return Assessment(target, observation, now, state, tuple(reasons), summary, chain,
                      verification, earliest)
