"""The real daemon, as a subprocess, against real loopback TLS servers."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.pki import Issued, make_intermediate, make_leaf, make_root
from tests.servers import TLSServer, closed_port

NOW = datetime.now(timezone.utc)
DAY = timedelta(days=1)
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 20.0) -> T:
    """Polls `probe` until it returns something truthy; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class RunningDaemon:
    """`certwatch run` as a subprocess on 127.0.0.1, stdout and stderr in one log file.

    `options` go before `run` (--log-level ...), `run_options` after it; `env` is added
    to this process's environment."""

    def __init__(self, config: Path, log: Path, *, port: int | None = None,
                 env: dict[str, str] | None = None, options: Sequence[str] = (),
                 run_options: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.log_path = log
        self._log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "certwatch", *options, "run", "-c", str(config),
             "--listen", f"127.0.0.1:{self.port}", "--reload-interval", "0.3", "--grace", "5",
             *run_options],
            stdout=self._log, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})})

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def targets(self) -> dict[str, dict[str, Any]]:
        status, body = self.get("/api/v1/targets")
        return {t["name"]: t for t in json.loads(body)} if status == 200 else {}

    def metrics(self) -> dict[str, list[Any]]:
        status, body = self.get("/metrics")
        assert status == 200
        return {f.name: f.samples for f in text_string_to_metric_families(body)}

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        finally:
            self._log.close()


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Issued, Path]:
    root = make_root("Daemon Root", not_before=NOW - DAY, not_after=NOW + 3000 * DAY)
    inter = make_intermediate(root, "Daemon Intermediate", not_before=NOW - DAY,
                              not_after=NOW + 2000 * DAY)
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    return inter, tmp_path


def leaf_files(issuer: Issued, directory: Path, stem: str, days_left: float, *,
               lifetime: timedelta = 90 * DAY) -> tuple[Path, Path]:
    """A leaf with `days_left` to go, issued as a certificate of `lifetime` would be."""
    not_after = NOW + days_left * DAY
    leaf = make_leaf(issuer, ["svc.test"], not_before=min(NOW - DAY, not_after - lifetime),
                     not_after=not_after)
    return leaf.write(directory, stem)


def write_inventory(path: Path, endpoints: list[str]) -> None:
    # Writes are atomic (rename) so the daemon never reads half a file.
    body = ("defaults: {ca_file: root.pem, system_trust: false, interval: 1s, "
            "retry_interval: 1s, timeout: 2}\nendpoints:\n" + "".join(f"  - {e}\n" for e in endpoints))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(body)
    tmp.replace(path)


