"""The targets' Prometheus exposition text, rendered at scrape time from the latest statuses.

Rendering from the latest statuses means no labelled gauges are left behind: a target
removed from the inventory is gone from the next scrape. Expiry is exported as
timestamps (PromQL computes days left); serial, fingerprint, subject and issuer live in
`certwatch_cert_info` only, so a renewal does not churn the other series.

The per-target families are written as exposition text directly and handed out piece
by piece (a family's lines for one target), family by family, from one snapshot of the
statuses: with 10,000 targets the text is ~40 MB (20 series each, every one carrying
the target's labels), so it is never held whole. (prometheus_client's per-sample objects took seconds a scrape at that size.)
The daemon's own health metrics stay ordinary prometheus_client metrics in a private
registry (:mod:`certwatch.serving.metrics`).
"""

from __future__ import annotations

import re
from typing import Callable, Iterator, Sequence

from certwatch.core.status import TargetStatus
from certwatch.core.verify import Verification
from certwatch.core.vocabulary import State
from certwatch.render.refusal_metrics import refusal_families

__all__ = ["FAMILIES", "TargetExposition", "target_families"]


def _role(position: int, last: int, self_issued: bool) -> str:
    if position == 0:
        return "leaf"
    return "root" if position == last and self_issued else "intermediate"


# Control characters a terminal acts on (ESC, BEL, CR, BS, C1 ...), as certificate
# fields may carry them; the newline is escaped by the format itself.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _escape(value: str) -> str:
    """A label value as the exposition format wants it, its control characters written
    out (ESC as the four characters \\x1b), so `curl /metrics` in a terminal shows them
    rather than obeys them."""
    if _CONTROL.search(value):
        value = _CONTROL.sub(lambda match: repr(match.group())[1:-1], value)
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)


def _number(value: float) -> str:
    return repr(float(value))


def _target_labels(status: TargetStatus, user_labels: tuple[str, ...]) -> str:
    endpoint, address = status.target.endpoint, status.target.address
    own = dict(endpoint.labels)
    return _labels([
        ("name", endpoint.name), ("host", endpoint.host),
        ("port", str(endpoint.port) if endpoint.port else ""),
        ("address", address or ""), ("server_name", endpoint.server_name or ""),
        ("protocol", endpoint.protocol), ("source", endpoint.source),
        ("location", status.target.location or ""),
        *((label, own.get(label, "")) for label in user_labels),
    ])


# Each family's sample lines for one target ("" for none), given the start of every line:
# the family's name, "{" and the target's labels.
Samples = Callable[[TargetStatus, str], str]


def _gauge(value: Callable[[TargetStatus], float | None]) -> Samples:
    """A family with one sample per target (when `value` is not None)."""
    def samples(status: TargetStatus, head: str) -> str:
        number = value(status)
        return "" if number is None else f"{head}}} {_number(number)}\n"
    return samples


def _with_certificate(samples: Samples) -> Samples:
    """A family that only a target whose certificate was read has."""
    def guarded(status: TargetStatus, head: str) -> str:
        a = status.assessment
        return "" if a.leaf is None or a.earliest is None else samples(status, head)
    return guarded


def _error_info(status: TargetStatus, head: str) -> str:
    error = status.last_error
    if error is None:
        return ""
    return f'{head},{_labels([("kind", error.kind), ("phase", error.phase)])}}} 1.0\n'


def _target_state(status: TargetStatus, head: str) -> str:
    current = status.assessment.state
    return "".join(f'{head},state="{state.value}"}} {"1.0" if state is current else "0.0"}\n'
                   for state in State)


def _chain(status: TargetStatus, head: str, info: bool) -> str:
    a = status.assessment
    last, lines = len(a.chain) - 1, []
    for cert in a.chain:
        where = f'position="{cert.position}",role="{_role(cert.position, last, cert.self_issued)}"'
        if info:
            identity = _labels([
                ("serial", cert.serial), ("fingerprint_sha256", cert.fingerprint_sha256),
                ("subject", cert.subject), ("issuer", cert.issuer), ("key_type", cert.key_type),
                ("signature_algorithm", cert.signature_algorithm)])
            lines.append(f"{head},{where},{identity}}} 1.0\n")
        else:
            lines.append(f"{head},{where}}} {_number(cert.not_after.timestamp())}\n")
    return "".join(lines)


