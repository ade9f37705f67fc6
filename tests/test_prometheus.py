"""Prometheus rules, the Alertmanager example and the Grafana dashboard, against the real tools.

* promtool checks and unit-tests deploy/prometheus/rules.yml and checks prometheus.yml.
* The dashboard JSON is checked for what Grafana needs to import it.
* The integration test runs a real certwatch daemon against loopback TLS servers and a
  real Prometheus (Debian's binary, on loopback) that scrapes it and evaluates the rules;
  through Prometheus' HTTP API it checks every alert expression and every dashboard query.
* Alertmanager (Debian's prometheus-alertmanager) checks alertmanager.yml and shows the
  inhibition at work, when it is installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.pki import make_intermediate, make_leaf, make_root
from tests.revocation_servers import EvidenceServer, cdp, make_crl
from tests.servers import TLSServer, closed_port
from tests.test_daemon import RunningDaemon, free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules_test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DASHBOARD = ROOT / "dashboards" / "certwatch.json"
PROVISIONING = ROOT / "dashboards" / "provisioning"

NOW = datetime.now(timezone.utc)
DAY = timedelta(days=1)
TIMEOUT = 60  # seconds for any one promtool / amtool run

# Grafana's built-in variables, as the integration test substitutes them (scrapes every 1s).
BUILTINS = {"__rate_interval": "10s", "__interval": "1s", "__range": "1m"}


def tool(name: str, package: str) -> str:
    """The path of a Debian tool the tests need; CI must have it, elsewhere it may be missing."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is missing: CI must install Debian's {package} package")
    pytest.skip(f"{name} not installed (Debian package {package}; CI installs it)")


