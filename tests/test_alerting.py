"""Alerts end to end: the real daemon, real TLS servers, a real webhook receiver.

The receiver records every request; it can be told to fail (HTTP 500) or to hold a
request before answering, which is how the crash tests place a SIGKILL exactly between
"written to the outbox" and "sent", or between "sent" and "marked delivered".
"""

from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.pki import Issued
from tests.servers import TLSServer
from tests.test_daemon import (  # noqa: F401
    DAY, NOW, RunningDaemon, leaf_files, pki, start_daemon, wait_for)


class Receiver:
    """A loopback webhook endpoint. mode: "ok", "fail" (500) or "hold" (record, then stall)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.mode = "ok"
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.mode == "fail":
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.requests.append({"headers": dict(self.headers), "body": json.loads(body)})
                if receiver.mode == "hold":
                    receiver.release.wait(30)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def bodies(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests]

    def unique(self) -> list[dict[str, Any]]:
        """Deduplicated by notification id, as a receiver honouring Idempotency-Key would."""
        return list({b["id"]: b for b in self.bodies()}.values())


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def write_config(path: Path, port: int, hook: str, state: Path) -> None:
    path.write_text(f"""
defaults: {{ca_file: root.pem, system_trust: false, interval: 1s, retry_interval: 1s, timeout: 2}}
alerts:
  state_dir: {state}
  external_url: http://certwatch.invalid
  retry: {{initial: 1s, maximum: 2s}}
  sinks:
    - {{name: hook, type: webhook, url: "{hook}", min_severity: warning}}
endpoints:
  - {{name: shop, host: 127.0.0.1, port: {port}, server_name: svc.test, labels: {{team: pay}}}}
