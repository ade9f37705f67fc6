"""Prometheus metrics, made at scrape time from the store's latest snapshot.

A custom collector over an immutable snapshot means no labelled gauges are left behind:
a target removed from the inventory is gone from the next scrape. Expiry is exported as
timestamps (PromQL computes days left); serial, fingerprint, subject and issuer live in
`certwatch_cert_info` only, so a renewal does not churn the other series.
"""

from __future__ import annotations

import platform
import time
from typing import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from certwatch import __version__
from certwatch.assess import State
from certwatch.store import TargetStatus

__all__ = ["DaemonMetrics", "TargetCollector"]

TARGET_LABELS = ("name", "host", "port", "address", "server_name", "protocol")
VERIFY_PROBLEMS = ("expired", "not_yet_valid", "self_signed", "untrusted", "incomplete_chain",
                   "hostname_mismatch")


def _role(position: int, last: int, self_issued: bool) -> str:
    if position == 0:
        return "leaf"
    return "root" if position == last and self_issued else "intermediate"


class _Families:
    """Builds gauge families whose series carry the target labels plus user labels."""

    def __init__(self, user_labels: tuple[str, ...]) -> None:
        self.user_labels = user_labels
        self.families: dict[str, Metric] = {}

    def add(self, name: str, doc: str, labels: Mapping[str, str], value: float,
            **extra: str) -> None:
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = GaugeMetricFamily(name, doc)
        family.add_sample(name, {**labels, **extra}, value)


def _target_labels(status: TargetStatus, user_labels: tuple[str, ...]) -> dict[str, str]:
    endpoint, address = status.target.endpoint, status.target.address
    labels = {
        "name": endpoint.name,
        "host": endpoint.host,
        "port": str(endpoint.port),
        "address": address or "",
        "server_name": endpoint.server_name or "",
        "protocol": endpoint.protocol,
    }
    own = dict(endpoint.labels)
    labels.update({label: own.get(label, "") for label in user_labels})
    return labels


def collect_targets(statuses: Iterable[TargetStatus]) -> list[Metric]:
    """Every per-target family for one snapshot."""
    statuses = list(statuses)
    user_labels = tuple(sorted({k for s in statuses for k, _ in s.target.endpoint.labels}))
    out = _Families(user_labels)
    for status in statuses:
        labels = _target_labels(status, user_labels)
        a = status.assessment
        out.add("certwatch_probe_success",
                "1 if the latest probe completed a TLS handshake, else 0.",
                labels, 1.0 if status.probe_success else 0.0)
        out.add("certwatch_probe_duration_seconds", "How long the latest probe took.",
                labels, status.last_probe_duration)
        out.add("certwatch_probe_timestamp_seconds", "When the latest probe started.",
                labels, status.last_probe_at.timestamp())
        out.add("certwatch_probe_consecutive_failures",
                "Probes failed in a row (0 after a success).", labels,
                status.consecutive_failures)
        if status.last_error is not None:
            out.add("certwatch_probe_error_info", "Why the latest probe failed.", labels, 1.0,
                    kind=status.last_error.kind, phase=status.last_error.phase)
        for state in State:
            out.add("certwatch_target_state",
                    "The target's state: 1 for the current one of ok, warning, critical, "
                    "expired, error.", labels, 1.0 if a.state is state else 0.0,
                    state=state.value)
        if a.leaf is None or a.earliest is None:
            continue
        read_at = a.observation.started_at.timestamp()
        out.add("certwatch_cert_read_timestamp_seconds",
                "When the certificate reported here was read (older than the latest probe "
                "when that failed).", labels, read_at)
        out.add("certwatch_cert_expiry_timestamp_seconds",
                "The earliest notAfter across the presented chain.", labels,
                a.earliest.not_after.timestamp())
        out.add("certwatch_cert_not_after_timestamp_seconds", "The leaf's notAfter.", labels,
                a.leaf.not_after.timestamp())
        out.add("certwatch_cert_not_before_timestamp_seconds", "The leaf's notBefore.", labels,
                a.leaf.not_before.timestamp())
        last = len(a.chain) - 1
        for cert in a.chain:
            role = _role(cert.position, last, cert.self_issued)
            out.add("certwatch_chain_cert_not_after_timestamp_seconds",
                    "notAfter of each certificate the server presented, by position.",
                    labels, cert.not_after.timestamp(), position=str(cert.position), role=role)
            out.add("certwatch_cert_info",
                    "Identity of each presented certificate (changes on renewal).", labels, 1.0,
                    position=str(cert.position), role=role, serial=cert.serial,
                    fingerprint_sha256=cert.fingerprint_sha256, subject=cert.subject,
                    issuer=cert.issuer, key_type=cert.key_type,
                    signature_algorithm=cert.signature_algorithm)
        verification = a.verification
        if verification is not None:
            out.add("certwatch_cert_verified",
                    "1 if clients would accept the chain for this name now, else 0.", labels,
                    1.0 if verification.ok else 0.0)
            out.add("certwatch_cert_hostname_match",
                    "1 if the leaf is valid for the name checked, else 0.", labels,
                    1.0 if verification.hostname_match else 0.0)
            # verify: false means "judge expiry only": its problems are shown in the API
            # and status page, but no alert rule should see them.
            for problem in verification.problems if status.target.endpoint.verify else ():
                out.add("certwatch_cert_verify_problem",
                        "Present for each reason clients would reject the chain.", labels, 1.0,
                        problem=problem)
        if a.observation.tls_version:
            out.add("certwatch_tls_info", "The TLS version and cipher negotiated.", labels, 1.0,
                    version=a.observation.tls_version, cipher=a.observation.cipher or "")
    return list(out.families.values())


