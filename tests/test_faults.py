"""Faults around the daemon: the real `certwatch run` subprocess, real loopback TLS
servers, real webhook receivers. For each fault: the daemon keeps probing and serving
/metrics, reports the fault (error log, a metric, the status page banner, and the body
of /readyz, which stays 200: the daemon still serves what it knows, and leaving a
Service would hide the very page and metrics that report the fault), and recovers by
itself once the fault is gone; the recovery time is measured and printed (pytest -s).

- the state database full (a 1 MiB tmpfs filled to the brim: SQLITE_FULL; skipped where
  mounting is not allowed) and locked by another process (`BEGIN EXCLUSIVE` from here:
  SQLITE_BUSY). The tests run as root, so file modes stop nothing, and a read-only
  remount is refused by the kernel (EBUSY) while certwatch holds the file open for
  writing. A corrupt file at start-up is in tests/test_alerting.py;
- the configuration file deleted, truncated to nothing, made invalid, then restored;
- a sink that accepts and never answers, and one that answers 500 for a long time
  ("an hour" compressed: retry initial 1s, maximum 4s, so the spacing visibly grows
  from ~1s to ~4s; the sink fails for ~8s), next to a healthy sink;
- the wall clock jumping back and forward an hour (libfaketime, skipped when not
  installed: only the daemon's wall clock moves, its monotonic clock does not, as on a
  real host): probes and pending notification retries keep their schedule;
- and, in process, the outbox's part: a failed write leaves no transaction open, a lock
  held elsewhere fails within the busy timeout, a backlog for one sink does not starve
  the others, pending retries move with the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from certwatch.core.alerts import Notification
from certwatch.alerting.health import WRITE_RETRY
from certwatch.alerting.notifier import AlertsConfig, Notifier
from certwatch.alerting.outbox import Outbox
from certwatch.state import DatabaseError
from certwatch.alerting.sinks import parse_sinks
from tests.pki import Issued
from tests.servers import TLSServer
from tests.test_alerting import Receiver, receiver  # noqa: F401
from tests.test_daemon import RunningDaemon, leaf_files, pki, start_daemon, wait_for  # noqa: F401

FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/local/lib/faketime/libfaketimeMT.so.1")


# --- helpers -------------------------------------------------------------------------------


class TimedReceiver(Receiver):
    """A Receiver that also timestamps every attempt (failed ones included)."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[float] = []  # time.monotonic() of each POST
        self.by_id: dict[str, list[float]] = {}  # the same, by Idempotency-Key
        self.wall_by_id: dict[str, list[float]] = {}  # time.time() of each, by Idempotency-Key
        outer, base = self, self.server.RequestHandlerClass

        class Timed(base):  # type: ignore[misc, valid-type]
            def do_POST(self) -> None:  # noqa: N802
                now, key = time.monotonic(), self.headers.get("Idempotency-Key", "")
                outer.attempts.append(now)
                outer.by_id.setdefault(key, []).append(now)
                outer.wall_by_id.setdefault(key, []).append(time.time())
                super().do_POST()

        self.server.RequestHandlerClass = Timed


@contextlib.contextmanager
def timed_receiver() -> Iterator[TimedReceiver]:
    with TimedReceiver() as r:
        yield r


def report(fault: str, **figures: Any) -> None:
    """The figures of one fault, for the issue's table (visible with pytest -s)."""
    shown = ", ".join(f"{k}={v:.2f}s" if isinstance(v, float) else f"{k}={v}"
                      for k, v in figures.items())
    print(f"\nFAULT {fault}: {shown}")


def timed_get(daemon: RunningDaemon, path: str, timeout: float = 20.0) -> tuple[int, str, float]:
    start = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}{path}", timeout=timeout) as r:
            status, body = r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    except OSError:
        status, body = 0, ""
    return status, body, time.monotonic() - start


def sample(daemon: RunningDaemon, name: str, **labels: str) -> float | None:
    """One sample of /metrics (the first matching `labels`), or None."""
    for s in daemon.metrics().get(name, []):
        if all(s.labels.get(k) == v for k, v in labels.items()) and not s.name.endswith("_created"):
            return float(s.value)
    return None


def probes(daemon: RunningDaemon) -> float:
    """Probes done so far (certwatch_probes_total, all results)."""
    return sum(s.value for s in daemon.metrics().get("certwatch_probes", [])
               if s.name.endswith("_total"))


