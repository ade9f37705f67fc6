"""Soak benchmark: the real daemon, 1,000 targets, a quarter hostile, rescanned every few
seconds for a long time. Resident memory, open descriptors, threads and asyncio tasks
must level off.

    python bench/soak.py --minutes 20

What runs:
- 750 good TLS endpoints: bench/sweep.py's server process, reused as is (127.77.x.y,
  private PKI, a wildcard leaf);
- 250 hostile endpoints: a server process of this file's own, one asyncio loop on
  127.78.x.y, in six kinds taken in turn: `tarpit` (accepts, sends nothing), `drip`
  (reads the ClientHello, then a TLS record header one byte a second), `reset` (reads,
  then RST), `garbage` (64 KiB of random bytes, then close), `http` (a plain-HTTP 400 on
  the TLS port), `closed` (a bound socket that does not listen: connection refused).
  It is asyncio rather than tests/servers.py's thread-per-connection servers because 250
  of those would each poll their listener 50 times a second;
- the daemon, `python -m certwatch run`, as a subprocess (JSON logs to a file), with
  interval 5s, retry_interval 5s, timeout 2 for every target, max_concurrency 100.

The daemon is started through a small shim (SHIM below) that adds one gauge to its
registry, `certwatch_bench_asyncio_tasks` = len(asyncio.all_tasks()), evaluated at
scrape time in the daemon's loop: certwatch does not export its task count, and nothing
outside the process can count asyncio tasks. Nothing else of certwatch is changed.

Every --sample seconds (10) it records, from outside: VmRSS (/proc/<pid>/status), open
descriptors (/proc/<pid>/fd), threads (/proc/<pid>/status), CPU seconds, and from
/metrics: asyncio tasks, process_open_fds, probes so far, targets by state and the scan
lag. Each sample is a row of bench/results/soak-<UTC time>.csv, written as it is taken.

Verdict: a curve has levelled off when its last quarter is at most its second quarter
plus a small allowance (LEVEL_TOLERANCE: a fraction and an absolute slack, for noise);
the first quarter is the warm-up and is not compared. For resident memory the quarters'
means are compared. Descriptors, threads and tasks swing with the probes in flight at
the sampling instant (from a few dozen to the whole inventory when probes bunch up on a
busy machine), so their means jump with a few samples, and their minimums with the
phase of the schedule; the quarters' medians are compared (a leak raises the whole
distribution, the median with it). The run fails (exit 1) if a curve has not levelled off, if the daemon exits or
stops answering /metrics, or if probing stalls (fewer than half the expected probes).

    python bench/soak.py --report bench/results/soak-<time>.csv   # the verdict again

Only loopback addresses are used, and every wait is bounded: start-up by
STARTUP_TIMEOUT, each HTTP request by HTTP_TIMEOUT, shutdown by the grace time plus
SHUTDOWN_MARGIN (then SIGKILL), both server processes by their lifetime limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import http.client
import json
import multiprocessing
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import DOMAIN, FD_MARGIN, REPO, raise_fd_limit, server_process  # noqa: E402

HOSTILE_KINDS = ("tarpit", "drip", "reset", "garbage", "http", "closed")
HOSTILE_BLOCK = 250  # 127.78.<block>.1 .. .250
HOLD_SECONDS = 30.0  # a hostile server drops any connection held longer than this
PEEK_SECONDS = 1.0  # how long a hostile server waits for the client's first bytes
STARTUP_TIMEOUT = 120.0
HTTP_TIMEOUT = 30.0
SHUTDOWN_MARGIN = 10.0
READY_TIMEOUT = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# (fraction, absolute slack) by curve: last-quarter mean <= second-quarter mean * (1 +
# fraction) + slack. RSS moves with the allocator's arenas, fds and tasks with whatever
# probes happen to be in flight at the sampling instant.
LEVEL_TOLERANCE = {"rss_mb": (0.05, 3.0), "open_fds": (0.10, 5.0), "threads": (0.0, 2.0),
                   "asyncio_tasks": (0.10, 10.0)}
LEVEL_STATISTIC = {"rss_mb": "mean", "open_fds": "median", "threads": "median",
                   "asyncio_tasks": "median",
                   "python_blocks": "mean", "malloc_in_use_mb": "mean"}
# Shown to tell a Python-level leak (allocated blocks grow) from the C heap growing
# (OpenSSL, fragmentation), but not part of the verdict.
DIAGNOSTIC_TOLERANCE = {"python_blocks": (0.05, 5000.0), "malloc_in_use_mb": (0.05, 2.0)}

SHIM = r"""
import asyncio, ctypes, sys
from prometheus_client import Gauge
import certwatch.serving.metrics as metrics

