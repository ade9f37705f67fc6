"""Benchmark: the HTTP listener against idle and trickling connections over TLS (issue 17).

    python bench/listener.py --connections 2000 [--hold 15]

Runs two servers over TLS on 127.0.0.1, one after the other, each as its own process:
- certwatch: the real `certwatch run` with a web configuration (TLS) and an empty
  inventory, at its default limits (256 connections, 10 s for the handshake and for a
  request's headers, 16 KiB TLS read buffers);
- the peer: aiohttp's own TLS site (`web.TCPSite(ssl_context=...)`) with its defaults,
  serving the same /healthz: how certwatch served before issue 17.

For each kind of connection it opens --connections of them at once from a client
process and holds them for --hold seconds, then closes them:
- silent: TCP connected, no ClientHello ever sent;
- idle: the TLS handshake done, no request;
- trickle: the TLS handshake done, then a request's headers one byte a second.

Measured from outside the server: its RSS before (VmRSS), the peak while the connections
are held (sampled every SAMPLE seconds), and after they are closed (SETTLE seconds
later); /healthz over a fresh TLS connection while they are held (every HEALTH_EVERY
seconds: how many answered, and the slowest); how many of the held connections the
server closed (at its cap, or at a deadline), from the client's side.

Targets (PASS/MISS, not failures): for certwatch, an RSS rise of at most RISE_TARGET_MB,
/healthz answering every time, and RSS after closing within BACK_TARGET_MB of before.
The figures are printed as a table and written as one JSON line to
bench/results/listener-<N>.json. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/pki.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sweep.py

from sweep import raise_fd_limit, stop_process  # noqa: E402
from tests.pki import make_leaf, make_root  # noqa: E402

SAMPLE = 0.1  # seconds between RSS samples
HEALTH_EVERY = 1.0  # seconds between /healthz requests while connections are held
HEALTH_TIMEOUT = 5.0  # seconds for one /healthz
SETTLE = 3.0  # seconds after closing before RSS is read again
START_TIMEOUT = 30.0
OPEN_TIMEOUT = 60.0  # seconds for the client to open all its connections
RISE_TARGET_MB = 50.0
BACK_TARGET_MB = 10.0
MODES = ("silent", "idle", "trickle")

PEER = """
import asyncio, ssl, sys
from aiohttp import web
async def main():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    app = web.Application()
    async def healthz(request):
        return web.Response(text="ok\\n")
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"process {pid} has no VmRSS (it exited?)")


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # our own server on loopback
    return context


def healthz(port: int) -> float | None:
    """Seconds for GET /healthz over a fresh TLS connection, or None if it failed."""
    start = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=HEALTH_TIMEOUT) as raw, \
                client_context().wrap_socket(raw) as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            reply = b""
            while b"\r\n\r\n" not in reply and len(reply) < 4096:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    return time.monotonic() - start if reply.startswith(b"HTTP/1.1 200") else None


# --- the client process: opens the connections and holds them -----------------------


async def _hold(port: int, count: int, mode: str, conn: Connection) -> None:
    closed = 0
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        nonlocal closed
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                if mode == "silent":
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                else:
                    _, writer = await asyncio.open_connection(
                        "127.0.0.1", port, ssl=client_context(),
                        ssl_handshake_timeout=OPEN_TIMEOUT)
            writers.append(writer)
        except (OSError, TimeoutError):
            closed += 1  # refused, reset or closed by the server during the handshake

    await asyncio.gather(*(one() for _ in range(count)))
    conn.send(("opened", len(writers), closed))
    line = b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 10_000
    sent = 0
    while not conn.poll():
        if mode == "trickle" and sent < len(line):
            for writer in writers:
                if not writer.is_closing():
                    writer.write(line[sent:sent + 1])
            sent += 1
        await asyncio.sleep(1.0)
    conn.recv()
    alive = sum(1 for w in writers if not w.is_closing() and not w.transport.is_closing()
                and not _closed_by_peer(w))
    conn.send(("held", alive))
    for writer in writers:
        writer.transport.abort()
    await asyncio.sleep(0.1)
    conn.send(("closed",))


def _closed_by_peer(writer: asyncio.StreamWriter) -> bool:
    reader = getattr(writer, "_protocol", None)
    stream = getattr(reader, "_stream_reader", None)
    return bool(stream is not None and stream.at_eof())


def hold(port: int, count: int, mode: str, conn: Connection) -> None:
    raise_fd_limit(count + 100)
    asyncio.run(_hold(port, count, mode, conn))


# --- the servers ---------------------------------------------------------------------


def make_files(directory: Path) -> tuple[Path, Path]:
    now = datetime.now(timezone.utc)
    root = make_root("Bench Root", not_before=now - timedelta(days=1),
                     not_after=now + timedelta(days=30))
    leaf = make_leaf(root, ["localhost"], not_before=now - timedelta(days=1),
                     not_after=now + timedelta(days=30))
    return leaf.write(directory, "server")


def start_certwatch(directory: Path, cert: Path, key: Path) -> tuple[subprocess.Popen[bytes], int]:
    (directory / "web.yml").write_text(f"tls_server_config:\n  cert_file: {cert}\n"
                                       f"  key_file: {key}\n")
    (directory / "inventory.yaml").write_text("endpoints: []\n")
    log = directory / "certwatch.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "certwatch", "--log-format", "json", "run",
         "-c", str(directory / "inventory.yaml"), "--listen", "127.0.0.1:0",
         "--web.config.file", str(directory / "web.yml")],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"), cwd=REPO)
    end = time.monotonic() + START_TIMEOUT
    while time.monotonic() < end and process.poll() is None:
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if record.get("message", "").startswith("listening on"):
                return process, int(record["port"])
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"FAIL: certwatch did not start:\n{log.read_text()}")