def keeps_probing(daemon: RunningDaemon, more: int = 2, timeout: float = 10.0) -> None:
    before = probes(daemon)
    wait_for(f"{more} more probes", lambda: probes(daemon) >= before + more, timeout)


def banner(daemon: RunningDaemon) -> str:
    status, body = daemon.get("/")
    assert status == 200
    return body


def logged(daemon: RunningDaemon, text: str, level: str | None = None) -> list[dict[str, Any]]:
    return [e for e in daemon.logs()
            if text in e.get("message", "") and (level is None or e.get("level") == level)]


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def alerting_config(port: int, state: Path, sinks: list[str],
                    retry: str = "{initial: 1s, maximum: 2s}", interval: str = "1s") -> str:
    # renewal_due_fraction 1: these faults are about one expiry alert and its delivery;
    # the renewal alert a 90-day certificate with 20 days left would add is not wanted.
    return (
        f"defaults: {{ca_file: root.pem, system_trust: false, interval: {interval}, "
        f"retry_interval: {interval}, timeout: 2, renewal_due_fraction: 1}}\n"
        f"alerts:\n  state_dir: {state}\n  retry: {retry}\n  sinks:\n"
        + "".join(f"    - {s}\n" for s in sinks)
        + f"endpoints:\n  - {{name: shop, host: 127.0.0.1, port: {port}, server_name: svc.test}}\n")


PKI = tuple[Issued, Path]


class SwappableServer:
    """A TLS server on a fixed port whose certificate is replaced by restarting it."""

    def __init__(self, issuer: Issued, directory: Path, days_left: float) -> None:
        self.issuer, self.directory, self.generation = issuer, directory, 0
        self.server = TLSServer({None: self._leaf(days_left)}).__enter__()
        self.port = self.server.port

    def _leaf(self, days_left: float) -> tuple[Path, Path]:
        self.generation += 1
        return leaf_files(self.issuer, self.directory, f"leaf{self.generation}", days_left)

    def serve(self, days_left: float) -> None:
        files = self._leaf(days_left)
        self.server.close()
        self.server = TLSServer({None: files}, port=self.port).__enter__()

    def close(self) -> None:
        self.server.close()


MakeServer = Callable[[float], SwappableServer]


@pytest.fixture
def swappable(pki: PKI) -> Iterator[MakeServer]:  # noqa: F811
    made: list[SwappableServer] = []

    def make(days_left: float) -> SwappableServer:
        made.append(SwappableServer(pki[0], pki[1], days_left))
        return made[-1]

    yield make
    for server in made:
        server.close()


# --- the state database --------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "state"
    mountpoint.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "certwatch-test",
                             str(mountpoint)], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=10)