def alertmanager_tool(name: str) -> str:
    """amtool / prometheus-alertmanager: required in CI only once .ci/run installs them."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI") and "prometheus-alertmanager" in (ROOT / ".ci" / "run").read_text():
        pytest.fail(f"{name} is missing although .ci/run installs prometheus-alertmanager")
    pytest.skip(f"{name} not installed (Debian package prometheus-alertmanager)")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)


def alert_rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


# --- promtool ------------------------------------------------------------------------------


def test_promtool_checks_the_rules() -> None:
    result = run(tool("promtool", "prometheus"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = run(tool("promtool", "prometheus"), "test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_checks_the_example_config() -> None:
    result = run(tool("promtool", "prometheus"), "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout  # rules.yml, found relative to the config


def test_every_rule_is_unit_tested_firing_and_not_firing() -> None:
    rules = alert_rules()
    assert set(rules) >= {
        "CertificateExpiringSoon", "CertificateExpiringCritical", "CertificateExpired",
        "CertificateUntrusted", "HostnameMismatch", "ProbeFailing", "CertwatchDown",
        "ConfigReloadFailed", "CertwatchScanLagging"}
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(rules) - firing == set(), "rules never shown firing"
    assert set(rules) - quiet == set(), "rules never shown quiet"
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name


def test_expiry_alerts_do_not_depend_on_the_latest_probe() -> None:
    """The expiry metric is kept from the last certificate read; gating the expiry alerts
    on probe success would make them resolve and fire again with every timeout."""
    for name in ("CertificateExpiringSoon", "CertificateExpiringCritical", "CertificateExpired"):
        expr = alert_rules()[name]["expr"]
        assert "certwatch_cert_expiry_timestamp_seconds" in expr and "probe" not in expr, name
    probe_failing = alert_rules()["ProbeFailing"]
    assert "for" in probe_failing and "certwatch_probe_consecutive_failures" in probe_failing["expr"]


# --- Alertmanager ---------------------------------------------------------------------------


def test_alertmanager_config_routes_critical_to_the_pager() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    by_severity = {m: r["receiver"] for r in config["route"]["routes"] for m in r["matchers"]}
    assert "pagerduty_configs" in receivers[by_severity['severity="critical"']]
    assert "slack_configs" in receivers[by_severity['severity="warning"']]
    # Secrets come from files, never from the YAML itself.
    for receiver in receivers.values():
        for sink in receiver.get("slack_configs", []):
            assert "api_url_file" in sink and "api_url" not in sink
        for sink in receiver.get("pagerduty_configs", []):
            assert "routing_key_file" in sink and "routing_key" not in sink
    inhibit = config["inhibit_rules"][0]
    assert 'severity="critical"' in inhibit["source_matchers"]
    assert inhibit["target_matchers"] == ['severity="warning"']
    assert {"name", "address"} <= set(inhibit["equal"])

    amtool = alertmanager_tool("amtool")
    result = run(amtool, "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    for labels, receiver in ((["severity=critical", "alertname=HostnameMismatch"], "pager"),
                             (["severity=warning", "alertname=CertificateExpiringSoon"], "chat"),
                             (["alertname=SomethingElse"], "chat")):
        result = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels)
        assert result.returncode == 0 and result.stdout.strip() == receiver, (labels, result)


def _http_json(url: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    return json.loads(text) if text else None


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_alertmanager_inhibits_warnings_by_critical_for_the_same_target(tmp_path: Path) -> None:
    binary = alertmanager_tool("prometheus-alertmanager")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with (tmp_path / "alertmanager.log").open("w") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={ALERTMANAGER_CONFIG}", f"--storage.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for("Alertmanager to be ready", lambda: _reachable(f"{base}/-/ready"), timeout=20)
            web = {"job": "certwatch", "instance": "cw:9795", "name": "web", "address": "192.0.2.1"}
            other = {**web, "name": "api"}
            _http_json(f"{base}/api/v2/alerts", [
                {"labels": {**web, "alertname": "CertificateExpiringSoon", "severity": "warning"}},
                {"labels": {**web, "alertname": "CertificateExpiringCritical", "severity": "critical"}},
                {"labels": {**web, "alertname": "CertificateExpired", "severity": "critical"}},
                {"labels": {**other, "alertname": "CertificateExpiringSoon", "severity": "warning"}},
                {"labels": {"job": "certwatch", "instance": "cw:9795", "alertname": "ConfigReloadFailed",
                            "severity": "warning"}},
            ])

            def states() -> dict[tuple[str, str], tuple[str, list[str]]] | None:
                got = {(a["labels"]["alertname"], a["labels"].get("name", "")):
                       (a["status"]["state"], [r["name"] for r in a["receivers"]])
                       for a in _http_json(f"{base}/api/v2/alerts")}
                return got if len(got) == 5 and any(s == "suppressed" for s, _ in got.values()) else None

            got = wait_for("the alerts to be grouped and inhibited", states, timeout=10)
            assert got == {
                ("CertificateExpired", "web"): ("active", ["pager"]),
                ("CertificateExpiringCritical", "web"): ("suppressed", ["pager"]),  # by Expired
                ("CertificateExpiringSoon", "web"): ("suppressed", ["chat"]),  # by a critical one
                ("CertificateExpiringSoon", "api"): ("active", ["chat"]),  # another target
                ("ConfigReloadFailed", ""): ("active", ["chat"]),
            }
        finally:
            _stop(process)


# --- the dashboard --------------------------------------------------------------------------


def test_dashboard_is_importable() -> None:
    board = dashboard()
    assert board["uid"] == "certwatch" and board["title"]
    assert 36 <= board["schemaVersion"] <= 41
    assert board.get("id") is None  # an import must not carry another Grafana's id
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance", "team", "env"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"]["uid"] == "${datasource}"
        assert re.fullmatch(r"label_values\(.+, " + name + r"\)", variable["query"]["query"])
        assert variable["includeAll"] and variable["allValue"] == ".*", name

    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel["targets"], title
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), title
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", title
            assert target.get("expr", "").strip(), title
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, title

    exprs = " ".join(t["expr"] for p in panels(board) for t in p.get("targets", []))
    for metric in ("certwatch_target_state", "certwatch_cert_expiry_timestamp_seconds",
                   "certwatch_cert_info", "certwatch_cert_verify_problem", "certwatch_probe_error_info",
                   "certwatch_probes_total", "certwatch_tls_info", "certwatch_probe_duration_seconds",
                   "certwatch_scan_lag_seconds", "certwatch_config_last_reload_successful",
                   "certwatch_source_up", "certwatch_source_last_success_timestamp_seconds",
                   "certwatch_target_info", "certwatch_revocation_status"):
        assert metric in exprs, metric


def test_grafana_provisioning_files() -> None:
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert sources["apiVersion"] == 1
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "certwatch.yml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"


# --- integration: certwatch -> Prometheus -> rules and dashboard queries ------------------------


@dataclass
class Stack:
    prometheus: str  # base URL
    daemon: RunningDaemon
    config: Path
    inventory: str
    dead_instance: str  # a scrape target where nothing listens

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.daemon.port}"

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.prometheus}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] in {"vector", "scalar"}, (expr, data)
        return data["result"] if data["resultType"] == "vector" else [{"metric": {}, "value": data["result"]}]

    def query_range(self, expr: str, seconds: int = 20) -> list[dict[str, Any]]:
        end = time.time()
        data = self.api("query_range", query=expr, start=str(end - seconds), end=str(end), step="1")
        return data["result"]


def _leaf(issuer: Any, directory: Path, stem: str, names: list[str], days_left: float,
          lifetime: float = 90) -> tuple[Path, Path]:
    """A leaf with `days_left`, issued as a certificate of `lifetime` days would be."""
    not_before = NOW + (days_left - max(lifetime, days_left + 1)) * DAY
    leaf = make_leaf(issuer, names, not_before=not_before, not_after=NOW + days_left * DAY)
    return leaf.write(directory, stem)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_binary = tool("prometheus", "prometheus")
    directory = tmp_path_factory.mktemp("prometheus-integration")
    root = make_root("Integration Root", not_before=NOW - 400 * DAY, not_after=NOW + 3000 * DAY)
    inter = make_intermediate(root, "Integration CA", not_before=NOW - 400 * DAY, not_after=NOW + 2000 * DAY)
    (directory / "root.pem").write_bytes(root.cert_pem)
    self_signed = make_leaf(None, ["svc.test"], not_before=NOW - DAY, not_after=NOW + 80 * DAY)
    # issue 12: a leaf its CA's CRL lists, and one whose CRL is at a closed port.
    crls = EvidenceServer()
    crls.__enter__()
    revoked = make_leaf(inter, ["svc.test"], not_before=NOW - DAY, not_after=NOW + 80 * DAY,
                        extra_extensions=[cdp(crls.url("/ca.crl"))])
    crls.files["/ca.crl"] = make_crl(inter, (revoked.cert.serial_number,),
                                     last_update=NOW - DAY, next_update=NOW + 7 * DAY)
    unreachable = make_leaf(inter, ["svc.test"], not_before=NOW - DAY, not_after=NOW + 80 * DAY,
                            extra_extensions=[cdp(f"http://127.0.0.1:{closed_port()}/ca.crl")])
    servers = {
        "ok": TLSServer({None: _leaf(inter, directory, "ok", ["svc.test"], 80)}),
        "warn": TLSServer({None: _leaf(inter, directory, "warn", ["svc.test"], 20)},
                          max_version=ssl.TLSVersion.TLSv1_2),
        "soon": TLSServer({None: _leaf(inter, directory, "soon", ["svc.test"], 5)}),
        "expired": TLSServer({None: _leaf(inter, directory, "expired", ["svc.test"], -2)}),
        # A 6-day certificate with 4 days left: ok by its own lifetime (30/7 days would page).
        "short": TLSServer({None: _leaf(inter, directory, "short", ["svc.test"], 4, lifetime=6)}),
        # A 397-day certificate, 75% of it gone: nowhere near expiry, but not renewed.
        "stale": TLSServer({None: _leaf(inter, directory, "stale", ["svc.test"], 100,
                                        lifetime=397)}),
        "wrongname": TLSServer({None: _leaf(inter, directory, "wrongname", ["other.test"], 80)}),
        "selfsigned": TLSServer({None: self_signed.write(directory, "selfsigned")}),
        "revoked": TLSServer({None: revoked.write(directory, "revoked")}),
        "crlfail": TLSServer({None: unreachable.write(directory, "crlfail")}),
    }
    labels = {"ok": "{team: pay, env: prod}", "soon": "{team: pay}", "warn": "{team: web}",
              "expired": "{env: prod}"}
    with contextlib.ExitStack() as stack_:
        stack_.callback(crls.__exit__, None, None, None)
        for server in servers.values():
            stack_.enter_context(server)
        entries = [f"{{name: {name}, host: 127.0.0.1, port: {server.port}, server_name: svc.test"
                   + (f", labels: {labels[name]}" if name in labels else "") + "}"
                   for name, server in servers.items()]
        entries.append(f"{{name: down, host: 127.0.0.1, port: {closed_port()}}}")
        entries.append("{name: files, files: ok.crt}")  # a source of another kind: the leaf
        # and its intermediate, read from the file the 'ok' server serves
        # The groups the dashboard's TLS versions and probe duration panels read.
        inventory = ("metrics: {extra: [probe, tls]}\n"
                     "defaults: {ca_file: root.pem, system_trust: false, interval: 1s, "
                     "retry_interval: 1s, timeout: 2}\nendpoints:\n"
                     + "".join(f"  - {e}\n" for e in entries))
        config = directory / "certwatch.yaml"
        config.write_text(inventory)
        daemon = RunningDaemon(config, directory / "daemon.log")
        stack_.callback(daemon.stop)
        wait_for("the daemon to listen", lambda: daemon.get("/healthz")[0] == 200)

        dead = f"127.0.0.1:{closed_port()}"
        port = free_port()
        (directory / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "certwatch", "static_configs": [
                {"targets": [f"127.0.0.1:{daemon.port}", dead]}]}],
        }))
        log = stack_.enter_context((directory / "prometheus.log").open("w"))
        process = subprocess.Popen(
            [prometheus_binary, f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
        stack_.callback(_stop, process)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for("Prometheus to be ready", lambda: process.poll() is None and _reachable(f"{base}/-/ready"),
                     timeout=30)
        except AssertionError:
            raise AssertionError((directory / "prometheus.log").read_text()[-3000:]) from None
        yield Stack(base, daemon, config, inventory, dead)


def _write_atomically(path: Path, text: str) -> None:
    """The daemon polls the file: a rename means it never reads half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _names(result: list[dict[str, Any]]) -> set[str]:
    return {sample["metric"].get("name", "") for sample in result}