def start_peer(cert: Path, key: Path) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen([sys.executable, "-c", PEER, str(cert), str(key)],
                               stdout=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline()  # the port, once it listens
    if not line:
        raise SystemExit("FAIL: the peer did not start")
    return process, int(line)


@dataclass
class Round:
    mode: str
    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_after_mb: float = 0.0
    opened: int = 0  # connections the client completed (TCP, or TCP and TLS)
    refused: int = 0  # closed by the server before they were complete
    alive_at_end: int = 0  # still open after --hold seconds
    healthz_ok: int = 0
    healthz_failed: int = 0
    healthz_worst_ms: float = 0.0
    rise_mb: float = field(init=False, default=0.0)
    back_mb: float = field(init=False, default=0.0)


def one_round(pid: int, port: int, mode: str, count: int, hold_seconds: float) -> Round:
    for _ in range(5):  # warm up: the first TLS connections allocate for good
        healthz(port)
    result = Round(mode, rss_before_mb=rss_mb(pid))
    ours, theirs = multiprocessing.Pipe()
    client = multiprocessing.Process(target=hold, args=(port, count, mode, theirs), daemon=True)
    client.start()
    peak = result.rss_before_mb
    try:
        started = time.monotonic()
        while not ours.poll(SAMPLE):
            peak = max(peak, rss_mb(pid))
            if time.monotonic() - started > OPEN_TIMEOUT + 10:
                raise SystemExit("FAIL: the client did not open its connections in time")
        _, result.opened, result.refused = ours.recv()
        end, next_health = time.monotonic() + hold_seconds, 0.0
        worst = 0.0
        while time.monotonic() < end:
            peak = max(peak, rss_mb(pid))
            if time.monotonic() >= next_health:
                took = healthz(port)
                if took is None:
                    result.healthz_failed += 1
                else:
                    result.healthz_ok += 1
                    worst = max(worst, took)
                next_health = time.monotonic() + HEALTH_EVERY
            time.sleep(SAMPLE)
        ours.send("stop")
        if ours.poll(30):
            result.alive_at_end = ours.recv()[1]
        ours.poll(30) and ours.recv()
    finally:
        client.join(30)
        if client.is_alive():
            client.kill()
    time.sleep(SETTLE)
    result.rss_peak_mb, result.rss_after_mb = peak, rss_mb(pid)
    result.healthz_worst_ms = round(worst * 1000, 1)
    result.rise_mb = round(peak - result.rss_before_mb, 1)
    result.back_mb = round(result.rss_after_mb - result.rss_before_mb, 1)
    return result


def render(server: str, rounds: list[Round], targets: bool) -> str:
    lines = [f"{server}:",
             f"  {'mode':8} {'RSS before':>10} {'peak':>7} {'rise':>6} {'after':>7} {'back':>6}"
             f" {'opened':>7} {'refused':>8} {'alive':>6} {'healthz ok/failed':>18} {'worst':>8}"]
    for r in rounds:
        verdict = ""
        if targets:
            ok = (r.rise_mb <= RISE_TARGET_MB and r.healthz_failed == 0 and r.healthz_ok > 0
                  and r.back_mb <= BACK_TARGET_MB)
            verdict = "  PASS" if ok else "  MISS"
        lines.append(
            f"  {r.mode:8} {r.rss_before_mb:>8.1f}MB {r.rss_peak_mb:>5.1f}MB {r.rise_mb:>4.1f}MB"
            f" {r.rss_after_mb:>5.1f}MB {r.back_mb:>4.1f}MB {r.opened:>7} {r.refused:>8}"
            f" {r.alive_at_end:>6} {r.healthz_ok:>9}/{r.healthz_failed:<8} "
            f"{r.healthz_worst_ms:>6.1f}ms{verdict}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--hold", type=float, default=15.0,
                        help="seconds the connections are held (certwatch's deadlines are 10 s)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--no-peer", action="store_true", help="measure certwatch only")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    raise_fd_limit(args.connections + 200)  # inherited by both servers
    figures: dict[str, Any] = {"connections": args.connections, "hold": args.hold,
                               "python": platform.python_version(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="certwatch-bench-listener-") as tmp:
        directory = Path(tmp)
        cert, key = make_files(directory)
        servers: list[tuple[str, Callable[[], tuple[subprocess.Popen[bytes], int]]]] = [
            ("certwatch", lambda: start_certwatch(directory, cert, key))]
        if not args.no_peer:
            servers.append(("peer (aiohttp TCPSite, asyncio defaults)",
                            lambda: start_peer(cert, key)))
        for name, start in servers:
            rounds = []
            for mode in modes:  # a fresh server for each, so that no round inherits another's
                process, port = start()
                try:
                    rounds.append(one_round(process.pid, port, mode, args.connections, args.hold))
                finally:
                    stop_process(process, 20)
            figures[name.split()[0]] = [asdict(r) for r in rounds]
            print(render(name, rounds, targets=name == "certwatch"), flush=True)
    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / f"listener-{args.connections}.json").write_text(json.dumps(figures) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
