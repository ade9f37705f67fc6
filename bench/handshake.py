"""Benchmark: the probe's floor, the handshake alone, against the whole probe.

    python bench/handshake.py --probes 3000 --rounds 3

On vs_blackbox.py's loopback nginx and PKI, at concurrency 64 on the daemon's event loop
(uvloop where installed), the CPU (process time) a probe of:

- the standard library: asyncio's `create_connection` with an `ssl` context
  (verification off) and Python's own OpenSSL, then an abort; it reads no chain;
- `Handshake` alone: certwatch's handshake over the bundled OpenSSL (pyOpenSSL),
  driven from the connection's callbacks, asking for the OCSP staple, then an abort;
- `Handshake` and the chain, version and cipher read from it;
- `Prober.observe`: the whole probe as the daemon runs it (resolution skipped for an
  address, the connection bound, the deadlines, the Observation).

Each line prints its rounds (alternated, so the machine's drift falls on all of them).
It fails (exit 1) if a probe fails or reads no chain. Only loopback is used, and every
wait is bounded (the nginx start by vs_blackbox.py's START_TIMEOUT, each probe by
PROBE_TIMEOUT).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_blackbox  # noqa: E402 - the nginx and PKI of the comparison, reused as they are
from sweep import REPO, stop_process  # noqa: E402

sys.path.insert(0, str(REPO))

from certwatch.config.inventory import parse_inventory  # noqa: E402
from certwatch.sources.handshake import Handshake, client_context  # noqa: E402
from certwatch.sources.wire import Prober  # noqa: E402

CONCURRENCY = 64
NAMES = 2000
PROBE_TIMEOUT = 10.0  # seconds a probe may take


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(args: argparse.Namespace, port: int, root: Path) -> int:
    names = [f"t{i}.{vs_blackbox.DOMAIN}" for i in range(NAMES)]
    endpoints = parse_inventory("\n".join(
        ["defaults:", f"  ca_file: {json.dumps(str(root))}", "endpoints:",
         *vs_blackbox.endpoint_lines(NAMES, port)])).endpoints
    standard = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    standard.check_hostname, standard.verify_mode = False, ssl.CERT_NONE
    context, prober = client_context(), Prober(max_concurrency=CONCURRENCY)
    failures: list[str] = []

    async def with_ssl(i: int) -> None:
        transport, _ = await asyncio.get_running_loop().create_connection(
            asyncio.Protocol, "127.0.0.1", port, ssl=standard, server_hostname=names[i])
        transport.abort()

    async def handshake(i: int, read: bool = False) -> None:
        shake = Handshake(context, names[i])
        transport, finished = await shake.connect("127.0.0.1", port)
        try:
            await finished
            if read and not (shake.chain and shake.version and shake.cipher):
                failures.append(f"{names[i]}: no chain read")
        finally:
            shake.release()
            transport.abort()

    async def observe(i: int) -> None:
        observation = (await prober.observe(endpoints[i]))[0]
        if observation.error is not None or not observation.chain:
            failures.append(f"{names[i]}: {observation.error}")

    async def sweep(probe: Callable[[int], Awaitable[None]], count: int) -> float:
        indices = iter(range(count))

        async def worker() -> None:
            for i in indices:
                await asyncio.wait_for(probe(i % NAMES), PROBE_TIMEOUT)

        start = cpu_seconds()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return 1000 * (cpu_seconds() - start) / count

    kinds: dict[str, Callable[[int], Awaitable[None]]] = {
        "standard library ssl (no chain)": with_ssl,
        "Handshake alone": handshake,
        "Handshake, chain, version, cipher": lambda i: handshake(i, read=True),
        "Prober.observe": observe,
    }
    await sweep(observe, 300)  # warm-up: imports, caches, nginx's workers
    figures: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(args.rounds):
        for kind, probe in kinds.items():
            figures[kind].append(await sweep(probe, args.probes))
    if failures:
        print(f"FAIL: {len(failures)} probes failed, e.g. {failures[0]}", file=sys.stderr)
        return 1
    print(f"one handshake, CPU a probe at concurrency {CONCURRENCY}, "
          f"{args.probes} probes a round, Python {sys.version.split()[0]}")
    for kind, values in figures.items():
        print(f"  {kind:36s} " + " / ".join(f"{v:.3f}" for v in values) + " ms")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=3000, help="probes a round and kind")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="certwatch-handshake-"))
    chain, key, root, _ = vs_blackbox.make_pki(directory)
    port = vs_blackbox.free_port()
    nginx = vs_blackbox.nginx(directory, chain, key, port)
    try:
        from certwatch.eventloop import run  # uvloop where installed, as the daemon

        return run(measure(args, port, root))
    finally:
        stop_process(nginx, 5)


if __name__ == "__main__":
    sys.exit(main())
