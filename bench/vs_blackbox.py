"""Benchmark: certwatch's daemon against Debian's blackbox_exporter, on the same targets.

    python bench/vs_blackbox.py --targets 2000 --concurrency 64 --steady 60 --interval 20

The targets: one loopback nginx (Debian's) serving N SNI names (t<i>.bench.certwatch.test,
one ECDSA P-256 wildcard leaf from a private intermediate and root; no session
resumption, no tickets), on 127.0.0.1 and one port. Both sides probe the same N names at
the same address, with the same CA, in the same run, one after the other:

- blackbox_exporter (`prometheus-blackbox-exporter`, Debian's, 0.23): one tcp module per
  name with `tls: true` and its server_name and ca_file, swept through /probe by a small
  HTTP/1.1 client in another process (keep-alive connections, `--concurrency` requests in
  flight), after a warm-up. Per probe it connects, does a *verified* handshake (chain and
  name, in Go's crypto/tls), and renders its metrics. Then its steady state as operators
  run it (unless --no-blackbox-steady): a real Prometheus (Debian's `prometheus`)
  scraping /probe for each name every --interval, as certwatch's steady state probes
  them. A probe costs blackbox 1.1-1.9x more CPU in that steady state than in a sweep
  (on this 2-core VM, work that follows an idle gap runs slower), so certwatch's steady
  state is set against blackbox's, and, as the issue's first table did, against its sweep.
- certwatch (`python -m certwatch run`, as operators run it; PYTHONPATH may point at
  another checkout's certwatch, for a before/after in the same harness): the same N endpoints in an
  inventory (max_concurrency = --concurrency, interval --interval, a state_dir so the
  certificate history is in SQLite). Per probe it connects, handshakes with OpenSSL
  (verification off, asking for the OCSP staple), parses the chain, verifies it offline
  (cryptography's verifier: trust, validity, name), judges expiry, renewal, revocation
  (the staple; the bench's certificates name no CRL or OCSP URL) and the root-program
  lints, records the leaf in the certificate history and the status in its store. Its
  first sweep, then a steady state of at least --steady seconds at that interval. With
  `--shards N`, N daemons run at once, each owning its shard (`--shard i/N`, rendezvous
  hashing), as an operator would use more cores: the first sweep runs from the first
  start to the last sweep's end, and CPU, probes and peak RSS are their sums.

Measured from outside each process (/proc): CPU (user + sys) per probe, probes per
second, peak RSS (VmHWM); nginx's CPU in each phase is printed too, to show it was not
the bottleneck. Ratios are certwatch / blackbox. It fails (exit 1) if any result is
wrong: a blackbox probe not successful or with another earliest expiry than the leaf's
notAfter, a certwatch target not `ok` or with another expiry, a sweep that missed a
target, or a process that died. The issue's targets print PASS or MISS.

Only loopback is used; every wait is bounded (--deadline for each phase, HTTP_TIMEOUT a
request, START_TIMEOUT for each process to come up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon import (LOG_POLL, DaemonLog, cpu_seconds, get, logged, memory_mb,  # noqa: E402
                    wait_for_log)
from sweep import REPO, raise_fd_limit, stop_process  # noqa: E402

sys.path.insert(0, str(REPO))

DOMAIN = "bench.certwatch.test"
START_TIMEOUT = 60.0
HTTP_TIMEOUT = 30.0
STOP_GRACE = 15.0  # seconds each process gets to stop on SIGTERM
WARMUP = 100  # blackbox probes before the measured sweep
NGINX = "/usr/sbin/nginx"
BLACKBOX = "prometheus-blackbox-exporter"
PROMETHEUS = "prometheus"
TARGETS = {  # the issue's: certwatch / blackbox
    "steady-state CPU per probe": ("<=", 0.75),  # each in its steady state
    "steady-state CPU, vs blackbox's sweep": ("<=", 0.75),  # the first comparison
    "first-sweep CPU per probe": ("<=", 1.0),
    "first-sweep throughput": (">=", 1.0),
}


def endpoint_lines(count: int, port: int) -> list[str]:
    """The inventory entries of the first `count` names (t<i>), on the nginx at `port`:
    the targets of this comparison, and of the benches that reuse its nginx."""
    return [f"  - {{name: t{i}, host: 127.0.0.1, port: {port}, server_name: t{i}.{DOMAIN}}}"
            for i in range(count)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_pki(directory: Path) -> tuple[Path, Path, Path, float]:
    """Root -> intermediate -> *.DOMAIN leaf (ECDSA P-256); (chain, key, root, notAfter)."""
    from tests import pki

    now = datetime.now(timezone.utc).replace(microsecond=0)
    root = pki.make_root("certwatch bench root", not_before=now - timedelta(days=1),
                         not_after=now + timedelta(days=3650))
    intermediate = pki.make_intermediate(root, "certwatch bench intermediate",
                                         not_before=now - timedelta(days=1),
                                         not_after=now + timedelta(days=365))
    leaf = pki.make_leaf(intermediate, [f"*.{DOMAIN}"], not_before=now - timedelta(hours=1),
                         not_after=now + timedelta(days=90))
    chain, key = leaf.write(directory, "leaf")
    return chain, key, pki.write_pem(directory / "root.pem", [root.cert]), \
        leaf.cert.not_valid_after_utc.timestamp()


# --- the processes -------------------------------------------------------------------------


def start(command: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, **kw)


def wait_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    end = time.monotonic() + START_TIMEOUT
    while time.monotonic() < end:
        if process.poll() is not None:
            raise SystemExit(f"FAIL: {what} exited with status {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"FAIL: {what} did not listen on port {port} within {START_TIMEOUT:g}s")


def nginx(directory: Path, chain: Path, key: Path, port: int) -> subprocess.Popen[bytes]:
    conf = directory / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 2;
pid {directory}/nginx.pid;
error_log {directory}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {directory}/nginx-body;
    proxy_temp_path {directory}/nginx-proxy;
    fastcgi_temp_path {directory}/nginx-fastcgi;
    uwsgi_temp_path {directory}/nginx-uwsgi;
    scgi_temp_path {directory}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name *.{DOMAIN};
        ssl_certificate {chain};
        ssl_certificate_key {key};
        ssl_session_cache off;
        ssl_session_tickets off;
        return 204;
    }}
}}
""")
    process = start([NGINX, "-c", str(conf), "-e", str(directory / "nginx-error.log")],
                    directory / "nginx.out")
    wait_port(port, process, "nginx")
    return process


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (nginx's master and workers)."""
    total = sum(cpu_seconds(pid))
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else ():
        try:
            total += sum(cpu_seconds(int(child)))
        except FileNotFoundError:
            pass
    return total


# --- blackbox_exporter ---------------------------------------------------------------------


async def sweep_probes(port: int, paths: list[str], concurrency: int,
                       deadline: float) -> list[bytes]:
    """GETs every path over `concurrency` keep-alive connections; the bodies, in order."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(paths)):
        queue.put_nowait(index)
    bodies: list[bytes] = [b""] * len(paths)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                index = queue.get_nowait()
                writer.write(f"GET {paths[index]} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                bodies[index] = await reader.readexactly(length)
        finally:
            writer.close()

    async with asyncio.timeout(deadline):
        await asyncio.gather(*(connection() for _ in range(concurrency)))
    return bodies


def sample(body: bytes, name: str) -> float | None:
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


@dataclass(slots=True)
class Side:
    probes: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    nginx_cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def cpu_ms_per_probe(self) -> float:
        return self.cpu_seconds * 1000 / self.probes if self.probes else 0.0

    @property
    def probes_per_second(self) -> float:
        return self.probes / self.seconds if self.seconds else 0.0


def run_blackbox(args: argparse.Namespace, directory: Path, root: Path, target_port: int,
                 nginx_pid: int, not_after: float, failures: list[str]) -> tuple[Side, Side | None]:
    """blackbox_exporter swept through /probe at --concurrency; then, unless
    --no-blackbox-steady, its steady state under a real Prometheus (blackbox_steady)."""
    modules = {f"t{i}": {"prober": "tcp", "timeout": "10s", "tcp": {
        "tls": True, "tls_config": {"server_name": f"t{i}.{DOMAIN}", "ca_file": str(root)}}}
        for i in range(args.targets)}
    config = directory / "blackbox.yml"
    config.write_text(json.dumps({"modules": modules}))  # JSON is YAML
    port = free_port()
    process = start([BLACKBOX, f"--config.file={config}",
                     f"--web.listen-address=127.0.0.1:{port}"], directory / "blackbox.log")
    try:
        wait_port(port, process, "blackbox_exporter")
        paths = [f"/probe?module=t{i}&target=127.0.0.1:{target_port}"
                 for i in range(args.targets)]
        asyncio.run(sweep_probes(port, paths[:WARMUP], args.concurrency, args.deadline))
        side = Side(probes=args.targets)
        cpu0, nginx0, start_at = sum(cpu_seconds(process.pid)), tree_cpu(nginx_pid), time.perf_counter()
        bodies = asyncio.run(sweep_probes(port, paths, args.concurrency, args.deadline))
        side.seconds = time.perf_counter() - start_at
        side.cpu_seconds = sum(cpu_seconds(process.pid)) - cpu0
        side.nginx_cpu_seconds = tree_cpu(nginx_pid) - nginx0
        side.peak_rss_mb = memory_mb(process.pid)["VmHWM"]
        wrong = [i for i, body in enumerate(bodies)
                 if sample(body, "probe_success") != 1.0
                 or sample(body, "probe_ssl_earliest_cert_expiry") != not_after]
        if wrong:
            failures.append(f"blackbox: {len(wrong)} of {len(bodies)} probes wrong; the first "
                            f"(t{wrong[0]}): {bodies[wrong[0]][:300]!r}")
        steady = None
        if args.blackbox_steady:
            steady = blackbox_steady(args, directory, port, target_port, process.pid, nginx_pid,
                                     not_after, failures)
        return side, steady
    finally:
        stop_process(process, STOP_GRACE)


def prometheus_query(port: int, expr: str, at: float) -> list[dict[str, Any]]:
    status, body, _ = get(port, "/api/v1/query?" + urlencode({"query": expr, "time": f"{at:.3f}"}))
    if status != 200:
        raise SystemExit(f"FAIL: Prometheus answered {status} to {expr}: {body[:200]!r}")
    return list(json.loads(body)["data"]["result"])


def blackbox_steady(args: argparse.Namespace, directory: Path, blackbox_port: int,
                    target_port: int, blackbox_pid: int, nginx_pid: int, not_after: float,
                    failures: list[str]) -> Side:
    """blackbox_exporter as operators run it: a real Prometheus (Debian's) scraping /probe
    for each of the N names every --interval, which spreads the scrapes evenly over the
    interval (an offset a target, from a hash of its labels). After one interval of
    warm-up, blackbox's CPU over --steady seconds, and the probes Prometheus made in that
    window (`count_over_time(up[...])`). Every one must have succeeded, with the leaf's
    notAfter."""
    interval = f"{args.interval:g}s"
    config = directory / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": interval, "scrape_timeout": "10s"},
        "scrape_configs": [{
            "job_name": "blackbox", "metrics_path": "/probe",
            "static_configs": [{"targets": [f"t{i}" for i in range(args.targets)]}],
            "relabel_configs": [  # the module is the name; blackbox probes the nginx
                {"source_labels": ["__address__"], "target_label": "__param_module"},
                {"source_labels": ["__address__"], "target_label": "instance"},
                {"target_label": "__param_target", "replacement": f"127.0.0.1:{target_port}"},
                {"target_label": "__address__", "replacement": f"127.0.0.1:{blackbox_port}"},
            ]}]}))
    port = free_port()
    process = start([PROMETHEUS, f"--config.file={config}",
                     f"--storage.tsdb.path={directory / 'prometheus-data'}",
                     f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                    directory / "prometheus.log")
    try:
        wait_port(port, process, "prometheus")
        time.sleep(args.interval + 2)  # every target scraped once: the steady state
        side = Side()
        cpu0, nginx0, start_at = (sum(cpu_seconds(blackbox_pid)), tree_cpu(nginx_pid),
                                  time.time())
        time.sleep(max(args.steady, 60.0))
        side.cpu_seconds = sum(cpu_seconds(blackbox_pid)) - cpu0
        side.nginx_cpu_seconds = tree_cpu(nginx_pid) - nginx0
        end_at = time.time()
        side.seconds = end_at - start_at
        side.peak_rss_mb = memory_mb(blackbox_pid)["VmHWM"]
        time.sleep(1)  # the last scrapes of the window ingested
        window = f"[{round(side.seconds * 1000)}ms]"

        def total(expr: str) -> float:
            result = prometheus_query(port, expr, end_at)
            return float(result[0]["value"][1]) if result else 0.0

        side.probes = int(total(f'sum(count_over_time(up{{job="blackbox"}}{window}))'))
        succeeded = total(f'sum(sum_over_time(probe_success{{job="blackbox"}}{window}))')
        right = total(f'count(probe_ssl_earliest_cert_expiry{{job="blackbox"}} == {not_after:.0f})')
        expected = args.targets * side.seconds / args.interval
        if side.probes < expected * 0.8 or succeeded != side.probes or right != args.targets:
            failures.append(f"blackbox under Prometheus: {side.probes} scrapes in "
                            f"{side.seconds:.0f}s (about {expected:.0f} expected), "
                            f"{succeeded:.0f} successful, {right:.0f} of {args.targets} "
                            "targets with the leaf's notAfter")
        return side
    finally:
        stop_process(process, STOP_GRACE)


# --- certwatch -----------------------------------------------------------------------------


def probes_total(port: int) -> float:
    status, body, _ = get(port, "/metrics")
    if status != 200:
        raise SystemExit(f"FAIL: certwatch's /metrics answered {status}")
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
               if line.startswith("certwatch_probes_total{"))


def cpu_once_logged(processes: list[subprocess.Popen[bytes]], logs: list[DaemonLog],
                    prefix: str, nginx_pid: int) -> tuple[float, float]:
    """The daemons' CPU seconds, each read as soon as its log says `prefix` (all logs
    polled together, every LOG_POLL), summed; and nginx's when the first says it."""
    read: dict[int, float] = {}
    nginx = 0.0
    end = time.monotonic() + START_TIMEOUT
    while len(read) < len(processes):
        for index, (process, log) in enumerate(zip(processes, logs)):
            if index not in read and logged(process, log, prefix):
                if not read:
                    nginx = tree_cpu(nginx_pid)
                read[index] = sum(cpu_seconds(process.pid))
        if time.monotonic() > end:
            raise SystemExit(f"FAIL: a daemon did not log '{prefix}' within {START_TIMEOUT:g}s")
        if len(read) < len(processes):
            time.sleep(LOG_POLL)
    return sum(read.values()), nginx


def run_certwatch(args: argparse.Namespace, directory: Path, root: Path, target_port: int,
                  nginx_pid: int, not_after: float, failures: list[str],
                  figures: Figures) -> tuple[Side, Side, float]:
    """certwatch's daemon, or `--shards` of them (`--shard i/N`, one process each, at once,
    each with `--concurrency`): their first sweep, from the first start to the last
    sweep's end, and their steady state; CPU, probes and peak RSS summed over them."""
    endpoints = endpoint_lines(args.targets, target_port)
    env = dict(os.environ)
    if args.event_loop:
        env["CERTWATCH_EVENT_LOOP"] = args.event_loop
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[DaemonLog] = []
    first, steady = Side(probes=args.targets), Side()
    try:
        for shard in range(args.shards):
            state = directory / f"state-{shard}"  # a database each: shards share no file
            state.mkdir()
            inventory = directory / f"certwatch-{shard}.yaml"
            inventory.write_text("\n".join([
                f"max_concurrency: {args.concurrency}", 'listen: "127.0.0.1:0"',
                f"state_dir: {json.dumps(str(state))}", "defaults:",
                f"  ca_file: {json.dumps(str(root))}", "  timeout: 10",
                f"  interval: {args.interval:g}s", f"  retry_interval: {args.interval:g}s",
                "endpoints:", *endpoints]) + "\n")
            sharding = ["--shard", f"{shard}/{args.shards}"] if args.shards > 1 else []
            log_path = directory / f"certwatch-{shard}.log"
            processes.append(start([sys.executable, "-m", "certwatch", "--log-format", "json",
                                    "run", "-c", str(inventory), *sharding],
                                   log_path, cwd=directory, env=env))
            logs.append(DaemonLog(log_path))
        pids = [p.pid for p in processes]

        def cpu() -> float:
            return sum(sum(cpu_seconds(pid)) for pid in pids)

        def peak_rss() -> float:
            return sum(memory_mb(pid)["VmHWM"] for pid in pids)

        def probes() -> float:  # probes done so far, by the daemons' own counters
            return sum(probes_total(port) for port in ports)

        # Each daemon's CPU from its own "configuration loaded", nginx's from the first: a
        # shard that comes up sooner probes while the others still load, and those probes
        # count in the first sweep.
        cpu0, nginx0 = cpu_once_logged(processes, logs, "configuration loaded", nginx_pid)
        loaded_at = min(t for log in logs if (t := log.time_of("configuration loaded")))
        first_profiler = None
        if args.profile:  # the first sweep's samples beside the steady state's (shard 0's)
            from daemon import start_profiler
            first_profiler = start_profiler(pids[0], args.profile.with_suffix(".first.txt"))
        for process, log in zip(processes, logs):
            wait_for_log(process, log, "listening on", START_TIMEOUT)
        ports = [int(log.first["listening on"]["port"]) for log in logs]
        for process, log in zip(processes, logs):
            wait_for_log(process, log, "first sweep finished", args.deadline)
        # The daemon says which loop it runs on, on its "listening on" line (one before
        # issue 15 does not: asyncio's).
        logged = logs[0].first["listening on"].get("event_loop")
        figures.event_loop = logged or "asyncio (not logged)"
        first.cpu_seconds = cpu() - cpu0
        first.nginx_cpu_seconds = tree_cpu(nginx_pid) - nginx0
        finished_at = max(t for log in logs if (t := log.time_of("first sweep finished")))
        first.seconds = finished_at - loaded_at
        if first_profiler is not None:
            from daemon import stop_profiler
            stop_profiler(first_profiler, args.profile.with_suffix(".first.txt"))
        first.peak_rss_mb = peak_rss()

        time.sleep(args.interval)  # the second round of probes under way: the steady state
        before = probes()
        cpu0, nginx0, start_at = cpu(), tree_cpu(nginx_pid), time.monotonic()
        profiler = None
        if args.profile:
            from daemon import start_profiler
            profiler = start_profiler(pids[0], args.profile)
        time.sleep(max(args.steady, 60.0))
        steady.cpu_seconds = cpu() - cpu0
        steady.nginx_cpu_seconds = tree_cpu(nginx_pid) - nginx0
        steady.seconds = time.monotonic() - start_at
        if profiler is not None:
            from daemon import stop_profiler
            stop_profiler(profiler, args.profile)
        steady.probes = int(probes() - before)
        steady.peak_rss_mb = peak_rss()
        targets: list[dict[str, Any]] = []
        for port in ports:
            status, body, _ = get(port, "/api/v1/targets")
            targets += json.loads(body) if status == 200 else []
        wrong = [t for t in targets if t["state"] != "ok" or datetime.fromisoformat(
            t["earliest_not_after"].replace("Z", "+00:00")).timestamp() != not_after]
        if len(targets) != args.targets or len({t["name"] for t in targets}) != args.targets \
                or wrong:
            failures.append(f"certwatch: {len(targets)} targets listed, {len(wrong)} wrong; "
                            f"the first: {wrong[0] if wrong else None}")
        if steady.probes < args.targets * steady.seconds / args.interval * 0.8:
            failures.append(f"certwatch probed {steady.probes} times in {steady.seconds:.0f}s; "
                            f"its schedule asks for about {args.targets * steady.seconds / args.interval:.0f}")
        return first, steady, peak_rss()
    finally:
        for process, log in zip(processes, logs):
            stop_process(process, STOP_GRACE)
            log.read()
            if log.levels.get("error") or log.levels.get("critical"):
                failures.append("certwatch logged errors: " + "; ".join(log.problems))


# --- the run -------------------------------------------------------------------------------


@dataclass(slots=True)
class Figures:
    targets: int
    concurrency: int
    interval: float
    event_loop: str
    python: str
    cpus: int
    blackbox: dict[str, float] = field(default_factory=dict)
    blackbox_steady: dict[str, float] = field(default_factory=dict)  # under Prometheus
    certwatch_first: dict[str, float] = field(default_factory=dict)
    certwatch_steady: dict[str, float] = field(default_factory=dict)
    certwatch_peak_rss_mb: float = 0.0
    ratios: dict[str, float] = field(default_factory=dict)
    shards: int = 1  # certwatch daemons run at once (--shard i/N); their figures summed


def figures_of(side: Side) -> dict[str, float]:
    return {**asdict(side), "cpu_ms_per_probe": side.cpu_ms_per_probe,
            "probes_per_second": side.probes_per_second}


def render(f: Figures) -> str:
    def row(name: str, side: dict[str, float]) -> str:
        return (f"  {name:22} {side['cpu_ms_per_probe']:7.3f} ms/probe  "
                f"{side['probes_per_second']:7.0f} probes/s  peak RSS {side['peak_rss_mb']:6.1f} MB"
                f"   ({side['probes']:.0f} probes in {side['seconds']:.1f} s, "
                f"{side['cpu_seconds']:.2f} s CPU; nginx {side['nginx_cpu_seconds']:.2f} s CPU)")

    lines = [f"certwatch vs blackbox_exporter: {f.targets} SNI names on one loopback nginx, "
             f"concurrency {f.concurrency}, certwatch interval {f.interval:g} s, event loop "
             f"{f.event_loop}, Python {f.python}, {f.cpus} CPUs"
             + (f"; certwatch as {f.shards} shards at once, figures summed" if f.shards > 1 else ""),
             row("blackbox /probe", f.blackbox),
             *([row("blackbox steady", f.blackbox_steady)] if f.blackbox_steady else []),
             row("certwatch first sweep", f.certwatch_first),
             row("certwatch steady", f.certwatch_steady),
             f"  certwatch peak RSS over the run: {f.certwatch_peak_rss_mb:.1f} MB", "  ratios (certwatch / blackbox):"]
    for name, value in f.ratios.items():
        verdict = ""
        if name in TARGETS:
            sense, bound = TARGETS[name]
            ok = value <= bound if sense == "<=" else value >= bound
            verdict = f"   target {sense} {bound:g}: {'PASS' if ok else 'MISS'}"
        lines.append(f"    {name:38} {value:6.2f}x{verdict}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--interval", type=float, default=20.0,
                        help="certwatch's interval in the steady state (seconds)")
    parser.add_argument("--steady", type=float, default=60.0,
                        help="seconds of steady state measured (at least 60)")
    parser.add_argument("--deadline", type=float, default=300.0,
                        help="seconds each sweep may take")
    parser.add_argument("--event-loop", choices=["auto", "asyncio", "uvloop"], default=None,
                        help="certwatch's CERTWATCH_EVENT_LOOP (default: its own default)")
    parser.add_argument("--shards", type=int, default=1,
                        help="certwatch daemons, one a shard (--shard i/N), run at once: "
                             "how an operator uses more cores (default 1)")
    parser.add_argument("--no-blackbox-steady", dest="blackbox_steady", action="store_false",
                        help="skip blackbox's steady state under Prometheus")
    parser.add_argument("--profile", type=Path, default=None,
                        help="sample certwatch's steady state with py-spy into this file")
    args = parser.parse_args()
    if args.targets < WARMUP or args.concurrency < 1 or args.interval <= 0 or args.shards < 1:
        parser.error(f"--targets must be at least {WARMUP}; --concurrency, --interval and "
                     "--shards > 0")
    for tool in (NGINX, BLACKBOX, *([PROMETHEUS] if args.blackbox_steady else [])):
        if shutil.which(tool) is None:
            raise SystemExit(f"FAIL: {tool} is missing (apt-get install nginx-light "
                             "prometheus-blackbox-exporter prometheus)")
    raise_fd_limit(4 * args.concurrency * args.shards + 256)
    failures: list[str] = []
    figures = Figures(args.targets, args.concurrency, args.interval, "",
                      platform.python_version(), multiprocessing.cpu_count(), shards=args.shards)
    with tempfile.TemporaryDirectory(prefix="certwatch-vs-blackbox-") as tmp:
        directory = Path(tmp)
        chain, key, root, not_after = make_pki(directory)
        port = free_port()
        server = nginx(directory, chain, key, port)
        try:
            blackbox, blackbox_steady = run_blackbox(args, directory, root, port, server.pid,
                                                     not_after, failures)
            first, steady, peak = run_certwatch(args, directory, root, port, server.pid,
                                                not_after, failures, figures)
        finally:
            stop_process(server, STOP_GRACE)
    figures.blackbox, figures.certwatch_first = figures_of(blackbox), figures_of(first)
    figures.certwatch_steady, figures.certwatch_peak_rss_mb = figures_of(steady), peak
    if blackbox_steady is not None:
        figures.blackbox_steady = figures_of(blackbox_steady)
    figures.ratios = {
        **({"steady-state CPU per probe": steady.cpu_ms_per_probe
            / blackbox_steady.cpu_ms_per_probe} if blackbox_steady is not None else {}),
        "steady-state CPU, vs blackbox's sweep": steady.cpu_ms_per_probe
        / blackbox.cpu_ms_per_probe,
        "first-sweep CPU per probe": first.cpu_ms_per_probe / blackbox.cpu_ms_per_probe,
        "first-sweep throughput": first.probes_per_second / blackbox.probes_per_second,
        "peak RSS": peak / blackbox.peak_rss_mb,
    }
    print(render(figures))
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"vs_blackbox-{args.targets}.json").write_text(json.dumps(
        {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **asdict(figures),
         "failures": failures}) + "\n")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
