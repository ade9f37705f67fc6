"""/probe driven by a real Prometheus (Debian's), with the documented relabelling
(deploy/prometheus/probe.yml: `__param_target`, then `hashmod` over two certwatch
replicas): every target is probed, each by exactly one replica, and Prometheus stores
the daemon's series with the target as `instance`."""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.pki import Issued
from tests.servers import TLSServer
from tests.test_daemon import RunningDaemon, free_port, leaf_files, pki, wait_for  # noqa: F401
from tests.test_prometheus import _reachable, _stop, tool

ROOT = Path(__file__).resolve().parents[1]
PROBE_CONFIG = ROOT / "deploy" / "prometheus" / "probe.yml"
TARGETS = 12

pytestmark = pytest.mark.timeout(180)


def test_the_documented_config_is_valid() -> None:
    result = subprocess.run([tool("promtool", "prometheus"), "check", "config", str(PROBE_CONFIG)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _probed(daemon: RunningDaemon) -> set[str]:
    return {line["target"] for line in daemon.logs() if line.get("message") == "probed"}


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        result: list[dict[str, Any]] = json.loads(response.read())["data"]["result"]
    return result


def test_hashmod_sends_each_target_to_exactly_one_replica(pki: tuple[Issued, Path]) -> None:  # noqa: F811
    prometheus = tool("prometheus", "prometheus")
    inter, directory = pki
    pair = leaf_files(inter, directory, "web", 60)
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(TLSServer({None: pair})) for _ in range(TARGETS)]
        targets = [f"127.0.0.1:{s.port}" for s in servers]
        config = directory / "certwatch.yaml"
        config.write_text(  # probe mode only: nothing of its own to watch
            "defaults: {ca_file: root.pem, system_trust: false, revocation: false}\n"
            "endpoints: []\n"
            "probe:\n  allow: {networks: [127.0.0.0/8]}\n"
            "  modules:\n    default_tls: {server_name: svc.test}\n")
        replicas = []
        for index in range(2):
            daemon = RunningDaemon(config, directory / f"replica{index}.log",
                                   options=["--log-level", "debug"])
            stack.callback(daemon.stop)
            replicas.append(daemon)
        for daemon in replicas:
            wait_for("a replica to listen", lambda: daemon.get("/readyz")[0] == 200)

        scrape = yaml.safe_load(PROBE_CONFIG.read_text())
        job = scrape["scrape_configs"][0]
        job["static_configs"] = [{"targets": targets}]
        job["scrape_interval"], job["scrape_timeout"] = "1s", "1s"
        replaced = iter(f"127.0.0.1:{d.port}" for d in replicas)
        for rule in job["relabel_configs"]:
            if str(rule.get("replacement", "")).startswith("certwatch-"):
                rule["replacement"] = next(replaced)
        (directory / "prometheus.yml").write_text(yaml.safe_dump(scrape))
        port = free_port()
        log = stack.enter_context((directory / "prometheus.log").open("w"))
        process = subprocess.Popen(
            [prometheus, f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
        stack.callback(_stop, process)
        base = f"http://127.0.0.1:{port}"
        wait_for("Prometheus to be ready", lambda: _reachable(f"{base}/-/ready"), timeout=30)
        wait_for("every target probed and stored", lambda: len(_query(
            base, 'certwatch_probe_success{job="certwatch-probe"} == 1')) == TARGETS, timeout=30)

        first, second = (_probed(d) for d in replicas)
        assert first | second == set(targets)
        assert not first & second, first & second  # exactly one replica per target
        assert first and second  # and the hash did split them
        stored = _query(base, 'certwatch_cert_expiry_timestamp_seconds{job="certwatch-probe"}')
        assert len(stored) == TARGETS and all(  # the target as the instance
            s["metric"]["instance"] == s["metric"]["name"] for s in stored)
        described = _query(base, 'certwatch_target_info{job="certwatch-probe"}')
        for sample in described:  # the daemon's labels, on the info series
            labels = sample["metric"]
            assert labels["instance"] == labels["name"] == f"{labels['host']}:{labels['port']}"
            assert labels["server_name"] == "svc.test" and labels["protocol"] == "tls"
        assert len(described) == TARGETS
