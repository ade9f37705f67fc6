"""Benchmark: the daemon's /metrics scrape over N targets, without a sweep first.

    python bench/scrape.py --targets 100000

bench/daemon.py measures the scrape too, but only after a full sweep (five minutes at
100,000 targets); this one isolates it, so that a change to the exposition or to the
web layer is measured in seconds. The statuses are real assessments (certwatch's own
`assess` and refusal checks over certificates made here, as bench/daemon.py's targets
are: one leaf per target under one intermediate of a private root, every target ok),
`--distinct` of them, replicated with their own name, address, port, serial,
fingerprint and times, so the text (about 1.2 KB a target) and its gzip look like the
daemon's. They sit in a real `Store`; the app is the daemon's own
(`certwatch.serving.web.create_app`, the daemon's own registry of health metrics beside
the targets) served by aiohttp on 127.0.0.1 (port 0) in this process, on the daemon's
event loop (uvloop when installed: certwatch.eventloop); the client is another process,
as Prometheus is.

For /metrics, plain and gzipped: wall time (min / median / max), this process's CPU per
request, the response's size on the wire and its series; how long /healthz waits when
asked during a scrape; and this process's peak RSS before and after the scrapes (the
rise is what a scrape holds at once). It runs against whatever `certwatch` is
importable, so the same script measures before and after a change:

    git archive <base> | tar -x -C /tmp/base && PYTHONPATH=/tmp/base python bench/scrape.py

The figures are printed and written as one JSON line to bench/results/scrape-<N>.json.
Every wait is bounded (each request by bench/daemon.py's HTTP_TIMEOUT, the client
process by a deadline and its joins).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import multiprocessing
import random
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # tests/pki.py; after PYTHONPATH, which may name another certwatch
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benches, reused

from aiohttp import web  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

import certwatch  # noqa: E402
from certwatch import eventloop  # noqa: E402
from certwatch.config.refusals import shipped_policy  # noqa: E402
from certwatch.core.assess import Assessment, assess  # noqa: E402
from certwatch.core.inventory import Endpoint  # noqa: E402
from certwatch.core.observation import Observation, Target  # noqa: E402
from certwatch.core.refusals import judge_refusals  # noqa: E402
from certwatch.core.status import TargetStatus  # noqa: E402
from certwatch.daemon.store import Store  # noqa: E402
from certwatch.render.exposition import TargetExposition  # noqa: E402
from certwatch.serving.metrics import DaemonMetrics  # noqa: E402
from certwatch.serving.web import create_app  # noqa: E402
from tests import pki  # noqa: E402

import daemon  # noqa: E402 - its requests, as bench/daemon.py makes them
from daemon import get, healthz_during_scrape  # noqa: E402
from statuspage import View as PageView  # noqa: E402 - the daemon's view over a store
from statuspage import private_ca  # noqa: E402


CLIENT_MARGIN = 60.0  # seconds beyond the requests' own bounds before the client is given up
SCRAPE_TARGET_SECONDS = 3.0  # the issue's: a scrape of 100,000 targets within 3 s


class _NoEvidence:
    """No CRL nor OCSP answer at hand (the bench's chains name none)."""

    def crl(self, url: str) -> None:
        return None

    def ocsp(self, url: str, request: bytes) -> None:
        return None


def _distinct(count: int, now: datetime) -> list[Assessment]:
    """`count` real assessments, each of its own leaf, as the daemon judges them."""
    trust, intermediate, inter_der = private_ca(now, "bench issuing CA")
    policy = shipped_policy()
    out = []
    for i in range(count):
        endpoint = Endpoint(name=f"t{i}", host="127.0.0.1", port=10000 + i,
                            server_name=f"t{i}.bench.test")
        leaf = pki.make_leaf(intermediate, [f"t{i}.bench.test"], not_before=now - timedelta(days=10),
                             not_after=now + timedelta(days=80))
        observation = Observation(Target(endpoint, "127.0.0.1"), now, 0.02,
                                  chain=(leaf.cert.public_bytes(Encoding.DER), inter_der),
                                  tls_version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256")
        out.append(judge_refusals(assess(observation, now, trust), trust, endpoint.revocation,
                                  _NoEvidence(), policy, now, public_roots=frozenset()))
    return out


def build_store(count: int, distinct: int, now: datetime) -> Store:
    """`count` targets, each a copy of one of `distinct` assessments with an identity,
    a leaf serial and fingerprint, and times of its own."""
    assessments = _distinct(min(distinct, count), now)
    rng = random.Random(15)
    store = Store()
    for i in range(count):
        a = assessments[i % len(assessments)]
        at = now + timedelta(seconds=i * 0.00321)
        host = f"127.{i // 65536}.{i // 256 % 256}.{i % 256 + 1}"
        target = Target(replace(a.target.endpoint, name=f"t{i}", host=host, port=10000 + i % 20000,
                                server_name=f"t{i}.bench.test"), host)
        moved = timedelta(seconds=rng.randrange(86400))
        leaf = replace(a.chain[0], serial=f"{rng.getrandbits(128):x}",
                       fingerprint_sha256=f"{rng.getrandbits(256):064x}",
                       not_after=a.chain[0].not_after + moved)
        expiry = replace(a.expiry, not_after=leaf.not_after) if a.expiry else None
        renewal = replace(a.renewal, due_at=a.renewal.due_at + moved) if a.renewal else None
        observation = replace(a.observation, target=target, started_at=at,
                              duration_seconds=0.02 + rng.random() / 50)
        status = replace(a, target=target, observation=observation, checked_at=at,
                         chain=(leaf, *a.chain[1:]), expiry=expiry, renewal=renewal,
                         earliest=leaf if a.earliest is a.chain[0] else a.earliest)
        store.replace_endpoint(target.endpoint.name, [
            TargetStatus(status, None, 0, at, observation.duration_seconds)])
    return store


class View(PageView):
    """The daemon's view (certwatch.serving.web.DaemonView) over a filled store, with the
    daemon's registry and its exposition of the targets."""

    def __init__(self, store: Store, now: datetime) -> None:
        super().__init__(store, now)
        self.registry = DaemonMetrics().registry
        self.exposition = TargetExposition(store.statuses, lambda: 0.0)

    def target_metrics(self) -> Iterator[str]:
        return self.exposition.pieces()


# --- the client, in a process of its own (bench/daemon.py's requests) ----------------------


def client(port: int, requests: int, conn: Any) -> None:
    """Each /metrics `requests` times plain then gzipped, and /healthz during one; sends
    ("times", plain, gzipped, healthz, sizes, series) or ("failed", why) back."""
    try:
        walls: dict[str, list[float]] = {"plain": [], "gzip": []}
        sizes: dict[str, int] = {}
        series: dict[str, int] = {}
        for kind in ("plain", "gzip"):
            conn.send(("start", kind))
            conn.recv()  # the server's CPU is read before the requests
            for _ in range(requests):
                status, body, wall = get(port, "/metrics", gzipped=kind == "gzip")
                if status != 200:
                    raise SystemExit(f"FAIL: /metrics answered {status}")
                walls[kind].append(wall)
            sizes[kind] = len(body)
            text = gzip.decompress(body) if kind == "gzip" else body
            series[kind] = sum(1 for line in text.split(b"\n") if line and not line.startswith(b"#"))
            conn.send(("done", kind))
            conn.recv()
        healthz_ms = healthz_during_scrape(port)
        conn.send(("times", walls, healthz_ms, sizes, series))
    except BaseException as error:  # reported, then the process ends
        conn.send(("failed", repr(error)))


# --- the server side -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scrape:
    """Repeated /metrics requests of one kind."""

    kind: str  # plain, or gzip (as Prometheus asks)
    requests: int
    wall_min_ms: float
    wall_median_ms: float
    wall_max_ms: float
    cpu_ms_per_request: float  # this process's: the rendering and serving
    bytes: int  # on the wire
    series: int


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def serve_and_measure(view: View, requests: int) -> tuple[list[Scrape], float]:
    """The scrapes' figures, and how long /healthz took during one (ms)."""
    runner = web.AppRunner(create_app(view), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    ours, theirs = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(target=client,
                                                          args=(port, requests, theirs))
    process.start()
    deadline = time.monotonic() + (2 * requests + 2) * daemon.HTTP_TIMEOUT + CLIENT_MARGIN
    cpu: dict[str, float] = {}
    try:
        while True:
            while not ours.poll():
                if time.monotonic() > deadline or not process.is_alive():
                    raise SystemExit("FAIL: the client process did not finish in time")
                await asyncio.sleep(0.01)
            message = ours.recv()
            if message[0] == "start":
                cpu[message[1]] = time.process_time()
                ours.send("go")
            elif message[0] == "done":
                cpu[message[1]] = time.process_time() - cpu[message[1]]
                ours.send("go")
            elif message[0] == "failed":
                raise SystemExit(f"FAIL: the client: {message[1]}")
            else:
                break
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(5)
        await runner.cleanup()
    _, walls, healthz_ms, sizes, series = message
    scrapes = [Scrape(kind, requests, min(w) * 1000, statistics.median(w) * 1000, max(w) * 1000,
                      cpu[kind] * 1000 / requests, sizes[kind], series[kind])
               for kind, w in walls.items()]
    return scrapes, healthz_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=100000)
    parser.add_argument("--distinct", type=int, default=200,
                        help="real assessments the targets are copies of (default %(default)s)")
    parser.add_argument("--requests", type=int, default=5,
                        help="requests of each kind (default %(default)s)")
    args = parser.parse_args()
    if args.targets < 1 or args.distinct < 1 or args.requests < 1:
        parser.error("--targets, --distinct and --requests must be at least 1")
    now = datetime.now(timezone.utc)
    start = time.perf_counter()
    store = build_store(args.targets, args.distinct, now)
    built = time.perf_counter() - start
    rss_before = peak_rss_mb()
    loop, _ = eventloop.loop_factory()
    scrapes, healthz_ms = eventloop.run(serve_and_measure(View(store, now), args.requests))
    rss_after = peak_rss_mb()
    source = Path(certwatch.__file__).resolve().parents[1]
    print(f"/metrics: {args.targets} targets (copies of {args.distinct}), certwatch from "
          f"{source}, event loop {loop}; built in {built:.1f} s")
    for s in scrapes:
        verdict = "PASS" if s.wall_max_ms <= SCRAPE_TARGET_SECONDS * 1000 else "MISS"
        print(f"  {s.kind:6} {s.wall_median_ms:8.1f} ms median (min {s.wall_min_ms:.1f}, max "
              f"{s.wall_max_ms:.1f}; {verdict} within {SCRAPE_TARGET_SECONDS:g} s), CPU "
              f"{s.cpu_ms_per_request:7.1f} ms, {s.bytes / 1e6:7.2f} MB, {s.series} series")
    print(f"  /healthz during a scrape: {healthz_ms:.1f} ms")
    print(f"  peak RSS: {rss_before:.1f} MB before the scrapes, {rss_after:.1f} MB after "
          f"(+{rss_after - rss_before:.1f} MB)")
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    record = {"at": now.isoformat(timespec="seconds"), "targets": args.targets,
              "distinct": args.distinct, "source": str(source), "event_loop": loop,
              "built_seconds": built,
              "scrapes": [asdict(s) for s in scrapes], "healthz_during_scrape_ms": healthz_ms,
              "peak_rss_mb_before": rss_before, "peak_rss_mb_after": rss_after}
    (results_dir / f"scrape-{args.targets}.json").write_text(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