def _verification(value: Callable[[Verification], bool], named: bool = False) -> Samples:
    def samples(status: TargetStatus, head: str) -> str:
        verification = status.assessment.verification
        if verification is None or (named and not verification.name_checked):
            return ""
        return f"{head}}} {'1.0' if value(verification) else '0.0'}\n"
    return samples


def _key_match(status: TargetStatus) -> float | None:
    key = status.assessment.observation.key_check
    return None if key is None else (1.0 if key.problem is None else 0.0)


def _verify_problems(status: TargetStatus, head: str) -> str:
    verification = status.assessment.verification
    # verify: false means "judge expiry only": its problems are shown in the API and
    # status page, but no alert rule should see them.
    if verification is None or not status.target.endpoint.verify:
        return ""
    return "".join(f'{head},problem="{_escape(problem)}"}} 1.0\n'
                   for problem in verification.problems)


def _tls_info(status: TargetStatus, head: str) -> str:
    observation = status.assessment.observation
    if not observation.tls_version:
        return ""
    labels = _labels([("version", observation.tls_version), ("cipher", observation.cipher or "")])
    return f"{head},{labels}}} 1.0\n"


def _moment(judgement: object, field: str) -> float | None:
    """A datetime field of a judgement (an Expiry, a Renewal) as a timestamp."""
    moment = getattr(judgement, field, None) if judgement is not None else None
    return moment.timestamp() if moment is not None else None


def _window(status: TargetStatus, edge: str) -> float | None:
    renewal = status.assessment.renewal
    window = renewal.info.window if renewal and renewal.info else None
    return _moment(window, edge)


def _moved_earlier(status: TargetStatus) -> float | None:
    renewal = status.assessment.renewal
    if renewal is None or renewal.info is None or renewal.info.window is None:
        return None
    return 1.0 if renewal.window_moved_earlier else 0.0