def start_daemon(config: Path, log: Path, **kwargs: Any) -> RunningDaemon:
    """A RunningDaemon, once it answers /healthz."""
    daemon = RunningDaemon(config, log, **kwargs)
    wait_for("the daemon to listen", lambda: daemon.get("/healthz")[0] == 200)
    return daemon


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[[Path], RunningDaemon]]:
    started: list[RunningDaemon] = []

    def start(config: Path) -> RunningDaemon:
        daemon = RunningDaemon(config, tmp_path / f"daemon{len(started)}.log")
        started.append(daemon)  # stopped at teardown even if it never listens
        wait_for("the daemon to listen", lambda: daemon.get("/healthz")[0] == 200)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def test_metrics_api_renewal_and_removal(pki: tuple[Issued, Path], daemon_factory) -> None:  # type: ignore[no-untyped-def]
    issuer, directory = pki
    config = directory / "certwatch.yaml"
    with TLSServer({None: leaf_files(issuer, directory, "a", 5)}) as server:
        port = server.port
        write_inventory(config, [
            f"{{name: web, host: 127.0.0.1, port: {port}, server_name: svc.test, labels: {{team: pay}}}}",
            f"{{name: down, host: 127.0.0.1, port: {closed_port()}}}",
        ])
        daemon = daemon_factory(config)
        wait_for("readiness", lambda: daemon.get("/readyz")[0] == 200)
        targets = daemon.targets()
        assert targets["web"]["state"] == "critical"
        assert targets["web"]["labels"] == {"team": "pay"}
        assert targets["web"]["next_probe_at"] and targets["web"]["last_probe_at"]
        assert (targets["down"]["state"], targets["down"]["error_kind"]) == ("error", "refused")

        metrics = daemon.metrics()
        success = {s.labels["name"]: s.value for s in metrics["certwatch_probe_success"]}
        assert success == {"web": 1.0, "down": 0.0}
        (expiry,) = [s for s in metrics["certwatch_cert_expiry_timestamp_seconds"]]
        assert expiry.labels == {"name": "web", "address": "127.0.0.1"}  # identity only
        info = {s.labels["name"]: s.labels for s in metrics["certwatch_target_info"]}
        assert info["web"] == {"name": "web", "host": "127.0.0.1", "port": str(port),
                               "address": "127.0.0.1", "server_name": "svc.test",
                               "protocol": "tls", "source": "tls", "team": "pay"}
        assert abs(expiry.value - (NOW + 5 * DAY).timestamp()) < 5
        states = {(s.labels["name"], s.labels["state"]): s.value for s in metrics["certwatch_target_state"]}
        assert states == {("web", "critical"): 1, ("down", "error"): 1}
        assert "certwatch_chain_cert_not_after_timestamp_seconds" not in metrics  # opt-in
        info = [s for s in metrics["certwatch_cert_info"] if s.labels["role"] == "leaf"]
        old_serial = info[0].labels["serial"]

    # Renewal: the server is redeployed on the same port with a fresh certificate.
    with TLSServer({None: leaf_files(issuer, directory, "b", 80)}, port=port):
        renewed = wait_for("the renewal to be seen",
                           lambda: (t := daemon.targets().get("web")) and t["state"] == "ok" and t)
        assert renewed["days_left"] == pytest.approx(80, abs=0.1)
        leaf_info = [s for s in daemon.metrics()["certwatch_cert_info"] if s.labels["role"] == "leaf"]
        assert leaf_info[0].labels["serial"] != old_serial

        # Removal: the endpoint leaves the inventory and its series leave /metrics.
        write_inventory(config, [f"{{name: web, host: 127.0.0.1, port: {port}, server_name: svc.test}}"])
        wait_for("the removed target to vanish", lambda: set(daemon.targets()) == {"web"})
        names = {s.labels["name"] for s in daemon.metrics()["certwatch_probe_success"]}
        assert names == {"web"}
    changes = [e for e in daemon.logs() if e["message"].startswith("state ")]
    assert [(e["before"], e["state"]) for e in changes if e["target"].startswith("web@")] == [
        (None, "critical"), ("critical", "ok")]  # each change logged once, not every scan
    assert daemon.stop() == 0


