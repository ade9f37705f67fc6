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
by piece (a family's lines for up to PIECE targets), family by family, from one snapshot
of the statuses, so the text is never held whole; each target's identity labels are
made once a scrape and shared by its families. (prometheus_client's per-sample objects
took seconds a scrape at 10,000 targets.) The daemon's own health metrics stay ordinary
prometheus_client metrics in a private registry (:mod:`certwatch.serving.metrics`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import AbstractSet, Callable, Iterator, Sequence

from certwatch.core.inventory import METRIC_GROUPS
from certwatch.core.renewal import RenewalWindow
from certwatch.core.status import TargetStatus
from certwatch.core.verify import Verification
from certwatch.core.vocabulary import State
from certwatch.core.x509 import CertInfo
from certwatch.render.refusal_metrics import refusal_families, revocation_worth_a_look

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


def _plain(text: str) -> bool:
    """Whether _escape leaves the text as it is, as it does most values: no control
    character (those are not printable), quote nor backslash. (Quicker than a regex.)"""
    return text.isprintable() and '"' not in text and "\\" not in text


def _escape(value: str) -> str:
    """A label value as the exposition format wants it, its control characters written
    out (ESC as the four characters \\x1b), so `curl /metrics` in a terminal shows them
    rather than obeys them."""
    if _plain(value):
        return value
    if _CONTROL.search(value):
        value = _CONTROL.sub(lambda match: repr(match.group())[1:-1], value)
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escaped(*values: str) -> Sequence[str]:
    """The values escaped, tested at once: most need nothing."""
    return values if _plain("".join(values)) else [_escape(v) for v in values]


def _number(value: float) -> str:
    return repr(float(value))


def target_labels(status: TargetStatus) -> str:
    """The identity labels of every per-target series: the parts of the target's key
    (an empty one is left out, as Prometheus reads it the same)."""
    target = status.target
    name, address, location = _escaped(target.endpoint.name, target.address or "",
                                       target.location or "")
    return "".join([f'name="{name}"', f',address="{address}"' if address else "",
                    f',location="{location}"' if location else ""])


def _info_labels(status: TargetStatus, user_labels: tuple[str, ...]) -> str:
    """What describes the target: on certwatch_target_info only."""
    endpoint = status.target.endpoint
    host, server_name, protocol, source = _escaped(endpoint.host, endpoint.server_name or "",
                                                   endpoint.protocol, endpoint.source)
    text = (f'host="{host}",port="{endpoint.port or ""}",server_name="{server_name}",'
            f'protocol="{protocol}",source="{source}"')
    if not user_labels:
        return text
    own = dict(endpoint.labels)
    return "".join([text, *[f',{label}="{_escape(own[label])}"'
                            for label in user_labels if own.get(label)]])


# A family's sample lines for a piece of the targets: given the family's name, their
# statuses and their identity labels (in step), the lines of those that have any. One
# call a piece rather than a target, and no tuple a target: at 100,000 targets a scrape
# is a million samples (bench/scrape.py measures it).
Samples = Callable[[str, Sequence[TargetStatus], Sequence[str]], list[str]]


def _gauge(value: Callable[[TargetStatus], float | None]) -> Samples:
    """A family with one sample per target (when `value` is not None)."""
    def samples(family: str, statuses: Sequence[TargetStatus], labels: Sequence[str]) -> list[str]:
        return [f"{family}{{{label}}} {float(number)!r}\n"  # what _number writes
                for label, number in zip(labels, map(value, statuses)) if number is not None]
    return samples


def _moment(value: Callable[[TargetStatus], datetime | None]) -> Samples:
    """A family with one timestamp per target (when `value` is not None)."""
    def samples(family: str, statuses: Sequence[TargetStatus], labels: Sequence[str]) -> list[str]:
        return [f"{family}{{{label}}} {moment.timestamp()!r}\n"
                for label, moment in zip(labels, map(value, statuses)) if moment is not None]
    return samples


def _has_certificate(status: TargetStatus) -> bool:
    a = status.assessment
    return a.leaf is not None and a.earliest is not None


class _WithCertificate:
    """A family that only a target whose certificate was read has (the renderer hands it
    only those, the others filtered out once a scrape)."""

    __slots__ = ("samples",)

    def __init__(self, samples: Samples) -> None:
        self.samples = samples

    def __call__(self, family: str, statuses: Sequence[TargetStatus],
                 labels: Sequence[str]) -> list[str]:
        read = [(status, label) for status, label in zip(statuses, labels)
                if _has_certificate(status)]
        return self.samples(family, [status for status, _ in read], [label for _, label in read])


def _with_certificate(samples: Samples) -> Samples:
    return _WithCertificate(samples)


def _error_info(family: str, statuses: Sequence[TargetStatus], labels: Sequence[str]) -> list[str]:
    return [f'{family}{{{label},kind="{_escape(error.kind)}",'
            f'phase="{_escape(error.phase)}"}} 1.0\n'
            for status, label in zip(statuses, labels)
            if (error := status.last_error) is not None]


def _target_state(family: str, statuses: Sequence[TargetStatus], labels: Sequence[str]) -> list[str]:
    """The current state only: one series, whose label changes when the state does (the
    four zeros beside it were two fifths of a healthy target's series)."""
    return [f'{family}{{{label},state="{status.assessment.state.value}"}} 1.0\n'
            for status, label in zip(statuses, labels)]


def _identity(cert: CertInfo) -> str:
    """A certificate's labels on certwatch_cert_info: hexadecimal needs no escaping, the
    names do."""
    subject, issuer, key_type, algorithm = _escaped(cert.subject, cert.issuer, cert.key_type,
                                                    cert.signature_algorithm)
    return (f'serial="{cert.serial}",fingerprint_sha256="{cert.fingerprint_sha256}",'
            f'subject="{subject}",issuer="{issuer}",key_type="{key_type}",'
            f'signature_algorithm="{algorithm}"')


def _leaf_info(family: str, statuses: Sequence[TargetStatus], labels: Sequence[str]) -> list[str]:
    """certwatch_cert_info of the leaf only (the first of the chain, as a target whose
    certificate was read has a leaf)."""
    return [f'{family}{{{label},position="0",role="leaf",'
            f'{_identity(status.assessment.chain[0])}}} 1.0\n'
            for status, label in zip(statuses, labels)]


def _chain(info: bool) -> Samples:
    """Every certificate of the chain: its identity (`info`), else its notAfter."""
    def samples(family: str, statuses: Sequence[TargetStatus], labels: Sequence[str]) -> list[str]:
        lines = []
        for status, label in zip(statuses, labels):
            chain = status.assessment.chain
            last = len(chain) - 1
            for cert in chain:
                where = (f'{family}{{{label},position="{cert.position}",'
                         f'role="{_role(cert.position, last, cert.self_issued)}"')
                lines.append(f"{where},{_identity(cert)}}} 1.0\n" if info else
                             f"{where}}} {_number(cert.not_after.timestamp())}\n")
        return lines
    return samples


def _verification(value: Callable[[Verification], bool], named: bool = False) -> Samples:
    def samples(family: str, statuses: Sequence[TargetStatus], labels: Sequence[str]) -> list[str]:
        return [f"{family}{{{label}}} {'1.0' if value(verification) else '0.0'}\n"
                for status, label in zip(statuses, labels)
                if (verification := status.assessment.verification) is not None
                and (verification.name_checked or not named)]
    return samples


def _key_match(status: TargetStatus) -> float | None:
    key = status.assessment.observation.key_check
    return None if key is None else (1.0 if key.problem is None else 0.0)


def _verify_problems(family: str, statuses: Sequence[TargetStatus],
                     labels: Sequence[str]) -> list[str]:
    # verify: false means "judge expiry only": its problems are shown in the API and
    # status page, but no alert rule should see them.
    return [f'{family}{{{label},problem="{_escape(problem)}"}} 1.0\n'
            for status, label in zip(statuses, labels)
            if (verification := status.assessment.verification) is not None
            and verification.problems and status.target.endpoint.verify
            for problem in verification.problems]


def _tls_info(family: str, statuses: Sequence[TargetStatus], labels: Sequence[str]) -> list[str]:
    return [f'{family}{{{label},version="{_escape(observation.tls_version)}",'
            f'cipher="{_escape(observation.cipher or "")}"}} 1.0\n'
            for status, label in zip(statuses, labels)
            if (observation := status.assessment.observation).tls_version]


def _window(status: TargetStatus) -> RenewalWindow | None:
    renewal = status.assessment.renewal
    return renewal.info.window if renewal and renewal.info else None


def _moved_earlier(status: TargetStatus) -> float | None:
    renewal = status.assessment.renewal
    if renewal is None or renewal.info is None or renewal.info.window is None:
        return None
    return 1.0 if renewal.window_moved_earlier else 0.0


@dataclass(frozen=True, slots=True)
class Family:
    """One per-target family: its help text, its samples, and the opt-in group that
    turns it on (None: on by default). `wider`, where given, replaces `samples` when its
    group is on (cert_info: every certificate, not only the leaf)."""

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
    def sparse(family: str, statuses: Sequence[TargetStatus], labels: Sequence[str]) -> list[str]:
        worth = [index for index, status in enumerate(statuses) if revocation_worth_a_look(status)]
        return samples(family, [statuses[i] for i in worth],
                       [labels[i] for i in worth]) if worth else []
    return sparse


# Family name -> Family, in the order they are written.
FAMILIES: dict[str, Family] = {
    "certwatch_target_info": Family(
        "What describes the target (host, port, server_name, protocol, source, the "
        "endpoint's labels), for joins: * on(job, instance, name, address, location) "
        "group_left(...) certwatch_target_info.", lambda family, statuses, labels: []),
        # (its samples are made by target_families, from the scrape's label names)
    "certwatch_probe_success": Family(
        "1 if the latest probe completed a TLS handshake, else 0.",
        _gauge(lambda s: 1.0 if s.probe_success else 0.0)),
    "certwatch_probe_duration_seconds": Family(
        "How long the latest probe took.", _gauge(lambda s: s.last_probe_duration), "probe"),
    "certwatch_probe_timestamp_seconds": Family(
        "When the latest probe started.", _moment(lambda s: s.last_probe_at)),
    "certwatch_probe_consecutive_failures": Family(
        "Probes failed in a row (0 after a success).", _gauge(lambda s: s.consecutive_failures)),
    "certwatch_probe_error_info": Family("Why the latest probe failed.", _error_info),
    "certwatch_target_state": Family(
        "The target's state (ok, warning, critical, expired, error) as the label of its one "
        "series.", _target_state),
    "certwatch_cert_read_timestamp_seconds": Family(
        "When the certificate reported here was read (older than the latest probe when that "
        "failed).",
        _with_certificate(_moment(lambda s: s.assessment.observation.started_at)),
        "probe"),
    "certwatch_cert_expiry_timestamp_seconds": Family(
        "The earliest notAfter on the chain clients use.",
        _with_certificate(_moment(lambda s: s.assessment.earliest.not_after))),  # type: ignore[union-attr]
    "certwatch_cert_not_after_timestamp_seconds": Family(
        "The leaf's notAfter.",
        _with_certificate(_moment(lambda s: s.assessment.leaf.not_after)), "leaf"),  # type: ignore[union-attr]
    "certwatch_cert_not_before_timestamp_seconds": Family(
        "The leaf's notBefore.",
        _with_certificate(_moment(lambda s: s.assessment.leaf.not_before)), "leaf"),  # type: ignore[union-attr]
    "certwatch_chain_cert_not_after_timestamp_seconds": Family(
        "notAfter of each certificate the server presented, by position.",
        _with_certificate(_chain(info=False)), "chain"),
    "certwatch_cert_info": Family(
        "Identity of the leaf (of each presented certificate with the group chain); changes "
        "on renewal.",
        _with_certificate(_leaf_info), wider=("chain", _with_certificate(_chain(info=True)))),
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
        _with_certificate(_moment(
            lambda s: None if (e := s.assessment.expiry) is None else e.warning_at))),
    "certwatch_cert_critical_timestamp_seconds": Family(
        "When the earliest-expiring certificate enters its critical threshold.",
        _with_certificate(_moment(
            lambda s: None if (e := s.assessment.expiry) is None else e.critical_at))),
    "certwatch_cert_renewal_due_timestamp_seconds": Family(
        "When the leaf should have been replaced: the end of the CA's renewal window, else "
        "renewal_due_fraction of its lifetime.",
        _with_certificate(_moment(
            lambda s: None if (r := s.assessment.renewal) is None else r.due_at))),
    "certwatch_cert_renewal_window_start_timestamp_seconds": Family(
        "Start of the renewal window the CA suggests (ACME ARI, RFC 9773).",
        _with_certificate(_moment(lambda s: None if (w := _window(s)) is None else w.start))),
    "certwatch_cert_renewal_window_end_timestamp_seconds": Family(
        "End of the renewal window the CA suggests (ACME ARI, RFC 9773).",
        _with_certificate(_moment(lambda s: None if (w := _window(s)) is None else w.end))),
    "certwatch_cert_renewal_window_moved_earlier": Family(
        "1 if the CA moved its renewal window earlier than it first said (it wants the "
        "certificate replaced, often before a revocation), else 0.",
        _with_certificate(_gauge(_moved_earlier))),
}


PIECE = 500  # targets a piece of the text holds (the web layer sends it in chunks)


class _Targets:
    """The statuses of one scrape and their identity labels, in pieces of PIECE targets.

    The labels are made once, piece by piece as the first family is written (so the
    first piece is not kept waiting for all of them: the event loop serves other
    requests between pieces), and every other family reuses them."""

    def __init__(self, statuses: Sequence[TargetStatus], labels: list[str] | None = None) -> None:
        self.statuses = statuses
        self.labels = labels if labels is not None else []

    def pieces(self) -> Iterator[tuple[Sequence[TargetStatus], list[str]]]:
        statuses, labels = self.statuses, self.labels
        for start in range(0, len(statuses), PIECE):
            piece = statuses[start:start + PIECE]
            if len(labels) < start + len(piece):
                labels += [target_labels(status) for status in piece]
            yield piece, labels[start:start + PIECE]

    def with_certificate(self) -> _Targets:
        """Those whose certificate was read, with their labels."""
        statuses: list[TargetStatus] = []
        labels: list[str] = []
        for piece, piece_labels in self.pieces():
            for status, label in zip(piece, piece_labels):
                if _has_certificate(status):
                    statuses.append(status)
                    labels.append(label)
        return _Targets(statuses, labels)


def _target_info(user_labels: tuple[str, ...]) -> Samples:
    def samples(family: str, statuses: Sequence[TargetStatus], labels: Sequence[str]) -> list[str]:
        return [f"{family}{{{label},{_info_labels(status, user_labels)}}} 1.0\n"
                for status, label in zip(statuses, labels)]
    return samples


def target_families(statuses: Sequence[TargetStatus],
                    extra: AbstractSet[str] = frozenset()) -> Iterator[str]:
    """The per-target families of these statuses, in pieces (a family's lines for up to
    PIECE targets): the daemon's /metrics, and /probe's answer for one target."""
    user_labels = tuple(sorted({k for s in statuses for k, _ in s.target.endpoint.labels}))
    every = _Targets(statuses)
    read: _Targets | None = None
    for family, spec in FAMILIES.items():
        if spec.group is not None and spec.group not in extra:
            continue
        header = f"# HELP {family} {spec.help}\n# TYPE {family} gauge\n"
        samples = spec.wider[1] if spec.wider and spec.wider[0] in extra else spec.samples
        targets = every
        if family == "certwatch_target_info":
            samples = _target_info(user_labels)
            if statuses:  # its header even when no target has a line
                yield header
                header = ""
        elif isinstance(samples, _WithCertificate):
            read = read or every.with_certificate()
            targets, samples = read, samples.samples
        for piece, labels in targets.pieces():
            text = "".join(samples(family, piece, labels))
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
        counts = Counter(status.assessment.state for status in statuses)
        for state in State:
            yield f'certwatch_targets{{state="{state.value}"}} {_number(counts[state])}\n'
        yield ("# HELP certwatch_scan_lag_seconds How late the latest probes started against "
               "their schedule (the worst target): grows when the concurrency bound cannot "
               "keep up.\n# TYPE certwatch_scan_lag_seconds gauge\n"
               f"certwatch_scan_lag_seconds {_number(self._lag())}\n")

    def render(self) -> str:
        return "".join(self.pieces())