# Family name -> (help text, its samples for one target), in the order they are written.
FAMILIES: dict[str, tuple[str, Samples]] = {
    "certwatch_probe_success": (
        "1 if the latest probe completed a TLS handshake, else 0.",
        _gauge(lambda s: 1.0 if s.probe_success else 0.0)),
    "certwatch_probe_duration_seconds": (
        "How long the latest probe took.", _gauge(lambda s: s.last_probe_duration)),
    "certwatch_probe_timestamp_seconds": (
        "When the latest probe started.", _gauge(lambda s: s.last_probe_at.timestamp())),
    "certwatch_probe_consecutive_failures": (
        "Probes failed in a row (0 after a success).", _gauge(lambda s: s.consecutive_failures)),
    "certwatch_probe_error_info": ("Why the latest probe failed.", _error_info),
    "certwatch_target_state": (
        "The target's state: 1 for the current one of ok, warning, critical, expired, error.",
        _target_state),
    "certwatch_cert_read_timestamp_seconds": (
        "When the certificate reported here was read (older than the latest probe when that "
        "failed).",
        _with_certificate(_gauge(lambda s: s.assessment.observation.started_at.timestamp()))),
    "certwatch_cert_expiry_timestamp_seconds": (
        "The earliest notAfter on the chain clients use.",
        _with_certificate(_gauge(lambda s: s.assessment.earliest.not_after.timestamp()))),  # type: ignore[union-attr]
    "certwatch_cert_not_after_timestamp_seconds": (
        "The leaf's notAfter.",
        _with_certificate(_gauge(lambda s: s.assessment.leaf.not_after.timestamp()))),  # type: ignore[union-attr]
    "certwatch_cert_not_before_timestamp_seconds": (
        "The leaf's notBefore.",
        _with_certificate(_gauge(lambda s: s.assessment.leaf.not_before.timestamp()))),  # type: ignore[union-attr]
    "certwatch_chain_cert_not_after_timestamp_seconds": (
        "notAfter of each certificate the server presented, by position.",
        _with_certificate(lambda status, head: _chain(status, head, info=False))),
    "certwatch_cert_info": (
        "Identity of each presented certificate (changes on renewal).",
        _with_certificate(lambda status, head: _chain(status, head, info=True))),
    "certwatch_cert_verified": (
        "1 if clients would accept the chain for this name now, else 0.",
        _with_certificate(_verification(lambda v: v.ok))),
    "certwatch_cert_hostname_match": (
        "1 if the leaf is valid for the name checked, else 0 (no series where no name is "
        "checked: a certificate at rest).",
        _with_certificate(_verification(lambda v: v.hostname_match, named=True))),
    "certwatch_cert_verify_problem": (
        "Present for each reason clients would reject the chain.",
        _with_certificate(_verify_problems)),
    "certwatch_tls_info": ("The TLS version and cipher negotiated.", _with_certificate(_tls_info)),
    "certwatch_cert_key_match": (
        "1 if the private key found with a certificate at rest is its key, else 0 (no series "
        "where no key was found).",
        _with_certificate(_gauge(_key_match))),
    **refusal_families(_gauge),
    "certwatch_cert_lifetime_seconds": (
        "The leaf's lifetime, notBefore through notAfter.",
        _with_certificate(_gauge(lambda s: s.assessment.leaf.lifetime_seconds))),  # type: ignore[union-attr]
    "certwatch_cert_warning_timestamp_seconds": (
        "When the earliest-expiring certificate enters its warning threshold (the lower of "
        "warn_days and warn_fraction of its lifetime before notAfter).",
        _with_certificate(_gauge(lambda s: _moment(s.assessment.expiry, "warning_at")))),
    "certwatch_cert_critical_timestamp_seconds": (
        "When the earliest-expiring certificate enters its critical threshold.",
        _with_certificate(_gauge(lambda s: _moment(s.assessment.expiry, "critical_at")))),
    "certwatch_cert_renewal_due_timestamp_seconds": (
        "When the leaf should have been replaced: the end of the CA's renewal window, else "
        "renewal_due_fraction of its lifetime.",
        _with_certificate(_gauge(lambda s: _moment(s.assessment.renewal, "due_at")))),
    "certwatch_cert_renewal_window_start_timestamp_seconds": (
        "Start of the renewal window the CA suggests (ACME ARI, RFC 9773).",
        _with_certificate(_gauge(lambda s: _window(s, "start")))),
    "certwatch_cert_renewal_window_end_timestamp_seconds": (
        "End of the renewal window the CA suggests (ACME ARI, RFC 9773).",
        _with_certificate(_gauge(lambda s: _window(s, "end")))),
    "certwatch_cert_renewal_window_moved_earlier": (
        "1 if the CA moved its renewal window earlier than it first said (it wants the "
        "certificate replaced, often before a revocation), else 0.",
        _with_certificate(_gauge(_moved_earlier))),
}


def target_families(statuses: Sequence[TargetStatus]) -> Iterator[str]:
    """The per-target families of these statuses, in pieces (the daemon's /metrics, and
    /probe's answer for one target)."""
    user_labels = tuple(sorted({k for s in statuses for k, _ in s.target.endpoint.labels}))
    targets = [(status, _target_labels(status, user_labels)) for status in statuses]
    for family, (help_text, samples) in FAMILIES.items():
        header = f"# HELP {family} {help_text}\n# TYPE {family} gauge\n"
        for status, labels in targets:
            text = samples(status, f"{family}{{{labels}")
            if text:
                yield header + text if header else text
                header = ""


class TargetExposition:
    """The per-target families plus targets-by-state and scan lag, as exposition text."""

    def __init__(self, statuses: Callable[[], Sequence[TargetStatus]],
                 lag: Callable[[], float]) -> None:
        self._statuses = statuses
        self._lag = lag

    def pieces(self) -> Iterator[str]:
        """The exposition text in pieces, from one snapshot of the statuses."""
        statuses = self._statuses()
        yield from target_families(statuses)
        yield "# HELP certwatch_targets Targets by state.\n# TYPE certwatch_targets gauge\n"
        for state in State:
            count = sum(1 for s in statuses if s.state is state)
            yield f'certwatch_targets{{state="{state.value}"}} {_number(count)}\n'
        yield ("# HELP certwatch_scan_lag_seconds How late the latest probes started against "
               "their schedule (the worst target): grows when the concurrency bound cannot "
               "keep up.\n# TYPE certwatch_scan_lag_seconds gauge\n"
               f"certwatch_scan_lag_seconds {_number(self._lag())}\n")

    def render(self) -> str:
        return "".join(self.pieces())