def test_new_targets_are_logged_when_not_ok_and_counted_by_state(
        pki: tuple[Issued, Path], daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """A target first seen ok is no news: only "first sweep finished" counts it (its own
    line is at debug). One first seen in trouble is logged at info, as any change is."""
    issuer, directory = pki
    config = directory / "certwatch.yaml"
    with TLSServer({None: leaf_files(issuer, directory, "fine", 60)}) as fine, \
            TLSServer({None: leaf_files(issuer, directory, "soon", 5)}) as soon:
        write_inventory(config, [
            f"{{name: fine, host: 127.0.0.1, port: {fine.port}, server_name: svc.test}}",
            f"{{name: soon, host: 127.0.0.1, port: {soon.port}, server_name: svc.test}}",
            f"{{name: down, host: 127.0.0.1, port: {closed_port()}}}",
        ])
        daemon = daemon_factory(config)
        wait_for("readiness", lambda: daemon.get("/readyz")[0] == 200)
        (finished,) = wait_for("the first sweep's line", lambda: [
            e for e in daemon.logs() if e["message"] == "first sweep finished"])
    assert finished["targets"] == 3
    assert finished["states"] == {"ok": 1, "critical": 1, "error": 1}
    changes = {e["target"].split("@")[0]: (e["level"], e["before"], e["state"])
               for e in daemon.logs() if e["message"].startswith("state ")}
    assert changes == {"soon": ("info", None, "critical"), "down": ("info", None, "error")}
    assert daemon.stop() == 0


def test_a_target_just_probed_says_when_its_next_probe_is(pki: tuple[Issued, Path],
                                                          daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """The schedule knew (next_probe_at is the last probe plus the interval); the page said
    "next probe due now" for anything under a minute away, which with an interval that
    short (the demo's is 15 s) was every target, just after its probe."""
    issuer, directory = pki
    config = directory / "certwatch.yaml"
    with TLSServer({None: leaf_files(issuer, directory, "a", 60)}) as server:
        config.write_text(
            "defaults: {ca_file: root.pem, system_trust: false, interval: 20s, "
            "retry_interval: 20s, timeout: 2}\nendpoints:\n"
            f"  - {{name: web, host: 127.0.0.1, port: {server.port}, server_name: svc.test}}\n")
        daemon = daemon_factory(config)
        web = wait_for("the first probe", lambda: daemon.targets().get("web"))
        ahead = (datetime.fromisoformat(web["next_probe_at"])
                 - datetime.fromisoformat(web["last_probe_at"])).total_seconds()
        assert 17 <= ahead <= 23  # 20 s, with up to 10% jitter, to the second
        status, page = daemon.get("/")
        assert status == 200
        checked = re.search(r'<td class="checked"[^>]*><div>([^<]*)<div class="sub"[^>]*>([^<]*)<',
                            page)
        assert checked is not None, page
        seconds = re.fullmatch(r"next in (\d+) s", checked.group(2))
        assert seconds and 1 <= int(seconds.group(1)) <= 23, checked.groups()
        status, detail = daemon.get("/target?key=web%40127.0.0.1")
        assert status == 200 and re.search(r"Next probe</dt><dd><time [^>]*>[^<]*</time> "
                                           r"\(in \d+ s\)", detail), detail


def test_failed_probe_keeps_the_last_certificate(pki: tuple[Issued, Path], daemon_factory) -> None:  # type: ignore[no-untyped-def]
    issuer, directory = pki
    config = directory / "certwatch.yaml"
    with TLSServer({None: leaf_files(issuer, directory, "a", 20)}) as server:
        port = server.port
        write_inventory(config, [f"{{name: web, host: 127.0.0.1, port: {port}, server_name: svc.test}}"])
        daemon = daemon_factory(config)
        wait_for("the first probe", lambda: daemon.targets().get("web"))
    # The server is gone: the probe fails, but the certificate read before is still reported.
    failing = wait_for("a failed probe", lambda: (t := daemon.targets().get("web"))
                       and t["consecutive_failures"] >= 2 and t)
    assert failing["state"] == "warning"
    assert failing["probe_success"] is False
    assert failing["last_error"]["kind"] == "refused"
    assert failing["days_left"] == pytest.approx(20, abs=0.1)
    assert failing["certificate_read_at"] < failing["last_probe_at"]
    metrics = daemon.metrics()
    assert metrics["certwatch_probe_success"][0].value == 0
    assert metrics["certwatch_cert_expiry_timestamp_seconds"][0].value > time.time()


def test_bad_config_keeps_the_old_inventory_and_sighup_reloads(pki: tuple[Issued, Path],
                                                               daemon_factory) -> None:  # type: ignore[no-untyped-def]
    issuer, directory = pki
    config = directory / "certwatch.yaml"
    with TLSServer({None: leaf_files(issuer, directory, "a", 60)}) as server:
        write_inventory(config, [f"{{name: one, host: 127.0.0.1, port: {server.port}, server_name: svc.test}}"])
        daemon = daemon_factory(config)
        wait_for("the first probe", lambda: daemon.targets().get("one"))

        config.write_text("endpoints:\n  - host: [this is not valid\n")
        wait_for("the reload failure metric", lambda: daemon.metrics()[
            "certwatch_config_last_reload_successful"][0].value == 0)
        assert set(daemon.targets()) == {"one"}
        status, page = daemon.get("/")
        assert status == 200 and "reload" in page
        errors = [e for e in daemon.logs() if e["level"] == "error"]
        assert errors and "previous inventory keeps running" in errors[0]["message"]
        assert any("not valid YAML" in p for p in errors[0]["problems"])

        write_inventory(config, [
            f"{{name: one, host: 127.0.0.1, port: {server.port}, server_name: svc.test}}",
            f"{{name: two, host: 127.0.0.1, port: {server.port}, server_name: svc.test}}",
        ])
        wait_for("the new endpoint", lambda: "two" in daemon.targets())
        assert daemon.metrics()["certwatch_config_last_reload_successful"][0].value == 1

        # SIGHUP reloads too (here the file content is unchanged: same targets, state kept).
        first_probe = daemon.targets()["one"]["checked_at"]
        daemon.process.send_signal(signal.SIGHUP)
        reloads = wait_for("the SIGHUP reload", lambda: [
            e for e in daemon.logs() if e.get("why") == "SIGHUP"])
        assert reloads[0]["message"] == "configuration loaded"
        assert daemon.targets()["one"]["checked_at"] >= first_probe
    assert daemon.stop() == 0


def test_sigterm_during_a_slow_probe_exits_cleanly(pki: tuple[Issued, Path], daemon_factory,
                                                   tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.servers import TarpitServer

    _, directory = pki
    config = directory / "certwatch.yaml"
    with TarpitServer() as tarpit:
        write_inventory(config, [f"{{name: slow, host: 127.0.0.1, port: {tarpit.port}}}"])
        daemon = daemon_factory(config)
        wait_for("a probe in flight", lambda: tarpit.connections >= 1)
        start = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - start < 8  # the 2s probe deadline, well within the grace


def test_max_concurrency_bounds_the_whole_daemon(pki: tuple[Issued, Path], daemon_factory) -> None:  # type: ignore[no-untyped-def]
    # Ten endpoints due at once on a tarpit: at most three connections at any moment,
    # and every endpoint gets its turn.
    from tests.servers import TarpitServer

    _, directory = pki
    config = directory / "certwatch.yaml"
    with TarpitServer() as tarpit:
        write_inventory(config, [f"{{name: t{i}, host: 127.0.0.1, port: {tarpit.port}, timeout: 0.5}}"
                                 for i in range(10)])
        config.write_text("max_concurrency: 3\n" + config.read_text())
        daemon = daemon_factory(config)
        wait_for("every endpoint probed", lambda: daemon.get("/readyz")[0] == 200)
        assert tarpit.peak_connections == 3
        assert {t["error_kind"] for t in daemon.targets().values()} == {"timeout"}
        assert len(daemon.targets()) == 10
    assert daemon.stop() == 0


@pytest.mark.skipif(shutil.which("promtool") is None and not os.environ.get("CI"),
                    reason="promtool not installed (CI installs Debian's prometheus)")
def test_promtool_accepts_the_exposition(pki: tuple[Issued, Path], daemon_factory) -> None:  # type: ignore[no-untyped-def]
    issuer, directory = pki
    config = directory / "certwatch.yaml"
    with TLSServer({None: leaf_files(issuer, directory, "a", 60)}) as server:
        write_inventory(config, [
            f"{{name: web, host: 127.0.0.1, port: {server.port}, server_name: svc.test, labels: {{team: a}}}}",
            f"{{name: down, host: 127.0.0.1, port: {closed_port()}, labels: {{env: prod}}}}",
        ])
        daemon = daemon_factory(config)
        wait_for("readiness", lambda: daemon.get("/readyz")[0] == 200)
        _, body = daemon.get("/metrics")
        # Asked as Prometheus asks, the same exposition comes gzipped.
        request = urllib.request.Request(f"http://127.0.0.1:{daemon.port}/metrics",
                                         headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            zipped = gzip.decompress(response.read()).decode()
    assert [line.split(" ")[0] for line in zipped.splitlines()] == [
        line.split(" ")[0] for line in body.splitlines()]
    result = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
