"""Fixtures shared across modules."""

from __future__ import annotations

import asyncio
import importlib
from typing import Iterator

import pytest


@pytest.fixture(params=["asyncio", "uvloop"])
def both_event_loops(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs the test once on asyncio's own event loop and once on uvloop (certwatch's
    optional accelerator; skipped where it is not installed): asyncio.run in the test
    makes its loop from the policy set here."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield request.param
    finally:
        asyncio.set_event_loop_policy(None)


def uvloop_installed() -> bool:
    try:
        importlib.import_module("uvloop")
    except ImportError:
        return False
    return True