def fill(directory: Path) -> Path:
    """Writes a ballast file until the file system is full; returns it."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\1" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return ballast


def assert_ready_but_degraded(daemon: RunningDaemon, why: str) -> None:
    """/readyz stays 200: the daemon serves what it knows, and taking it out of a Service
    would hide the very page and metrics that report the fault. Its body names the fault."""
    status, body = daemon.get("/readyz")
    assert status == 200 and "degraded" in body and why in body, (status, body)


def degraded_then_recovered(daemon: RunningDaemon, receiver: Receiver, why: str) -> float:
    """While the database fails: the gauge is 0, the page says so, probing and /metrics go
    on, nothing is delivered. Returns when the degradation was first seen."""
    wait_for("certwatch_state_database_healthy 0",
             lambda: sample(daemon, "certwatch_state_database_healthy") == 0, 15)
    seen = time.monotonic()
    page = banner(daemon)
    assert "alerting degraded" in page and why in page, page
    assert logged(daemon, "alerting degraded", "error")
    assert_ready_but_degraded(daemon, why)
    keeps_probing(daemon)
    assert receiver.requests == []
    assert daemon.targets()["shop"]["state"] == "warning"  # the API still reports the target
    return seen


def recovery_times(daemon: RunningDaemon, receiver: Receiver, since: float) -> tuple[float, float]:
    """Seconds from `since` (the fault removed) until the state database is healthy again,
    and until the held-back notification has been delivered."""
    wait_for("certwatch_state_database_healthy 1",
             lambda: sample(daemon, "certwatch_state_database_healthy") == 1, 15)
    healthy = time.monotonic() - since
    wait_for("the held-back notification", lambda: receiver.unique(), 15)
    return healthy, time.monotonic() - since


def test_state_database_full(swappable: MakeServer, receiver: Receiver,  # noqa: F811
                             small_tmpfs: Path, pki: PKI, tmp_path: Path) -> None:  # noqa: F811
    server = swappable(90)
    config = pki[1] / "certwatch.yaml"
    config.write_text(alerting_config(server.port, small_tmpfs,
                                      [f'{{name: hook, type: webhook, url: "{receiver.url}"}}']))
    daemon = start_daemon(config, tmp_path / "d.log")
    try:
        wait_for("ready", lambda: daemon.get("/readyz")[0] == 200)
        ballast = fill(small_tmpfs)
        server.serve(20)  # a warning: a decision to write while the disk is full
        degraded_then_recovered(daemon, receiver, "full")
        status, _, took = timed_get(daemon, "/metrics")
        assert status == 200 and took < 2, took
        ballast.unlink()
        freed = time.monotonic()
        healthy, delivered = recovery_times(daemon, receiver, since=freed)
        assert [(b["action"], b["severity"]) for b in receiver.unique()] == [("trigger", "warning")]
        assert "alerting degraded" not in banner(daemon)
        assert "degraded" not in daemon.get("/readyz")[1]
        assert logged(daemon, "alerting recovered")
        report("state database full (SQLITE_FULL)", healthy_again=healthy, delivered=delivered)
    finally:
        assert daemon.stop() == 0


def test_state_database_locked_by_another_process(swappable: MakeServer,
                                                  receiver: Receiver,  # noqa: F811
                                                  pki: PKI, tmp_path: Path) -> None:  # noqa: F811
    server = swappable(90)
    state = tmp_path / "state"
    config = pki[1] / "certwatch.yaml"
    config.write_text(alerting_config(server.port, state,
                                      [f'{{name: hook, type: webhook, url: "{receiver.url}"}}']))
    daemon = start_daemon(config, tmp_path / "d.log")
    latencies: list[float] = []
    stop_polling = threading.Event()

    def poll_metrics() -> None:  # how long a scrape waits while the database is locked
        while not stop_polling.is_set():
            status, _, took = timed_get(daemon, "/metrics")
            assert status == 200
            latencies.append(took)
            stop_polling.wait(0.2)

    poller = threading.Thread(target=poll_metrics, daemon=True)
    try:
        wait_for("ready", lambda: daemon.get("/readyz")[0] == 200)
        failures_before = sample(daemon, "certwatch_probes", result="failure",
                                 error_kind="timeout") or 0
        holder = sqlite3.connect(state / "certwatch.db", timeout=1, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # as a backup tool or an operator's shell might
        try:
            poller.start()
            server.serve(20)
            degraded_then_recovered(daemon, receiver, "locked")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        released = time.monotonic()
        healthy, delivered = recovery_times(daemon, receiver, since=released)
        stop_polling.set()
        poller.join(25)
        assert [(b["action"], b["severity"]) for b in receiver.unique()] == [("trigger", "warning")]
        # A locked database must not stall the event loop: scrapes stay fast, and probes
        # of healthy targets do not time out because the loop was blocked.
        false_timeouts = (sample(daemon, "certwatch_probes", result="failure",
                                 error_kind="timeout") or 0) - failures_before
        report("state database locked (SQLITE_BUSY)", healthy_again=healthy, delivered=delivered,
               worst_scrape=max(latencies), scrapes=len(latencies), false_timeouts=false_timeouts)
        assert max(latencies) < 1.5, latencies
        assert false_timeouts == 0
    finally:
        stop_polling.set()
        assert daemon.stop() == 0


# --- the configuration file ----------------------------------------------------------------


def test_config_file_deleted_truncated_invalid(swappable: MakeServer, pki: PKI,  # noqa: F811
                                               tmp_path: Path) -> None:
    server = swappable(90)
    config = pki[1] / "certwatch.yaml"
    good = (f"defaults: {{ca_file: root.pem, system_trust: false, interval: 1s, "
            f"retry_interval: 1s, timeout: 2}}\nendpoints:\n"
            f"  - {{name: shop, host: 127.0.0.1, port: {server.port}, server_name: svc.test}}\n"
            f"  - {{name: shop2, host: 127.0.0.1, port: {server.port}, server_name: svc.test}}\n")
    write_atomically(config, good)
    daemon = start_daemon(config, tmp_path / "d.log")
    try:
        wait_for("ready", lambda: daemon.get("/readyz")[0] == 200)
        faults: dict[str, tuple[Callable[[], None], str, str]] = {
            "deleted": (config.unlink, "is missing", "configuration file is missing"),
            "truncated": (lambda: config.write_text(""), "file is empty",
                          "configuration rejected"),
            "invalid": (lambda: config.write_text(good.replace("endpoints:\n", "endpoints: [\n")),
                        "failed; still running the previous inventory", "configuration rejected"),
        }
        for fault, (break_it, shown, log_line) in faults.items():
            errors_before = len(logged(daemon, log_line, "error"))
            break_it()
            wait_for(f"the {fault} file to be noticed", lambda: shown in banner(daemon), 10)
            assert len(logged(daemon, log_line, "error")) == errors_before + 1
            assert sample(daemon, "certwatch_config_last_reload_successful") == 0, fault
            assert sorted(daemon.targets()) == ["shop", "shop2"]  # the old inventory runs on
            assert sample(daemon, "certwatch_endpoints") == 2
            keeps_probing(daemon)
            assert_ready_but_degraded(daemon, shown)
            write_atomically(config, good)
            restored = time.monotonic()
            wait_for("the restored file to be loaded", lambda: (
                sample(daemon, "certwatch_config_last_reload_successful") == 1
                and shown not in banner(daemon) and daemon.get("/readyz") == (200, "ready\n")), 10)
            report(f"configuration file {fault}", recovered=time.monotonic() - restored,
                   poll="0.3s (--reload-interval)")
    finally:
        assert daemon.stop() == 0


# --- sinks ---------------------------------------------------------------------------------


def test_hanging_and_failing_sinks_do_not_hold_up_the_others(
        swappable: MakeServer, pki: PKI, tmp_path: Path) -> None:  # noqa: F811
    server = swappable(20)
    config = pki[1] / "certwatch.yaml"
    with timed_receiver() as good, timed_receiver() as hang, timed_receiver() as flaky:
        hang.mode, flaky.mode = "hold", "fail"  # accepts and never answers; HTTP 500
        config.write_text(alerting_config(server.port, tmp_path / "state", [
            f'{{name: good, type: webhook, url: "{good.url}"}}',
            f'{{name: hang, type: webhook, url: "{hang.url}", timeout: 3s}}',
            f'{{name: flaky, type: webhook, url: "{flaky.url}"}}',
        ], retry="{initial: 1s, maximum: 4s}"))
        with RetrySchedule(tmp_path / "state" / "certwatch.db", "flaky") as schedule:
            daemon = start_daemon(config, tmp_path / "d.log")
            try:
                wait_for("the healthy sink's notification", lambda: good.unique())
                assert [b["action"] for b in good.unique()] == ["trigger"]
                # The escalation is decided while the hanging sink holds a delivery: the healthy
                # sink must get it at once, not after the hanging sink's timeout.
                wait_for("the hanging sink to hold a request", lambda: hang.requests)
                server.serve(5)
                escalated = wait_for("the escalation", lambda: [
                    e for e in logged(daemon, "alert escalate")], 10)[0]
                wait_for("the escalation at the healthy sink", lambda: len(good.unique()) == 2, 10)
                decided = _log_time(escalated)
                arrival_delay = time.time() - decided  # upper bound: polled every 0.1s
                keeps_probing(daemon)

                trigger_id = good.unique()[0]["id"]
                wait_for("the failing sink's retries",
                         lambda: len(flaky.by_id.get(trigger_id, [])) >= 4, 20)
                attempts = flaky.by_id[trigger_id]
                gaps = [b - a for a, b in zip(attempts, attempts[1:])]
                # The retry the daemon scheduled after each failed attempt, as it stored it.
                delays = [schedule.next_at[trigger_id][k + 1] - at
                          for k, at in enumerate(flaky.wall_by_id[trigger_id][:3])]
                retried = sample(daemon, "certwatch_notifications", sink="hang", result="retry")
                assert retried and retried >= 1
                assert logged(daemon, "no answer within 3s")
                assert sample(daemon, "certwatch_outbox_pending") >= 2
                flaky.mode, hang.mode = "ok", "ok"
                hang.release.set()
                recovered = time.monotonic()
                wait_for("both broken sinks to get everything", lambda: sample(
                    daemon, "certwatch_outbox_pending") == 0, 20)
                took = time.monotonic() - recovered
                for sink in (flaky, hang):
                    assert sorted(b["action"] for b in sink.unique()) == ["escalate", "trigger"]
                report("sink hangs (3s sink timeout), healthy sink's escalation delay",
                       delay=arrival_delay, hang_attempts=len(hang.attempts))
                report("sink answers 500 (retry 1s..4s)", attempts=len(attempts),
                       scheduled=" ".join(f"{d:.1f}" for d in delays),
                       gaps=" ".join(f"{g:.1f}" for g in gaps), delivered_after_recovery=took)
                assert arrival_delay < 2.0, arrival_delay
                # Exponential backoff with jitter: retry k is scheduled min(1s * 2^k, 4s) *
                # U(0.5, 1.5) after attempt k, so the third wait (>= 2s) is longer than the
                # first (<= 1.5s) whatever the jitter; each is kept (the delivery loop looks for
                # due retries every second), and none is early.
                for k, delay in enumerate(delays):
                    base = min(2.0 ** k, 4.0)
                    assert 0.5 * base - 0.1 <= delay <= 1.5 * base + 0.1, (k, delays)
                    assert delay - 0.1 <= gaps[k] <= delay + 2.5, (k, delays, gaps)
                assert delays[2] > delays[0], delays
            finally:
                assert daemon.stop() == 0


class RetrySchedule:
    """Follows one sink's rows in the daemon's outbox (read-only, from a thread, from
    before the database exists): next_at[id][n] is the retry time stored after the n-th
    attempt of notification `id`."""

    def __init__(self, db: Path, sink: str) -> None:
        self.db, self.sink = db, sink
        self.next_at: dict[str, dict[int, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def _follow(self) -> None:
        while not self.db.exists() and not self._stop.wait(0.02):
            pass
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True,
                                                timeout=1)) as db:
            while not self._stop.wait(0.05):
                with contextlib.suppress(sqlite3.OperationalError):  # no table yet
                    for key, attempts, next_at in db.execute(
                            "SELECT id, attempts, next_attempt_at FROM outbox WHERE sink = ?",
                            (self.sink,)):
                        if attempts:
                            self.next_at.setdefault(key, {}).setdefault(attempts, next_at)

    def __enter__(self) -> RetrySchedule:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _log_time(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()


# --- the clock -----------------------------------------------------------------------------


def faketime_library() -> str | None:
    return next((lib for lib in FAKETIME_LIBS if Path(lib).exists()), None)


def test_wall_clock_jumps(swappable: MakeServer, pki: PKI, tmp_path: Path) -> None:  # noqa: F811
    library = faketime_library()
    if library is None:
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    server = swappable(20)  # a warning, whose first delivery fails
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    config = pki[1] / "certwatch.yaml"
    with timed_receiver() as hook:
        hook.mode = "fail"
        config.write_text(alerting_config(server.port, tmp_path / "state",
                                          [f'{{name: hook, type: webhook, url: "{hook.url}"}}'],
                                          retry="{initial: 4s, maximum: 4s}", interval="1s"))
        env = {"LD_PRELOAD": library, "FAKETIME_TIMESTAMP_FILE": str(offset),
               "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
        daemon = start_daemon(config, tmp_path / "d.log", env=env)
        try:
            wait_for("ready", lambda: daemon.get("/readyz")[0] == 200)
            wait_for("a failed delivery", lambda: hook.attempts, 10)  # its retry: 2-6s away
            hook.mode = "ok"
            figures: dict[str, Any] = {}
            for fake, jump in ((-3600, "back 1h"), (0, "forward 1h")):
                offset.write_text(f"{fake:+d}\n")
                jumped = time.monotonic()

                def probed_since() -> bool:  # the latest probe's time is on the new clock
                    at = sample(daemon, "certwatch_probe_timestamp_seconds")
                    return at is not None and abs(at - (time.time() + fake)) < 600

                wait_for(f"a probe after the clock jumped {jump}", probed_since, 15)
                figures[f"first_probe_after_{jump.replace(' ', '_')}"] = time.monotonic() - jumped
                # A jump is not lateness: the scan lag must not read 3600s after it.
                figures[f"scan_lag_after_{jump.replace(' ', '_')}"] = lag = sample(
                    daemon, "certwatch_scan_lag_seconds")
                assert lag is not None and lag < 30, (jump, lag)
                if jump == "back 1h":
                    wait_for("the pending retry", lambda: hook.unique(), 20)
                    figures["retry_delivered_after_back_1h"] = time.monotonic() - jumped
                keeps_probing(daemon, 3, 15)  # not one burst and then an hour of silence
                figures[f"3_more_probes_after_{jump.replace(' ', '_')}"] = time.monotonic() - jumped
            # The watchdog compares the clocks every 5 s; probing may resume before it looks.
            wait_for("both jumps to be noticed",
                     lambda: (sample(daemon, "certwatch_clock_jumps") or 0) >= 2, 15)
            assert logged(daemon, "wall clock jumped", "warning")
            assert logged(daemon, "wall clock was set back", "warning")  # the pending retries
            report("wall clock jumps back 1h, then forward 1h (libfaketime)", **figures)
        finally:
            assert daemon.stop() == 0


# --- the outbox under faults, in process ---------------------------------------------------


def _notification(number: int) -> Notification:
    moment = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=number)
    return Notification(id=f"n{number}", alert_key=f"t{number}/expiry", kind="expiry",
                        action="trigger", severity="warning", created_at=moment,
                        started_at=moment, summary=f"t{number}", target={}, details={})


def test_a_backlog_for_one_sink_does_not_starve_the_others(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "certwatch.db")
    moment = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for number in range(300):  # a sink that has been down for a while
        outbox.apply({}, [(_notification(number), "down")], moment)
    outbox.apply({}, [(_notification(1000), "up")], moment + timedelta(seconds=1))
    due = outbox.due(moment.timestamp() + 10, limit=100, per_sink=10)
    assert [d.sink for d in due].count("down") == 10
    assert [d.notification.id for d in due if d.sink == "up"] == ["n1000"]
    outbox.close()


def test_the_outbox_recovers_after_a_failed_write(tmp_path: Path) -> None:
    path = tmp_path / "certwatch.db"
    outbox = Outbox(path, busy_timeout=0.05)
    moment = datetime(2026, 1, 1, tzinfo=timezone.utc)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    with pytest.raises(DatabaseError, match="locked"):
        outbox.apply({}, [(_notification(1), "hook")], moment)
    assert time.monotonic() - started < 1  # the busy timeout, not SQLite's default
    holder.execute("ROLLBACK")
    holder.close()
    outbox.apply({}, [(_notification(1), "hook")], moment)  # no transaction left open
    (pending,) = outbox.due(moment.timestamp())
    outbox.shift_pending(-3600)  # the wall clock was set back an hour
    assert outbox.due(moment.timestamp() - 3600) == [pending]
    outbox.close()


def test_a_failed_delivery_recorded_after_the_database_recovers(receiver: Receiver,  # noqa: F811
                                                                tmp_path: Path) -> None:
    """The outcome of a send made while the database refused writes is written later,
    with the sink's error message (it used to refer to an exception already gone)."""
    receiver.mode = "fail"
    (sink,), problems = parse_sinks([{"name": "hook", "type": "webhook", "url": receiver.url}],
                                    "alerts.sinks", {}, tmp_path)
    assert problems == []
    path = tmp_path / "certwatch.db"
    outbox = Outbox(path)
    moment = datetime.now(timezone.utc)
    outbox.apply({}, [(_notification(1), "hook")], moment)
    notifier = Notifier(AlertsConfig(state_dir=tmp_path, sinks=(sink,)), outbox,
                        CollectorRegistry())
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # readers go on (WAL); writes fail

    async def deliver() -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            await notifier.deliver_due(client)

    asyncio.run(deliver())
    assert notifier.degraded is not None
    holder.execute("ROLLBACK")
    holder.close()
    time.sleep(WRITE_RETRY)
    notifier.deliveries.record_unrecorded()
    assert notifier.degraded is None
    attempts, error = sqlite3.connect(path).execute(
        "SELECT attempts, last_error FROM outbox WHERE id = 'n1'").fetchone()
    assert attempts == 1 and "500" in error
    outbox.close()
