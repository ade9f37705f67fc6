"""The optional accelerator: uvloop when installed and wanted, asyncio's loop otherwise."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

from certwatch import eventloop
from tests.conftest import uvloop_installed
from tests.test_daemon import RunningDaemon, wait_for

REPO = Path(__file__).resolve().parent.parent


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_asyncio_when_asked() -> None:
    assert eventloop.loop_factory("asyncio") == ("asyncio", None)
    assert eventloop.run(loop_module(), "asyncio") == "asyncio"


@pytest.mark.skipif(not uvloop_installed(), reason="uvloop is not installed")
def test_uvloop_by_default_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.ENVIRONMENT, raising=False)
    assert eventloop.loop_factory()[0] == "uvloop"
    assert eventloop.run(loop_module()) == "uvloop"
    monkeypatch.setenv(eventloop.ENVIRONMENT, "asyncio")
    assert eventloop.run(loop_module()) == "asyncio"


def test_without_uvloop_it_falls_back(monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert eventloop.loop_factory("auto") == ("asyncio", None)
    with caplog.at_level(logging.WARNING, logger="certwatch.eventloop"):
        assert eventloop.run(loop_module(), "uvloop") == "asyncio"
    assert "uvloop is not installed" in caplog.text
    assert eventloop.run(loop_module(), "nonsense") == "asyncio"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_daemon_runs_the_shipped_inventory_on_either_loop(loop: str, tmp_path: Path) -> None:
    """The whole daemon (its listener, the demo's TLS servers, probes, scrapes) on each
    loop: uvloop's transports are not asyncio's classes, and that once broke it."""
    if loop == "uvloop" and not uvloop_installed():
        pytest.skip("uvloop is not installed")
    daemon = RunningDaemon(REPO / "config" / "certwatch.yaml", tmp_path / "daemon.log",
                           env={eventloop.ENVIRONMENT: loop})
    try:
        wait_for("the first sweep", lambda: daemon.get("/readyz")[0] == 200, timeout=30)
        states = {name: t["state"] for name, t in daemon.targets().items()}
        assert states["demo-ok"] == "ok" and states["demo-expired"] == "expired", states
        assert daemon.get("/metrics")[0] == 200
    finally:
        assert daemon.stop() == 0
    (listening,) = [e for e in daemon.logs() if e["message"].startswith("listening on")]
    assert listening["event_loop"] == loop
    assert not [e for e in daemon.logs() if e["level"] == "error"], daemon.log_path.read_text()
