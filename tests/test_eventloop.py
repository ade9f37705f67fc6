"""The optional accelerator: uvloop when installed and wanted, asyncio's loop otherwise."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from certwatch import eventloop
from tests.conftest import uvloop_installed


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
