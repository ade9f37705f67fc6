"""Benchmark: /healthz while the daemon reloads a large inventory (issue 17).

    python bench/reload.py [--megabytes 15] [--endpoints 10000]

Runs the real `certwatch run` (JSON logs to a file, 127.0.0.1, port 0) on a small
inventory, then replaces the file (atomically) with:
- invalid: --megabytes of entries that are all wrong (every one a problem), the
  slowest file to read that is still under the 16 MiB cap; it is rejected;
- valid: --endpoints endpoints on a closed loopback port (interval 1h): accepted and
  scheduled, every probe refused at once;
and asks /healthz over a fresh connection every POLL seconds from the moment the file
is replaced until the daemon logs that it loaded or rejected it (the reload: reading,
parsing, validating, scheduling), then for AFTER seconds more (for the valid file, the
first probes of every new endpoint). Printed for each: how long it took, how many
/healthz answered, and their latency (median, 99th percentile, worst). Target
(PASS/MISS): the worst during the reload under TARGET_MS. Before issue 17 a 20 MB
invalid file blocked /healthz for 3.8 s, as the parse ran on the event loop.
Loopback only; every wait is bounded. One JSON line goes to bench/results/reload.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
POLL = 0.01  # seconds between two /healthz requests
TIMEOUT = 120.0  # seconds for a reload at most
TARGET_MS = 50.0
AFTER = 5.0  # seconds /healthz is asked after the reload


def replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def wait_for_port(process: subprocess.Popen[bytes], log: Path) -> int:
    end = time.monotonic() + 30
    while time.monotonic() < end and process.poll() is None:
        for record in log_records(log):
            if record.get("message", "").startswith("listening on"):
                return int(record["port"])
        time.sleep(0.05)
    raise SystemExit(f"FAIL: the daemon did not start:\n{log.read_text()}")


def healthz(port: int) -> float:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"FAIL: /healthz answered {response.status}")
    finally:
        connection.close()
    return time.monotonic() - started


def one_reload(config: Path, log: Path, port: int, text: str) -> dict[str, Any]:
    done_before = len([r for r in log_records(log) if _finished(r)])
    replace(config, text)
    started = time.monotonic()
    latencies: list[float] = []
    while time.monotonic() - started < TIMEOUT:
        latencies.append(healthz(port))
        finished = [r for r in log_records(log) if _finished(r)]
        if len(finished) > done_before:
            outcome = finished[-1]["message"]
            break
        time.sleep(POLL)
    else:
        raise SystemExit("FAIL: the reload did not finish in time")
    took = time.monotonic() - started
    after: list[float] = []
    while time.monotonic() - started - took < AFTER:
        after.append(healthz(port))
        time.sleep(POLL)
    return {"megabytes": round(len(text.encode()) / 2**20, 1), "outcome": outcome,
            "reload_seconds": round(took, 2), "during": figures(latencies),
            "after": figures(after)}


def figures(latencies: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {"healthz": len(ordered), "median_ms": round(statistics.median(ordered) * 1000, 1),
            "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 1),
            "worst_ms": round(ordered[-1] * 1000, 1)}


def _finished(record: dict[str, Any]) -> bool:
    message = str(record.get("message", ""))
    return (message.startswith("configuration rejected")
            or (message == "configuration loaded" and record.get("why") == "file changed"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=15.0)
    parser.add_argument("--endpoints", type=int, default=10_000)
    args = parser.parse_args()
    port_closed = closed_port()
    entry = "  - {host: 'not a host', port: x, labels: {a: b}}\n"
    cases = {
        "invalid": "endpoints:\n" + entry * int(args.megabytes * 2**20 / len(entry)),
        "valid": "defaults: {interval: 1h, timeout: 1}\nendpoints:\n" + "".join(
            f"  - {{name: e{i}, host: 127.0.0.1, port: {port_closed}}}\n"
            for i in range(args.endpoints)),
    }
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="certwatch-bench-reload-") as tmp:
        config, log = Path(tmp) / "inventory.yaml", Path(tmp) / "daemon.log"
        replace(config, "endpoints: []\n")
        process = subprocess.Popen(
            [sys.executable, "-m", "certwatch", "--log-format", "json", "run", "-c", str(config),
             "--listen", "127.0.0.1:0", "--reload-interval", "0.2"],
            stdout=subprocess.DEVNULL, stderr=log.open("wb"), cwd=REPO)
        try:
            port = wait_for_port(process, log)
            for name, text in cases.items():
                results[name] = one_reload(config, log, port, text)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    print(f"{'file':8} {'size':>7} {'outcome':9} {'when':7} {'for':>7} {'healthz':>8} "
          f"{'median':>8} {'p99':>8} {'worst':>8}")
    for name, r in results.items():
        outcome = "rejected" if "rejected" in r["outcome"] else "loaded"
        for when, length in (("during", f"{r['reload_seconds']:.2f}s"), ("after", f"{AFTER:g}s")):
            f = r[when]
            verdict = ("PASS" if f["worst_ms"] < TARGET_MS else "MISS") if when == "during" else ""
            print(f"{name:8} {r['megabytes']:>5.1f}MB {outcome:9} {when:7} {length:>7} "
                  f"{f['healthz']:>8} {f['median_ms']:>6.1f}ms {f['p99_ms']:>6.1f}ms "
                  f"{f['worst_ms']:>6.1f}ms  {verdict}")
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "reload.json").write_text(json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