def _wait_for_data(stack: Stack) -> None:
    """Until every target was probed, 'down' failed three times in a row, and counters
    have enough samples for rate() over 10s."""
    wait_for("certificates from every TLS target", lambda: _names(stack.query(
        "certwatch_cert_expiry_timestamp_seconds")) == TLS_TARGETS | {"files"},
             timeout=20)
    wait_for("three failed probes of 'down'", lambda: stack.query(
        'certwatch_probe_consecutive_failures{name="down"} >= 3'), timeout=20)
    wait_for("several scrapes", lambda: stack.query(
        'count_over_time(certwatch_probes_total{result="failure"}[10s]) >= 3'), timeout=20)


TLS_TARGETS = {"ok", "warn", "soon", "expired", "wrongname", "selfsigned", "revoked", "crlfail",
               "short", "stale"}
EXPECTED_FIRING = {
    "CertificateExpiringSoon": {"warn", "soon", "expired"},
    "CertificateExpiringCritical": {"soon", "expired"},
    "CertificateExpired": {"expired"},
    "CertificateUntrusted": {"selfsigned"},
    "HostnameMismatch": {"wrongname"},
    "ProbeFailing": {"down"},
    "CertificateRevoked": {"revoked"},
    "RevocationCheckFailing": {"crlfail"},  # its expression; the rule waits 6h on top
    # 20 and 5 days left of 90 are past 70% of the lifetime too (Alertmanager inhibits
    # these behind the expiry alerts).
    "CertificateRenewalOverdue": {"warn", "soon", "stale"},
}


