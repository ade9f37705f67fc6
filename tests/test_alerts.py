"""Alert decisions (pure, time injected) and the outbox that persists them."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from certwatch.core.alerts import Alert, AlertPolicy, Notification, decide
from certwatch.core.assess import assess
from certwatch.core.verify import TrustStore
from certwatch.core.inventory import Endpoint
from certwatch.alerting.outbox import Outbox, StateError
from certwatch.core.observation import Observation, ProbeError, Target
from certwatch.core.renewal import SeenCertificate, record_seen
from certwatch.core.status import TargetStatus, merge
from tests.pki import Issued, make_leaf, make_root

T0 = datetime(2026, 6, 1, tzinfo=timezone.utc)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
ENDPOINT = Endpoint(name="shop", host="shop.test", port=443, server_name="shop.test",
                    labels=(("team", "pay"),))
POLICY = AlertPolicy(external_url="https://certwatch.example")
REFUSED = ProbeError("refused", "connect", "connection refused")


@pytest.fixture(scope="module")
def root() -> Issued:
    return make_root("Alert Root", not_before=T0 - 400 * DAY, not_after=T0 + 4000 * DAY)


class Journey:
    """A target probed at chosen moments; the alert state carried along like the daemon."""

    def __init__(self, root: Issued) -> None:
        self.root = root
        self.trust = TrustStore.of([root.cert])
        self.statuses: list[TargetStatus] = []
        self.open: dict[str, Alert] = {}
        self.history: tuple[SeenCertificate, ...] = ()
        self.leaf = self.issue(not_after=T0 + 31 * DAY)

    def issue(self, *, not_after: datetime, names: tuple[str, ...] = ("shop.test",)) -> bytes:
        leaf = make_leaf(self.root, names, not_before=T0 - 60 * DAY, not_after=not_after)
        return leaf.cert.public_bytes(Encoding.DER)

    def probe(self, at: datetime, *, leaf: bytes | None = None, error: ProbeError | None = None,
              policy: AlertPolicy = POLICY) -> list[Notification]:
        chain = () if error else ((leaf or self.leaf),)
        observation = Observation(Target(ENDPOINT, "127.0.0.1"), at, 0.01, chain=chain, error=error)
        fresh = [assess(observation, at, self.trust)]
        merged = merge(self.statuses, fresh, ENDPOINT, lambda o: assess(o, at, self.trust))
        # The history, kept as the daemon keeps it: the leaf read now is recorded.
        seen = fresh[0].leaf
        if seen is not None:
            self.history = record_seen(self.history, seen, at)
        self.statuses = [dataclasses.replace(s, history=self.history) for s in merged]
        changes, notices = decide(self.open, self.statuses, at, policy)
        for key, alert in changes.items():
            if alert is None:
                self.open.pop(key)
            else:
                self.open[key] = alert
        return notices


def actions(notices: list[Notification]) -> list[tuple[str, str, str]]:
    return [(n.kind, n.action, n.severity) for n in notices]


def test_the_full_journey(root: Issued) -> None:
    journey = Journey(root)
    assert journey.probe(T0) == []  # 31 days left: nothing to say
    warned = journey.probe(T0 + 2 * DAY)  # 29 days
    assert actions(warned) == [("expiry", "trigger", "warning")]
    assert warned[0].alert_key == "shop@127.0.0.1/expiry"
    assert warned[0].details["days_left"] == pytest.approx(29)
    assert warned[0].url == "https://certwatch.example"
    assert journey.probe(T0 + 2 * DAY + HOUR) == []  # still open, not yet due a reminder
    # 6 days: the same incident, escalated; and past 70% of its 91 days, so its renewal
    # is overdue (its own incident, a warning).
    paged = journey.probe(T0 + 25 * DAY)
    assert actions(paged) == [("expiry", "escalate", "critical"),
                              ("renewal_overdue", "trigger", "warning")]
    assert paged[0].started_at == T0 + 2 * DAY
    assert paged[1].summary == "shop@127.0.0.1: certificate not renewed: due 2026-06-04 16:48 UTC"
    renewed = journey.issue(not_after=T0 + 115 * DAY)
    resolved = journey.probe(T0 + 25 * DAY + 10 * HOUR + 14 * MINUTE, leaf=renewed)
    assert actions(resolved) == [("expiry", "resolve", "critical"),
                                 ("renewal_overdue", "resolve", "warning")]
    assert {n.summary for n in resolved} == {
        "shop@127.0.0.1: renewed: expiry 2026-07-02 → 2026-09-24, first seen 10:14 UTC"}
    assert journey.open == {}


def test_a_renewal_without_history_still_resolves_with_both_expiries(root: Issued) -> None:
    journey = Journey(root)
    journey.probe(T0 + 2 * DAY)
    status = dataclasses.replace(journey.statuses[0], history=None)  # as a one-shot check has
    renewed = journey.issue(not_after=T0 + 115 * DAY)
    observation = Observation(Target(ENDPOINT, "127.0.0.1"), T0 + 3 * DAY, 0.01, chain=(renewed,))
    fresh = assess(observation, T0 + 3 * DAY, journey.trust)
    _, notices = decide(journey.open, [dataclasses.replace(status, assessment=fresh)],
                        T0 + 3 * DAY, POLICY)
    assert [n.summary for n in notices] == [
        "shop@127.0.0.1: certificate renewed, expiry 2026-07-02T00:00:00Z -> 2026-09-24T00:00:00Z"]


def test_reminders_follow_the_severity_interval(root: Issued) -> None:
    journey = Journey(root)
    journey.probe(T0 + 2 * DAY)
    assert journey.probe(T0 + 2 * DAY + 23 * HOUR) == []
    assert actions(journey.probe(T0 + 3 * DAY)) == [("expiry", "remind", "warning")]
    journey.probe(T0 + 25 * DAY)  # escalated to critical: now every 4 hours
    assert journey.probe(T0 + 25 * DAY + 3 * HOUR) == []
    assert actions(journey.probe(T0 + 25 * DAY + 4 * HOUR)) == [("expiry", "remind", "critical")]


def test_expired_and_rejected_certificates(root: Issued) -> None:
    journey = Journey(root)
    wrong_name = journey.issue(not_after=T0 + 90 * DAY, names=("other.test",))
    assert actions(journey.probe(T0, leaf=wrong_name)) == [("verification", "trigger", "critical")]
    assert actions(journey.probe(T0 + HOUR)) == [("verification", "resolve", "critical")]
    expired = journey.probe(T0 + 32 * DAY)
    assert actions(expired) == [("expiry", "trigger", "critical")]
    assert "expired" in expired[0].summary


def test_probe_failures_alert_only_after_three_in_a_row(root: Issued) -> None:
    journey = Journey(root)
    assert journey.probe(T0) == []
    assert journey.probe(T0 + HOUR, error=REFUSED) == []
    assert journey.probe(T0 + 2 * HOUR, error=REFUSED) == []
    failing = journey.probe(T0 + 3 * HOUR, error=REFUSED)
    assert actions(failing) == [("probe", "trigger", "critical")]
    assert "3 probes failed in a row" in failing[0].summary
    assert actions(journey.probe(T0 + 4 * HOUR)) == [("probe", "resolve", "critical")]


def test_a_failing_probe_does_not_resolve_an_expiry_alert(root: Issued) -> None:
    journey = Journey(root)
    journey.probe(T0 + 2 * DAY)
    assert journey.probe(T0 + 2 * DAY + HOUR, error=REFUSED) == []
    assert journey.probe(T0 + 2 * DAY + 2 * HOUR) == []
    assert list(journey.open) == ["shop@127.0.0.1/expiry"]


def test_removed_targets_resolve(root: Issued) -> None:
    journey = Journey(root)
    journey.probe(T0 + 2 * DAY)
    changes, notices = decide(journey.open, [], T0 + 3 * DAY, POLICY,
                              removed_targets=["shop@127.0.0.1"])
    assert changes == {"shop@127.0.0.1/expiry": None}
    assert actions(notices) == [("expiry", "resolve", "warning")]
    assert notices[0].summary == "shop@127.0.0.1: removed from the inventory"


def test_outbox_persists_alerts_and_deliveries(root: Issued, tmp_path: Path) -> None:
    journey = Journey(root)
    (notice,) = journey.probe(T0 + 2 * DAY)
    outbox = Outbox(tmp_path / "state" / "certwatch.db")
    outbox.apply(journey.open, [(notice, "chat"), (notice, "pager")], T0 + 2 * DAY)
    outbox.apply(journey.open, [(notice, "chat")], T0 + 2 * DAY)  # idempotent by id
    outbox.close()

    reopened = Outbox(tmp_path / "state" / "certwatch.db")
    assert reopened.open_alerts() == journey.open
    due = reopened.due(now=(T0 + 2 * DAY).timestamp())
    assert sorted(d.sink for d in due) == ["chat", "pager"]
    assert due[0].notification == notice
    chat = next(d for d in due if d.sink == "chat")
    pager = next(d for d in due if d.sink == "pager")
    reopened.delivered(chat, now=1.0)
    retry_at = (T0 + 2 * DAY).timestamp() + 60
    reopened.failed(pager, "HTTP 500", retry_at=retry_at)
    assert reopened.due(now=retry_at - 1) == []
    (again,) = reopened.due(now=retry_at)
    assert (again.sink, again.attempts) == ("pager", 1)
    reopened.failed(again, "HTTP 400: bad routing key", retry_at=None)  # dead-lettered
    assert reopened.due(now=retry_at + 10**6) == []
    assert reopened.pending_stats() == (0, None)
    last = reopened.last_notifications()["shop@127.0.0.1/expiry"]
    assert last["sinks"]["pager"]["status"] == "dead"
    assert last["sinks"]["chat"]["status"] == "delivered"


def test_corrupt_state_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "certwatch.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match=f"state database {path} cannot be used"):
        Outbox(path)
