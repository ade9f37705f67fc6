"""The demo endpoints: every state certwatch reports, a renewal, and quiet, clean shutdown.

The demo servers live in the event loop that runs them, so each test runs the demo and
the checks inside one asyncio.run (pytest-asyncio is not used).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certwatch.daemon import demo as demo_module
from certwatch.core.assess import Assessment
from certwatch.sources.wire import Prober
from certwatch.sweep import sweep
from certwatch.config import build_inventory
from certwatch.daemon.demo import DemoEndpoints


async def _check(demo: DemoEndpoints) -> dict[str, Assessment]:
    inventory = build_inventory({"endpoints": demo.inventory_entries()})
    return {a.target.endpoint.name: a for a in await sweep(inventory.endpoints, Prober())}


def _other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


def test_every_state(tmp_path: Path) -> None:
    async def scenario() -> tuple[dict[str, Assessment], list[dict[str, Any]], set[Any]]:
        async with DemoEndpoints(tmp_path) as demo:  # renewal due in 45 s: cancelled on exit
            assert demo.root_pem == tmp_path / "demo-root.pem"
            entries = demo.inventory_entries()
            assessments = await _check(demo)
        return assessments, entries, _other_tasks()

    assessments, entries, leftover = asyncio.run(scenario())
    assert leftover == set()

    seen = {name: (a.state.value, a.reasons) for name, a in assessments.items()}
    assert seen == {
        "demo-ok": ("ok", ()),
        # 90-day certificates with 20 and 5 days left: past 70% of their life as well
        "demo-warning": ("warning", ("expiring", "renewal_overdue")),
        "demo-critical": ("critical", ("expiring", "renewal_overdue")),
        "demo-expired": ("expired", ("expired",)),
        "demo-untrusted": ("critical", ("self_signed",)),
        "demo-wrong-name": ("critical", ("hostname_mismatch",)),
        "demo-unreachable": ("error", ("refused",)),
    }
    days = {name: a.days_left for name, a in assessments.items()}
    for name, expected in [("demo-ok", 80), ("demo-warning", 20), ("demo-critical", 5),
                           ("demo-expired", -3), ("demo-untrusted", 200),
                           ("demo-wrong-name", 80)]:
        assert days[name] == pytest.approx(expected, abs=0.01), name
    assert assessments["demo-unreachable"].observation.error is not None
    assert assessments["demo-unreachable"].observation.error.kind == "refused"
    # Chains: leaf + intermediate, trusted through the demo root (only the self-signed
    # leaf is sent alone); the wrong-name leaf is trusted but names another host.
    assert len(assessments["demo-ok"].chain) == 2
    assert assessments["demo-ok"].verification.trusted  # type: ignore[union-attr]
    assert assessments["demo-wrong-name"].verification.trusted  # type: ignore[union-attr]
    assert len(assessments["demo-untrusted"].chain) == 1

    root = x509.load_pem_x509_certificate((tmp_path / "demo-root.pem").read_bytes())
    assert root.subject.rfc4514_string() == "CN=certwatch demo root"
    for entry in entries:
        assert entry["host"] == "127.0.0.1"
        assert entry["server_name"].endswith(".demo.certwatch.invalid")
        assert entry["ca_file"] == str(tmp_path / "demo-root.pem")
        assert entry["system_trust"] is False
        assert entry["labels"]["env"] == "demo" and entry["labels"]["team"]
    assert len({entry["port"] for entry in entries}) == len(entries) == 7


def test_renewal_turns_critical_into_ok(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="certwatch.daemon.demo")

    async def scenario() -> tuple[list[str], Assessment, set[Any]]:
        async with DemoEndpoints(tmp_path, renew_after=0.5) as demo:
            states = [(await _check(demo))["demo-critical"].state.value]
            for _ in range(10):
                await asyncio.sleep(0.2)
                critical = (await _check(demo))["demo-critical"]
                states.append(critical.state.value)
                if critical.state.value == "ok":
                    break
        return states, critical, _other_tasks()

    states, critical, leftover = asyncio.run(scenario())
    assert states[0] == "critical" and states[-1] == "ok", states
    assert critical.days_left == pytest.approx(90, abs=0.01)
    assert critical.reasons == ()
    assert leftover == set()
    renewals = [r for r in caplog.records if r.name == "certwatch.daemon.demo" and r.levelno == logging.INFO]
    assert len(renewals) == 1 and "demo-critical" in renewals[0].getMessage()


def test_hostile_and_vanishing_clients_are_quiet(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients that vanish, send HTTP, close at once or stay put: no noise, no leaks."""
    monkeypatch.setattr(demo_module, "_LINGER_SECONDS", 0.3)
    caplog.set_level(logging.WARNING)

    async def scenario() -> tuple[list[dict[str, Any]], bytes, float, float, set[Any]]:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        async with DemoEndpoints(tmp_path, renew_after=None) as demo:
            port = demo.inventory_entries()[0]["port"]
            # Connect and hang up without a word.
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            # Plain HTTP: the server gives up on the handshake and closes.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            http_answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await writer.wait_closed()
            # A TLS client that closes cleanly right after the handshake, and one that
            # waits: the server closes it after lingering.
            context = ssl.create_default_context(cafile=str(demo.root_pem))
            for _ in range(5):
                _, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=context, server_hostname="ok.demo.certwatch.invalid")
                writer.close()
                await writer.wait_closed()
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="ok.demo.certwatch.invalid")
            start = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            linger = time.monotonic() - start
            writer.close()
            await writer.wait_closed()
            # A client stuck mid-handshake when the demo stops.
            stuck = socket.create_connection(("127.0.0.1", port))
            stuck.sendall(b"\x16\x03\x01")
            await asyncio.sleep(0.1)
            await _check(demo)  # and probes, which abort (RST) right after the handshake
            start = time.monotonic()
        stop = time.monotonic() - start
        stuck.close()
        return errors, http_answer, linger, stop, _other_tasks()

    errors, http_answer, linger, stop, leftover = asyncio.run(scenario())
    assert errors == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert http_answer == b""
    assert linger < 2
    assert stop < 2
    assert leftover == set()


def test_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        DemoEndpoints(tmp_path, host="192.0.2.1")
