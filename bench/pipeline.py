"""Benchmark: what the daemon spends on a probe besides the probe, step by step.

    python bench/pipeline.py --targets 200 --probes 2000

bench/vs_blackbox.py measures a whole probe from outside the daemon; a profiler inside it
inflates Python's share (py-spy by ~0.1-0.2 ms a probe, cProfile about twice). This one
probes each of N names once, for real (the same loopback nginx and PKI as
vs_blackbox.py), then replays those observations: every replay is the observation as
the wire would give it (a new start time, and the chain as new bytes, as a handshake's
are), through the daemon's own `Pipeline.run` with a real Store, certificate history
(SQLite in a temporary directory), metrics and refusal checks, in the steady state
(every target seen before). It prints the CPU (process time) a probe of the whole
pipeline, the replay's own cost taken off, and then of each step alone, measured with
the same inputs:

- `assess` with the verification key admitting (an unchanged chain),
- the refusal checks (`RefusalChecks.check`: `wanted`, the fetch step, the judge),
- merging, the history, the store and the probe counter.

Each figure is the best of --rounds. It fails (exit 1) if a probe or a judgement is not
`ok`. Only loopback is used, and every wait is bounded (the nginx start by
vs_blackbox.py's START_TIMEOUT, each probe by its endpoint's timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_blackbox  # noqa: E402 - the nginx and PKI of the comparison, reused as they are
from sweep import REPO, stop_process  # noqa: E402

sys.path.insert(0, str(REPO))

from certwatch.config.inventory import parse_inventory  # noqa: E402
from certwatch.config.refusals import policy_for  # noqa: E402
from certwatch.core.assess import assess  # noqa: E402
from certwatch.core.inventory import Endpoint  # noqa: E402
from certwatch.core.observation import Observation  # noqa: E402
from certwatch.core.refusals import wanted  # noqa: E402
from certwatch.core.status import merge  # noqa: E402
from certwatch.core.vocabulary import State  # noqa: E402
from certwatch.daemon.history import CertificateHistory  # noqa: E402
from certwatch.daemon.pipeline import Pipeline  # noqa: E402
from certwatch.daemon.store import Store  # noqa: E402
from certwatch.serving.metrics import DaemonMetrics  # noqa: E402
from certwatch.sources.revocation import RefusalChecks  # noqa: E402
from certwatch.sources.trust import TrustStores  # noqa: E402
from certwatch.sources.wire import Prober  # noqa: E402


class Replay:
    """A source that hands back each endpoint's recorded observation, as new."""

    def __init__(self, observations: dict[str, Observation]) -> None:
        self.observations = observations

    async def observe(self, endpoint: Endpoint) -> tuple[Observation, ...]:
        recorded = self.observations[endpoint.name]
        return (dataclasses.replace(recorded, started_at=datetime.now(timezone.utc),
                                    chain=tuple(bytes(bytearray(c)) for c in recorded.chain)),)


def per_call_us(step: Callable[[], object], calls: int, rounds: int) -> float:
    """The best of `rounds` runs of `calls` calls, in microseconds of CPU a call."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            step()
        best = min(best, time.process_time() - start)
    return 1e6 * best / calls


async def per_await_us(step: Callable[[], Awaitable[object]], calls: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            await step()
        best = min(best, time.process_time() - start)
    return 1e6 * best / calls


async def measure(args: argparse.Namespace, directory: Path, port: int, root: Path) -> int:
    text = "\n".join(["defaults:", f"  ca_file: {json.dumps(str(root))}", "endpoints:",
                      *vs_blackbox.endpoint_lines(args.targets, port)])
    endpoints = parse_inventory(text).endpoints
    prober = Prober(max_concurrency=64)
    observed = await asyncio.gather(*(prober.observe(e) for e in endpoints))
    failed = [o[0].target.key for o in observed if o[0].error is not None]
    if failed:
        print(f"FAIL: {len(failed)} probes failed, e.g. {failed[0]}", file=sys.stderr)
        return 1
    replay = Replay({e.name: o[0] for e, o in zip(endpoints, observed)})
    trust, refusals = TrustStores(), RefusalChecks(policy_for())
    store, history = Store(), CertificateHistory(directory / "state")
    pipeline = Pipeline(store, DaemonMetrics(), history)
    try:
        async def run(index: int) -> None:
            endpoint = endpoints[index % len(endpoints)]
            await pipeline.run(endpoint, replay, trust, None, time.monotonic(),
                               lambda: endpoint, refusals)

        for index in range(len(endpoints)):  # the first sightings: the steady state follows
            await run(index)
        counter = iter(range(1 << 62))
        whole = await per_await_us(lambda: run(next(counter)), args.probes, args.rounds)
        replaying = await per_await_us(
            lambda: replay.observe(endpoints[next(counter) % len(endpoints)]),
            args.probes, args.rounds)
        bad = [s.target.key for s in store.statuses() if s.state is not State.OK]
        if bad:
            print(f"FAIL: {len(bad)} targets not ok, e.g. {bad[0]}", file=sys.stderr)
            return 1

        endpoint = endpoints[0]
        before = store.of_endpoint(endpoint.name)
        observation = (await replay.observe(endpoint))[0]
        now, store_of = datetime.now(timezone.utc), trust.for_endpoint(endpoint)
        judged = assess(observation, now, store_of, None, before[0].assessment)
        refused = refusals.judge(judged, endpoint, trust, now)
        merged = merge(before, (refused,), endpoint, lambda _: refused)
        calls, rounds = args.probes, args.rounds
        steps = {
            "assess, an unchanged chain": per_call_us(
                lambda: assess(observation, now, store_of, None, before[0].assessment),
                calls, rounds),
            "refusal checks (RefusalChecks.check)": await per_await_us(
                lambda: refusals.check((judged,), endpoint, trust, now), calls, rounds),
            "  of which wanted()": per_call_us(
                lambda: wanted(judged, store_of, endpoint.revocation), calls, rounds),
            "  of which the judge": per_call_us(
                lambda: refusals.judge(judged, endpoint, trust, now), calls, rounds),
            "merge": per_call_us(lambda: merge(before, (refused,), endpoint, lambda _: refused),
                                 calls, rounds),
            "certificate history (Pipeline._remember)": per_call_us(
                lambda: pipeline._remember(merged), calls, rounds),  # noqa: SLF001
            "store (replace_endpoint)": per_call_us(
                lambda: store.replace_endpoint(endpoint.name, merged), calls, rounds),
            "probe counter": per_call_us(
                lambda: pipeline.metrics.probes.labels("success", "").inc(), calls, rounds),
        }
    finally:
        history.close()
        await refusals.aclose()
    print(f"the pipeline without the probe: {args.targets} targets replayed {args.probes} "
          f"times, best of {args.rounds}, Python {sys.version.split()[0]}")
    print(f"  Pipeline.run                               {whole - replaying:7.1f} us a probe "
          f"(the replay's own {replaying:.1f} us taken off)")
    for label, value in steps.items():
        print(f"  {label:42s} {value:7.1f} us")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--probes", type=int, default=2000, help="replays a round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="certwatch-pipeline-"))
    (directory / "state").mkdir()
    chain, key, root, _ = vs_blackbox.make_pki(directory)
    port = vs_blackbox.free_port()
    nginx = vs_blackbox.nginx(directory, chain, key, port)
    try:
        from certwatch.eventloop import run
        return run(measure(args, directory, port, root))
    finally:
        stop_process(nginx, 5)


if __name__ == "__main__":
    sys.exit(main())
