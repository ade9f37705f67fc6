"""certwatch's own health as Prometheus metrics, in a registry of its own.

The targets' series are not here: they are exposition text rendered at scrape time
(:mod:`certwatch.render.exposition`).
"""

from __future__ import annotations

import platform

from typing import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from certwatch.sources import SourceHealth

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
            "certwatch_revocation_fetches", "CRL and OCSP fetches by method and result "
            "(success, or why the evidence is unusable).", ["method", "result"],
            registry=self.registry)
        info = Gauge("certwatch_build_info", "certwatch's version, as labels.",
                     ["version", "python_version"], registry=self.registry)
        info.labels(__version__, platform.python_version()).set(1)
        self.invalid_entries = Gauge(
            "certwatch_config_invalid_entries",
            "Inventory entries validation rejected (each is a target in state error).",
            registry=self.registry)
        self.shard_info = Gauge(
            "certwatch_shard_info", "The shard this replica is (index from 0, of count): it "
            "probes, exports and alerts on the endpoints the shard owns.", ["index", "count"],
            registry=self.registry)
        for result in ("success", "failure"):
            self.reloads.labels(result)

    def watch_sources(self, health: Callable[[], Mapping[str, SourceHealth]]) -> None:
        """Exports each following source's health, read at scrape time."""
        self.registry.register(SourceHealthCollector(health))


class SourceHealthCollector(Collector):
    """certwatch_source_up{source} and the time of its last success."""

    def __init__(self, health: Callable[[], Mapping[str, SourceHealth]]) -> None:
        self._health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("certwatch_source_up", "1 if the source could read what it "
                               "reads (the Kubernetes API answers, every file reads), else 0.",
                               labels=["source"])
        last = GaugeMetricFamily("certwatch_source_last_success_timestamp_seconds",
                                 "When the source last read everything it reads.",
                                 labels=["source"])
        for source, health in sorted(self._health().items()):
            up.add_metric([source], 1.0 if health.up else 0.0)
            if health.last_success is not None:
                last.add_metric([source], health.last_success.timestamp())
        yield up
        yield last
