"""The shared state database on a real PostgreSQL (tests/postgres.py), in process.

Two Outbox objects on one database stand for two replicas: a decision holds the
targets' locks, a claim skips rows the other holds, and a replica that stalled past its
lease finds its fencing token outdated: it neither sends nor overwrites the outcome.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from certwatch.alerting.outbox import SCHEMA, Outbox
from certwatch.config import ConfigError, parse_inventory
from certwatch.core.alerts import Alert, Notification
from certwatch.core.inventory import SharedState
from certwatch.daemon.history import CertificateHistory
from certwatch.state import StateError, open_database
from tests.postgres import PASSWORD, Postgres, postgres_server  # noqa: F401
from tests.test_renewal import seen

pytestmark = pytest.mark.timeout(120)
NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


def _state(server: Postgres, name: str) -> SharedState:
    return SharedState(server.database(name), PASSWORD)


def _notification(n: int, key: str = "web@127.0.0.1/expiry") -> Notification:
    moment = NOW + timedelta(seconds=n)
    return Notification(id=f"n{n}", alert_key=key, kind="expiry", action="trigger",
                        severity="warning", created_at=moment, started_at=moment,
                        summary=f"n{n}", target={}, details={})


def _alert(key: str = "web@127.0.0.1/expiry") -> Alert:
    return Alert(key, "expiry", "warning", NOW, NOW, "soon", {}, {"key": key.split("/")[0],
                                                                  "name": "web"})


def test_state_reads_the_url_and_its_password_from_the_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    inventory = parse_inventory("endpoints: []\nstate: postgresql://cw@db.example:5432/cw\n"
                                "state_password_file: pw\n", base=tmp_path)
    assert inventory.state == SharedState("postgresql://cw@db.example:5432/cw", "s3cret")
    assert "s3cret" not in repr(inventory.state)
    with pytest.raises(ConfigError) as caught:
        parse_inventory("endpoints: []\nstate: postgresql://cw:pw@db/cw\n")
    assert "line 2: 'state' must not hold the password" in str(caught.value)
    with pytest.raises(ConfigError, match="must be a PostgreSQL URL"):
        parse_inventory("endpoints: []\nstate: mysql://db/cw\n")
    with pytest.raises(ConfigError, match="environment variable NOPE is not set"):
        parse_inventory("endpoints: []\nstate: postgresql://cw@db/cw\nstate_password_env: NOPE\n",
                        environ={})


def test_a_wrong_password_stops_start_up_with_a_clear_error(postgres_server: Postgres) -> None:  # noqa: F811
    url = postgres_server.database("wrongpw")
    with pytest.raises(StateError, match=f"state database {url} cannot be used: .*password"):
        open_database(SharedState(url, "not-the-password"), SCHEMA)


def test_two_replicas_decide_one_after_the_other(postgres_server: Postgres) -> None:  # noqa: F811
    state = _state(postgres_server, "decide")
    a, b = (Outbox(open_database(state, SCHEMA)) for _ in range(2))
    entered, release = threading.Event(), threading.Event()
    seen_by_b: list[dict[str, Alert]] = []

    def slow_decision(current: dict[str, Alert], now: datetime):  # type: ignore[no-untyped-def]
        entered.set()
        release.wait(5)  # replica A holds the target's lock while it decides
        return {"web@127.0.0.1/expiry": _alert()}, [_notification(1)], [(_notification(1), "hook")]

    def b_decision(current: dict[str, Alert], now: datetime):  # type: ignore[no-untyped-def]
        seen_by_b.append(dict(current))
        return {}, [], []

    first = threading.Thread(target=lambda: a.decide(["web@127.0.0.1"], slow_decision, lambda: NOW))
    first.start()
    assert entered.wait(5)
    second = threading.Thread(target=lambda: b.decide(["web@127.0.0.1"], b_decision, lambda: NOW))
    second.start()
    time.sleep(0.3)
    assert not seen_by_b  # B waits for A's lock
    release.set()
    first.join(5)
    second.join(5)
    assert list(seen_by_b[0]) == ["web@127.0.0.1/expiry"]  # and decides from what A wrote
    a.close()
    b.close()


def test_claims_skip_what_another_holds_and_fence_a_stalled_replica(postgres_server: Postgres) -> None:  # noqa: F811
    state = _state(postgres_server, "claims")
    a, b = (Outbox(open_database(state, SCHEMA)) for _ in range(2))
    a.apply({}, [(_notification(n), "hook") for n in range(4)], NOW)
    now = time.time()
    claimed_a = a.claim(now, lease=0.5, limit=2)
    claimed_b = b.claim(now, lease=30)
    assert {d.notification.id for d in claimed_a} == {"n0", "n1"}
    assert {d.notification.id for d in claimed_b} == {"n2", "n3"}  # A's are held
    assert b.claim(now, lease=30) == []
    stalled = claimed_a[0]
    assert a.still_claimed(stalled, margin=0.1)
    time.sleep(0.6)  # A stalls past its lease; B takes the notification over and sends it
    (taken,) = [d for d in b.claim(time.time(), lease=30) if d.notification.id == stalled.notification.id]
    assert taken.token == stalled.token + 1
    assert b.delivered(taken, time.time())
    # A comes back: its token is outdated. It does not send, and cannot mark anything.
    assert not a.still_claimed(stalled, margin=0.1)
    assert not a.delivered(stalled, time.time())
    assert not a.failed(stalled, "late", retry_at=time.time())
    rows = dict(b.db.execute("SELECT id, status FROM outbox"))
    assert rows["n0"] == "delivered"
    a.close()
    b.close()


def test_the_history_is_shared_by_the_replicas(postgres_server: Postgres) -> None:  # noqa: F811
    state = _state(postgres_server, "history")
    first = CertificateHistory(state)
    second = CertificateHistory(state)  # started before the first recorded anything
    first.record("web@127.0.0.1", seen("a" * 64, NOW, NOW + timedelta(days=5)), NOW)
    assert [c.fingerprint_sha256[0] for c in second.of("web@127.0.0.1")] == ["a"]
    assert first.persistent and second.persistent
    first.close()
    second.close()
