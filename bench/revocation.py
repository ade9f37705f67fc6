"""Benchmark: what the revocation checks cost per probe, at N targets under a few CAs.

    python bench/revocation.py --targets 1000 --cas 5 --crl-entries 10000

Each CA publishes one CRL (listing --crl-entries serials, a few of them targets'), served
over HTTP on loopback by `python -m http.server` in another process (its CPU is not
ours). Every target's leaf names its CA's CRL and comes with a stapled OCSP response
(good), so each probe judges a staple and a CRL. The observations are made here, without
handshakes (bench/sweep.py measures those): what is timed is the stage after the expiry
judgement, `RefusalChecks.check`, for every target, first with an empty cache (a fetch
per CA, shared by its targets) and then warm (no fetch: what a daemon pays on most
probes). CPU is this process's user + system time.

Writes bench/results/revocation-<N>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402
from cryptography.x509 import ocsp  # noqa: E402

from certwatch.config import build_inventory  # noqa: E402
from certwatch.config.refusals import shipped_policy  # noqa: E402
from certwatch.core.assess import Assessment, assess  # noqa: E402
from certwatch.core.observation import Observation, Target  # noqa: E402
from certwatch.sources.revocation import RefusalChecks, RevocationFetcher  # noqa: E402
from certwatch.sources.trust import TrustStores  # noqa: E402
from tests.pki import make_intermediate, make_leaf, make_root, write_pem  # noqa: E402
from tests.revocation_servers import cdp, make_crl, make_ocsp_response  # noqa: E402

NOW = datetime.now(timezone.utc)
DAY = timedelta(days=1)
SERVER_START_TIMEOUT = 10.0


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_http(directory: Path) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1",
                                "--directory", str(directory), "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if "port" in line:
            return process, int(line.split("port")[1].split()[0])
    process.kill()
    raise SystemExit("FAIL: the HTTP server did not start")


def build(args: argparse.Namespace, directory: Path, port: int) -> tuple[list[Observation], Path]:
    root = make_root("bench revocation root", not_before=NOW - 3650 * DAY, not_after=NOW + 3650 * DAY)
    root_pem = write_pem(directory / "root.pem", [root.cert])
    inventory = build_inventory({"defaults": {"ca_file": str(root_pem), "system_trust": False},
                                 "endpoints": [{"name": f"t{i}", "host": "127.0.0.1", "port": 443,
                                                "server_name": f"t{i}.bench.test"}
                                               for i in range(args.targets)]}, source="bench")
    observations = []
    for c in range(args.cas):
        ca = make_intermediate(root, f"bench CA {c}", not_before=NOW - 365 * DAY,
                               not_after=NOW + 1000 * DAY)
        url = f"http://127.0.0.1:{port}/ca{c}.crl"
        serials = list(range(10_000_000 + c * args.crl_entries, 10_000_000 + (c + 1) * args.crl_entries))
        (directory / f"ca{c}.crl").write_bytes(make_crl(ca, serials, last_update=NOW - DAY,
                                                        next_update=NOW + 7 * DAY))
        for i in range(c, args.targets, args.cas):
            endpoint = inventory.endpoints[i]
            leaf = make_leaf(ca, [f"t{i}.bench.test"], not_before=NOW - DAY, not_after=NOW + 90 * DAY,
                             extra_extensions=[cdp(url)])
            staple = make_ocsp_response(leaf.cert, ca, ocsp.OCSPCertStatus.GOOD,
                                        this_update=NOW - timedelta(hours=1),
                                        next_update=NOW + 3 * DAY)
            chain = tuple(c_.public_bytes(Encoding.DER) for c_ in leaf.chain())
            observations.append(Observation(Target(endpoint, "127.0.0.1"), NOW, 0.01, chain=chain,
                                            tls_version="TLSv1.3", ocsp_staple=staple))
    return observations, root_pem


async def judge_all(checks: RefusalChecks, assessments: list[Assessment],
                    trust: TrustStores) -> list[Assessment]:
    results = await asyncio.gather(*(checks.check((a,), a.target.endpoint, trust, NOW)
                                     for a in assessments))
    return [one for many in results for one in many]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--cas", type=int, default=5)
    parser.add_argument("--crl-entries", type=int, default=10_000,
                        help="serials each CA's CRL lists (default %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="certwatch-bench-revocation-") as name:
        directory = Path(name)
        server, port = start_http(directory)
        try:
            observations, _ = build(args, directory, port)
            trust = TrustStores()
            store = trust.for_endpoint(observations[0].target.endpoint)
            start = cpu()
            assessments = [assess(o, NOW, store) for o in observations]
            assess_cpu = cpu() - start
            fetches: Counter[tuple[str, str]] = Counter()
            fetcher = RevocationFetcher(on_fetch=lambda s, r: fetches.update([(s, r)]))
            checks = RefusalChecks(shipped_policy(), fetcher)

            async def rounds() -> tuple[float, float, float, list[Assessment]]:
                try:
                    t0, w0 = cpu(), time.perf_counter()
                    cold = await judge_all(checks, assessments, trust)
                    t1, w1 = cpu(), time.perf_counter()
                    warm = await judge_all(checks, assessments, trust)
                    t2 = cpu()
                    return t1 - t0, t2 - t1, w1 - w0, warm or cold
                finally:
                    await checks.aclose()

            cold_cpu, warm_cpu, cold_wall, results = asyncio.run(rounds())
        finally:
            server.terminate()
            server.wait(5)
    states = Counter(r.refusals.revocation.status.value for r in results
                     if r.refusals and r.refusals.revocation)
    n = len(results)
    figures = {
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "targets": n,
        "cas": args.cas, "crl_entries": args.crl_entries, "revocation": dict(states),
        "fetches": {f"{s}:{r}": c for (s, r), c in fetches.items()},
        "assess_ms_per_probe": assess_cpu * 1000 / n,
        "refusals_cold_ms_per_probe": cold_cpu * 1000 / n,
        "refusals_warm_ms_per_probe": warm_cpu * 1000 / n,
        "cold_wall_seconds": cold_wall,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(f"certwatch revocation checks: {n} targets under {args.cas} CAs, "
          f"CRLs of {args.crl_entries} entries, each target with a staple")
    print(f"  revocation          {dict(states)}; fetches {figures['fetches']}")
    print(f"  assess (expiry)     {figures['assess_ms_per_probe']:.3f} ms/probe")
    print(f"  refusals, cold      {figures['refusals_cold_ms_per_probe']:.3f} ms/probe "
          f"(fetch, parse and index {args.cas} CRLs once; {cold_wall:.2f} s wall)")
    print(f"  refusals, warm      {figures['refusals_warm_ms_per_probe']:.3f} ms/probe "
          "(staple + CRL look-up, no fetch)")
    print(f"  peak RSS            {figures['max_rss_mb']:.1f} MB")
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"revocation-{n}.json").write_text(json.dumps(figures) + "\n")
    ok = states.get("good", 0) == n and sum(c for (s, r), c in fetches.items() if s == "crl") == args.cas
    if not ok:
        print("FAIL: every target should be good, with one CRL fetch per CA", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