def test_each_alert_expression_selects_the_right_targets(stack: Stack) -> None:
    _wait_for_data(stack)
    rules = alert_rules()
    for name, expected in EXPECTED_FIRING.items():
        result = stack.query(rules[name]["expr"])
        assert _names(result) == expected, (name, result)
        assert all(s["metric"]["instance"] == stack.instance for s in result), name
    days = {s["metric"]["name"]: float(s["value"][1]) / 86400
            for s in stack.query(rules["CertificateExpiringSoon"]["expr"])}
    assert days["soon"] == pytest.approx(5, abs=0.1) and days["warn"] == pytest.approx(20, abs=0.1)
    assert days["expired"] == pytest.approx(-2, abs=0.1)
    (problem,) = stack.query(rules["CertificateUntrusted"]["expr"])
    assert problem["metric"]["problem"] == "self_signed"

    down = stack.query(rules["CertwatchDown"]["expr"])
    assert [s["metric"]["instance"] for s in down] == [stack.dead_instance]
    assert stack.query(rules["ConfigReloadFailed"]["expr"]) == []
    assert stack.query(rules["CertwatchScanLagging"]["expr"]) == []


def test_prometheus_evaluates_the_loaded_rules(stack: Stack) -> None:
    """The rules as Prometheus loaded them: all healthy, and alerts pending or firing for
    the right targets, with their annotations rendered from real data."""
    _wait_for_data(stack)
    groups = stack.api("rules", type="alert")["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == set(alert_rules())
    for name, rule in loaded.items():
        assert rule["health"] == "ok" and not rule.get("lastError"), (name, rule)

    def active() -> dict[str, set[str]] | None:
        alerts = stack.api("alerts")["alerts"]
        got: dict[str, set[str]] = {}
        for alert in alerts:
            if alert["state"] in {"pending", "firing"}:
                got.setdefault(alert["labels"]["alertname"], set()).add(alert["labels"].get("name", ""))
        wanted = {k: v for k, v in got.items() if k in EXPECTED_FIRING}
        return got if wanted == EXPECTED_FIRING else None

    got = wait_for("the alerts to become active", active, timeout=15)
    assert got.get("CertwatchDown") == {""}
    assert "ConfigReloadFailed" not in got and "CertwatchScanLagging" not in got

    alerts = {(a["labels"]["alertname"], a["labels"].get("name")): a for a in stack.api("alerts")["alerts"]}
    critical = alerts[("CertificateExpiringCritical", "soon")]
    assert critical["annotations"]["summary"].startswith("Certificate of soon (127.0.0.1:")
    assert re.search(r"expires in 4d 23h \d+m \d+s \(notAfter \d{4}-", critical["annotations"]["description"])
    expired = alerts[("CertificateExpired", "expired")]
    assert expired["state"] == "firing"  # no `for:`: an expired certificate alerts at once
    assert "expired 2d 0h" in expired["annotations"]["description"]
    mismatch = alerts[("HostnameMismatch", "wrongname")]
    assert "(subject CN=other.test)" in mismatch["annotations"]["description"]


def grafana_regex(value: str) -> str:
    """A variable's value as Grafana puts it into a PromQL regex matcher: regex-escaped,
    then backslash-escaped for the string literal."""
    return re.sub(r"[\\^$*+?.()|{}\[\]]", lambda m: "\\\\" + m.group(0), value)


def _grafana_variables(expr: str, values: dict[str, str]) -> str:
    """Substitutes $var, ${var} and ${var:fmt} as Grafana would (regex values)."""
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in BUILTINS:
            return BUILTINS[name]
        assert name in values, f"unknown variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$(?:(\w+)|\{(\w+)(?::\w+)?\})", replace, expr)


