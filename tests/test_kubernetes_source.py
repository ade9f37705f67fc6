"""The Kubernetes source against a loopback API server speaking list/watch (tests/kubeapi.py):
Secrets and ConfigMaps become targets, watches follow changes, 410 Gone relists, a failing
API keeps the last view, Ingresses name endpoints, and the daemon shows it all."""

from __future__ import annotations

import asyncio
import base64
import json
import contextlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest

from certwatch.config import parse_inventory
from certwatch.core.inventory import Endpoint, Inventory
from certwatch.sources import Listener
from certwatch.sources.kubernetes import KubernetesSource
from tests.kubeapi import FakeKubeAPI
from tests.pki import Issued, make_intermediate, make_leaf, make_root, write_pem
from tests.servers import closed_port
from tests.test_daemon import RunningDaemon, wait_for

NOW = datetime.now(timezone.utc)
DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Issued, Issued, Path]:
    directory = tmp_path_factory.mktemp("kube-pki")
    root = make_root("Kube Root", not_before=NOW - DAY, not_after=NOW + 3000 * DAY)
    inter = make_intermediate(root, "Kube CA", not_before=NOW - DAY, not_after=NOW + 2000 * DAY)
    write_pem(directory / "root.pem", [root.cert])
    return root, inter, directory


@pytest.fixture
def api(pki: tuple[Issued, Issued, Path], tmp_path: Path) -> Iterator[FakeKubeAPI]:
    root, _, directory = pki
    cert, key = make_leaf(root, ["127.0.0.1"], not_before=NOW - DAY,
                          not_after=NOW + 90 * DAY).write(tmp_path, "apiserver")
    (tmp_path / "token").write_text("sa-token-1\n")
    with FakeKubeAPI(tmp_path / "token", cert, key) as server:
        yield server


def pem(issued: Issued, chain: bool = True) -> bytes:
    return b"".join(c.public_bytes(__import__("cryptography.hazmat.primitives.serialization",
                                              fromlist=["Encoding"]).Encoding.PEM)
                    for c in (issued.chain() if chain else [issued.cert]))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tls_secret(namespace: str, name: str, issued: Issued, key: Issued | None = None,
               labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name, "labels": labels or {}},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": b64(pem(issued)), "tls.key": b64((key or issued).key_pem)}}


def inventory(api: FakeKubeAPI, directory: Path, entries: str, extra: str = "") -> Inventory:
    text = (f"kubernetes:\n  api_server: {api.url if api else 'https://127.0.0.1:1'}\n"
            f"  token_file: {api.token_file}\n  ca_file: {directory / 'root.pem'}\n"
            f"  watch_timeout: 1s\n  timeout: 2s\n  backoff: {{initial: 0.05s, maximum: 0.2s}}\n"
            f"{extra}defaults: {{ca_file: {directory / 'root.pem'}, system_trust: false}}\n"
            f"endpoints:\n{entries}")
    return parse_inventory(text, source="kube.yaml")


async def eventually(what: str, check: Callable[[], Awaitable[Any]], timeout: float = 10) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def following(inv: Inventory) -> AsyncIterator[tuple[KubernetesSource, list[str], list[int]]]:
    source = KubernetesSource(inv.kubernetes)
    changed: list[str] = []
    discovered: list[int] = []
    source.follow(inv.endpoints, Listener(changed.append, lambda: discovered.append(1)))
    try:
        yield source, changed, discovered
    finally:
        await source.close()


async def locations(source: KubernetesSource, entry: Endpoint) -> dict[str, Any]:
    return {o.target.location: o for o in await source.observe(entry)}


