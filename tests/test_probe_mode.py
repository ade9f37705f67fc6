"""`/probe` mode: Prometheus' multi-target pattern, against the real daemon.

* The values: targets parsed, modules made into endpoints, the allow-list.
* The daemon: a probe answers with the same series, names and labels as the daemon's own
  /metrics for the same endpoint; a module changes the protocol; a target the allow-list
  does not allow is refused (no connection is made); the scrape's timeout header bounds
  a probe of a tarpit; the concurrency bound holds.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from certwatch.config import ConfigError, parse_inventory
from certwatch.core.inventory import AllowList
from certwatch.core.probing import parse_target, probe_endpoint
from tests.pki import Issued
from tests.servers import TarpitServer, TLSServer
from tests.test_daemon import RunningDaemon, leaf_files, pki, wait_for  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def test_targets_parse_as_prometheus_writes_them() -> None:
    assert parse_target("example.com") == ("example.com", None)
    assert parse_target("example.com:8443") == ("example.com", 8443)
    assert parse_target("[2001:db8::1]:443") == ("2001:db8::1", 443)
    assert parse_target("2001:db8::1") == ("2001:db8::1", None)
    assert parse_target("bücher.example:443") == ("bücher.example", 443)
    for bad in ("", "host:0", "host:99999", "host:x", "[::1", "a b:1", "host:\x1b1", "☃.example",
                "x" * 400):
        with pytest.raises(ValueError):
            parse_target(bad)


def test_the_allow_list_refuses_what_it_does_not_name() -> None:
    allow = AllowList((ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
                      ("*.example.com", "db.internal"))
    assert allow.allows_address("127.0.0.5") and allow.allows_address("::1")
    assert not allow.allows_address("10.0.0.1") and not allow.allows_address("not-an-ip")
    assert allow.allows_name("www.example.com") and allow.allows_name("A.B.Example.COM.")
    assert allow.allows_name("db.internal")
    assert not allow.allows_name("example.com") and not allow.allows_name("evil.com")
    assert not AllowList().allows_name("anything") and not AllowList().allows_address("127.0.0.1")


def test_modules_are_read_as_endpoints_with_their_lines(tmp_path: Path) -> None:
    inventory = parse_inventory(
        "defaults: {timeout: 3, warn_days: 20}\n"
        "endpoints: []\n"
        "probe:\n"
        "  allow: {networks: [127.0.0.0/8], names: ['*.test']}\n"
        "  modules:\n"
        "    mail: {protocol: smtp, warn_days: 10}\n"
        "    pinned: {server_name: svc.test}\n", base=tmp_path)
    probe = inventory.probe
    assert probe is not None and probe.default is not None
    mail = probe_endpoint(probe.modules["mail"], "mx.test", None)
    assert (mail.name, mail.host, mail.port, mail.protocol, mail.server_name) == (
        "mx.test:25", "mx.test", 25, "smtp", "mx.test")
    assert (mail.timeout, mail.warn_days) == (3.0, 10.0)  # the defaults, then the module's
    plain = probe_endpoint(probe.default, "127.0.0.1", 8443)
    assert (plain.name, plain.server_name, plain.warn_days) == ("127.0.0.1:8443", None, 20.0)
    assert probe_endpoint(probe.modules["pinned"], "127.0.0.1", 443).server_name == "svc.test"
    with pytest.raises(ConfigError) as caught:
        parse_inventory("endpoints: []\nprobe:\n  allow: {networks: [300.1.0.0/8], names: [a b]}\n"
                        "  modules:\n    bad: {protocol: smtpp, host: x}\n  colour: red\n")
    text = str(caught.value)
    assert "line 3: probe.allow: '300.1.0.0/8' is not a network" in text
    assert "is not a host name pattern" in text
    assert "line 5: probe.modules.bad: unknown protocol 'smtpp' (did you mean 'smtp'?)" in text
    assert "line 5: probe.modules.bad: 'host' comes from the probe's target" in text
    assert "line 6: probe: unknown key 'colour'" in text


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.fixture
def served(pki: tuple[Issued, Path]):  # type: ignore[no-untyped-def]  # noqa: F811
    inter, directory = pki
    with TLSServer({None: leaf_files(inter, directory, "web", 20)}) as web, \
            TarpitServer() as tarpit:
        config = directory / "certwatch.yaml"
        config.write_text(
            "defaults: {ca_file: root.pem, system_trust: false, interval: 1h, timeout: 5}\n"
            f"endpoints:\n  - {{host: 127.0.0.1, port: {web.port}, server_name: svc.test}}\n"
            "probe:\n"
            "  allow: {networks: [127.0.0.0/8]}\n"
            "  max_concurrency: 2\n"
            "  modules:\n"
            "    svc: {server_name: svc.test}\n"
            "    mail: {protocol: smtp}\n")
        daemon = RunningDaemon(config, directory / "daemon.log", options=["--log-level", "debug"])
        try:
            wait_for("the first sweep", lambda: daemon.get("/readyz")[0] == 200)
            yield daemon, web, tarpit
        finally:
            daemon.stop()


def test_a_probe_answers_with_the_daemons_series(served) -> None:  # type: ignore[no-untyped-def]
    daemon, web, _ = served
    status, text = _get(daemon.port, f"/probe?target=127.0.0.1:{web.port}&module=svc")
    assert status == 200, text
    probed = _samples(text)
    _, metrics = daemon.get("/metrics")
    own = {key: value for key, value in _samples(metrics).items()
           if dict(key[1]).get("name") == f"127.0.0.1:{web.port}"}
    # The same series: names and labels alike, the per-target families only.
    assert set(probed) == set(own)
    assert probed[("certwatch_probe_success", next(k for n, k in probed if n == "certwatch_probe_success"))] == 1.0
    state = {dict(k)["state"]: v for n, k in probed if n == "certwatch_target_state"
             for v in [probed[(n, k)]]}
    assert state["warning"] == 1.0  # 20 days left
    # Without a module, the SNI is the target's host: an IP literal sends none, and the
    # certificate (for svc.test) does not match it.
    status, text = _get(daemon.port, f"/probe?target=127.0.0.1:{web.port}")
    assert status == 200
    names = {n for n, _ in _samples(text)}
    assert "certwatch_cert_expiry_timestamp_seconds" in names
    assert any(n == "certwatch_cert_verify_problem" and dict(k)["problem"] == "hostname_mismatch"
               and v == 1.0 for (n, k), v in _samples(text).items())


def test_a_module_chooses_the_protocol(served) -> None:  # type: ignore[no-untyped-def]
    daemon, web, _ = served
    status, text = _get(daemon.port, f"/probe?target=127.0.0.1:{web.port}&module=mail")
    assert status == 200
    errors = [dict(k) for (n, k) in _samples(text) if n == "certwatch_probe_error_info"]
    assert errors and errors[0]["kind"] in ("starttls_unsupported", "timeout", "closed"), errors
    (info,) = [dict(k) for (n, k) in _samples(text) if n == "certwatch_target_info"]
    assert info["protocol"] == "smtp" and info["name"] == errors[0]["name"]


def test_what_is_not_allowed_is_refused(served) -> None:  # type: ignore[no-untyped-def]
    daemon, web, _ = served
    before = web.connections
    for target, why in [("192.0.2.10:443", "not allowed"), ("10.1.2.3", "not allowed"),
                        (f"127.0.0.1:{web.port}&module=nope", "unknown module"),
                        ("127.0.0.1:0", "bad target"), ("", "bad target")]:
        status, text = _get(daemon.port, f"/probe?target={target}")
        assert status in (400, 403) and why in text, (target, status, text)
    assert web.connections == before
    # A host name is allowed through `networks` when it resolves there, and only its
    # addresses there are probed (localhost's ::1, if it has one, is not in 127.0.0.0/8).
    status, text = _get(daemon.port, f"/probe?target=localhost:{web.port}&module=svc")
    assert status == 200, text
    addresses = {dict(k)["address"] for (n, k) in _samples(text) if n == "certwatch_probe_success"}
    assert addresses == {"127.0.0.1"}
    _, metrics = daemon.get("/metrics")
    counts = {dict(k).get("result"): v for (n, k), v in _samples(metrics).items()
              if n == "certwatch_probe_requests_total"}
    assert counts.get("refused", 0) >= 2 and counts.get("invalid", 0) >= 3


def test_the_scrape_timeout_bounds_the_probe_and_the_concurrency(served) -> None:  # type: ignore[no-untyped-def]
    daemon, _, tarpit = served
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": "2"}
    path = f"/probe?target=127.0.0.1:{tarpit.port}"
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        started = time.monotonic()
        answers = list(pool.map(lambda _: _get(daemon.port, path, headers), range(6)))
        took = time.monotonic() - started
    assert took < 4, took  # 2 s less the 0.5 s offset, with margin; not 6 x the timeout
    for status, text in answers:
        assert status == 200
        samples = _samples(text)
        assert any(n == "certwatch_probe_success" and v == 0.0 for (n, _), v in samples.items())
        assert any(n == "certwatch_probe_error_info" and dict(k)["kind"] == "timeout"
                   for (n, k) in samples)
    assert tarpit.peak_connections <= 2  # probe.max_concurrency