def test_every_dashboard_query_is_valid_and_returns_data(stack: Stack) -> None:
    _wait_for_data(stack)
    every = {"job": ".*", "instance": ".*", "team": ".*", "env": ".*"}
    empty: list[str] = []
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):
            expr = _grafana_variables(target["expr"], every)
            label = f"{panel['title']} / {target['refId']}: {expr}"
            result = stack.query(expr)  # fails on a PromQL error
            if target.get("range", True) and not target.get("instant"):
                result = stack.query_range(expr) or result
            if not result:
                empty.append(label)
    assert empty == [], "queries returning no data:\n" + "\n".join(empty)


def test_the_certificate_table_joins_and_filters(stack: Stack) -> None:
    _wait_for_data(stack)
    (table,) = [p for p in panels(dashboard()) if p["title"] == "Certificates by days left"]
    days_expr, expiry_expr = (t["expr"] for t in table["targets"])
    every = {"job": "certwatch", "instance": grafana_regex(stack.instance), "team": ".*", "env": ".*"}
    rows = {s["metric"]["name"]: s for s in stack.query(_grafana_variables(days_expr, every))}
    assert set(rows) == TLS_TARGETS | {"files"}
    assert rows["short"]["metric"]["state"] == "ok"  # 4 days left of 6: its thresholds ahead
    assert rows["stale"]["metric"]["state"] == "warning"  # not renewed at 70% of 398 days
    soon = rows["soon"]["metric"]
    assert float(rows["soon"]["value"][1]) == pytest.approx(5, abs=0.1)
    assert (soon["subject"], soon["issuer"], soon["state"]) == ("CN=svc.test", "CN=Integration CA", "critical")
    assert rows["wrongname"]["metric"]["subject"] == "CN=other.test"
    assert rows["expired"]["metric"]["state"] == "expired" and float(rows["expired"]["value"][1]) < 0
    assert rows["ok"]["metric"]["state"] == "ok"
    expiry = {s["metric"]["name"]: float(s["value"][1]) for s in stack.query(_grafana_variables(expiry_expr, every))}
    assert expiry["soon"] / 1000 == pytest.approx((NOW + 5 * DAY).timestamp(), abs=60)
    # Both queries carry the same labels, so Grafana's merge transformation joins them row by row.
    assert {json.dumps(s["metric"], sort_keys=True) for s in stack.query(_grafana_variables(days_expr, every))} == \
        {json.dumps(s["metric"], sort_keys=True) for s in stack.query(_grafana_variables(expiry_expr, every))}

    # A team chosen in the dashboard narrows the table to its endpoints.
    pay = {**every, "team": "pay"}
    assert {s["metric"]["name"] for s in stack.query(_grafana_variables(days_expr, pay))} == {"ok", "soon"}

    versions = {s["metric"]["version"] for s in stack.query(
        _grafana_variables(next(p for p in panels(dashboard()) if p["title"] == "TLS versions")["targets"][0]["expr"],
                           {**every, "team": ".*"}))}
    assert versions == {"TLSv1.2", "TLSv1.3"}


