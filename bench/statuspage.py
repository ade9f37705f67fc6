"""Benchmark: the status page (and its filters and detail page) over N targets.

    python bench/statuspage.py --targets 10000

bench/daemon.py measures the whole daemon, probes included; this one isolates the web
layer, so that it takes seconds rather than a sweep. The targets are real
assessments (certwatch's own `assess` over certificates made here, one leaf per
target, under one intermediate, each chain parsed as a probe would) in the mix the
issue's trial had: most ok, some warning, `--critical` critical, `--errors` with no
certificate (refused), labels `team` (10 values) and `env` (3). They sit in a real
`Store`; the app is the daemon's own (`certwatch.serving.web.create_app`) over a view of
that store, served by aiohttp on 127.0.0.1 (port 0) in this process; a client thread
asks each path `--requests` times over loopback HTTP.

For each path: wall time (min / median / max), this process's CPU per request (the
server's rendering and the client's reading both; the client's share is small), and
the response's size and number of table rows. Paths a version does not have (the
detail page before it existed) show as their status code. It runs against whatever
`certwatch` is importable, so the same script measures before and after a change:

    git archive <base> | tar -x -C /tmp/base && PYTHONPATH=/tmp/base python bench/statuspage.py

The figures are printed and written as one JSON line to bench/results/statuspage-<N>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import random
import re
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # tests/pki.py; after PYTHONPATH, which may name another certwatch

from aiohttp import web  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

import certwatch  # noqa: E402
from certwatch.core.assess import assess  # noqa: E402
from certwatch.core.inventory import Endpoint  # noqa: E402
from certwatch.core.observation import Observation, ProbeError, Target  # noqa: E402
from certwatch.core.status import TargetStatus  # noqa: E402
from certwatch.core.verify import TrustStore  # noqa: E402
from certwatch.core.vocabulary import ErrorKind, Phase  # noqa: E402
from certwatch.daemon.store import Store  # noqa: E402
from certwatch.serving.web import create_app  # noqa: E402
from tests import pki  # noqa: E402

TEAMS = ("payments", "web", "mail", "data", "search", "identity", "edge", "billing",
         "mobile", "internal")
ENVS = ("prod", "staging", "dev")
HTTP_TIMEOUT = 60.0


class View:
    """The daemon's view (certwatch.serving.web.DaemonView) over a filled store."""

    def __init__(self, store: Store, next_probe: datetime) -> None:
        self.registry = CollectorRegistry()
        self.store = store
        self._next = next_probe

    def snapshot(self) -> Mapping[str, TargetStatus]:
        return self.store.snapshot()

    def target_metrics(self) -> Iterator[str]:
        return iter(())

    def next_probe_at(self, endpoint_name: str) -> datetime | None:
        return self._next

    def ready(self) -> bool:
        return True

    def notices(self) -> list[str]:
        return []

    def alerts_by_target(self) -> dict[str, list[dict[str, Any]]]:
        return {}


def private_ca(now: datetime, name: str) -> tuple[TrustStore, pki.Issued, bytes]:
    """A bench root and its issuing CA `name`: the store trusting the root, the CA that
    issues the leaves, and its DER (the chain's second certificate)."""
    root = pki.make_root("bench root", not_before=now - timedelta(days=900),
                         not_after=now + timedelta(days=3650))
    intermediate = pki.make_intermediate(root, name, not_before=now - timedelta(days=400),
                                         not_after=now + timedelta(days=1500))
    return TrustStore.of([root.cert]), intermediate, intermediate.cert.public_bytes(Encoding.DER)