_init = metrics.DaemonMetrics.__init__

def _count_tasks():
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # not in the loop's thread
        return float("nan")

class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

try:
    _mallinfo2 = ctypes.CDLL(None).mallinfo2
    _mallinfo2.restype = _Mallinfo2
except (OSError, AttributeError):  # not glibc 2.33+
    _mallinfo2 = None

def _malloc(field):
    return lambda: getattr(_mallinfo2(), field) if _mallinfo2 else float("nan")

def __init__(self, registry=None):
    _init(self, registry)
    Gauge("certwatch_bench_asyncio_tasks", "asyncio tasks in the daemon's loop (soak shim).",
          registry=self.registry).set_function(_count_tasks)
    Gauge("certwatch_bench_python_blocks", "sys.getallocatedblocks() (soak shim).",
          registry=self.registry).set_function(sys.getallocatedblocks)
    Gauge("certwatch_bench_malloc_in_use_bytes", "malloc'd and in use, mallinfo2 uordblks + "
          "hblkhd (soak shim).", registry=self.registry).set_function(
          lambda: _malloc("uordblks")() + _malloc("hblkhd")())
    Gauge("certwatch_bench_malloc_free_bytes", "held by malloc but free, mallinfo2 fordblks "
          "(soak shim).", registry=self.registry).set_function(_malloc("fordblks"))

