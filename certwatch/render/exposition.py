"""The targets' Prometheus exposition text, rendered at scrape time from the latest statuses.

Rendering from the latest statuses means no labelled gauges are left behind: a target
removed from the inventory is gone from the next scrape. Expiry is exported as
timestamps (PromQL computes days left); serial, fingerprint, subject and issuer live in
`certwatch_cert_info` only, so a renewal does not churn the other series.

Labels: every per-target series carries only what identifies the target, the parts of
its key (`name`, and `address` on the wire or `location` at rest). What describes it
(host, port, server_name, protocol, source and the endpoint's own `labels:`) is on one
series, `certwatch_target_info`, joined where wanted:
`certwatch_cert_expiry_timestamp_seconds * on(job, instance, name, address, location)
group_left(team) certwatch_target_info`. That took a healthy target from 27 series
to 10 (the README has the figures); each problem adds the series that names it.

Families: the default ones are what the alert rules and the dashboard need; the others
are opt-in by group (`metrics: {extra: [...]}` in the inventory; see EXTRA_GROUPS).

The per-target families are written as exposition text directly and handed out piece
by piece (a family's lines for one target), family by family, from one snapshot of the
statuses, so the text is never held whole. (prometheus_client's per-sample objects took
seconds a scrape at 10,000 targets.) The daemon's own health metrics stay ordinary
prometheus_client metrics in a private registry (:mod:`certwatch.serving.metrics`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import AbstractSet, Callable, Iterator, Sequence

from certwatch.core.inventory import METRIC_GROUPS
from certwatch.core.status import TargetStatus
from certwatch.core.verify import Verification
from certwatch.core.vocabulary import State
from certwatch.render.refusal_metrics import refusal_families

__all__ = ["EXTRA_GROUPS", "FAMILIES", "Family", "TargetExposition", "target_families",
           "target_labels"]

# The opt-in groups of families, and what each adds.
EXTRA_GROUPS = {
    "probe": "certwatch_probe_duration_seconds, certwatch_cert_read_timestamp_seconds",
    "leaf": "certwatch_cert_not_after_timestamp_seconds, ..._not_before_..., "
            "certwatch_cert_lifetime_seconds",
    "chain": "certwatch_chain_cert_not_after_timestamp_seconds, and certwatch_cert_info for "
             "every certificate of the chain (by default the leaf's only)",
    "verification": "certwatch_cert_verified, certwatch_cert_hostname_match",
    "tls": "certwatch_tls_info",
    "revocation": "certwatch_cert_revoked, certwatch_revocation_checked_timestamp_seconds, "
                  "certwatch_cert_must_staple_missing, certwatch_cert_scts, and "
                  "certwatch_revocation_status when it is good or not_checked (by default only "
                  "when there is something to say)",
}
assert tuple(EXTRA_GROUPS) == METRIC_GROUPS


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
    return ",".join([f'{name}="{_escape(value)}"' for name, value in pairs])


def _number(value: float) -> str:
    return repr(float(value))


def target_labels(status: TargetStatus) -> str:
    """The identity labels of every per-target series: the parts of the target's key
    (an empty one is left out, as Prometheus reads it the same)."""
    target = status.target
    return _labels([("name", target.endpoint.name),
                    *((("address", target.address),) if target.address else ()),
                    *((("location", target.location),) if target.location else ())])


def _info_labels(status: TargetStatus, user_labels: tuple[str, ...]) -> str:
    """What describes the target: on certwatch_target_info only."""
    endpoint = status.target.endpoint
    own = dict(endpoint.labels)
    return _labels([
        ("host", endpoint.host), ("port", str(endpoint.port) if endpoint.port else ""),
        ("server_name", endpoint.server_name or ""), ("protocol", endpoint.protocol),
        ("source", endpoint.source),
        *((label, own[label]) for label in user_labels if own.get(label)),
    ])


# Each family's sample lines for one target ("" for none), given the start of every line:
# the family's name, "{" and the target's labels.
Samples = Callable[[TargetStatus, str], str]


class _Gauge:
    """A family with one sample per target (when `value` is not None). A class, not a
    closure, so that the renderer can call `value` directly: at 100,000 targets a
    scrape is a million samples, and each call saved is a tenth of a second."""

    __slots__ = ("value",)

    def __init__(self, value: Callable[[TargetStatus], float | None]) -> None:
        self.value = value

    def __call__(self, status: TargetStatus, head: str) -> str:
        number = self.value(status)
        return "" if number is None else f"{head}}} {_number(number)}\n"


def _gauge(value: Callable[[TargetStatus], float | None]) -> Samples:
    return _Gauge(value)


class _WithCertificate:
    """A family that only a target whose certificate was read has (the renderer skips
    the others without calling it)."""

    __slots__ = ("samples",)

    def __init__(self, samples: Samples) -> None:
        self.samples = samples

    def __call__(self, status: TargetStatus, head: str) -> str:
        a = status.assessment
        return "" if a.leaf is None or a.earliest is None else self.samples(status, head)


def _with_certificate(samples: Samples) -> Samples:
    return _WithCertificate(samples)


def _error_info(status: TargetStatus, head: str) -> str:
    error = status.last_error
    if error is None:
        return ""
    return f'{head},{_labels([("kind", error.kind), ("phase", error.phase)])}}} 1.0\n'


def _target_state(status: TargetStatus, head: str) -> str:
    """The current state only: one series, whose label changes when the state does (the
    four zeros beside it were two fifths of a healthy target's series)."""
    return f'{head},state="{status.assessment.state.value}"}} 1.0\n'


def _chain(status: TargetStatus, head: str, info: bool, leaf_only: bool = False) -> str:
    a = status.assessment
    last, lines = len(a.chain) - 1, []
    for cert in a.chain[:1] if leaf_only else a.chain:
        where = f'position="{cert.position}",role="{_role(cert.position, last, cert.self_issued)}"'
        if info:  # hexadecimal and the bounded names need no escaping; the names do
            identity = (f'serial="{cert.serial}",fingerprint_sha256="{cert.fingerprint_sha256}",'
                        f'{_labels([("subject", cert.subject), ("issuer", cert.issuer)])},'
                        f'key_type="{_escape(cert.key_type)}",'
                        f'signature_algorithm="{_escape(cert.signature_algorithm)}"')
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


@dataclass(frozen=True, slots=True)
class Family:
    """One per-target family: its help text, its samples for one target, and the opt-in
    group that turns it on (None: on by default). `wider`, where given, replaces
    `samples` when its group is on (cert_info: every certificate, not only the leaf)."""

    help: str
    samples: Samples
    group: str | None = None
    wider: tuple[str, Samples] | None = None


def _revocation_family(name: str, family: tuple[str, Samples]) -> Family:
    """The refusal families: revocation_status and the lints by default (only when there
    is something to say: a problem adds its series), the rest in the group `revocation`."""
    help_text, samples = family
    if name == "certwatch_revocation_status":
        return Family(help_text, _not_good(samples), wider=("revocation", samples))
    return Family(help_text, samples, None if name == "certwatch_cert_lint" else "revocation")


def _not_good(samples: Samples) -> Samples:
    """Only a status worth a look: revoked, or unknown for a reason other than that
    there was nothing to check."""
    def sparse(status: TargetStatus, head: str) -> str:
        text = samples(status, head)
        return "" if 'status="good"' in text or 'reason="not_checked"' in text else text
    return sparse


# Family name -> Family, in the order they are written.
FAMILIES: dict[str, Family] = {
    "certwatch_target_info": Family(
        "What describes the target (host, port, server_name, protocol, source, the "
        "endpoint's labels), for joins: * on(job, instance, name, address, location) "
        "group_left(...) certwatch_target_info.", lambda status, head: ""),  # see pieces()
    "certwatch_probe_success": Family(
        "1 if the latest probe completed a TLS handshake, else 0.",
        _gauge(lambda s: 1.0 if s.probe_success else 0.0)),
    "certwatch_probe_duration_seconds": Family(
        "How long the latest probe took.", _gauge(lambda s: s.last_probe_duration), "probe"),
    "certwatch_probe_timestamp_seconds": Family(
        "When the latest probe started.", _gauge(lambda s: s.last_probe_at.timestamp())),
    "certwatch_probe_consecutive_failures": Family(
        "Probes failed in a row (0 after a success).", _gauge(lambda s: s.consecutive_failures)),
    "certwatch_probe_error_info": Family("Why the latest probe failed.", _error_info),
    "certwatch_target_state": Family(
        "The target's state (ok, warning, critical, expired, error) as the label of its one "
        "series.", _target_state),
    "certwatch_cert_read_timestamp_seconds": Family(
        "When the certificate reported here was read (older than the latest probe when that "
        "failed).",
        _with_certificate(_gauge(lambda s: s.assessment.observation.started_at.timestamp())),
        "probe"),
    "certwatch_cert_expiry_timestamp_seconds": Family(
        "The earliest notAfter on the chain clients use.",
        _with_certificate(_gauge(lambda s: s.assessment.earliest.not_after.timestamp()))),  # type: ignore[union-attr]
    "certwatch_cert_not_after_timestamp_seconds": Family(
        "The leaf's notAfter.",
        _with_certificate(_gauge(lambda s: s.assessment.leaf.not_after.timestamp())), "leaf"),  # type: ignore[union-attr]
    "certwatch_cert_not_before_timestamp_seconds": Family(
        "The leaf's notBefore.",
        _with_certificate(_gauge(lambda s: s.assessment.leaf.not_before.timestamp())), "leaf"),  # type: ignore[union-attr]
    "certwatch_chain_cert_not_after_timestamp_seconds": Family(
        "notAfter of each certificate the server presented, by position.",
        _with_certificate(lambda status, head: _chain(status, head, info=False)), "chain"),
    "certwatch_cert_info": Family(
        "Identity of the leaf (of each presented certificate with the group chain); changes "
        "on renewal.",
        _with_certificate(lambda status, head: _chain(status, head, info=True, leaf_only=True)),
        wider=("chain", _with_certificate(lambda status, head: _chain(status, head, info=True)))),
    "certwatch_cert_verified": Family(
        "1 if clients would accept the chain for this name now, else 0.",
        _with_certificate(_verification(lambda v: v.ok)), "verification"),
    "certwatch_cert_hostname_match": Family(
        "1 if the leaf is valid for the name checked, else 0 (no series where no name is "
        "checked: a certificate at rest).",
        _with_certificate(_verification(lambda v: v.hostname_match, named=True)), "verification"),
    "certwatch_cert_verify_problem": Family(
        "Present for each reason clients would reject the chain.",
        _with_certificate(_verify_problems)),
    "certwatch_tls_info": Family("The TLS version and cipher negotiated.",
                                 _with_certificate(_tls_info), "tls"),
    "certwatch_cert_key_match": Family(
        "1 if the private key found with a certificate at rest is its key, else 0 (no series "
        "where no key was found).",
        _with_certificate(_gauge(_key_match))),
    **{name: _revocation_family(name, family)
       for name, family in refusal_families(_gauge).items()},
    "certwatch_cert_lifetime_seconds": Family(
        "The leaf's lifetime, notBefore through notAfter.",
        _with_certificate(_gauge(lambda s: s.assessment.leaf.lifetime_seconds)), "leaf"),  # type: ignore[union-attr]
    "certwatch_cert_warning_timestamp_seconds": Family(
        "When the earliest-expiring certificate enters its warning threshold (the lower of "
        "warn_days and warn_fraction of its lifetime before notAfter).",
        _with_certificate(_gauge(lambda s: _moment(s.assessment.expiry, "warning_at")))),
    "certwatch_cert_critical_timestamp_seconds": Family(
        "When the earliest-expiring certificate enters its critical threshold.",
        _with_certificate(_gauge(lambda s: _moment(s.assessment.expiry, "critical_at")))),
    "certwatch_cert_renewal_due_timestamp_seconds": Family(
        "When the leaf should have been replaced: the end of the CA's renewal window, else "
        "renewal_due_fraction of its lifetime.",
        _with_certificate(_gauge(lambda s: _moment(s.assessment.renewal, "due_at")))),
    "certwatch_cert_renewal_window_start_timestamp_seconds": Family(
        "Start of the renewal window the CA suggests (ACME ARI, RFC 9773).",
        _with_certificate(_gauge(lambda s: _window(s, "start")))),
    "certwatch_cert_renewal_window_end_timestamp_seconds": Family(
        "End of the renewal window the CA suggests (ACME ARI, RFC 9773).",
        _with_certificate(_gauge(lambda s: _window(s, "end")))),
    "certwatch_cert_renewal_window_moved_earlier": Family(
        "1 if the CA moved its renewal window earlier than it first said (it wants the "
        "certificate replaced, often before a revocation), else 0.",
        _with_certificate(_gauge(_moved_earlier))),
}


PIECE = 500  # targets a piece of the text holds (the web layer sends it in chunks)


def _lines(family: str, samples: Samples,
           rows: Sequence[tuple[TargetStatus, str]]) -> list[str]:
    """The family's lines for these (status, identity labels) rows."""
    if isinstance(samples, _Gauge):
        value = samples.value
        return [f"{family}{{{labels}}} {_number(number)}\n" for status, labels in rows
                if (number := value(status)) is not None]
    return [text for status, labels in rows if (text := samples(status, f"{family}{{{labels}"))]


def target_families(statuses: Sequence[TargetStatus],
                    extra: AbstractSet[str] = frozenset()) -> Iterator[str]:
    """The per-target families of these statuses, in pieces (a family's lines for up to
    PIECE targets): the daemon's /metrics, and /probe's answer for one target."""
    user_labels = tuple(sorted({k for s in statuses for k, _ in s.target.endpoint.labels}))
    rows = [(status, target_labels(status)) for status in statuses]
    read = [(status, labels) for status, labels in rows
            if status.assessment.leaf is not None and status.assessment.earliest is not None]
    for family, spec in FAMILIES.items():
        if spec.group is not None and spec.group not in extra:
            continue
        header = f"# HELP {family} {spec.help}\n# TYPE {family} gauge\n"
        if family == "certwatch_target_info":
            yield header if rows else ""
            for start in range(0, len(rows), PIECE):
                yield "".join([f"{family}{{{labels},{_info_labels(status, user_labels)}}} 1.0\n"
                               for status, labels in rows[start:start + PIECE]])
            continue
        samples = spec.wider[1] if spec.wider and spec.wider[0] in extra else spec.samples
        some = rows
        if isinstance(samples, _WithCertificate):
            some, samples = read, samples.samples
        for start in range(0, len(some), PIECE):
            text = "".join(_lines(family, samples, some[start:start + PIECE]))
            if text:
                yield header + text if header else text
                header = ""


class TargetExposition:
    """The per-target families plus targets-by-state and scan lag, as exposition text.

    `extra` says which opt-in groups (EXTRA_GROUPS) are on, read at each scrape."""

    def __init__(self, statuses: Callable[[], Sequence[TargetStatus]],
                 lag: Callable[[], float],
                 extra: Callable[[], AbstractSet[str]] = frozenset) -> None:
        self._statuses = statuses
        self._lag = lag
        self._extra = extra

    def pieces(self) -> Iterator[str]:
        """The exposition text in pieces, from one snapshot of the statuses."""
        statuses = self._statuses()
        yield from target_families(statuses, self._extra())
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
