"""Benchmark: the real daemon (`certwatch run`) over N loopback TLS endpoints, one sweep.

    python bench/daemon.py --targets 10000 --concurrency 100

bench/sweep.py measures the check path inside its own process; this one runs what
operators run: `python -m certwatch run` as a subprocess, JSON logs to a file, its
inventory in a temporary file (interval 1h, so exactly one sweep happens while we
watch; the bench's private root as ca_file; listen on 127.0.0.1, port 0, the bound port
read back from the "listening on" log line). The endpoints are sweep.py's server
process, reused as is: N loopback TLS servers in another interpreter, which also counts
the connections the daemon holds open at once.

What it measures, from outside the daemon, as a user or Prometheus would see it:
- start-up: spawn until the "configuration loaded" log line (interpreter, imports,
  reading and validating the inventory, scheduling every endpoint);
- one full sweep: from "configuration loaded" until /readyz answers 200 (polled every
  READY_POLL seconds; the daemon's own "first sweep finished" line gives the exact end);
- the daemon's CPU (user + sys from /proc/<pid>/stat) over that sweep, per probe;
- memory: VmRSS after loading, VmHWM (peak RSS) after the sweep and at the end, VmRSS now;
- /metrics (plain, and gzipped as Prometheus asks for it), /api/v1/targets and / (the
  status page) with N targets: wall time of several requests (min / median / max), the
  daemon's CPU per request, response size (on the wire), and for /metrics the number
  of series lines;
- shutdown: SIGTERM until the process has exited, which must be with status 0 within
  its grace time.

Correctness, checked and failing the run (exit 1): every target `ok` in /api/v1/targets
(and N of them), every endpoint handshaken exactly once, the server's peak of
connections open at once within max_concurrency, no error-level log line, and a clean
exit on SIGTERM. The issue's targets (peak RSS within RSS_TARGET_MB, a /metrics scrape
within SCRAPE_TARGET_SECONDS) print PASS or MISS and do not fail the run. Past
LISTENERS_MAX targets the server's listeners serve several targets each, by SNI name.

Only loopback addresses are used, and every wait is bounded: start-up by
--startup-timeout, the sweep by --deadline, each HTTP request by HTTP_TIMEOUT, shutdown
by the grace time plus SHUTDOWN_MARGIN (then SIGKILL), the server process by its
lifetime limit. The figures are printed as a table and written as one JSON line to
bench/results/daemon-<N>.json.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import multiprocessing
import os
import platform
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sweep.py, also when imported
from sweep import (  # noqa: E402 - the server process and its helpers, reused as they are
    DOMAIN,
    FD_MARGIN,
    MAX_TARGETS,
    PROBE_TIMEOUT,
    REPO,
    SERVER_READY_TIMEOUT,
    SERVER_STOP_TIMEOUT,
    raise_fd_limit,
    receive,
    server_process,
)

READY_POLL = 0.2  # seconds between /readyz polls
LOG_POLL = 0.05  # seconds between reads of the daemon's log while it starts
HTTP_TIMEOUT = 60.0  # seconds for any one request to the daemon
SHUTDOWN_MARGIN = 10.0  # seconds beyond the grace time before the daemon is killed
# The targets: peak RSS at most 100 MB at 10,000 targets (700 MB at 100,000), a
# /metrics scrape in at most 3 s.
RSS_TARGET_MB = {10_000: 100.0, 100_000: 700.0}
SCRAPE_TARGET_SECONDS = 3.0
# The machine allows ~20,000 descriptors a process: past this many targets, each of the
# server's listeners (one loopback address each) serves several targets by SNI name.
LISTENERS_MAX = 10_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the daemon process, seen from outside -----------------------------------------------


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process `pid` so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()  # the name may hold spaces
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS  # utime, stime


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of process `pid`, in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024  # kB
    return out


class DaemonLog:
    """Follows the daemon's JSON log file: the first time of each message of interest,
    and counts by level. A line that is not JSON (a traceback) counts as an error."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.first: dict[str, dict[str, Any]] = {}  # message prefix -> its first record
        self.levels: Counter[str] = Counter()
        self.problems: list[str] = []  # warning and error lines, the first few
        self.lines = 0

    WATCHED = ("configuration loaded", "listening on", "first sweep finished",
               "stopping", "stopped")

    def read(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        for raw in complete:
            self.lines += 1
            try:
                record = json.loads(raw)
            except ValueError:
                record = {"level": "error", "message": raw.decode(errors="replace")}
            level = record.get("level", "error")
            self.levels[level] += 1
            if level not in ("debug", "info") and len(self.problems) < 10:
                self.problems.append(f"{level}: {record.get('message')}")
            message = str(record.get("message", ""))
            for prefix in self.WATCHED:
                if message.startswith(prefix) and prefix not in self.first:
                    self.first[prefix] = record

    def time_of(self, prefix: str) -> float | None:
        """The wall-clock time (epoch seconds) the daemon logged `prefix` first."""
        record = self.first.get(prefix)
        if record is None:
            return None
        return datetime.fromisoformat(record["time"].replace("Z", "+00:00")).timestamp()


def logged(process: subprocess.Popen[bytes], log: DaemonLog, prefix: str) -> bool:
    """Whether the daemon's log says `prefix` yet; SystemExit if it exited before."""
    log.read()
    if prefix in log.first:
        return True
    if process.poll() is not None:
        raise SystemExit(f"FAIL: the daemon exited with status {process.returncode} "
                         f"before logging '{prefix}':\n  " + "\n  ".join(log.problems))
    return False


def wait_for_log(process: subprocess.Popen[bytes], log: DaemonLog, prefix: str,
                 timeout: float) -> None:
    end = time.monotonic() + timeout
    while not logged(process, log, prefix):
        if time.monotonic() > end:
            raise SystemExit(f"FAIL: the daemon did not log '{prefix}' within {timeout:g}s")
        time.sleep(LOG_POLL)


def get(port: int, path: str, *, gzipped: bool = False) -> tuple[int, bytes, float]:
    """One GET on a fresh connection: status, body (as sent: compressed when `gzipped`
    asks for it, as Prometheus does), wall seconds until the body is read."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        start = time.perf_counter()
        connection.request("GET", path, headers={"Accept-Encoding": "gzip"} if gzipped else {})
        response = connection.getresponse()
        body = response.read()
        if gzipped and response.getheader("Content-Encoding") != "gzip":
            raise SystemExit(f"FAIL: GET {path} asked for gzip, got "
                             f"{response.getheader('Content-Encoding')!r}")
        return response.status, body, time.perf_counter() - start
    finally:
        connection.close()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Repeated requests to one path: wall time, the daemon's CPU, size."""

    path: str
    requests: int
    wall_min_ms: float
    wall_median_ms: float
    wall_max_ms: float
    cpu_ms_per_request: float  # the daemon's, averaged over the requests
    bytes: int
    peak_rss_mb_after: float  # the daemon's VmHWM once these requests are done


def measure(pid: int, port: int, path: str, count: int,
            gzipped: bool = False) -> tuple[Endpoint, bytes]:
    walls, body = [], b""
    cpu0 = sum(cpu_seconds(pid))
    for _ in range(count):
        status, body, wall = get(port, path, gzipped=gzipped)
        if status != 200:
            raise SystemExit(f"FAIL: GET {path} answered {status}: {body[:200]!r}")
        walls.append(wall * 1000)
    cpu = sum(cpu_seconds(pid)) - cpu0
    return Endpoint(path=path, requests=count, wall_min_ms=min(walls),
                    wall_median_ms=statistics.median(walls), wall_max_ms=max(walls),
                    cpu_ms_per_request=cpu * 1000 / count, bytes=len(body),
                    peak_rss_mb_after=memory_mb(pid)["VmHWM"]), body


def healthz_during_scrape(port: int) -> float:
    """Milliseconds /healthz takes when asked just after a /metrics scrape has started:
    how long a liveness probe waits while the event loop renders metrics."""
    scrape = threading.Thread(target=get, args=(port, "/metrics"), daemon=True)
    scrape.start()
    time.sleep(0.1)  # the request is on its way; rendering takes longer than this at scale
    status, body, wall = get(port, "/healthz")
    scrape.join(HTTP_TIMEOUT)
    if status != 200:
        raise SystemExit(f"FAIL: /healthz answered {status}: {body[:200]!r}")
    return wall * 1000


def write_inventory(path: Path, endpoints: list[tuple[str, int]], ca_file: str,
                    concurrency: int) -> None:
    """One flow-style line per endpoint; everything shared sits in `defaults`."""
    lines = [
        f"max_concurrency: {concurrency}",
        'listen: "127.0.0.1:0"',
        "defaults:",
        f"  ca_file: {json.dumps(ca_file)}",
        f"  timeout: {PROBE_TIMEOUT:g}",
        "  interval: 1h",
        "  retry_interval: 1h",  # a failed target is reported, not probed again meanwhile
        "endpoints:",
    ]
    lines += [f"  - {{name: t{i}, host: {host}, port: {port}, server_name: t{i}.{DOMAIN}}}"
              for i, (host, port) in enumerate(endpoints)]
    path.write_text("\n".join(lines) + "\n")


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the daemon (collapsed stacks to `out`) until stop_profiler."""
    py_spy = Path(sys.executable).with_name("py-spy")
    command = [str(py_spy) if py_spy.exists() else "py-spy", "record", "--pid", str(pid),
               "--rate", "250", "--format", "raw", "--output", str(out), "--nonblocking"]
    profiler = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached before the sweep is well under way
    return profiler


def stop_profiler(profiler: subprocess.Popen[bytes], out: Path) -> None:
    profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        profiler.wait(30)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait(5)
    print(f"profile of the sweep: {out} (bench/profile.py summarises it)", file=sys.stderr)


# --- the run -------------------------------------------------------------------------------


@dataclass(slots=True)
class Figures:
    targets: int
    concurrency: int
    key_type: str
    python: str
    openssl: str
    cpus: int
    states: dict[str, int] = field(default_factory=dict)
    startup_seconds: float = 0.0  # spawn -> "configuration loaded"
    startup_cpu_seconds: float = 0.0
    sweep_seconds: float = 0.0  # "configuration loaded" -> /readyz 200 (as polled)
    sweep_logged_seconds: float = 0.0  # "configuration loaded" -> "first sweep finished"
    probes_per_second: float = 0.0
    sweep_cpu_seconds: float = 0.0
    sweep_cpu_user_seconds: float = 0.0
    sweep_cpu_sys_seconds: float = 0.0
    cpu_ms_per_probe: float = 0.0
    rss_mb_loaded: float = 0.0  # VmRSS at "configuration loaded"
    peak_rss_mb_after_sweep: float = 0.0  # VmHWM
    rss_mb_after_sweep: float = 0.0
    peak_rss_mb: float = 0.0  # VmHWM at the end, after the HTTP requests
    rss_mb: float = 0.0  # VmRSS at the end
    metrics: dict[str, Any] = field(default_factory=dict)
    metrics_gzip: dict[str, Any] = field(default_factory=dict)  # asked as Prometheus asks
    metrics_series: int = 0
    healthz_during_scrape_ms: float = 0.0  # /healthz asked while a /metrics scrape runs
    api_targets: dict[str, Any] = field(default_factory=dict)
    status_page: dict[str, Any] = field(default_factory=dict)
    shutdown_seconds: float = 0.0  # SIGTERM -> exited
    exit_status: int | None = None
    grace_seconds: float = 0.0
    log_lines: int = 0
    log_bytes: int = 0
    log_levels: dict[str, int] = field(default_factory=dict)
    server_peak_connections: int = 0
    server_handshakes: int = 0
    server_cpu_seconds: float = 0.0  # from daemon spawn to stop
    rss_target: str = ""
    rss_target_mb: float = 0.0
    scrape_target: str = ""


def run_daemon(args: argparse.Namespace, conn: Any, ready: dict[str, Any],
               directory: Path, figures: Figures) -> tuple[list[str], bytes]:
    """Starts the daemon, measures it, stops it; returns correctness failures so far and
    the /api/v1/targets body."""
    failures: list[str] = []
    inventory = directory / "inventory.yaml"
    write_inventory(inventory, [tuple(e) for e in ready["endpoints"]], ready["ca_file"],
                    args.concurrency)
    log_path = directory / "daemon.log"
    command = [sys.executable, "-m", "certwatch", "--log-format", "json", "run",
               "-c", str(inventory), "--grace", f"{args.grace:g}"]
    conn.send("mark")  # the server counts handshakes and its CPU from here
    with open(log_path, "wb") as log_file:
        spawned = time.time()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                   stderr=subprocess.STDOUT, cwd=directory)
    pid, log = process.pid, DaemonLog(log_path)
    try:
        wait_for_log(process, log, "configuration loaded", args.startup_timeout)
        loaded_cpu = cpu_seconds(pid)
        figures.rss_mb_loaded = memory_mb(pid)["VmRSS"]
        loaded_at = log.time_of("configuration loaded")
        assert loaded_at is not None
        figures.startup_seconds = loaded_at - spawned
        figures.startup_cpu_seconds = sum(loaded_cpu)
        wait_for_log(process, log, "listening on", args.startup_timeout)
        port = int(log.first["listening on"]["port"])
        profiler = start_profiler(pid, args.profile) if args.profile else None

        end = time.monotonic() + args.deadline
        while True:
            if process.poll() is not None:
                raise SystemExit(f"FAIL: the daemon exited with status {process.returncode} "
                                 "during the sweep")
            status, _, _ = get(port, "/readyz")
            if status == 200:
                break
            if status != 503:
                raise SystemExit(f"FAIL: /readyz answered {status}")
            if time.monotonic() > end:
                raise SystemExit(f"FAIL: /readyz was not 200 within {args.deadline:g}s "
                                 "of the configuration being loaded")
            time.sleep(READY_POLL)
        ready_at = time.time()
        user, sys_ = (a - b for a, b in zip(cpu_seconds(pid), loaded_cpu))
        if profiler is not None:
            stop_profiler(profiler, args.profile)
        memory = memory_mb(pid)
        wait_for_log(process, log, "first sweep finished", 10.0)
        finished_at = log.time_of("first sweep finished")
        assert finished_at is not None

        figures.sweep_seconds = ready_at - loaded_at
        figures.sweep_logged_seconds = finished_at - loaded_at
        figures.probes_per_second = args.targets / figures.sweep_logged_seconds
        figures.sweep_cpu_user_seconds, figures.sweep_cpu_sys_seconds = user, sys_
        figures.sweep_cpu_seconds = user + sys_
        figures.cpu_ms_per_probe = (user + sys_) * 1000 / args.targets
        figures.peak_rss_mb_after_sweep = memory["VmHWM"]
        figures.rss_mb_after_sweep = memory["VmRSS"]

        metrics, body = measure(pid, port, "/metrics", args.requests)
        figures.metrics = asdict(metrics)
        figures.metrics_series = sum(1 for line in body.decode().splitlines()
                                     if line and not line.startswith("#"))
        figures.healthz_during_scrape_ms = healthz_during_scrape(port)
        metrics_gzip, zipped = measure(pid, port, "/metrics", args.requests, gzipped=True)
        figures.metrics_gzip = asdict(metrics_gzip)
        if gzip.decompress(zipped).count(b"\ncertwatch_probe_success{") != args.targets:
            failures.append("the gzipped /metrics does not hold every target")
        api, targets_body = measure(pid, port, "/api/v1/targets", args.requests)
        figures.api_targets = asdict(api)
        page, _ = measure(pid, port, "/", args.requests)
        figures.status_page = asdict(page)
        memory = memory_mb(pid)
        figures.peak_rss_mb, figures.rss_mb = memory["VmHWM"], memory["VmRSS"]

        figures.grace_seconds = args.grace
        start = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        try:
            figures.exit_status = process.wait(args.grace + SHUTDOWN_MARGIN)
        except subprocess.TimeoutExpired:
            failures.append(f"the daemon did not exit within {args.grace + SHUTDOWN_MARGIN:g}s "
                            "of SIGTERM; killed")
        figures.shutdown_seconds = time.perf_counter() - start
        if figures.exit_status not in (None, 0):
            failures.append(f"the daemon exited with status {figures.exit_status} on SIGTERM")
        elif figures.exit_status == 0 and figures.shutdown_seconds > args.grace:
            failures.append(f"the daemon took {figures.shutdown_seconds:.1f}s to stop; "
                            f"its grace time is {args.grace:g}s")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    log.read()
    if "stopped" not in log.first and figures.exit_status == 0:
        failures.append("the daemon exited without logging 'stopped'")
    if log.levels.get("error") or log.levels.get("critical"):
        failures.append("the daemon logged errors:\n    " + "\n    ".join(log.problems))
    figures.log_lines = log.lines
    figures.log_bytes = log_path.stat().st_size
    figures.log_levels = dict(log.levels)
    return failures, targets_body


def check_states(figures: Figures, body: bytes, targets: int) -> list[str]:
    entries = json.loads(body)
    figures.states = dict(Counter(e["state"] for e in entries).most_common())
    failures = []
    if len(entries) != targets:
        failures.append(f"/api/v1/targets lists {len(entries)} targets, not {targets}")
    not_ok = [e for e in entries if e["state"] != "ok"]
    if not_ok:
        failures.append(f"{len(not_ok)} of {len(entries)} targets are not ok; the first:\n    "
                        + "\n    ".join(f"{e['key']} [{e['state']}]: {e['summary']}"
                                        for e in not_ok[:10]))
    return failures


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def render(f: Figures) -> str:
    n = f.targets
    states = " ".join(f"{state}={count}" for state, count in f.states.items())

    def http(e: dict[str, Any], extra: str = "") -> str:
        return (f"{e['wall_median_ms']:8.1f} ms median (min {e['wall_min_ms']:.1f}, max "
                f"{e['wall_max_ms']:.1f}; {e['requests']} requests), daemon CPU "
                f"{e['cpu_ms_per_request']:.1f} ms each, {e['bytes'] / 1e6:.2f} MB{extra}; "
                f"peak RSS then {e['peak_rss_mb_after']:.1f} MB")

    return "\n".join([
        f"certwatch daemon: {n} targets, concurrency {f.concurrency}, {f.key_type} keys, "
        f"Python {f.python}, {f.openssl}, {f.cpus} CPUs",
        f"  states              {states}",
        f"  start-up            {f.startup_seconds:8.3f} s    CPU {f.startup_cpu_seconds:.3f} s"
        f"   (spawn -> 'configuration loaded'; RSS then {f.rss_mb_loaded:.1f} MB)",
        f"  sweep               {f.sweep_seconds:8.3f} s    {f.probes_per_second:8.0f} probes/s"
        f"   (to /readyz 200; {f.sweep_logged_seconds:.3f} s to 'first sweep finished')",
        f"  daemon CPU (sweep)  {f.sweep_cpu_seconds:8.3f} s    {f.cpu_ms_per_probe:8.3f} ms/probe"
        f"   (user {f.sweep_cpu_user_seconds:.3f} s, sys {f.sweep_cpu_sys_seconds:.3f} s;"
        f" {f.sweep_cpu_seconds / f.sweep_seconds:.0%} of one core)",
        f"  peak RSS            {f.peak_rss_mb_after_sweep:8.1f} MB   after the sweep"
        f" (RSS {f.rss_mb_after_sweep:.1f} MB); {f.peak_rss_mb:.1f} MB at the end"
        f" (RSS {f.rss_mb:.1f} MB)",
        f"  /metrics            {http(f.metrics, f', {f.metrics_series} series')}",
        f"  /metrics (gzip)     {http(f.metrics_gzip, ' on the wire')}",
        f"  /healthz            {f.healthz_during_scrape_ms:8.1f} ms        while a /metrics "
        f"scrape is being rendered",
        f"  /api/v1/targets     {http(f.api_targets)}",
        f"  / (status page)     {http(f.status_page)}",
        f"  shutdown            {f.shutdown_seconds:8.3f} s    exit status {f.exit_status}"
        f" (grace {f.grace_seconds:g} s)",
        f"  log                 {f.log_lines} lines, {f.log_bytes / 1e6:.2f} MB, "
        + " ".join(f"{k}={v}" for k, v in sorted(f.log_levels.items())),
        f"  server              peak {f.server_peak_connections} connections open "
        f"(bound {f.concurrency}); {f.server_handshakes} handshakes, "
        f"{f.server_cpu_seconds:.3f} s CPU",
        f"  target: peak RSS <= {f.rss_target_mb:g} MB       {f.rss_target}"
        f"   ({f.peak_rss_mb:.1f} MB)",
        f"  target: /metrics <= {SCRAPE_TARGET_SECONDS:g} s          {f.scrape_target}"
        f"   (slowest of {f.metrics['requests']} plain and {f.metrics_gzip['requests']} gzipped: "
        f"{max(f.metrics['wall_max_ms'], f.metrics_gzip['wall_max_ms']) / 1000:.3f} s)",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10000,
                        help="endpoints (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=100,
                        help="the inventory's max_concurrency (default %(default)s)")
    parser.add_argument("--key-type", default="ec", choices=["ec", "rsa"],
                        help="key type of the whole chain (default %(default)s)")
    parser.add_argument("--deadline", type=float, default=600.0,
                        help="seconds the sweep may take (default %(default)s)")
    parser.add_argument("--startup-timeout", type=float, default=120.0,
                        help="seconds until the configuration is loaded (default %(default)s)")
    parser.add_argument("--requests", type=int, default=5,
                        help="requests to each of /metrics, the API and / (default %(default)s)")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="the daemon's --grace on SIGTERM (default %(default)s)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="sample the daemon with py-spy during the sweep, collapsed "
                             "stacks to this file")
    args = parser.parse_args()
    per_listener = -(-args.targets // LISTENERS_MAX)
    if not 1 <= args.targets <= MAX_TARGETS * per_listener:
        parser.error(f"--targets must be from 1 to {MAX_TARGETS * per_listener}")
    if args.concurrency < 1 or args.requests < 1:
        parser.error("--concurrency and --requests must be at least 1")
    # The server's listening sockets and both ends' connections; both children inherit it.
    raise_fd_limit(-(-args.targets // per_listener) + 2 * args.concurrency + FD_MARGIN)

    figures = Figures(targets=args.targets, concurrency=args.concurrency,
                      key_type=args.key_type, python=platform.python_version(),
                      openssl=ssl.OPENSSL_VERSION, cpus=multiprocessing.cpu_count())
    lifetime = (SERVER_READY_TIMEOUT + args.startup_timeout + args.deadline
                + 3 * args.requests * HTTP_TIMEOUT + args.grace + SHUTDOWN_MARGIN
                + SERVER_STOP_TIMEOUT)
    with tempfile.TemporaryDirectory(prefix="certwatch-bench-") as directory, \
            server_process(args.targets, args.key_type, directory, lifetime,
                           per_listener) as (conn, ready):
        failures, targets_body = run_daemon(args, conn, ready, Path(directory), figures)
        conn.send("stop")
        stats = receive(conn, "stats", SERVER_STOP_TIMEOUT)

    figures.server_peak_connections = stats["peak_connections"]
    figures.server_handshakes = stats["sweep_handshakes"]
    figures.server_cpu_seconds = stats["sweep_cpu_seconds"]
    failures += check_states(figures, targets_body, args.targets)
    if figures.server_peak_connections > args.concurrency:
        failures.append(f"the server saw {figures.server_peak_connections} connections open "
                        f"at once; the daemon's bound is {args.concurrency}")
    if figures.server_handshakes != args.targets:
        failures.append(f"the server completed {figures.server_handshakes} handshakes; one "
                        f"sweep of {args.targets} endpoints makes exactly {args.targets}")
    rss_target = next((mb for n, mb in sorted(RSS_TARGET_MB.items()) if args.targets <= n),
                      max(RSS_TARGET_MB.values()))
    figures.rss_target, figures.rss_target_mb = verdict(figures.peak_rss_mb <= rss_target), rss_target
    slowest_scrape_ms = max(figures.metrics["wall_max_ms"], figures.metrics_gzip["wall_max_ms"])
    figures.scrape_target = verdict(slowest_scrape_ms <= SCRAPE_TARGET_SECONDS * 1000)

    print(render(figures))
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    record = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **asdict(figures),
              "failures": failures}
    (results / f"daemon-{figures.targets}.json").write_text(json.dumps(record) + "\n")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