def test_secrets_and_configmaps_are_targets(api: FakeKubeAPI, pki: tuple[Issued, Issued, Path]) -> None:
    root, inter, directory = pki
    web = make_leaf(inter, ["web.test"], not_before=NOW - 400 * DAY, not_after=NOW + 20 * DAY)
    other = make_leaf(inter, ["web.test"], not_before=NOW - 400 * DAY, not_after=NOW + 20 * DAY)
    api.put("secrets", tls_secret("prod", "web-tls", web, labels={"team": "web"}))
    api.put("secrets", tls_secret("prod", "bad-key", web, key=other, labels={"team": "web"}))
    api.put("secrets", tls_secret("prod", "unlabelled", web))
    api.put("secrets", tls_secret("staging", "web-tls", web, labels={"team": "web"}))
    api.put("secrets", {"metadata": {"namespace": "prod", "name": "trust", "labels": {"team": "web"}},
                        "type": "Opaque", "data": {"ca.crt": b64(pem(root, False)),
                                                   "notes": b64(b"x")}})
    api.put("configmaps", {"metadata": {"namespace": "prod", "name": "bundle",
                                        "labels": {"team": "web"}},
                           "data": {"ca-bundle.crt": "not a certificate"}})
    inv = inventory(api, directory, "  - name: cluster\n    kubernetes:\n      namespaces: [prod]\n"
                    "      label_selector: team=web\n      secret_keys: [ca.crt]\n"
                    "      configmap_keys: [ca-bundle.crt]\n")

    async def run() -> dict[str, Any]:
        source = KubernetesSource(inv.kubernetes)  # not followed: `check` lists once
        try:
            return await locations(source, inv.endpoints[0])
        finally:
            await source.close()

    found = asyncio.run(run())
    assert set(found) == {"secret/prod/web-tls/tls.crt#0", "secret/prod/web-tls/tls.crt#1",
                          "secret/prod/bad-key/tls.crt#0", "secret/prod/bad-key/tls.crt#1",
                          "secret/prod/trust/ca.crt#0", "configmap/prod/bundle/ca-bundle.crt"}
    leaf = found["secret/prod/web-tls/tls.crt#0"]
    assert leaf.key_check.problem is None and len(leaf.chain) == 2
    assert found["secret/prod/bad-key/tls.crt#0"].key_check.problem == "key_mismatch"
    assert found["configmap/prod/bundle/ca-bundle.crt"].error.kind == "not_a_certificate"
    assert all("/api/v1/namespaces/prod/" in r for r in api.requests)
    assert any("fieldSelector=type%3Dkubernetes.io%2Ftls" in r for r in api.requests)


def test_watches_follow_changes_and_410_relists(api: FakeKubeAPI, pki: tuple[Issued, Issued, Path]) -> None:
    _, inter, directory = pki
    first = make_leaf(inter, ["a.test"], not_before=NOW - 400 * DAY, not_after=NOW + 5 * DAY)
    renewed = make_leaf(inter, ["a.test"], not_before=NOW - 400 * DAY, not_after=NOW + 80 * DAY)
    api.put("secrets", tls_secret("prod", "a", first))
    inv = inventory(api, directory, "  - {name: tls, kubernetes: {}}\n")
    entry = inv.endpoints[0]

    async def run() -> None:
        async with following(inv) as (source, changed, _):
            await eventually("the first list", lambda: _has(source, entry, "secret/prod/a/tls.crt#0"))
            api.put("secrets", tls_secret("prod", "a", renewed))
            await eventually("the renewal through the watch", lambda: _expires(
                source, entry, "secret/prod/a/tls.crt#0", renewed))
            assert "tls" in changed
            # The history is compacted while the watch is away: it gets 410 and lists again.
            lists = sum("watch" not in r for r in api.requests)
            api.compact()
            api.delete("secrets", "prod", "a")
            api.compact()
            api.put("secrets", tls_secret("prod", "b", first))
            await eventually("the relist after 410 Gone", lambda: _has(
                source, entry, "secret/prod/b/tls.crt#0", without="secret/prod/a/tls.crt#0"))
            assert sum("watch" not in r for r in api.requests) > lists
            assert source.health().up

    asyncio.run(run())


async def _has(source: KubernetesSource, entry: Endpoint, location: str, without: str = "") -> bool:
    found = await locations(source, entry)
    return location in found and without not in found


async def _expires(source: KubernetesSource, entry: Endpoint, location: str, issued: Issued) -> bool:
    found = await locations(source, entry)
    from cryptography.hazmat.primitives.serialization import Encoding
    return location in found and found[location].chain[0] == issued.cert.public_bytes(Encoding.DER)


@pytest.mark.parametrize("mode", ["garbage", "error", "stopped"])
def test_a_failing_api_keeps_the_last_view(api: FakeKubeAPI, pki: tuple[Issued, Issued, Path],
                                           mode: str) -> None:
    _, inter, directory = pki
    api.put("secrets", tls_secret("prod", "a", make_leaf(
        inter, ["a.test"], not_before=NOW - 400 * DAY, not_after=NOW + 50 * DAY)))
    inv = inventory(api, directory, "  - {name: tls, kubernetes: {}}\n")
    entry = inv.endpoints[0]

    async def run() -> None:
        async with following(inv) as (source, _, _):
            await eventually("the first list", lambda: _has(source, entry, "secret/prod/a/tls.crt#0"))
            if mode == "stopped":
                api.stop()
            else:
                api.mode = mode
            await eventually("the failure to show", lambda: _down(source))
            health = source.health()
            assert health.last_success is not None and health.detail
            assert await _has(source, entry, "secret/prod/a/tls.crt#0")  # the last good view

    asyncio.run(run())