""")




def test_journey_warning_escalation_renewal(pki: tuple[Issued, Path], receiver: Receiver,  # noqa: F811
                                            tmp_path: Path) -> None:
    issuer, directory = pki
    config = directory / "certwatch.yaml"
    with TLSServer({None: leaf_files(issuer, directory, "w", 20)}) as server:
        port = server.port
        write_config(config, port, receiver.url, tmp_path / "state")
        daemon = start_daemon(config, tmp_path / "d.log")
        try:
            # 20 days of 90 left: within 30 days, and past 70% of its life.
            trigger = wait_for("the warnings", lambda: len(receiver.unique()) >= 2
                               and receiver.unique())
            assert sorted((b["action"], b["severity"], b["kind"]) for b in trigger) == [
                ("trigger", "warning", "expiry"), ("trigger", "warning", "renewal_overdue")]
            trigger.sort(key=lambda b: b["kind"])
            body = trigger[0]
            assert body["target"]["name"] == "shop" and body["target"]["labels"] == {"team": "pay"}
            assert body["details"]["days_left"] == pytest.approx(20, abs=0.1)
            assert body["url"] == "http://certwatch.invalid"
            api = daemon.targets()["shop"]
            assert [a["severity"] for a in api["alerts"]] == ["warning", "warning"]
        finally:
            server.close()
        with TLSServer({None: leaf_files(issuer, directory, "c", 5)}, port=port):
            wait_for("the escalation", lambda: any(b["action"] == "escalate" for b in receiver.bodies()))
        with TLSServer({None: leaf_files(issuer, directory, "r", 90)}, port=port):
            resolved = wait_for("the resolutions", lambda: len(
                found := [b for b in receiver.bodies() if b["action"] == "resolve"]) == 2 and found)
        expiry_change = f"expiry {(NOW + 5 * DAY):%Y-%m-%d} → {(NOW + 90 * DAY):%Y-%m-%d}"
        for body in resolved:
            assert f"shop@127.0.0.1: renewed: {expiry_change}, first seen " in body["summary"]
        assert sorted((b["action"], b["kind"]) for b in receiver.unique()) == [
            ("escalate", "expiry"), ("resolve", "expiry"), ("resolve", "renewal_overdue"),
            ("trigger", "expiry"), ("trigger", "renewal_overdue")]
        assert daemon.targets()["shop"]["alerts"] == []
        assert daemon.stop() == 0


def crash_and_restart(pki: tuple[Issued, Path], receiver: Receiver, tmp_path: Path,  # noqa: F811
                      mode: str) -> None:
    issuer, directory = pki
    config = directory / "certwatch.yaml"
    # Within 30 days, not yet past 70% of its 90 days: one warning, about the expiry.
    with TLSServer({None: leaf_files(issuer, directory, "w", 28.5)}) as server:
        write_config(config, server.port, receiver.url, tmp_path / "state")
        receiver.mode = mode
        daemon = start_daemon(config, tmp_path / "first.log")
        if mode == "fail":  # written to the outbox, not yet delivered
            wait_for("a pending notification", lambda: any(
                s.value >= 1 for s in daemon.metrics().get("certwatch_outbox_pending", [])))
        else:  # the receiver has it, the daemon has not heard back yet
            wait_for("the request to arrive", lambda: receiver.requests)
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(10)
        daemon.stop()
        receiver.mode = "ok"
        receiver.release.set()
        restarted = start_daemon(config, tmp_path / "second.log")
        try:
            wait_for("delivery after restart", lambda: restarted.metrics().get(
                "certwatch_outbox_pending", [None])[0].value == 0 and receiver.unique())
            time.sleep(1.5)  # give a wrong second delivery the time to show up
        finally:
            assert restarted.stop() == 0
    unique = receiver.unique()
    assert [(b["action"], b["kind"]) for b in unique] == [("trigger", "expiry")], unique
    # Nothing twice: the same notification reaches the receiver at most once more, and
    # only when the kill fell between sending and marking, with the same id to drop it.
    assert len(receiver.requests) <= (2 if mode == "hold" else 1)
    ids = {r["headers"].get("Idempotency-Key") for r in receiver.requests}
    assert ids == {unique[0]["id"]}


def test_crash_between_outbox_write_and_delivery(pki, receiver, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    crash_and_restart(pki, receiver, tmp_path, "fail")


def test_crash_between_delivery_and_marking(pki, receiver, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    crash_and_restart(pki, receiver, tmp_path, "hold")


def test_a_sink_that_is_down_gets_everything_once_back(pki, receiver, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    issuer, directory = pki
    config = directory / "certwatch.yaml"
    receiver.mode = "fail"
    with TLSServer({None: leaf_files(issuer, directory, "w", 3)}) as server:
        write_config(config, server.port, receiver.url, tmp_path / "state")
        daemon = start_daemon(config, tmp_path / "d.log")
        try:
            wait_for("failed attempts", lambda: any(
                s.labels["result"] == "retry" and s.value >= 2
                for s in daemon.metrics().get("certwatch_notifications", [])))
            assert receiver.requests == []
            receiver.mode = "ok"
            delivered = wait_for("delivery once the sink is back",
                                 lambda: len(receiver.unique()) >= 2 and receiver.unique())
            assert sorted((b["action"], b["severity"], b["kind"]) for b in delivered) == [
                ("trigger", "critical", "expiry"), ("trigger", "warning", "renewal_overdue")]
        finally:
            assert daemon.stop() == 0


def test_corrupt_state_database_stops_start_up_with_a_clear_error(pki, receiver, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, directory = pki
    state = tmp_path / "state"
    state.mkdir()
    (state / "certwatch.db").write_bytes(b"garbage" * 1000)
    config = directory / "certwatch.yaml"
    write_config(config, 1, receiver.url, state)
    daemon = RunningDaemon(config, tmp_path / "d.log")
    assert daemon.process.wait(30) == 2
    daemon.stop()
    logs = daemon.logs()
    assert any("cannot be used" in e["message"] and "certwatch.db" in e["message"] for e in logs)
