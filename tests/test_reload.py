"""Reloads that cannot kill the watcher or stall the server, and start-up messages that
tell the truth (issue 17).

- The watcher's read dies with MemoryError: the failure shows in the log, the metric and
  the banner, and the next edit is seen (the daemon in this process, its read replaced).
- A large file is parsed off the event loop: /healthz keeps answering during the reload
  (the real daemon as a subprocess; bench/reload.py measures the same at 15 MiB).
- A file of thousands of problems gives a bounded log line, /readyz body and banner.
- A missing `*_env` variable at start-up says "configuration rejected", not that a
  previous inventory keeps running: there is none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from certwatch.daemon import Daemon
from certwatch.daemon import loading
from tests.test_daemon import RunningDaemon, start_daemon, wait_for


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # a new inode: the watcher sees the change at once


def inventory(names: list[str]) -> str:
    return "endpoints:\n" + "".join(
        f"  - {{name: {n}, host: 127.0.0.1, port: 9, timeout: 1, interval: 1h}}\n" for n in names)


def sample(daemon: Daemon, name: str, labels: dict[str, str] | None = None) -> float | None:
    return daemon.registry.get_sample_value(name, labels or {})


@pytest.mark.timeout(60)
def test_a_memory_error_in_the_watchers_read_is_a_failed_reload_and_the_next_edit_is_seen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "inventory.yaml"
    write(config, inventory(["first"]))
    real = loading.load_configuration
    failing = {"left": 0}

    def read_once(*args: Any, **kwargs: Any) -> Any:
        if failing["left"]:
            failing["left"] -= 1
            raise MemoryError
        return real(*args, **kwargs)

    monkeypatch.setattr(loading, "load_configuration", read_once)
    caplog.set_level(logging.INFO)

    async def until(what: str, condition: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    async def scenario() -> None:
        daemon = Daemon(config, listen="127.0.0.1:0", reload_poll=0.1, grace=1)
        running = asyncio.create_task(daemon.run())
        await until("the daemon to listen", lambda: daemon.bound_port is not None)
        failing["left"] = 1
        write(config, inventory(["first", "second"]))
        await until("the failed reload", lambda: sample(
            daemon, "certwatch_config_reloads_total", {"result": "failure"}) == 1)
        assert sample(daemon, "certwatch_config_last_reload_successful") == 0
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{daemon.bound_port}/") as response:
                page = await response.text()
        assert "configuration reload (file changed) failed; still running the previous " \
               "inventory" in page and "could not be loaded (MemoryError)" in page
        assert set(daemon.snapshot()) <= {"first@127.0.0.1"}

        write(config, inventory(["first", "third"]))  # the next edit, read for real
        await until("the next reload", lambda: sample(
            daemon, "certwatch_config_last_reload_successful") == 1)
        assert sample(daemon, "certwatch_endpoints") == 2
        assert daemon.notices() == []
        daemon.stop()
        assert await asyncio.wait_for(running, 10) == 0

    asyncio.run(scenario())
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("ERROR", "loading the configuration failed inside certwatch") in messages
    assert ("ERROR", "configuration rejected; the previous inventory keeps running") in messages
    assert messages.count(("INFO", "configuration loaded")) == 2


@pytest.mark.timeout(120)
def test_healthz_answers_while_a_large_file_is_parsed(tmp_path: Path) -> None:
    """The file is read and parsed in a thread: before, a 20 MB file blocked /healthz for
    3.8 s. This one takes seconds to parse; /healthz is asked every 20 ms meanwhile."""
    config = tmp_path / "inventory.yaml"
    write(config, inventory(["first"]))
    daemon = start_daemon(config, tmp_path / "daemon.log", options=["--log-format", "json"])
    try:
        big = "strict: true\nendpoints:\n" + "  - {host: 'not a host', port: x, labels: {a: b}}\n" * 60_000
        started = time.monotonic()
        write(config, big)  # ~3 MB, every entry wrong: the slowest kind of reload
        slowest, polls = 0.0, 0
        while time.monotonic() - started < 90 and not rejected(daemon):
            before = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/healthz", timeout=10) as r:
                assert r.status == 200
            slowest = max(slowest, time.monotonic() - before)
            polls += 1
            time.sleep(0.02)
        took = time.monotonic() - started
        assert rejected(daemon), "the reload did not finish"
        assert took > 1.0, f"the reload took {took:.2f}s: too fast to show anything"
        assert polls >= 20 and slowest < 0.5, (polls, slowest, took)
    finally:
        daemon.stop()


def rejected(daemon: RunningDaemon) -> bool:
    return any(e.get("message", "").startswith("configuration rejected") for e in daemon.logs())


@pytest.mark.timeout(60)
def test_thousands_of_problems_are_reported_in_bounded_size(tmp_path: Path) -> None:
    config = tmp_path / "inventory.yaml"
    write(config, inventory(["first"]))
    daemon = start_daemon(config, tmp_path / "daemon.log", options=["--log-format", "json"])
    try:
        write(config, "strict: true\nendpoints:\n" + "  - {host: 'bad host', port: x}\n" * 20_000)
        wait_for("the rejection", lambda: rejected(daemon))
        line = next(l for l in daemon.log_path.read_text().splitlines()
                    if '"configuration rejected' in l)
        assert len(line) < 20_000 and "and 39950 more problems" in line
        status, ready = daemon.get("/readyz")
        assert status == 200 and len(ready) < 20_000 and "and 39950 more problems" in ready
        status, page = daemon.get("/")
        assert status == 200 and "40000 problems" in page and len(page) < 100_000
    finally:
        daemon.stop()


def test_a_missing_env_variable_at_start_up_says_the_configuration_was_rejected(
        tmp_path: Path) -> None:
    config = tmp_path / "inventory.yaml"
    config.write_text(f"endpoints: []\nalerts:\n  state_dir: {tmp_path}\n  sinks:\n"
                      "    - {name: chat, type: slack, url_env: CERTWATCH_TEST_NOT_SET}\n")
    env = {k: v for k, v in os.environ.items() if k != "CERTWATCH_TEST_NOT_SET"}
    result = subprocess.run(
        [sys.executable, "-m", "certwatch", "--log-format", "json", "run", "-c", str(config),
         "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 2
    (logged,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert logged["message"] == "configuration rejected"
    assert logged["problems"] == ["line 5: alerts.sinks[0] 'chat': 'url_env': environment "
                                  "variable CERTWATCH_TEST_NOT_SET is not set"]
    assert "previous" not in result.stderr and "keeps running" not in result.stderr


def test_a_load_leaves_the_interpreter_as_it_found_it(tmp_path: Path) -> None:
    """Loads freeze the garbage collector's view as they go and hand the GIL over more
    often: afterwards nothing is frozen and the switch interval is back, failed or not."""
    import gc

    interval = sys.getswitchinterval()
    config = tmp_path / "inventory.yaml"
    for text in (inventory(["a", "b"]), "endpoints:\n" + "  - {port: x}\n" * 20_000):
        write(config, text)
        loader = loading.Loader(config, environ={})
        try:
            asyncio.run(loader.load())
        except loading.ConfigError:
            pass
        assert gc.get_freeze_count() == 0 and gc.isenabled()
        assert sys.getswitchinterval() == interval
