"""The lifetime-aware policy, the renewal rules and the certificate history (pure, `now`
injected), and the history's storage in the state database."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certwatch.core.inventory import Thresholds
from certwatch.core.policy import judge_expiry
from certwatch.core.renewal import (
    HISTORY_PER_TARGET,
    RenewalInfo,
    RenewalWindow,
    SeenCertificate,
    certificate_id,
    judge_renewal,
    last_renewal,
    record_seen,
)
from certwatch.core.vocabulary import State
from certwatch.core.x509 import CertInfo, parse_certificate
from certwatch.daemon.history import WRITE_WINDOW, CertificateHistory
from tests.pki import Issued, make_leaf, make_root

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)


@pytest.fixture(scope="module")
def root() -> Issued:
    return make_root("Renewal Root", not_before=NOW - 400 * DAY, not_after=NOW + 4000 * DAY)


@pytest.fixture(scope="module")
def template(root: Issued) -> CertInfo:
    issued = make_leaf(root, ["svc.test"], not_before=NOW - DAY, not_after=NOW + 89 * DAY)
    return parse_certificate(issued.cert.public_bytes(Encoding.DER), 0)


def issued_for(template: CertInfo, lifetime_days: float, *, used: float,
               fingerprint: str | None = None) -> CertInfo:
    """A certificate of `lifetime_days` (notAfter one second short, as CAs issue them),
    `used` of which has gone by at NOW."""
    not_before = NOW - used * lifetime_days * DAY
    return dataclasses.replace(template, not_before=not_before,
                               not_after=not_before + lifetime_days * DAY - SECOND,
                               fingerprint_sha256=fingerprint or template.fingerprint_sha256)


@pytest.mark.parametrize(("lifetime", "warn", "critical"), [
    (6, 2.0, 1.2), (45, 15.0, 7.0), (90, 30.0, 7.0), (398, 30.0, 7.0)])
def test_the_default_thresholds_follow_the_lifetime(template: CertInfo, lifetime: float,
                                                    warn: float, critical: float) -> None:
    """The README's table: 90 and 398 days keep exactly 30/7."""
    expiry = judge_expiry(issued_for(template, lifetime, used=0.1), NOW, Thresholds())
    assert (expiry.warn_days, expiry.critical_days) == pytest.approx((warn, critical), abs=1e-9)
    assert expiry.lifetime_days == pytest.approx(lifetime)


def test_a_six_day_certificate_is_ok_until_its_renewal_is_late(template: CertInfo) -> None:
    def state(days_left: float) -> State:
        cert = issued_for(template, 6, used=(6 - days_left) / 6)
        return judge_expiry(cert, NOW, Thresholds()).state

    assert state(5) is State.OK  # fixed 30/7 days would page from the moment of issue
    assert state(2.01) is State.OK
    assert state(1.99) is State.WARNING
    assert state(1.0) is State.CRITICAL  # a sixth of its life left: long overdue
    assert state(-0.01) is State.EXPIRED


def test_fixed_days_and_fractions_are_configurable(template: CertInfo) -> None:
    six_days = issued_for(template, 6, used=0.5)  # 3 days left
    fixed = Thresholds(warn_days=30, critical_days=7, warn_fraction=1, critical_fraction=1)
    assert judge_expiry(six_days, NOW, fixed).state is State.CRITICAL
    own = Thresholds(warn_fraction=0.6, critical_fraction=0.4)
    expiry = judge_expiry(six_days, NOW, own)
    assert (expiry.state, expiry.warn_days, expiry.critical_days) == (
        State.WARNING, pytest.approx(3.6), pytest.approx(2.4))
    assert expiry.used == pytest.approx(0.5)
    assert expiry.warning_at == six_days.not_after - timedelta(days=3.6)


def test_renewal_is_due_at_70_percent_of_the_life_without_a_window(template: CertInfo) -> None:
    fresh = issued_for(template, 398, used=0.69)
    late = issued_for(template, 398, used=0.71)  # 115 days left: no expiry threshold near
    assert not judge_renewal(fresh, NOW).overdue
    renewal = judge_renewal(late, NOW)
    assert (renewal.basis, renewal.overdue) == ("lifetime", True)
    assert judge_expiry(late, NOW, Thresholds()).state is State.OK
    assert not judge_renewal(late, NOW, due_fraction=0.8).overdue
    ten_years = issued_for(template, 3650, used=0.8)  # a private CA's: due at its expiry
    assert (judge_renewal(ten_years, NOW).basis, judge_renewal(ten_years, NOW).overdue) == (
        "expiry", False)
    expired = issued_for(template, 6, used=1.1)
    assert not judge_renewal(expired, NOW).overdue  # expired is worse, and its own reason


