"""Shards: rendezvous hashing of endpoint names, and replicas that each own their share.

* The hash: every name has exactly one owner, the shares are even, and when the count
  grows by one only about 1/(N+1) of the names move, all to the new shard (printed: the
  figure for the README, beside what `hash mod N` would move).
* The daemon: two shards of one inventory export disjoint targets that together are the
  whole inventory, each with certwatch_shard_info; `--shard-count` takes the index from
  the StatefulSet's pod index; a bad shard is refused at start-up.
* A shard that restarts with another count resolves (alone on its SQLite file) the open
  alerts of the targets it no longer owns: "now watched by another shard".
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from certwatch.core.sharding import Shard, owner, parse_shard
from tests.pki import Issued
from tests.servers import TLSServer
from tests.test_alerting import Receiver, receiver  # noqa: F401
from tests.test_daemon import RunningDaemon, leaf_files, pki, wait_for  # noqa: F401

NAMES = [f"endpoint-{n}.example.com:443" for n in range(20_000)]


def moved(before: int, after: int, names: list[str] = NAMES) -> tuple[float, float]:
    """The share of names that change shard from `before` to `after` shards: by
    rendezvous hashing, and by hash mod N for comparison."""
    rendezvous = sum(owner(n, before) != owner(n, after) for n in names) / len(names)
    modulo = sum(hash_mod(n, before) != hash_mod(n, after) for n in names) / len(names)
    return rendezvous, modulo


def hash_mod(name: str, count: int) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") % count


def test_every_name_has_one_owner_and_the_shares_are_even() -> None:
    shards = [Shard(i, 4) for i in range(4)]
    owners = Counter(next(s.index for s in shards if s.owns(n)) for n in NAMES)
    assert sum(owners.values()) == len(NAMES)
    assert all(sum(s.owns(n) for s in shards) == 1 for n in NAMES[:2000])
    assert all(abs(count - len(NAMES) / 4) < len(NAMES) * 0.02 for count in owners.values())


def test_growing_the_count_moves_about_one_in_n_plus_one() -> None:
    for before, after in ((1, 2), (2, 3), (4, 5), (9, 10)):
        share, modulo = moved(before, after)
        print(f"\nSHARDS {before}->{after}: {share:.1%} of {len(NAMES)} endpoints move "
              f"(ideal {1 / after:.1%}; hash mod N would move {modulo:.1%})")
        assert abs(share - 1 / after) < 0.02
        # ... and only to the new shard
        assert all(owner(n, after) == after - 1 for n in NAMES[:3000]
                   if owner(n, before) != owner(n, after))


def test_shards_are_written_index_slash_count() -> None:
    assert parse_shard("2/5") == Shard(2, 5)
    assert str(Shard(0, 3)) == "0/3"
    for bad in ("5/5", "-1/3", "1", "a/b", "0/0", "1/3/4"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def _inventory(directory: Path, ports: list[int], alerts: str = "") -> Path:
    config = directory / "certwatch.yaml"
    config.write_text(
        "defaults: {ca_file: root.pem, system_trust: false, interval: 1h, revocation: false}\n"
        + alerts + "endpoints:\n"
        + "".join(f"  - {{name: site{n}, host: 127.0.0.1, port: {port}, server_name: svc.test}}\n"
                  for n, port in enumerate(ports)))
    return config


def _exported(daemon: RunningDaemon) -> set[str]:
    return {s.labels["name"] for s in daemon.metrics()["certwatch_probe_success"]}


def test_two_shards_split_the_inventory(pki: tuple[Issued, Path]) -> None:  # noqa: F811
    inter, directory = pki
    with TLSServer({None: leaf_files(inter, directory, "ok", 60)}) as server:
        names = [f"site{n}" for n in range(10)]
        config = _inventory(directory, [server.port] * 10)
        first = RunningDaemon(config, directory / "shard0.log", run_options=["--shard", "0/2"])
        second = RunningDaemon(config, directory / "shard1.log", run_options=["--shard-count", "2"],
                               env={"CERTWATCH_SHARD_INDEX": "1"})
        try:
            for daemon in (first, second):
                wait_for("the shard's first sweep", lambda: daemon.get("/readyz")[0] == 200)
            a, b = _exported(first), _exported(second)
            assert a | b == set(names) and not a & b and a and b
            assert a == {n for n in names if owner(n, 2) == 0}
            for index, daemon in enumerate((first, second)):
                metrics = daemon.metrics()
                (info,) = metrics["certwatch_shard_info"]
                assert info.labels == {"index": str(index), "count": "2"} and info.value == 1
                (endpoints,) = metrics["certwatch_endpoints"]
                assert endpoints.value == len(a if index == 0 else b)
                assert {t for t in daemon.targets()} == (a if index == 0 else b)
        finally:
            first.stop()
            second.stop()


def test_a_bad_shard_is_refused_at_start_up(tmp_path: Path) -> None:
    config = _inventory(tmp_path, [])
    for options, env, message in (
            (["--shard", "3/3"], {}, "shard index must be from 0 to 2"),
            (["--shard-count", "3"], {"CERTWATCH_SHARD_INDEX": ""}, "CERTWATCH_SHARD_INDEX"),
            (["--shard", "0/2", "--shard-count", "2"], {}, "not both")):
        result = subprocess.run([sys.executable, "-m", "certwatch", "run", "-c", str(config),
                                 *options], capture_output=True, text=True, timeout=60,
                                env={"PATH": "/usr/bin:/bin", **env})
        assert result.returncode == 2 and message in result.stderr, (options, result.stderr)


def test_a_resharded_replica_resolves_what_it_no_longer_owns(  # noqa: F811
        pki: tuple[Issued, Path], receiver: Receiver) -> None:  # noqa: F811
    inter, directory = pki
    with TLSServer({None: leaf_files(inter, directory, "soon", 5)}) as server:
        alerts = (f"alerts:\n  state_dir: {directory / 'state'}\n  retry: {{initial: 1s}}\n"
                  f"  sinks:\n    - {{name: hook, type: webhook, url: '{receiver.url}'}}\n")
        config = _inventory(directory, [server.port] * 6, alerts)
        whole = RunningDaemon(config, directory / "whole.log")
        try:
            wait_for("an expiry alert per site", lambda: len(
                {b["alert_key"] for b in receiver.bodies() if b["kind"] == "expiry"}) == 6)
        finally:
            whole.stop()
        kept = {f"site{n}" for n in range(6) if owner(f"site{n}", 3) == 0}
        shard = RunningDaemon(config, directory / "shard.log", run_options=["--shard", "0/3"])
        try:
            wait_for("the others resolved", lambda: {
                b["target"]["name"] for b in receiver.bodies()
                if b["action"] == "resolve" and "now watched by another shard" in b["summary"]}
                == {f"site{n}" for n in range(6)} - kept)
            assert not [b for b in receiver.bodies() if b["action"] == "resolve"
                        and b["target"]["name"] in kept]
        finally:
            shard.stop()
