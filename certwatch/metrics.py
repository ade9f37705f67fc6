"""Prometheus metrics, rendered at scrape time from the store's latest statuses.

Rendering from the latest statuses means no labelled gauges are left behind: a target
removed from the inventory is gone from the next scrape. Expiry is exported as
timestamps (PromQL computes days left); serial, fingerprint, subject and issuer live in
`certwatch_cert_info` only, so a renewal does not churn the other series.

The per-target families are written as exposition text directly, and each target's
lines are cached until its status object changes (statuses are immutable and replaced
on each probe): with 10,000 targets prometheus_client's per-sample formatting took
seconds a scrape, while most targets had not changed since the last one. The daemon's
own health metrics stay ordinary prometheus_client metrics in a private registry.
"""

from __future__ import annotations

import platform
from typing import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

from certwatch import __version__
from certwatch.assess import State
from certwatch.store import TargetStatus

__all__ = ["DaemonMetrics", "TargetExposition"]

# Family name -> help text, in the order they are written.
FAMILIES: dict[str, str] = {
    "certwatch_probe_success": "1 if the latest probe completed a TLS handshake, else 0.",
    "certwatch_probe_duration_seconds": "How long the latest probe took.",
    "certwatch_probe_timestamp_seconds": "When the latest probe started.",
    "certwatch_probe_consecutive_failures": "Probes failed in a row (0 after a success).",
    "certwatch_probe_error_info": "Why the latest probe failed.",
    "certwatch_target_state": "The target's state: 1 for the current one of ok, warning, "
                              "critical, expired, error.",
    "certwatch_cert_read_timestamp_seconds": "When the certificate reported here was read "
                                             "(older than the latest probe when that failed).",
    "certwatch_cert_expiry_timestamp_seconds": "The earliest notAfter on the chain clients use.",
    "certwatch_cert_not_after_timestamp_seconds": "The leaf's notAfter.",
    "certwatch_cert_not_before_timestamp_seconds": "The leaf's notBefore.",
    "certwatch_chain_cert_not_after_timestamp_seconds": "notAfter of each certificate the "
                                                        "server presented, by position.",
    "certwatch_cert_info": "Identity of each presented certificate (changes on renewal).",
    "certwatch_cert_verified": "1 if clients would accept the chain for this name now, else 0.",
    "certwatch_cert_hostname_match": "1 if the leaf is valid for the name checked, else 0.",
    "certwatch_cert_verify_problem": "Present for each reason clients would reject the chain.",
    "certwatch_tls_info": "The TLS version and cipher negotiated.",
}


def _role(position: int, last: int, self_issued: bool) -> str:
    if position == 0:
        return "leaf"
    return "root" if position == last and self_issued else "intermediate"


