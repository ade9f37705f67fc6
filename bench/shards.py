"""Benchmark: 100,000 loopback targets across 4 shards, each a real `certwatch run --shard i/4`.

    python bench/shards.py --targets 100000 --shards 4 --concurrency 200

The targets: one endpoint each (`t<i>`, SNI t<i>.bench.certwatch.test), spread over a
few TLS server processes that listen on several 127.0.77.x addresses and serve one
*.bench.certwatch.test certificate for every name (the machine allows ~20,000 file
descriptors a process: one socket per target, as bench/daemon.py does, would not fit).
The shards run one after another, not at once: the machine has 2 cores, which the
servers share with the shard being measured, so each shard's figures are its own.

Per shard, from outside the process as an operator sees it:
- the endpoints it owns (rendezvous hashing of the names, as the daemon does it);
- start-up (spawn until "configuration loaded": reading all 100,000 entries, keeping its
  share), and one full sweep (until /readyz answers 200);
- its CPU over the sweep, per probe; peak RSS (VmHWM) after the sweep and after scrapes;
- /metrics: size, series and wall time (plain and gzipped, as Prometheus asks for it);
- then SIGTERM, which must end it with status 0.

And the move when a fifth shard is added: the endpoints whose owner changes from 4 to
5 shards (rendezvous: about a fifth, all to the new shard), beside what hash mod N
would move. Every wait is bounded; results go to bench/results/shards-<N>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon import DaemonLog, cpu_seconds, get, memory_mb, wait_for_log  # noqa: E402
from sweep import DOMAIN, REPO, raise_fd_limit  # noqa: E402

sys.path.insert(0, str(REPO))
from certwatch.core.sharding import owner  # noqa: E402

ADDRESSES = 8  # 127.0.77.1 .. .8, split among the server processes
SERVERS = 2  # server processes
STARTUP_TIMEOUT = 300.0
SWEEP_TIMEOUT = 1800.0
SCRAPES = 3


# --- the servers ---------------------------------------------------------------------------


def _pki(directory: Path) -> tuple[Path, Path, Path]:
    from tests import pki

    now = datetime.now(timezone.utc)
    root = pki.make_root("certwatch shards bench root", not_before=now - timedelta(days=1),
                         not_after=now + timedelta(days=3650))
    leaf = pki.make_leaf(root, [f"*.{DOMAIN}"], not_before=now - timedelta(days=1),
                         not_after=now + timedelta(days=60))
    cert, key = leaf.write(directory, "leaf")
    return cert, key, pki.write_pem(directory / "root.pem", [root.cert])


def _serve(addresses: list[str], port: int, cert: str, key: str, ready: Any) -> None:
    async def main() -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(30):
                    await writer.start_tls(context)
                    await reader.read(1)
            writer.transport.abort()

        servers = [await asyncio.start_server(handle, a, port, backlog=4096) for a in addresses]
        ready.set()
        await asyncio.gather(*(s.serve_forever() for s in servers))

    raise_fd_limit(4096)
    asyncio.run(main())


# --- one shard ------------------------------------------------------------------------------


def write_inventory(path: Path, targets: int, port: int, root: Path, concurrency: int) -> None:
    lines = [f"max_concurrency: {concurrency}",
             f"defaults: {{ca_file: {root}, system_trust: false, interval: 1h, timeout: 10,"
             " revocation: false}", "endpoints:"]
    lines += [f"  - {{name: t{i}, host: 127.0.77.{i % ADDRESSES + 1}, port: {port}, "
              f"server_name: t{i}.{DOMAIN}}}" for i in range(targets)]
    path.write_text("\n".join(lines) + "\n")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_shard(index: int, count: int, inventory: Path, directory: Path,
              owned: int) -> dict[str, Any]:
    port = free_port()
    log_path = directory / f"shard{index}.log"
    with log_path.open("wb") as log_file:
        started = time.time()
        process = subprocess.Popen(
            [sys.executable, "-m", "certwatch", "--log-format", "json", "run", "-c", str(inventory),
             "--listen", f"127.0.0.1:{port}", "--shard", f"{index}/{count}"],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)
    log = DaemonLog(log_path)
    try:
        wait_for_log(process, log, "configuration loaded", STARTUP_TIMEOUT)
        loaded = log.time_of("configuration loaded") or time.time()
        cpu_at_load = sum(cpu_seconds(process.pid))
        rss_loaded = memory_mb(process.pid)["VmRSS"]
        wait_for_log(process, log, "first sweep finished", SWEEP_TIMEOUT)
        swept = log.time_of("first sweep finished") or time.time()
        sweep_cpu = sum(cpu_seconds(process.pid)) - cpu_at_load
        peak_after_sweep = memory_mb(process.pid)["VmHWM"]
        status, body, _ = get(port, "/api/v1/targets")
        states: dict[str, int] = {}
        for target in json.loads(body):
            states[target["state"]] = states.get(target["state"], 0) + 1
        plain, zipped = [], []
        for _ in range(SCRAPES):
            status, body, seconds = get(port, "/metrics")
            plain.append(seconds)
            _, gz, gz_seconds = get(port, "/metrics", gzipped=True)
            zipped.append(gz_seconds)
        series = sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))
        figures = {
            "shard": f"{index}/{count}", "owned_endpoints": owned,
            "startup_seconds": round(loaded - started, 1),
            "rss_after_load_mb": round(rss_loaded),
            "sweep_seconds": round(swept - loaded, 1),
            "probes_per_second": round(owned / max(swept - loaded, 1e-9)),
            "sweep_cpu_ms_per_probe": round(1000 * sweep_cpu / max(owned, 1), 2),
            "peak_rss_after_sweep_mb": round(peak_after_sweep),
            "states": states,
            "metrics_bytes": len(body), "metrics_series": series,
            "metrics_gzip_bytes": len(gz),
            "metrics_seconds_median": round(statistics.median(plain), 2),
            "metrics_gzip_seconds_median": round(statistics.median(zipped), 2),
            "peak_rss_mb": round(memory_mb(process.pid)["VmHWM"]),
        }
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(timeout=10)
    figures["exit_code"] = code
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--only", type=int, action="append", help="measure only these shards")
    args = parser.parse_args()
    raise_fd_limit(args.concurrency * 4 + 256)
    names = [f"t{i}" for i in range(args.targets)]
    owners = [owner(n, args.shards) for n in names]
    grown = [owner(n, args.shards + 1) for n in names]
    moved = sum(a != b for a, b in zip(owners, grown))
    to_new = sum(a != b and b == args.shards for a, b in zip(owners, grown))
    import hashlib

    def mod(name: str, count: int) -> int:
        return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") % count

    moved_mod = sum(mod(n, args.shards) != mod(n, args.shards + 1) for n in names)
    print(f"adding shard {args.shards + 1}: {moved} of {args.targets} endpoints move "
          f"({moved / args.targets:.1%}; {to_new} of them to the new shard); "
          f"hash mod N would move {moved_mod} ({moved_mod / args.targets:.1%})", flush=True)
    results: dict[str, Any] = {"targets": args.targets, "shards": args.shards,
                               "concurrency": args.concurrency, "cpus": os.cpu_count(),
                               "moved_to_add_a_shard": moved, "moved_share": moved / args.targets,
                               "moved_with_hash_mod_n": moved_mod, "per_shard": []}
    with tempfile.TemporaryDirectory(prefix="certwatch-shards-") as tmp:
        directory = Path(tmp)
        cert, key, root = _pki(directory)
        port = free_port()
        spawn = multiprocessing.get_context("spawn")
        servers = []
        addresses = [f"127.0.77.{a + 1}" for a in range(ADDRESSES)]
        for n in range(SERVERS):
            ready = spawn.Event()
            server = spawn.Process(target=_serve, daemon=True, args=(
                addresses[n::SERVERS], port, str(cert), str(key), ready))
            server.start()
            if not ready.wait(60):
                raise SystemExit("FAIL: a server process did not start")
            servers.append(server)
        inventory = directory / "certwatch.yaml"
        write_inventory(inventory, args.targets, port, root, args.concurrency)
        try:
            for index in range(args.shards):
                if args.only and index not in args.only:
                    continue
                figures = run_shard(index, args.shards, inventory, directory,
                                    owners.count(index))
                print(json.dumps(figures), flush=True)
                results["per_shard"].append(figures)
        finally:
            for server in servers:
                server.terminate()
                server.join(10)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"shards-{args.targets}.json").write_text(json.dumps(results, indent=1) + "\n")
    bad = [f for f in results["per_shard"]
           if f["exit_code"] != 0 or set(f["states"]) != {"ok"}]
    if bad:
        print(f"FAIL: {bad}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
