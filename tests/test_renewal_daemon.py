"""Renewal under the real daemon: short-lived certificates (minutes, made here), a real TLS
server that is redeployed with a new one, a real webhook receiver, and a restart."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.pki import Issued, make_leaf
from tests.servers import TLSServer
from tests.test_alerting import Receiver, receiver  # noqa: F401
from tests.test_daemon import pki, start_daemon, wait_for  # noqa: F401

MINUTE = timedelta(minutes=1)


def short_lived(issuer: Issued, directory: Path, stem: str, *, used: timedelta,
                lifetime: timedelta = 30 * MINUTE) -> tuple[tuple[Path, Path], datetime]:
    """A certificate of `lifetime`, `used` of it gone: the files and its notAfter."""
    not_before = datetime.now(timezone.utc).replace(microsecond=0) - used
    leaf = make_leaf(issuer, ["svc.test"], not_before=not_before, not_after=not_before + lifetime)
    return leaf.write(directory, stem), leaf.cert.not_valid_after_utc


def inventory(path: Path, port: int, extra: str) -> None:
    path.write_text(
        "defaults: {ca_file: root.pem, system_trust: false, interval: 1s, retry_interval: 1s,"
        f" timeout: 2}}\n{extra}endpoints:\n"
        f"  - {{name: web, host: 127.0.0.1, port: {port}, server_name: svc.test}}\n")


def day(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d}"


def test_a_renewal_under_the_running_daemon(pki: tuple[Issued, Path], receiver: Receiver,  # noqa: F811
                                            tmp_path: Path) -> None:
    issuer, directory = pki
    # 22 of its 30 minutes gone: 8 left is below a third of its life (a warning), and
    # past 70% its renewal is overdue; fixed 30/7 days would have paged since issue.
    old_files, old_end = short_lived(issuer, directory, "old", used=22 * MINUTE)
    config = directory / "certwatch.yaml"
    with TLSServer({None: old_files}) as server:
        port = server.port
        inventory(config, port, f"alerts:\n  state_dir: {tmp_path / 'state'}\n  sinks:\n"
                                f"    - {{name: hook, type: webhook, url: '{receiver.url}'}}\n")
        daemon = start_daemon(config, tmp_path / "daemon.log")
        try:
            before = wait_for("the overdue renewal", lambda: (t := daemon.targets().get("web"))
                              and t["certificate_history"] and t)
            assert (before["state"], before["reasons"]) == ("warning", ["expiring", "renewal_overdue"])
            assert before["lifetime_days"] * 1440 == pytest.approx(30, abs=0.1)
            assert before["warn_days_in_force"] * 1440 == pytest.approx(10, abs=0.1)
            assert before["renewal"]["overdue"] is True and before["renewed"] is None
            wait_for("both warnings", lambda: {b["kind"] for b in receiver.unique()} == {
                "expiry", "renewal_overdue"})
        finally:
            server.close()
        # The renewal: the service is redeployed on the same port with a new certificate,
        # after a downtime the daemon sees (a failed probe, retried a second later). Then
        # the old certificate's last sighting and the new one's first are more than a
        # second apart, as the history's times (to the second) can show.
        wait_for("the service down", lambda: (t := daemon.targets().get("web"))
                 and t["probe_success"] is False)
        new_files, new_end = short_lived(issuer, directory, "new", used=0 * MINUTE)
        with TLSServer({None: new_files}, port=port):
            after = wait_for("the renewal", lambda: (t := daemon.targets().get("web"))
                             and t["renewed"] and t)
            resolved = wait_for("both alerts resolved", lambda: len(
                found := [b for b in receiver.unique() if b["action"] == "resolve"]) == 2 and found)
            _, page = daemon.get("/")
        assert daemon.stop() == 0

    assert (after["state"], after["reasons"]) == ("ok", [])
    assert after["alerts"] == [] and after["renewal"]["overdue"] is False
    renewed = after["renewed"]
    assert (renewed["previous_not_after"], renewed["not_after"]) == (
        f"{old_end:%Y-%m-%dT%H:%M:%SZ}", f"{new_end:%Y-%m-%dT%H:%M:%SZ}")
    history = after["certificate_history"]
    assert [h["not_after"] for h in history] == [renewed["previous_not_after"], renewed["not_after"]]
    assert history[0]["first_seen"] <= history[0]["last_seen"] < history[1]["first_seen"]
    first_seen = datetime.fromisoformat(renewed["first_seen"])
    summary = (f"web@127.0.0.1: renewed: expiry {day(old_end)} → {day(new_end)}, "
               f"first seen {first_seen:%H:%M} UTC")
    assert {(b["kind"], b["summary"]) for b in resolved} == {
        ("expiry", summary), ("renewal_overdue", summary)}
    assert "renewed " in page and "renewal overdue" not in page
    logged = [e for e in daemon.logs() if e["message"].startswith("web@127.0.0.1: renewed:")]
    assert len(logged) == 1 and logged[0]["not_after"] == renewed["not_after"]


def test_the_history_survives_a_restart(pki: tuple[Issued, Path], tmp_path: Path) -> None:  # noqa: F811
    issuer, directory = pki
    first_files, _ = short_lived(issuer, directory, "first", used=5 * MINUTE)
    second_files, _ = short_lived(issuer, directory, "second", used=0 * MINUTE)
    config = directory / "certwatch.yaml"

    def history(daemon: Any, count: int) -> list[dict[str, Any]]:
        return wait_for(f"{count} certificates in the history", lambda: (
            t := daemon.targets().get("web")) and len(t["certificate_history"] or []) == count
            and t["certificate_history"])

    with TLSServer({None: first_files}) as server:
        port = server.port
        inventory(config, port, f"state_dir: {tmp_path / 'state'}\n")  # no alerts section
        daemon = start_daemon(config, tmp_path / "first.log")
        history(daemon, 1)
    with TLSServer({None: second_files}, port=port):
        kept = history(daemon, 2)
        assert daemon.stop() == 0
        restarted = start_daemon(config, tmp_path / "second.log")
        try:
            again = history(restarted, 2)
        finally:
            assert restarted.stop() == 0
    assert [(h["fingerprint_sha256"], h["first_seen"]) for h in again] == [
        (h["fingerprint_sha256"], h["first_seen"]) for h in kept]
    assert again[1]["last_seen"] >= kept[1]["last_seen"]
    assert (tmp_path / "state" / "certwatch.db").exists()
    assert not any("kept in memory" in e["message"] for e in restarted.logs())
