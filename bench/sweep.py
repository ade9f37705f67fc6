"""Benchmark: one full sweep of N loopback TLS endpoints through certwatch's check path.

    python bench/sweep.py --targets 1000 --concurrency 100

What it measures, for the client process only: the wall time of one sweep
(`certwatch.sweep.sweep` over N endpoints: handshake with each, then assess each chain), probes
per second, CPU seconds (user + sys) and CPU per probe, the share of that CPU spent
assessing (parse + offline verification, timed by assessing the collected observations
again), probe latency, and peak RSS. Trust store loading and building the inventory are
timed on their own, and a small unmeasured warm-up sweep runs first, so that imports and
first-use costs are not in the sweep's figures: what remains is what a long-running
daemon pays for every sweep.

Why the servers live in another process: on loopback the server's handshake work (key
exchange, signing, asyncio) costs CPU of the same order as the client's. In the same
process it would be counted as certwatch's CPU and memory, and would compete with it for
the same interpreter and event loop. A spawned process gets its own interpreter, so
getrusage(RUSAGE_SELF) in this process sees the client alone.

The server process makes a private PKI (root, intermediate, wildcard leaf; tests/pki.py),
listens on N sockets (one loopback address each, 127.77.x.y, kernel-chosen ports) and
serves the leaf + intermediate chain on all of them. It also checks certwatch's
concurrency bound from the outside: it tracks the connections it has accepted, and each
time their number reaches a new high it recounts those still ESTABLISHED according to the
kernel (TCP_INFO), so a connection the client has already closed but whose close the
server's event loop has not processed yet is not counted. The peak of that count is sent
back at the end; the bench fails (exit 1) if it exceeds --concurrency, if any result is
not `ok`, or if anything misses its deadline.

It prints a table (with the server's own CPU during the sweep, to tell whether the server
was the bottleneck) and writes the same figures as one JSON line to
bench/results/sweep-<N>.json. Only loopback addresses are used, and every wait is
bounded: the sweep by --deadline, the server process by its own lifetime limit, each
server-side connection by SERVER_HOLD_SECONDS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import platform
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/pki.py, used by the server process

from OpenSSL import SSL  # noqa: E402

from certwatch.core.assess import Assessment, assess  # noqa: E402
from certwatch.core.vocabulary import State  # noqa: E402
from certwatch.core.x509 import parse_chain  # noqa: E402
from certwatch.sources.trust import TrustStores  # noqa: E402
from certwatch.sources.wire import Prober  # noqa: E402
from certwatch.sweep import sweep  # noqa: E402
from certwatch.config import build_inventory  # noqa: E402
from certwatch.core.inventory import Inventory  # noqa: E402

DOMAIN = "bench.certwatch.test"  # the leaf is valid for *.DOMAIN; target i sends SNI t<i>.DOMAIN
ADDRESSES_PER_BLOCK = 250  # 127.77.<block>.1 .. 127.77.<block>.250
MAX_TARGETS = 256 * ADDRESSES_PER_BLOCK
WARMUP_TARGETS = 20
PROBE_TIMEOUT = 10.0  # seconds, certwatch's per-phase timeout for each endpoint
SERVER_READY_TIMEOUT = 180.0  # making the PKI and binding N sockets
SERVER_STOP_TIMEOUT = 30.0
SERVER_HOLD_SECONDS = 60.0  # the server drops a connection held open longer than this
FD_MARGIN = 64  # descriptors beyond sockets: pipes, files, the interpreter's own
TCP_ESTABLISHED = 1  # tcpi_state, the first byte of struct tcp_info (linux/tcp.h)


def address(index: int) -> str:
    block, offset = divmod(index, ADDRESSES_PER_BLOCK)
    return f"127.77.{block}.{offset + 1}"


def cpu_times() -> tuple[float, float]:
    """User and system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def stop_process(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM to a benchmark's child process, then SIGKILL after `grace` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def raise_fd_limit(needed: int) -> None:
    """Raises the soft descriptor limit to the hard one; fails if even that is too low."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"need {needed} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- the server process ----------------------------------------------------------------


class ConnectionCounter:
    """Accepted connections, and the peak number of them established at once."""

    def __init__(self) -> None:
        self.open: set[Any] = set()  # asyncio TransportSockets
        self.peak = 0
        self.handshakes = 0

    def opened(self, sock: Any) -> None:
        self.open.add(sock)
        if len(self.open) > self.peak:  # only then can the established count be a new peak
            self.peak = max(self.peak, sum(1 for s in self.open if _established(s)))

    def closed(self, sock: Any) -> None:
        self.open.discard(sock)


def _established(sock: Any) -> bool:
    try:
        state: int = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        return state == TCP_ESTABLISHED
    except OSError:  # already closed on our side
        return False


def _make_pki(directory: Path, key_type: str) -> tuple[ssl.SSLContext, Path]:
    """A root (written as root.pem) -> intermediate -> *.DOMAIN leaf; a server context."""
    from tests import pki  # only the server process needs it

    now = datetime.now(timezone.utc)
    root = pki.make_root("certwatch bench root", not_before=now - timedelta(days=1),
                         not_after=now + timedelta(days=3650), key_type=key_type)
    intermediate = pki.make_intermediate(root, "certwatch bench intermediate",
                                         not_before=now - timedelta(days=1),
                                         not_after=now + timedelta(days=365), key_type=key_type)
    leaf = pki.make_leaf(intermediate, [f"*.{DOMAIN}"], not_before=now - timedelta(hours=1),
                         not_after=now + timedelta(days=90), key_type=key_type)
    cert_path, key_path = leaf.write(directory, "leaf")  # leaf + intermediate
    root_path = pki.write_pem(directory / "root.pem", [root.cert])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, root_path


async def _serve(conn: Connection, count: int, key_type: str, directory: Path,
                 lifetime: float, per_listener: int = 1) -> None:
    context, root_path = _make_pki(directory, key_type)
    counter = ConnectionCounter()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        counter.opened(sock)
        try:
            async with asyncio.timeout(SERVER_HOLD_SECONDS):
                await writer.start_tls(context)
                counter.handshakes += 1
                await reader.read(1)  # until the client hangs up
        except OSError:  # resets, TLS errors and our own timeout: the client's business
            pass
        finally:
            counter.closed(sock)
            writer.transport.abort()
            with contextlib.suppress(OSError):  # retrieve the reset, or asyncio logs it
                await writer.wait_closed()

    # One listener (one loopback address) per `per_listener` targets: the leaf is a
    # wildcard, so each target's SNI name is served by its listener.
    listeners = -(-count // per_listener)
    servers = [await asyncio.start_server(handle, address(i), 0) for i in range(listeners)]
    conn.send(("ready", {"ca_file": str(root_path),
                         "endpoints": [servers[i // per_listener].sockets[0].getsockname()[:2]
                                       for i in range(count)]}))

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    marks: dict[str, float] = {"handshakes": 0, "cpu": 0.0}

    def command() -> None:
        """"mark" starts the measured sweep; "stop", or EOF if the parent died, ends it."""
        try:
            message = conn.recv()
        except EOFError:
            message = "stop"
        if message == "mark":
            marks.update(handshakes=counter.handshakes, cpu=sum(cpu_times()))
        else:
            stop.set()

    loop.add_reader(conn.fileno(), command)
    try:
        async with asyncio.timeout(lifetime):
            await stop.wait()
    except TimeoutError:
        pass
    loop.remove_reader(conn.fileno())
    for server in servers:
        server.close()
    conn.send(("stats", {"peak_connections": counter.peak,
                         "sweep_handshakes": counter.handshakes - marks["handshakes"],
                         "sweep_cpu_seconds": sum(cpu_times()) - marks["cpu"]}))


def serve(conn: Connection, count: int, key_type: str, directory: str, lifetime: float,
          per_listener: int = 1) -> None:
    """Server process entry point: serve `count` endpoints until told to stop."""
    try:
        asyncio.run(_serve(conn, count, key_type, Path(directory), lifetime, per_listener))
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails loudly
        conn.send(("error", traceback.format_exc()))


def receive(conn: Connection, expected: str, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise SystemExit(f"FAIL: the server process sent no '{expected}' within {timeout:g}s")
    try:
        kind, payload = conn.recv()
    except EOFError:
        raise SystemExit("FAIL: the server process exited unexpectedly") from None
    if kind != expected:
        raise SystemExit(f"FAIL: the server process failed:\n{payload}")
    return payload


@contextlib.contextmanager
def server_process(count: int, key_type: str, directory: str, lifetime: float,
                   per_listener: int = 1) -> Iterator[tuple[Connection, dict[str, Any]]]:
    """Spawns the server process and yields its pipe and its "ready" message (ca_file,
    endpoints). On the way out the pipe is closed (EOF stops the server, if nothing did)
    and the process is joined, or terminated if it outlives SERVER_STOP_TIMEOUT."""
    spawn = multiprocessing.get_context("spawn")
    conn, child_conn = spawn.Pipe()
    server = spawn.Process(target=serve, name="certwatch-bench-servers", daemon=True,
                           args=(child_conn, count, key_type, directory, lifetime,
                                 per_listener))
    server.start()
    child_conn.close()
    try:
        yield conn, receive(conn, "ready", SERVER_READY_TIMEOUT)
    finally:
        conn.close()
        server.join(SERVER_STOP_TIMEOUT)
        if server.is_alive():
            server.terminate()
            server.join(5)


# --- the client (this process) ---------------------------------------------------------


def make_inventory(endpoints: list[tuple[str, int]], ca_file: str, concurrency: int) -> Inventory:
    return build_inventory({
        "max_concurrency": concurrency,
        "endpoints": [
            {"name": f"t{i}", "host": host, "port": port, "server_name": f"t{i}.{DOMAIN}",
             "ca_file": ca_file, "timeout": PROBE_TIMEOUT}
            for i, (host, port) in enumerate(endpoints)
        ],
    }, source="bench")


async def timed_sweep(inventory: Inventory, trust: TrustStores,
                      deadline: float) -> list[Assessment]:
    async with asyncio.timeout(deadline):
        return await sweep(inventory.endpoints, Prober(max_concurrency=inventory.max_concurrency), trust)


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass(frozen=True, slots=True)
class Figures:
    targets: int
    concurrency: int
    key_type: str
    python: str
    openssl: str
    cpus: int
    states: dict[str, int]
    wall_seconds: float
    probes_per_second: float
    cpu_seconds: float
    cpu_user_seconds: float
    cpu_sys_seconds: float
    cpu_ms_per_probe: float
    assess_cpu_seconds: float  # assessing the same observations again, alone
    parse_cpu_seconds: float  # of which parsing the chains
    probe_cpu_seconds: float  # cpu_seconds - assess_cpu_seconds: connecting, TLS, asyncio
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    max_rss_mb_before: float  # after imports, trust store, inventory and warm-up
    max_rss_mb: float
    trust_store_seconds: float
    trust_roots: int
    inventory_build_seconds: float
    server_peak_connections: int = 0  # filled in from the server process's report
    server_handshakes: int = 0  # during the measured sweep
    server_cpu_seconds: float = 0.0  # during the measured sweep


def run_client(args: argparse.Namespace, conn: Connection,
               ready: dict[str, Any]) -> tuple[Figures, list[Assessment]]:
    """Warms up, then measures one sweep; `conn` tells the server when it starts."""
    endpoints = [(host, port) for host, port in ready["endpoints"]]
    start = time.perf_counter()
    inventory = make_inventory(endpoints, ready["ca_file"], args.concurrency)
    build_seconds = time.perf_counter() - start

    trust = TrustStores()
    start = time.perf_counter()
    store = trust.for_endpoint(inventory.endpoints[0])  # all endpoints share this one
    trust_seconds = time.perf_counter() - start

    warmup = make_inventory(endpoints[:WARMUP_TARGETS], ready["ca_file"], args.concurrency)
    warm = asyncio.run(timed_sweep(warmup, trust, args.deadline))
    if any(a.state is not State.OK for a in warm):
        raise SystemExit("FAIL: the warm-up sweep was not all ok:\n"
                         + "\n".join(f"  {a.target.key}: {a.summary}" for a in warm))

    rss_before = _max_rss_mb()
    conn.send("mark")  # the server measures its side of the sweep from here
    user0, sys0 = cpu_times()
    start = time.perf_counter()
    assessments = asyncio.run(timed_sweep(inventory, trust, args.deadline))
    wall = time.perf_counter() - start
    user1, sys1 = cpu_times()

    now = datetime.now(timezone.utc)
    start = time.process_time()
    for a in assessments:
        assess(a.observation, now, store)
    assess_cpu = time.process_time() - start
    start = time.process_time()
    for a in assessments:
        parse_chain(a.observation.chain)
    parse_cpu = time.process_time() - start

    cpu = (user1 - user0) + (sys1 - sys0)
    latencies = sorted(a.observation.duration_seconds * 1000 for a in assessments)
    figures = Figures(
        targets=len(assessments), concurrency=args.concurrency, key_type=args.key_type,
        python=platform.python_version(),
        openssl=SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),  # the probe's (pyOpenSSL)
        cpus=multiprocessing.cpu_count(),
        states=dict(Counter(a.state.value for a in assessments).most_common()),
        wall_seconds=wall, probes_per_second=len(assessments) / wall,
        cpu_seconds=cpu, cpu_user_seconds=user1 - user0, cpu_sys_seconds=sys1 - sys0,
        cpu_ms_per_probe=cpu * 1000 / len(assessments),
        assess_cpu_seconds=assess_cpu, parse_cpu_seconds=parse_cpu,
        probe_cpu_seconds=cpu - assess_cpu,
        latency_p50_ms=latencies[len(latencies) // 2],
        latency_p99_ms=latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)],
        latency_max_ms=latencies[-1],
        max_rss_mb_before=rss_before, max_rss_mb=_max_rss_mb(),
        trust_store_seconds=trust_seconds, trust_roots=len(store.roots),
        inventory_build_seconds=build_seconds,
    )
    return figures, assessments


def render(f: Figures) -> str:
    n = f.targets
    per_probe = 1000 / n
    states = " ".join(f"{state}={count}" for state, count in f.states.items())
    return "\n".join([
        f"certwatch sweep: {n} targets, concurrency {f.concurrency}, {f.key_type} keys, "
        f"Python {f.python}, {f.openssl}, {f.cpus} CPUs",
        f"  states              {states}",
        f"  wall                {f.wall_seconds:8.3f} s    {f.probes_per_second:8.0f} probes/s",
        f"  client CPU          {f.cpu_seconds:8.3f} s    {f.cpu_ms_per_probe:8.3f} ms/probe"
        f"   (user {f.cpu_user_seconds:.3f} s, sys {f.cpu_sys_seconds:.3f} s;"
        f" {f.cpu_seconds / f.wall_seconds:.0%} of one core)",
        f"    probing           {f.probe_cpu_seconds:8.3f} s    "
        f"{f.probe_cpu_seconds * per_probe:8.3f} ms/probe   (total minus assessing)",
        f"    assessing         {f.assess_cpu_seconds:8.3f} s    "
        f"{f.assess_cpu_seconds * per_probe:8.3f} ms/probe   (re-run alone; parsing "
        f"{f.parse_cpu_seconds * per_probe:.3f} ms/probe of it)",
        f"  probe latency       p50 {f.latency_p50_ms:.1f} ms, p99 {f.latency_p99_ms:.1f} ms, "
        f"max {f.latency_max_ms:.1f} ms",
        f"  peak RSS            {f.max_rss_mb:8.1f} MB   "
        f"({f.max_rss_mb_before:.1f} MB before the sweep)",
        f"  trust store load    {f.trust_store_seconds:8.3f} s    ({f.trust_roots} roots)",
        f"  inventory build     {f.inventory_build_seconds:8.3f} s",
        f"  server              peak {f.server_peak_connections} connections open "
        f"(bound {f.concurrency}); in the sweep {f.server_handshakes} handshakes, "
        f"{f.server_cpu_seconds:.3f} s CPU",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=1000, help="endpoints (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=100,
                        help="certwatch max_concurrency (default %(default)s)")
    parser.add_argument("--key-type", default="ec", choices=["ec", "rsa"],
                        help="key type of the whole chain (default %(default)s)")
    parser.add_argument("--deadline", type=float, default=600.0,
                        help="seconds the measured sweep may take (default %(default)s)")
    args = parser.parse_args()
    if not WARMUP_TARGETS <= args.targets <= MAX_TARGETS:
        parser.error(f"--targets must be from {WARMUP_TARGETS} to {MAX_TARGETS}")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    # The server's listening sockets and both ends' connections; the server inherits it.
    raise_fd_limit(args.targets + args.concurrency + FD_MARGIN)

    lifetime = SERVER_READY_TIMEOUT + 2 * args.deadline + SERVER_STOP_TIMEOUT
    with tempfile.TemporaryDirectory(prefix="certwatch-bench-") as directory, \
            server_process(args.targets, args.key_type, directory, lifetime) as (conn, ready):
        try:
            figures, assessments = run_client(args, conn, ready)
        except TimeoutError:
            raise SystemExit(
                f"FAIL: the sweep did not finish within {args.deadline:g}s") from None
        conn.send("stop")
        stats = receive(conn, "stats", SERVER_STOP_TIMEOUT)

    figures = replace(figures, server_peak_connections=stats["peak_connections"],
                      server_handshakes=stats["sweep_handshakes"],
                      server_cpu_seconds=stats["sweep_cpu_seconds"])
    print(render(figures))
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    record = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **asdict(figures)}
    (results / f"sweep-{figures.targets}.json").write_text(json.dumps(record) + "\n")

    failed = False
    if figures.server_peak_connections > args.concurrency:
        print(f"FAIL: the server saw {figures.server_peak_connections} connections open at once;"
              f" certwatch's bound is {args.concurrency}", file=sys.stderr)
        failed = True
    not_ok = [a for a in assessments if a.state is not State.OK]
    if not_ok:
        print(f"FAIL: {len(not_ok)} of {len(assessments)} results are not ok; the first:",
              file=sys.stderr)
        for a in not_ok[:10]:
            print(f"  {a.target.key} [{a.state}]: {a.summary}", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