metrics.DaemonMetrics.__init__ = __init__
from certwatch.cli import main
sys.argv[0] = "certwatch"
raise SystemExit(main())
"""


def hostile_address(index: int) -> str:
    block, offset = divmod(index, HOSTILE_BLOCK)
    return f"127.78.{block}.{offset + 1}"


# --- the hostile server process ------------------------------------------------------------


async def _peek(reader: asyncio.StreamReader) -> bytes:
    try:
        async with asyncio.timeout(PEEK_SECONDS):
            return await reader.read(16 * 1024)
    except TimeoutError:
        return b""


async def _hostile(kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if kind == "tarpit":
        while await reader.read(64 * 1024):
            pass
    elif kind == "drip":
        await _peek(reader)
        record = b"\x16\x03\x03\x40\x00\x02".ljust(120, b"\x00")
        for byte in record:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(1.0)
    elif kind == "reset":
        await _peek(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif kind == "garbage":
        await _peek(reader)
        garbage = bytearray(os.urandom(64 * 1024))
        garbage[0] |= 0x80  # never a TLS content type (20-24)
        writer.write(bytes(garbage))
        await writer.drain()
    elif kind == "http":
        await _peek(reader)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()


async def _serve_hostile(conn: Connection, count: int, lifetime: float) -> None:
    stats = {kind: 0 for kind in HOSTILE_KINDS}
    open_now = {"count": 0, "peak": 0}

    def handler(kind: str) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            stats[kind] += 1
            open_now["count"] += 1
            open_now["peak"] = max(open_now["peak"], open_now["count"])
            try:
                async with asyncio.timeout(HOLD_SECONDS):
                    await _hostile(kind, reader, writer)
            except (OSError, TimeoutError):
                pass
            except asyncio.CancelledError:  # the process is stopping
                pass
            finally:
                open_now["count"] -= 1
                if kind == "reset":
                    writer.transport.abort()
                else:
                    writer.close()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await writer.wait_closed()
        return handle

    servers: list[asyncio.Server] = []
    closed: list[socket.socket] = []
    endpoints: list[tuple[str, int, str]] = []
    for i in range(count):
        kind, host = HOSTILE_KINDS[i % len(HOSTILE_KINDS)], hostile_address(i)
        if kind == "closed":
            sock = socket.socket()
            sock.bind((host, 0))  # bound, never listening: the port stays refused and ours
            closed.append(sock)
            endpoints.append((host, sock.getsockname()[1], kind))
        else:
            server = await asyncio.start_server(handler(kind), host, 0)
            servers.append(server)
            endpoints.append((host, server.sockets[0].getsockname()[1], kind))
    conn.send(("ready", {"endpoints": endpoints}))

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_reader(conn.fileno(), stop.set)  # "stop", or EOF if the parent died
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(lifetime):
            await stop.wait()
    loop.remove_reader(conn.fileno())
    for server in servers:
        server.close()
    for sock in closed:
        sock.close()
    conn.send(("stats", {"connections": stats, "peak_open": open_now["peak"]}))


def serve_hostile(conn: Connection, count: int, lifetime: float) -> None:
    try:
        asyncio.run(_serve_hostile(conn, count, lifetime))
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails loudly
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))


@contextlib.contextmanager
def hostile_process(count: int, lifetime: float) -> Iterator[tuple[Connection, dict[str, Any]]]:
    spawn = multiprocessing.get_context("spawn")
    conn, child = spawn.Pipe()
    process = spawn.Process(target=serve_hostile, name="certwatch-soak-hostile", daemon=True,
                            args=(child, count, lifetime))
    process.start()
    child.close()
    try:
        if not conn.poll(STARTUP_TIMEOUT):
            raise SystemExit("FAIL: the hostile server process did not start")
        kind, payload = conn.recv()
        if kind != "ready":
            raise SystemExit(f"FAIL: the hostile server process failed:\n{payload}")
        yield conn, payload
    finally:
        conn.close()
        process.join(30)
        if process.is_alive():
            process.terminate()
            process.join(5)


# --- the daemon, seen from outside ---------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def scrape(port: int) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    status, body = get(port, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    out: dict[str, Any] = {"probes": 0.0, "states": {}}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "certwatch_probes_total":
                out["probes"] += sample.value
            elif sample.name == "certwatch_targets":
                out["states"][sample.labels["state"]] = int(sample.value)
            elif sample.name in ("certwatch_bench_asyncio_tasks", "process_open_fds",
                                 "certwatch_scan_lag_seconds", "certwatch_bench_python_blocks",
                                 "certwatch_bench_malloc_in_use_bytes",
                                 "certwatch_bench_malloc_free_bytes"):
                out[sample.name] = sample.value
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_inventory(path: Path, good: list[tuple[str, int]], hostile: list[tuple[str, int, str]],
                    ca_file: str, args: argparse.Namespace) -> None:
    lines = [
        f"max_concurrency: {args.concurrency}",
        "defaults:",
        f"  ca_file: {json.dumps(ca_file)}",
        "  system_trust: false",
        f"  timeout: {args.timeout:g}",
        f"  interval: {args.interval:g}s",
        f"  retry_interval: {args.interval:g}s",
        "endpoints:",
    ]
    lines += [f"  - {{name: t{i}, host: {host}, port: {port}, server_name: t{i}.{DOMAIN}}}"
              for i, (host, port) in enumerate(good)]
    lines += [f"  - {{name: h{i}-{kind}, host: {host}, port: {port}, server_name: h{i}.{DOMAIN},"
              f" labels: {{hostile: {kind}}}}}" for i, (host, port, kind) in enumerate(hostile)]
    path.write_text("\n".join(lines) + "\n")


# --- figures -------------------------------------------------------------------------------

FIELDS = ("elapsed_s", "rss_mb", "hwm_mb", "open_fds", "process_open_fds", "threads",
          "asyncio_tasks", "python_blocks", "malloc_in_use_mb", "malloc_free_mb", "cpu_s",
          "probes", "scan_lag_s", "ok", "error", "scrape_ms")


@dataclass(frozen=True, slots=True)
class Curve:
    name: str
    statistic: str  # what is compared between the quarters: "mean" or "median"
    start: float
    end: float
    minimum: float
    maximum: float
    q2_mean: float
    q4_mean: float
    q2_median: float
    q4_median: float
    levelled: bool

    def line(self) -> str:
        verdict = "levelled off" if self.levelled else "STILL GROWING"
        return (f"  {self.name:<14} start {self.start:7.1f}  end {self.end:7.1f}  "
                f"min {self.minimum:7.1f}  max {self.maximum:7.1f} | "
                f"mean 25-50% {self.q2_mean:7.1f}"
                f"  75-100% {self.q4_mean:7.1f} | median 25-50% {self.q2_median:7.1f}  75-100% "
                f"{self.q4_median:7.1f} | by {self.statistic}: {verdict}")


def curve(name: str, values: list[float]) -> Curve:
    n = len(values)
    q2 = values[n // 4: n // 2] or values
    q4 = values[3 * n // 4:] or values
    fraction, slack = {**LEVEL_TOLERANCE, **DIAGNOSTIC_TOLERANCE}[name]
    statistic = LEVEL_STATISTIC[name]
    measure = statistics.fmean if statistic == "mean" else statistics.median
    return Curve(name, statistic, values[0], values[-1], min(values), max(values),
                 statistics.fmean(q2), statistics.fmean(q4), statistics.median(q2),
                 statistics.median(q4), measure(q4) <= measure(q2) * (1 + fraction) + slack)


def curves(rows: list[dict[str, Any]], names: Any = LEVEL_TOLERANCE) -> list[Curve]:
    return [curve(name, [float(r[name]) for r in rows]) for name in names
            if all(r.get(name) not in (None, "", "nan") for r in rows)]


def report_csv(path: Path) -> int:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) < 4:
        print(f"{path}: only {len(rows)} samples")
        return 1
    minutes = (float(rows[-1]["elapsed_s"]) - float(rows[0]["elapsed_s"])) / 60
    print(f"{path}: {len(rows)} samples over {minutes:.1f} min")
    found = curves(rows)
    for c in found + curves(rows, DIAGNOSTIC_TOLERANCE):
        print(c.line())
    return 0 if all(c.levelled for c in found) else 1


# --- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace, directory: Path, good: list[tuple[str, int]],
        hostile: list[tuple[str, int, str]], ca_file: str
        ) -> tuple[list[dict[str, Any]], list[str], Path]:
    failures: list[str] = []
    inventory = directory / "inventory.yaml"
    write_inventory(inventory, good, hostile, ca_file, args)
    port = free_port()
    log_path = directory / "daemon.log"
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    csv_path = results / f"soak-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.csv"
    command = [sys.executable, "-c", SHIM, "--log-format", "json", "run", "-c", str(inventory),
               "--listen", f"127.0.0.1:{port}", "--grace", f"{args.grace:g}"]
    rows: list[dict[str, float]] = []
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                   stderr=subprocess.STDOUT, cwd=directory)
    pid = process.pid
    try:
        end = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                raise SystemExit(f"FAIL: the daemon exited with status {process.returncode}:\n"
                                 + log_path.read_text()[-3000:])
            with contextlib.suppress(OSError):
                if get(port, "/readyz")[0] == 200:
                    break
            if time.monotonic() > end:
                raise SystemExit(f"FAIL: /readyz was not 200 within {STARTUP_TIMEOUT:g}s")
            time.sleep(0.5)
        started = time.monotonic()
        stop_at = started + args.minutes * 60
        print(f"daemon pid {pid} ready on 127.0.0.1:{port}; sampling every {args.sample:g}s "
              f"for {args.minutes:g} min into {csv_path}", flush=True)
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            next_sample = started
            while True:
                if process.poll() is not None:
                    failures.append(f"the daemon exited with status {process.returncode} "
                                    "during the soak")
                    break
                status = proc_status(pid)
                fds, cpu = open_fds(pid), cpu_seconds(pid)
                t0 = time.perf_counter()
                try:
                    metrics = scrape(port)
                except (OSError, RuntimeError) as exc:
                    failures.append(f"/metrics failed at {time.monotonic() - started:.0f}s: {exc}")
                    metrics = {"probes": float("nan"), "states": {}}
                scrape_ms = (time.perf_counter() - t0) * 1000
                row = {
                    "elapsed_s": round(time.monotonic() - started, 1),
                    "rss_mb": round(status["VmRSS"] / 1024, 2),
                    "hwm_mb": round(status["VmHWM"] / 1024, 2),
                    "open_fds": fds,
                    "process_open_fds": metrics.get("process_open_fds", float("nan")),
                    "threads": status["Threads"],
                    "asyncio_tasks": metrics.get("certwatch_bench_asyncio_tasks", float("nan")),
                    "python_blocks": metrics.get("certwatch_bench_python_blocks", float("nan")),
                    "malloc_in_use_mb": round(metrics.get(
                        "certwatch_bench_malloc_in_use_bytes", float("nan")) / 2**20, 2),
                    "malloc_free_mb": round(metrics.get(
                        "certwatch_bench_malloc_free_bytes", float("nan")) / 2**20, 2),
                    "cpu_s": round(cpu, 2),
                    "probes": metrics["probes"],
                    "scan_lag_s": round(metrics.get("certwatch_scan_lag_seconds", float("nan")), 3),
                    "ok": metrics["states"].get("ok", 0),
                    "error": metrics["states"].get("error", 0),
                    "scrape_ms": round(scrape_ms, 1),
                }
                rows.append(row)
                writer.writerow(row)
                f.flush()
                if args.verbose:
                    print("  " + "  ".join(f"{k}={row[k]}" for k in FIELDS), flush=True)
                if time.monotonic() >= stop_at:
                    break
                next_sample += args.sample
                time.sleep(max(0.0, min(next_sample, stop_at) - time.monotonic()))
    finally:
        stopping_at = log_path.stat().st_size  # log lines past this are the shutdown's
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(args.grace + SHUTDOWN_MARGIN)
                if code != 0:
                    failures.append(f"the daemon exited with status {code} on SIGTERM")
            except subprocess.TimeoutExpired:
                failures.append("the daemon did not stop on SIGTERM; killed")
                process.kill()
                process.wait(10)
    data = log_path.read_bytes()
    for part, text in (("soak", data[:stopping_at]), ("shutdown", data[stopping_at:])):
        levels, problems = _errors(text)
        print(f"daemon log ({part}): {sum(levels.values())} lines, {len(text) / 1e6:.1f} MB, "
              f"by level {levels}")
        if problems and part == "soak":
            failures.append("the daemon logged errors:\n    " + "\n    ".join(problems))
        elif problems:  # reported, but not what this benchmark measures
            print(f"NOTE: errors logged while stopping ({levels.get('error', 0)}), the first:\n    "
                  + "\n    ".join(problems[:2]))
    return rows, failures, csv_path


def _errors(log: bytes) -> tuple[dict[str, int], list[str]]:
    """Lines by level, and the first few error lines (the first with its traceback)."""
    levels: dict[str, int] = {}
    problems: list[str] = []
    for raw in log.splitlines():
        try:
            record = json.loads(raw)
        except ValueError:
            record = {"level": "error", "message": raw.decode(errors="replace")}
        level = str(record.get("level", "?"))
        levels[level] = levels.get(level, 0) + 1
        if level in ("error", "critical") and len(problems) < 5:
            exception = record.get("exception") if not problems else None
            problems.append(str(record.get("message"))[:300]
                            + (f"\n{str(exception)[-1200:]}" if exception else ""))
    return levels, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--hostile", type=float, default=0.25, help="share of hostile targets")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds (and retry_interval)")
    parser.add_argument("--timeout", type=float, default=2.0, help="per-phase probe timeout")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--key-type", default="ec", choices=["ec", "rsa"])
    parser.add_argument("--verbose", action="store_true", help="print every sample")
    parser.add_argument("--report", type=Path, metavar="CSV",
                        help="only print the verdict on a CSV of an earlier run")
    args = parser.parse_args()
    if args.report:
        return report_csv(args.report)
    hostile_count = round(args.targets * args.hostile)
    good_count = args.targets - hostile_count
    # Both server processes and the daemon inherit this.
    raise_fd_limit(2 * args.targets + 4 * args.concurrency + FD_MARGIN)
    lifetime = args.minutes * 60 + STARTUP_TIMEOUT + 300
    wall0 = time.time()
    with tempfile.TemporaryDirectory(prefix="certwatch-soak-") as tmp, \
            server_process(good_count, args.key_type, tmp, lifetime) as (good_conn, good), \
            hostile_process(hostile_count, lifetime) as (bad_conn, bad):
        rows, failures, csv_path = run(args, Path(tmp), [tuple(e) for e in good["endpoints"]],
                                       [tuple(e) for e in bad["endpoints"]], good["ca_file"], )
        time.sleep(2)  # the servers' handlers see the daemon's connections close
        good_conn.send("stop")
        bad_conn.send("stop")
        hostile_stats = bad_conn.recv() if bad_conn.poll(30) else ("stats", {})
        # Read (and drop) the TLS server's closing stats: closing the pipe before they
        # are sent broke it under a server with thousands of listeners to close.
        if good_conn.poll(30):
            good_conn.recv()
    if len(rows) < 4:
        print(f"FAIL: only {len(rows)} samples", file=sys.stderr)
        return 1
    minutes = (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]) / 60
    probes = rows[-1]["probes"] - rows[0]["probes"]
    expected = args.targets * minutes * 60 / args.interval
    found = curves(rows)
    print(f"certwatch soak: {args.targets} targets ({good_count} TLS, {hostile_count} hostile: "
          f"{', '.join(HOSTILE_KINDS)}), interval {args.interval:g}s, timeout {args.timeout:g}s, "
          f"concurrency {args.concurrency}; {minutes:.1f} min, {len(rows)} samples "
          f"({time.time() - wall0:.0f}s wall in all)")
    print(f"  probes          {probes:.0f} in the window ({probes / (minutes * 60):.0f}/s; "
          f"at most ~{expected:.0f} if probes took no time: the interval runs from a probe's "
          f"end); daemon CPU "
          f"{rows[-1]['cpu_s'] - rows[0]['cpu_s']:.0f}s "
          f"({(rows[-1]['cpu_s'] - rows[0]['cpu_s']) / (minutes * 60):.0%} of one core)")
    print(f"  states at end   ok={rows[-1]['ok']} error={rows[-1]['error']}; scan lag at end "
          f"{rows[-1]['scan_lag_s']}s, max {max(r['scan_lag_s'] for r in rows):.2f}s; "
          f"peak RSS (VmHWM) {rows[-1]['hwm_mb']:.1f} MB")
    print(f"  hostile server  {hostile_stats[1]}")
    for c in found:
        print(c.line())
    print("  diagnostics (not part of the verdict):")
    for c in curves(rows, DIAGNOSTIC_TOLERANCE):
        print(c.line())
    print(f"  CSV: {csv_path.relative_to(REPO)}")
    if probes < expected / 2:
        failures.append(f"probing stalled: {probes:.0f} probes, ~{expected:.0f} expected")
    if rows[-1]["ok"] != good_count or rows[-1]["error"] != hostile_count:
        failures.append(f"states at the end: ok={rows[-1]['ok']} (want {good_count}), "
                        f"error={rows[-1]['error']} (want {hostile_count})")
    failures += [f"{c.name} did not level off" for c in found if not c.levelled]
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