class TargetCollector(Collector):
    """Per-target metrics and gauges derived from the snapshot (targets by state, lag)."""

    def __init__(self, snapshot: Callable[[], Mapping[str, TargetStatus]],
                 lag: Callable[[], float], clock: Callable[[], float] = time.time) -> None:
        self._snapshot = snapshot
        self._lag = lag
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        statuses = list(self._snapshot().values())
        yield from collect_targets(statuses)
        by_state = GaugeMetricFamily("certwatch_targets", "Targets by state.", labels=["state"])
        for state in State:
            by_state.add_metric([state.value], sum(1 for s in statuses if s.state is state))
        yield by_state
        yield GaugeMetricFamily(
            "certwatch_scan_lag_seconds",
            "How late the latest probes started against their schedule (the worst target): "
            "grows when the concurrency bound cannot keep up.", value=self._lag())


class DaemonMetrics:
    """The daemon's own health, in a registry of its own (never the global one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.probes = Counter("certwatch_probes", "Probes by result and error kind.",
                              ["result", "error_kind"], registry=self.registry)
        self.reloads = Counter("certwatch_config_reloads", "Configuration reloads by result.",
                               ["result"], registry=self.registry)
        self.reload_ok = Gauge("certwatch_config_last_reload_successful",
                               "1 if the latest configuration load succeeded.",
                               registry=self.registry)
        self.reload_time = Gauge("certwatch_config_last_reload_success_timestamp_seconds",
                                 "When the configuration was last loaded successfully.",
                                 registry=self.registry)
        self.endpoints = Gauge("certwatch_endpoints", "Endpoints in the running inventory.",
                               registry=self.registry)
        self.ready = Gauge("certwatch_ready", "1 once the first sweep has finished.",
                           registry=self.registry)
        self.clock_jumps = Counter("certwatch_clock_jumps",
                                   "Wall-clock jumps detected (the schedule was moved with them).",
                                   registry=self.registry)
        info = Gauge("certwatch_build_info", "certwatch's version, as labels.",
                     ["version", "python_version"], registry=self.registry)
        info.labels(__version__, platform.python_version()).set(1)
        for result in ("success", "failure"):
            self.reloads.labels(result)