def _escape(value: str) -> str:
    """A label value as the exposition format wants it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)


def _number(value: float) -> str:
    return repr(float(value))


def _target_pairs(status: TargetStatus, user_labels: tuple[str, ...]) -> list[tuple[str, str]]:
    endpoint, address = status.target.endpoint, status.target.address
    own = dict(endpoint.labels)
    return [
        ("name", endpoint.name), ("host", endpoint.host), ("port", str(endpoint.port)),
        ("address", address or ""), ("server_name", endpoint.server_name or ""),
        ("protocol", endpoint.protocol),
        *((label, own.get(label, "")) for label in user_labels),
    ]


def render_target(status: TargetStatus, user_labels: tuple[str, ...]) -> dict[str, str]:
    """One target's sample lines, by family."""
    base = _labels(_target_pairs(status, user_labels))
    out: dict[str, list[str]] = {}

    def add(family: str, value: float, *extra: tuple[str, str]) -> None:
        labels = f"{base},{_labels(extra)}" if extra else base
        out.setdefault(family, []).append(f"{family}{{{labels}}} {_number(value)}\n")

    a = status.assessment
    add("certwatch_probe_success", 1.0 if status.probe_success else 0.0)
    add("certwatch_probe_duration_seconds", status.last_probe_duration)
    add("certwatch_probe_timestamp_seconds", status.last_probe_at.timestamp())
    add("certwatch_probe_consecutive_failures", status.consecutive_failures)
    if status.last_error is not None:
        add("certwatch_probe_error_info", 1.0, ("kind", status.last_error.kind),
            ("phase", status.last_error.phase))
    for state in State:
        add("certwatch_target_state", 1.0 if a.state is state else 0.0, ("state", state.value))
    if a.leaf is not None and a.earliest is not None:
        add("certwatch_cert_read_timestamp_seconds", a.observation.started_at.timestamp())
        add("certwatch_cert_expiry_timestamp_seconds", a.earliest.not_after.timestamp())
        add("certwatch_cert_not_after_timestamp_seconds", a.leaf.not_after.timestamp())
        add("certwatch_cert_not_before_timestamp_seconds", a.leaf.not_before.timestamp())
        last = len(a.chain) - 1
        for cert in a.chain:
            role = _role(cert.position, last, cert.self_issued)
            position = ("position", str(cert.position))
            add("certwatch_chain_cert_not_after_timestamp_seconds", cert.not_after.timestamp(),
                position, ("role", role))
            add("certwatch_cert_info", 1.0, position, ("role", role), ("serial", cert.serial),
                ("fingerprint_sha256", cert.fingerprint_sha256), ("subject", cert.subject),
                ("issuer", cert.issuer), ("key_type", cert.key_type),
                ("signature_algorithm", cert.signature_algorithm))
        verification = a.verification
        if verification is not None:
            add("certwatch_cert_verified", 1.0 if verification.ok else 0.0)
            add("certwatch_cert_hostname_match", 1.0 if verification.hostname_match else 0.0)
            # verify: false means "judge expiry only": its problems are shown in the API
            # and status page, but no alert rule should see them.
            for problem in verification.problems if status.target.endpoint.verify else ():
                add("certwatch_cert_verify_problem", 1.0, ("problem", problem))
        if a.observation.tls_version:
            add("certwatch_tls_info", 1.0, ("version", a.observation.tls_version),
                ("cipher", a.observation.cipher or ""))
    return {family: "".join(lines) for family, lines in out.items()}


class TargetExposition:
    """The per-target families plus targets-by-state and scan lag, as exposition text."""

    def __init__(self, statuses: Callable[[], Sequence[TargetStatus]],
                 lag: Callable[[], float]) -> None:
        self._statuses = statuses
        self._lag = lag
        self._cache: dict[str, tuple[TargetStatus, tuple[str, ...], dict[str, str]]] = {}

    def render(self) -> str:
        statuses = self._statuses()
        user_labels = tuple(sorted({k for s in statuses for k, _ in s.target.endpoint.labels}))
        by_family: dict[str, list[str]] = {family: [] for family in FAMILIES}
        cache: dict[str, tuple[TargetStatus, tuple[str, ...], dict[str, str]]] = {}
        for status in statuses:
            key = status.target.key
            cached = self._cache.get(key)
            if cached is not None and cached[0] is status and cached[1] == user_labels:
                lines = cached[2]
            else:
                lines = render_target(status, user_labels)
            cache[key] = (status, user_labels, lines)
            for family, text in lines.items():
                by_family[family].append(text)
        self._cache = cache  # targets gone from the store leave the cache too
        out = []
        for family, text in by_family.items():
            if text:
                out.append(f"# HELP {family} {FAMILIES[family]}\n# TYPE {family} gauge\n")
                out.extend(text)
        out.append("# HELP certwatch_targets Targets by state.\n# TYPE certwatch_targets gauge\n")
        for state in State:
            count = sum(1 for s in statuses if s.state is state)
            out.append(f'certwatch_targets{{state="{state.value}"}} {_number(count)}\n')
        out.append("# HELP certwatch_scan_lag_seconds How late the latest probes started "
                   "against their schedule (the worst target): grows when the concurrency "
                   "bound cannot keep up.\n# TYPE certwatch_scan_lag_seconds gauge\n"
                   f"certwatch_scan_lag_seconds {_number(self._lag())}\n")
        return "".join(out)


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
