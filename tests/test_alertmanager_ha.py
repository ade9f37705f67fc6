"""High availability through Alertmanager: two certwatch replicas watch the same endpoints,
each with its own SQLite state, and post every alert to both nodes of a real two-node
Alertmanager cluster (Debian's prometheus-alertmanager, gossiping on loopback). The
replicas send identical labels, so the cluster deduplicates: the receiver behind it is
notified of each alert once, although each node received it from both replicas. (The
same two nodes without gossip notify each alert twice: the test can tell.)"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.pki import Issued
from tests.receivers import JSONReceiver
from tests.servers import TLSServer
from tests.test_daemon import RunningDaemon, free_port, leaf_files, pki, wait_for  # noqa: F401
from tests.test_prometheus import _reachable, _stop, alertmanager_tool

pytestmark = pytest.mark.timeout(180)
PEER_TIMEOUT = 3  # seconds the second node waits for the first's notification log entry


class Notified:
    """Alertmanager's webhook receiver: every notification, as posted."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.receiver = JSONReceiver(lambda path, headers, body: self.posts.append(body) or True)
        self.port = self.receiver.port

    def close(self) -> None:
        self.receiver.close()

    def firing(self) -> dict[str, int]:
        """Notifications per certwatch alert key."""
        counts: dict[str, int] = {}
        for post in self.posts:
            for alert in post["alerts"]:
                if alert["status"] == "firing":
                    key = alert["labels"]["certwatch_key"]
                    counts[key] = counts.get(key, 0) + 1
        return counts


def _metric(base: str, name: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and 'status="firing"' in line)


@pytest.mark.parametrize("gossip", [True, False], ids=["cluster", "two-lone-nodes"])
def test_a_two_node_cluster_notifies_each_alert_once(pki: tuple[Issued, Path],  # noqa: F811
                                                     gossip: bool) -> None:
    binary = alertmanager_tool("prometheus-alertmanager")
    inter, directory = pki
    notified = Notified()
    (directory / "alertmanager.yml").write_text(yaml.safe_dump({
        "route": {"receiver": "hook", "group_by": ["..."], "group_wait": "1s",
                  "group_interval": "10m", "repeat_interval": "1h"},
        "receivers": [{"name": "hook", "webhook_configs": [
            {"url": f"http://127.0.0.1:{notified.port}/", "send_resolved": False}]}],
    }))
    web_ports, cluster_ports = [free_port(), free_port()], [free_port(), free_port()]
    with contextlib.ExitStack() as stack:
        stack.callback(notified.close)
        nodes = []
        for index in range(2):
            peer = cluster_ports[1 - index]
            log = stack.enter_context((directory / f"alertmanager{index}.log").open("w"))
            cluster = [f"--cluster.listen-address=127.0.0.1:{cluster_ports[index]}",
                       f"--cluster.advertise-address=127.0.0.1:{cluster_ports[index]}",
                       f"--cluster.peer=127.0.0.1:{peer}", f"--cluster.peer-timeout={PEER_TIMEOUT}s",
                       "--cluster.settle-timeout=5s", "--cluster.reconnect-interval=1s"]
            process = subprocess.Popen(
                [binary, f"--config.file={directory / 'alertmanager.yml'}",
                 f"--storage.path={directory / f'am{index}'}",
                 f"--web.listen-address=127.0.0.1:{web_ports[index]}",
                 *(cluster if gossip else ["--cluster.listen-address="])],
                stdout=log, stderr=subprocess.STDOUT)
            stack.callback(_stop, process)
            nodes.append(f"http://127.0.0.1:{web_ports[index]}")

        def clustered() -> bool:
            for base in nodes:
                if not _reachable(f"{base}/-/ready"):
                    return False
                with urllib.request.urlopen(f"{base}/api/v2/status", timeout=5) as response:
                    cluster = json.loads(response.read())["cluster"]
                if gossip and (cluster.get("status") != "ready"
                               or len(cluster.get("peers") or []) != 2):
                    return False
            return True

        wait_for("the two Alertmanagers to form a cluster", clustered, timeout=60)
        servers = [stack.enter_context(TLSServer({None: leaf_files(inter, directory, f"w{n}", 5)}))
                   for n in range(3)]  # 5 days left: a critical expiry alert each
        endpoints = "".join(f"  - {{name: site{n}, host: 127.0.0.1, port: {s.port}, "
                            "server_name: svc.test}\n" for n, s in enumerate(servers))
        sinks = "".join(f"    - {{name: am{n}, type: alertmanager, url: '{base}'}}\n"
                        for n, base in enumerate(nodes))
        replicas = []
        for index in range(2):
            config = directory / f"certwatch{index}.yaml"
            config.write_text(
                "defaults: {ca_file: root.pem, system_trust: false, interval: 2s, "
                "revocation: false}\n"
                f"alerts:\n  state_dir: {directory / f'state{index}'}\n  sinks:\n{sinks}"
                f"endpoints:\n{endpoints}")
            daemon = RunningDaemon(config, directory / f"certwatch{index}.log")
            stack.callback(daemon.stop)
            replicas.append(daemon)
        alerts = 3 * 2  # per endpoint: expiry (critical) and renewal overdue (warning)
        wait_for("every alert notified", lambda: len(notified.firing()) == alerts, timeout=60)
        if not gossip:
            wait_for("both lone nodes to notify", lambda: sum(notified.firing().values())
                     == 2 * alerts, timeout=30)
        wait_for("both replicas' alerts received by both nodes", lambda: all(
            _metric(base, "alertmanager_alerts_received_total") >= 2 * alerts for base in nodes),
            timeout=30)
        time.sleep(2 * PEER_TIMEOUT + 2)  # the second node's turn, had it not deduplicated
        counts = notified.firing()
        print(f"\nALERTMANAGER-HA gossip={gossip} alerts={len(counts)} "
              f"notifications={sum(counts.values())} "
              f"received_per_node={[_metric(b, 'alertmanager_alerts_received_total') for b in nodes]}")
        assert counts == {key: 1 if gossip else 2 for key in counts}, counts
        assert {k.rsplit("/", 1)[1] for k in counts} == {"expiry", "renewal_overdue"}