async def _down(source: KubernetesSource) -> bool:
    return not source.health().up


def test_an_api_that_never_answers_is_a_target_in_error(pki: tuple[Issued, Issued, Path],
                                                        tmp_path: Path) -> None:
    _, _, directory = pki
    (tmp_path / "token").write_text("t")
    text = (f"kubernetes: {{api_server: 'https://127.0.0.1:{closed_port()}', token_file: "
            f"{tmp_path / 'token'}, timeout: 1s}}\nendpoints:\n  - {{name: tls, kubernetes: {{}}}}\n")
    inv = parse_inventory(text, source="kube.yaml")

    async def run() -> Any:
        source = KubernetesSource(inv.kubernetes)
        try:
            return await source.observe(inv.endpoints[0])
        finally:
            await source.close()

    (observation,) = asyncio.run(run())
    assert observation.error.kind == "source" and "refused" in observation.error.detail


def test_ingresses_with_the_annotation_become_endpoints(api: FakeKubeAPI,
                                                       pki: tuple[Issued, Issued, Path]) -> None:
    _, _, directory = pki
    for name, annotated in (("shop", True), ("quiet", False)):
        api.put("ingresses", {"metadata": {
            "namespace": "prod", "name": name,
            "annotations": {"certwatch.io/probe": "true"} if annotated else {}},
            "spec": {"tls": [{"hosts": [f"{name}.example.test", "*.wild.test"]}]}})
    inv = inventory(api, directory, "  - name: ingresses\n    labels: {team: web}\n"
                    "    kubernetes: {tls_secrets: false, ingresses: true, gateways: true}\n")

    async def run() -> tuple[Any, ...]:
        async with following(inv) as (source, _, discovered):
            # The listener hears of each reflector's first view: the Gateways' absence
            # can come before the Ingresses are listed, so wait for what they name.
            await eventually("the discovery",
                             lambda: _async(bool(discovered) and source.discovered()))
            await eventually("the gateways' absence to settle", lambda: _async(source.health().up))
            return source.discovered()

    (endpoint,) = asyncio.run(run())
    assert (endpoint.name, endpoint.host, endpoint.port, endpoint.server_name) == (
        "ingresses:shop.example.test:443", "shop.example.test", 443, "shop.example.test")
    assert endpoint.source == "tls" and endpoint.origin == "ingress prod/shop"
    assert dict(endpoint.labels) == {"team": "web", "namespace": "prod"}


async def _async(value: Any) -> Any:
    return value


def test_the_daemon_shows_kubernetes_targets_and_the_api_health(
        api: FakeKubeAPI, pki: tuple[Issued, Issued, Path], tmp_path: Path) -> None:
    _, inter, directory = pki
    api.put("secrets", tls_secret("prod", "web", make_leaf(
        inter, ["web.test"], not_before=NOW - 400 * DAY, not_after=NOW + 3 * DAY)))
    config = tmp_path / "certwatch.yaml"
    config.write_text(
        f"kubernetes:\n  api_server: {api.url}\n  token_file: {api.token_file}\n"
        f"  ca_file: {directory / 'root.pem'}\n  watch_timeout: 1s\n  timeout: 2s\n"
        f"  backoff: {{initial: 0.1s, maximum: 0.5s}}\n"
        f"defaults: {{ca_file: {directory / 'root.pem'}, system_trust: false, interval: 1h}}\n"
        "endpoints:\n  - {name: cluster, kubernetes: {}}\n")
    daemon = RunningDaemon(config, tmp_path / "daemon.log")
    try:
        def target() -> dict[str, Any] | None:
            status, body = daemon.get("/api/v1/targets")
            found = {t["location"]: t for t in json.loads(body)} if status == 200 else {}
            return found.get("secret/prod/web/tls.crt#0")

        found = wait_for("the Secret's certificate", lambda: (t := target()) and t["chain"] and t)
        assert (found["source"], found["location"], found["state"]) == (
            "kubernetes", "secret/prod/web/tls.crt#0", "critical")
        up = {s.labels["source"]: s.value for s in daemon.metrics()["certwatch_source_up"]}
        assert up == {"kubernetes": 1.0}
        api.stop()
        wait_for("the API's failure in the metrics", lambda: {
            s.labels["source"]: s.value for s in daemon.metrics()["certwatch_source_up"]} == {
            "kubernetes": 0.0})
        assert target()["state"] == "critical"  # the last good view
        assert daemon.metrics()["certwatch_source_last_success_timestamp_seconds"][0].value > 0
    finally:
        daemon.stop()