def test_the_cas_window_decides_where_known(template: CertInfo) -> None:
    cert = issued_for(template, 90, used=0.3)
    ended = RenewalInfo(RenewalWindow(NOW - 2 * DAY, NOW - DAY))
    renewal = judge_renewal(cert, NOW, ended)
    assert (renewal.basis, renewal.due_at, renewal.overdue) == ("ari", NOW - DAY, True)
    later = RenewalInfo(RenewalWindow(NOW + 30 * DAY, NOW + 32 * DAY))
    assert not judge_renewal(issued_for(template, 90, used=0.9), NOW, later).overdue
    unknown = RenewalInfo(None, error="HTTP 503")
    assert judge_renewal(cert, NOW, unknown).basis == "lifetime"


def test_a_window_moved_earlier_than_planned_is_flagged(template: CertInfo) -> None:
    cert = issued_for(template, 90, used=0.3)
    planned = RenewalWindow(NOW + 30 * DAY, NOW + 32 * DAY)
    assert not judge_renewal(cert, NOW, RenewalInfo(planned, planned)).window_moved_earlier
    jitter = RenewalWindow(planned.start - timedelta(minutes=30), planned.end)
    assert not judge_renewal(cert, NOW, RenewalInfo(jitter, planned)).window_moved_earlier
    revoking = RenewalWindow(NOW - DAY, NOW - timedelta(hours=1))
    moved = judge_renewal(cert, NOW, RenewalInfo(revoking, planned))
    assert moved.window_moved_earlier and moved.overdue


def test_the_certificate_id_of_rfc_9773(root: Issued) -> None:
    """Section 4.1's example: AKI 69:88:5B:..., serial 0x87654321 (DER 00 87 65 43 21)."""
    aki = x509.AuthorityKeyIdentifier(bytes.fromhex("69885b6b87464041e1b37b847ba0ae2cde01c8d4"),
                                      None, None)
    issued = make_leaf(root, ["svc.test"], not_before=NOW - DAY, not_after=NOW + 89 * DAY,
                       serial=0x87654321, aki=False, extra_extensions=[(aki, False)])
    cert = parse_certificate(issued.cert.public_bytes(Encoding.DER), 0)
    assert cert.authority_key_id is not None
    assert certificate_id(cert.authority_key_id, cert.serial) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    assert certificate_id("00", "7F") == "AA.fw"  # no sign byte needed below 0x80
    assert certificate_id("00", "0") == "AA.AA"


def seen(fingerprint: str, at: datetime, not_after: datetime) -> CertInfo:
    return CertInfo(0, "CN=svc.test", "CN=CA", "svc.test", ("svc.test",), (), "1",
                    at - DAY, not_after, fingerprint, "EC", 256, "ecdsa", 3, False, False)


def test_the_history_is_bounded_and_keeps_first_sightings() -> None:
    history: tuple[SeenCertificate, ...] = ()
    a = seen("a" * 64, NOW, NOW + 5 * DAY)
    history = record_seen(history, a, NOW)
    history = record_seen(history, a, NOW + DAY)
    assert [(c.first_seen, c.last_seen) for c in history] == [(NOW, NOW + DAY)]
    assert last_renewal(history) is None
    b = seen("b" * 64, NOW + 2 * DAY, NOW + 10 * DAY)
    history = record_seen(history, b, NOW + 2 * DAY + 10 * timedelta(minutes=61))
    renewed = last_renewal(history)
    assert renewed is not None and renewed.previous.fingerprint_sha256 == "a" * 64
    assert renewed.summary(NOW + 2 * DAY + timedelta(hours=11)) == (
        "renewed: expiry 2026-06-06 → 2026-06-11, first seen 22:10 UTC")
    assert renewed.summary(NOW + 5 * DAY).endswith("first seen 2026-06-03 22:10 UTC")
    # A rollback to the old certificate: it keeps its first sighting, and is no renewal.
    history = record_seen(history, a, NOW + 3 * DAY)
    assert [c.fingerprint_sha256[0] for c in history] == ["b", "a"]
    assert history[-1].first_seen == NOW and last_renewal(history) is None
    for n in range(HISTORY_PER_TARGET + 5):
        history = record_seen(history, seen(f"{n:064x}", NOW, NOW + n * DAY), NOW + n * DAY)
    assert len(history) == HISTORY_PER_TARGET
    assert history[-1].fingerprint_sha256 == f"{HISTORY_PER_TARGET + 4:064x}"