def build_store(count: int, critical: int, errors: int, now: datetime) -> tuple[Store, str]:
    """`count` targets, as the daemon's pipeline would have stored them; and one key."""
    trust, intermediate, inter_der = private_ca(now, "bench issuing CA R11")
    rng = random.Random(16)
    store = Store()
    key = ""
    for i in range(count):
        labels = (("env", ENVS[i % len(ENVS)]), ("team", TEAMS[i % len(TEAMS)]))
        endpoint = Endpoint(name=f"t{i}", host=f"t{i}.bench.example", port=443,
                            server_name=f"t{i}.bench.example", labels=labels)
        target = Target(endpoint, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
        if i < errors:
            error = ProbeError(ErrorKind.REFUSED, Phase.CONNECT, "connection refused")
            observation = Observation(target, now, 0.001, error=error)
        else:
            left = 3.0 if i < errors + critical else rng.uniform(12, 200)
            leaf = pki.make_leaf(intermediate, [endpoint.host], not_before=now - timedelta(
                days=90 - left if left < 90 else 10), not_after=now + timedelta(days=left))
            chain = (leaf.cert.public_bytes(Encoding.DER), inter_der)
            observation = Observation(target, now, 0.02, chain=chain, tls_version="TLSv1.3",
                                      cipher="TLS_AES_128_GCM_SHA256")
        assessment = assess(observation, now, trust)
        status = TargetStatus(assessment, observation.error, 1 if observation.error else 0,
                              now, observation.duration_seconds)
        store.replace_endpoint(endpoint.name, [status])
        if i == count - 1:
            key = target.key
    return store, key


@dataclass(frozen=True, slots=True)
class Measured:
    path: str
    status: int
    requests: int
    wall_min_ms: float
    wall_median_ms: float
    wall_max_ms: float
    cpu_ms_per_request: float
    bytes: int
    rows: int


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def measure(port: int, path: str, requests: int) -> Measured:
    walls = []
    body, status = b"", 0
    cpu = time.process_time()
    for _ in range(requests):
        start = time.perf_counter()
        status, body = get(port, path)
        walls.append((time.perf_counter() - start) * 1000)
    cpu_ms = (time.process_time() - cpu) * 1000 / requests
    rows = len(re.findall(rb'<tr class="s-', body))
    return Measured(path, status, requests, min(walls), statistics.median(walls), max(walls),
                    cpu_ms, len(body), rows)


async def serve_and_measure(view: View, paths: list[str], requests: int) -> list[Measured]:
    runner = web.AppRunner(create_app(view))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    results: list[Measured] = []

    def client() -> None:
        get(port, "/")  # warm-up: first-use costs are not the page's
        results.extend(measure(port, path, requests) for path in paths)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.01)
    await runner.cleanup()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10000)
    parser.add_argument("--critical", type=int, default=2)
    parser.add_argument("--errors", type=int, default=2000, help="targets with no certificate")
    parser.add_argument("--requests", type=int, default=5)
    args = parser.parse_args()
    if args.targets < args.critical + args.errors + 1:
        parser.error("--targets must exceed --critical + --errors")
    now = datetime.now(timezone.utc)
    start = time.perf_counter()
    store, key = build_store(args.targets, args.critical, args.errors, now)
    built = time.perf_counter() - start
    paths = ["/", "/?state=critical", "/?q=t1234", "/?team=payments&env=prod",
             "/?sort=name&page=20", f"/target?key={quote(key, safe='')}"]
    results = asyncio.run(serve_and_measure(View(store, now + timedelta(minutes=42)), paths,
                                            args.requests))
    source = Path(certwatch.__file__).resolve().parents[1]
    print(f"status page: {args.targets} targets ({args.errors} without a certificate, "
          f"{args.critical} critical), certwatch from {source}; built in {built:.1f} s")
    for m in results:
        print(f"  {m.path:28} {m.status}  {m.wall_median_ms:8.1f} ms median (min "
              f"{m.wall_min_ms:.1f}, max {m.wall_max_ms:.1f}), CPU {m.cpu_ms_per_request:7.1f}"
              f" ms, {m.bytes / 1e6:7.3f} MB, {m.rows:5} rows")
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    record = {"at": now.isoformat(timespec="seconds"), "targets": args.targets,
              "critical": args.critical, "errors": args.errors, "source": str(source),
              "paths": [asdict(m) for m in results]}
    (results_dir / f"statuspage-{args.targets}.json").write_text(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
