"""certwatch's own health as Prometheus metrics, in a registry of its own.

The targets' series are not here: they are exposition text rendered at scrape time
(:mod:`certwatch.render.exposition`).
"""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

from certwatch import __version__

__all__ = ["DaemonMetrics"]


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
        self.revocation_fetches = Counter(
            "certwatch_revocation_fetches", "CRL and OCSP fetches by source and result "
            "(success, or why the evidence is unusable).", ["source", "result"],
            registry=self.registry)
        info = Gauge("certwatch_build_info", "certwatch's version, as labels.",
                     ["version", "python_version"], registry=self.registry)
        info.labels(__version__, platform.python_version()).set(1)
        for result in ("success", "failure"):
            self.reloads.labels(result)