def test_the_history_survives_a_restart_and_forgets_removed_targets(tmp_path: Path) -> None:
    store = CertificateHistory(tmp_path / "state")
    a, b = seen("a" * 64, NOW, NOW + 5 * DAY), seen("b" * 64, NOW, NOW + 9 * DAY)
    store.record("web@127.0.0.1", a, NOW)
    store.record("web@127.0.0.1", a, NOW + DAY)
    store.record("web@127.0.0.1", b, NOW + 2 * DAY)
    store.record("gone@127.0.0.2", a, NOW)
    for n in range(HISTORY_PER_TARGET + 3):  # bounded on disk too
        store.record("busy@127.0.0.3", seen(f"{n:064x}", NOW, NOW + n * DAY), NOW + n * DAY)
    store.forget(["gone@127.0.0.2"])
    store.close()

    reopened = CertificateHistory(tmp_path / "state")
    history = reopened.of("web@127.0.0.1")
    assert [(c.fingerprint_sha256[0], c.first_seen, c.last_seen) for c in history] == [
        ("a", NOW, NOW + DAY), ("b", NOW + 2 * DAY, NOW + 2 * DAY)]
    assert reopened.of("gone@127.0.0.2") == ()
    assert len(reopened.of("busy@127.0.0.3")) == HISTORY_PER_TARGET
    db = sqlite3.connect(tmp_path / "state" / "certwatch.db")
    rows = db.execute("SELECT COUNT(*) FROM certificate_history").fetchone()[0]
    db.close()
    assert rows == 2 + HISTORY_PER_TARGET
    reopened.close()


def test_new_sightings_are_written_together_within_the_window(tmp_path: Path) -> None:
    """In the daemon's event loop, new certificates wait up to WRITE_WINDOW to share one
    transaction; a target forgotten meanwhile is not written, and close writes the rest."""
    def rows() -> list[str]:
        db = sqlite3.connect(tmp_path / "state" / "certwatch.db")
        try:
            return sorted(r[0] for r in db.execute("SELECT target FROM certificate_history"))
        finally:
            db.close()

    async def scenario() -> None:
        store = CertificateHistory(tmp_path / "state")
        for n in range(3):
            store.record(f"t{n}@127.0.0.1", seen(f"{n:064x}", NOW, NOW + DAY), NOW)
        store.forget(["t2@127.0.0.1"])
        assert rows() == []  # within the window: nothing written yet
        await asyncio.sleep(WRITE_WINDOW + 0.5)
        assert rows() == ["t0@127.0.0.1", "t1@127.0.0.1"]
        store.record("t3@127.0.0.1", seen("3" * 64, NOW, NOW + DAY), NOW)
        store.record("t0@127.0.0.1", seen("4" * 64, NOW + DAY, NOW + 9 * DAY), NOW + DAY)
        store.close()  # before the window ends: written all the same

    asyncio.run(scenario())
    assert rows() == ["t0@127.0.0.1", "t0@127.0.0.1", "t1@127.0.0.1", "t3@127.0.0.1"]
    reopened = CertificateHistory(tmp_path / "state")
    assert [c.fingerprint_sha256[0] for c in reopened.of("t0@127.0.0.1")] == ["0", "4"]
    reopened.close()


def test_without_a_state_dir_the_history_lives_in_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_database(*args: object, **kwargs: object) -> None:
        raise AssertionError("a history kept in memory opens no database")

    monkeypatch.setattr("certwatch.daemon.history.open_database", no_database)
    store = CertificateHistory(None)
    assert not store.persistent
    store.record("web@127.0.0.1", seen("a" * 64, NOW, NOW + DAY), NOW)
    assert len(store.of("web@127.0.0.1")) == 1
    store.close()