def test_dashboard_variables_list_the_right_values(stack: Stack) -> None:
    _wait_for_data(stack)
    values = {"job": "certwatch", "instance": grafana_regex(stack.instance)}
    got = {}
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
        assert match, variable["query"]
        selector = _grafana_variables(match.group(1), values)
        got[variable["name"]] = sorted(stack.api(f"label/{match.group(2)}/values", **{"match[]": selector}))
    assert got == {"job": ["certwatch"], "instance": [stack.instance], "team": ["pay", "web"], "env": ["prod"]}


def test_a_rejected_configuration_shows_in_the_reload_rule(stack: Stack) -> None:
    _wait_for_data(stack)
    expr = alert_rules()["ConfigReloadFailed"]["expr"]
    (reload_panel,) = [p for p in panels(dashboard()) if p["title"] == "Configuration reload"]
    panel_expr = _grafana_variables(reload_panel["targets"][0]["expr"], {"job": ".*", "instance": ".*"})
    assert stack.query(expr) == []
    _write_atomically(stack.config, "endpoints:\n  - host: [this is not valid\n")
    try:
        failed = wait_for("the failed reload in Prometheus", lambda: stack.query(expr), timeout=15)
        assert [s["metric"]["instance"] for s in failed] == [stack.instance]
        assert [s["value"][1] for s in stack.query(panel_expr)] == ["0"]
    finally:
        _write_atomically(stack.config, stack.inventory)
    wait_for("the good configuration to load again", lambda: not stack.query(expr), timeout=15)


def test_the_daemon_shows_revocation_in_the_api_the_page_and_its_counters(stack: Stack) -> None:
    """issue 12, end to end: the real daemon fetched the CRL and judged both targets."""
    _wait_for_data(stack)
    targets = stack.daemon.targets()
    revoked, failing = targets["revoked"], targets["crlfail"]
    assert (revoked["state"], revoked["revocation_status"], revoked["revocation_source"]) == (
        "critical", "revoked", "crl")
    assert "revoked" in revoked["reasons"] and revoked["revocation_checked_at"]
    assert (failing["state"], failing["revocation_status"], failing["revocation_reason"]) == (
        "ok", "unknown", "unreachable")
    assert targets["ok"]["revocation_reason"] == "not_checked"
    status, page = stack.daemon.get("/")
    assert status == 200 and "revoked (crl)" in page
    fetches = {s["metric"]["result"] for s in stack.query(
        'certwatch_revocation_fetches_total{method="crl"}')}
    assert {"success", "unreachable"} <= fetches
