"""The store's update rule and the metrics made from it: pure, with time injected."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client.parser import text_string_to_metric_families

from certwatch.core.assess import Assessment, assess
from certwatch.core.vocabulary import State
from certwatch.core.verify import TrustStore
from certwatch.core.inventory import Endpoint
from certwatch.render.exposition import TargetExposition
from certwatch.core.observation import Observation, ProbeError, Target
from certwatch.core.status import merge
from certwatch.daemon.store import Store
from certwatch.serving.web import batched
from tests.pki import Issued, make_leaf, make_root

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
DAY = timedelta(days=1)
ENDPOINT = Endpoint(name="web", host="svc.test", port=443, server_name="svc.test",
                    labels=(("team", "pay"),))
REFUSED = ProbeError("refused", "connect", "connection refused")
NO_DNS = ProbeError("dns", "dns", "Name or service not known")


@pytest.fixture(scope="module")
def root() -> Issued:
    return make_root("Store Root", not_before=NOW - 100 * DAY, not_after=NOW + 3000 * DAY)


def judged(root: Issued, *, at: datetime = NOW, address: str | None = "127.0.0.1",
           left: float | None = 40, error: ProbeError | None = None,
           endpoint: Endpoint = ENDPOINT) -> Assessment:
    chain: tuple[bytes, ...] = ()
    if left is not None:
        # issued as a 90-day certificate would be
        leaf = make_leaf(root, ["svc.test"], not_before=NOW + (left - 90) * DAY,
                         not_after=NOW + left * DAY)
        chain = (leaf.cert.public_bytes(Encoding.DER),)
    observation = Observation(Target(endpoint, address), at, 0.05, chain=chain,
                              tls_version="TLSv1.3" if chain else None, error=error)
    return assess(observation, at, TrustStore.of([root.cert]))


def rejudge_at(root: Issued, at: datetime):  # type: ignore[no-untyped-def]
    return lambda observation: assess(observation, at, TrustStore.of([root.cert]))


def test_success_resets_failures(root: Issued) -> None:
    (first,) = merge([], [judged(root, error=None)], ENDPOINT, rejudge_at(root, NOW))
    assert (first.state, first.probe_success, first.consecutive_failures) == (State.OK, True, 0)


def test_failure_keeps_the_last_certificate_judged_afresh(root: Issued) -> None:
    (good,) = merge([], [judged(root, left=40)], ENDPOINT, rejudge_at(root, NOW))
    later = NOW + 15 * DAY  # the certificate now has 25 days left: a warning, though unreachable
    failed = judged(root, at=later, left=None, error=REFUSED)
    (status,) = merge([good], [failed], ENDPOINT, rejudge_at(root, later))
    assert status.state is State.WARNING
    assert status.last_error == REFUSED
    assert status.consecutive_failures == 1
    assert status.last_probe_at == later
    assert status.certificate_read_at == NOW
    (again,) = merge([status], [failed], ENDPOINT, rejudge_at(root, later))
    assert again.consecutive_failures == 2


def test_dns_failure_keeps_every_known_address(root: Issued) -> None:
    statuses = merge([], [judged(root, address="127.0.0.1"), judged(root, address="127.0.0.2")],
                     ENDPOINT, rejudge_at(root, NOW))
    dns = judged(root, address=None, left=None, error=NO_DNS)
    after = merge(statuses, [dns], ENDPOINT, rejudge_at(root, NOW))
    assert sorted(s.target.key for s in after) == ["web@127.0.0.1", "web@127.0.0.2"]
    assert all(s.last_error == NO_DNS and s.state is State.OK for s in after)


def test_never_read_target_reports_the_error(root: Issued) -> None:
    (status,) = merge([], [judged(root, left=None, error=REFUSED)], ENDPOINT, rejudge_at(root, NOW))
    assert (status.state, status.consecutive_failures) == (State.ERROR, 1)
    assert status.certificate_read_at is None


def test_recent_errors_are_the_last_five_newest_first_and_outlive_a_recovery(root: Issued) -> None:
    (status,) = merge([], [judged(root, left=40)], ENDPOINT, rejudge_at(root, NOW))
    assert status.recent_errors == ()
    errors = [ProbeError("timeout", "handshake", f"try {i}") for i in range(7)]
    for i, error in enumerate(errors):  # a certificate known: each failure is carried
        at = NOW + i * timedelta(minutes=5)
        (status,) = merge([status], [judged(root, at=at, left=None, error=error)], ENDPOINT,
                          rejudge_at(root, at))
    assert [e.detail for _, e in status.recent_errors] == [f"try {i}" for i in (6, 5, 4, 3, 2)]
    assert status.recent_errors[0][0] == NOW + 30 * timedelta(minutes=1)
    (recovered,) = merge([status], [judged(root, left=40)], ENDPOINT, rejudge_at(root, NOW))
    assert (recovered.last_error, recovered.recent_errors) == (None, status.recent_errors)
    (never,) = merge([], [judged(root, left=None, error=REFUSED)], ENDPOINT, rejudge_at(root, NOW))
    assert never.recent_errors == ((NOW, REFUSED),)  # no certificate ever read: also kept


def test_vanished_addresses_are_dropped(root: Issued) -> None:
    store = Store()
    two = merge([], [judged(root, address="127.0.0.1"), judged(root, address="127.0.0.2")],
                ENDPOINT, rejudge_at(root, NOW))
    changes = store.replace_endpoint("web", two)
    assert [(c.before, c.status.state) for c in changes] == [(None, State.OK), (None, State.OK)]
    one = merge(two, [judged(root, address="127.0.0.2")], ENDPOINT, rejudge_at(root, NOW))
    assert store.replace_endpoint("web", one) == []  # no state changed: nothing to log
    assert list(store.snapshot()) == ["web@127.0.0.2"]
    assert store.retain(set()) == ["web@127.0.0.2"]
    assert not store.snapshot()


def scrape(store: Store, lag: float = 0.0,
           extra: frozenset[str] = frozenset()) -> dict[str, list]:  # type: ignore[type-arg]
    text = TargetExposition(store.statuses, lambda: lag, lambda: extra).render()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_metrics_follow_the_snapshot(root: Issued) -> None:
    store = Store()
    store.replace_endpoint("web", merge([], [judged(root, left=5)], ENDPOINT, rejudge_at(root, NOW)))
    families = scrape(store, lag=1.5)
    (expiry,) = families["certwatch_cert_expiry_timestamp_seconds"]
    assert expiry.value == (NOW + 5 * DAY).timestamp()
    # Identity on every series; what describes the target on its info series only.
    assert expiry.labels == {"name": "web", "address": "127.0.0.1"}
    (info,) = families["certwatch_target_info"]
    assert info.labels["team"] == "pay" and info.labels["host"] == ENDPOINT.host
    assert (info.labels["name"], info.labels["address"], info.value) == ("web", "127.0.0.1", 1)
    (current,) = families["certwatch_target_state"]  # the current state's one series
    assert (current.labels["state"], current.value) == ("critical", 1)
    by_state = {s.labels["state"]: s.value for s in families["certwatch_targets"]}
    assert by_state["critical"] == 1 and by_state["ok"] == 0
    assert families["certwatch_scan_lag_seconds"][0].value == 1.5
    assert "certwatch_tls_info" not in families  # an opt-in group
    (tls,) = scrape(store, extra=frozenset({"tls"}))["certwatch_tls_info"]
    assert tls.labels["version"] == "TLSv1.3"
    every = scrape(store, extra=frozenset({"probe", "leaf", "chain", "verification", "tls",
                                           "revocation"}))
    assert {"certwatch_probe_duration_seconds", "certwatch_cert_not_after_timestamp_seconds",
            "certwatch_chain_cert_not_after_timestamp_seconds", "certwatch_cert_verified",
            "certwatch_cert_hostname_match"} <= every.keys()
    (status,) = store.statuses()
    assert len(families["certwatch_cert_info"]) == 1  # the leaf's; the group chain: each
    assert len(every["certwatch_cert_info"]) == len(status.assessment.chain)

    store.retain(set())  # the endpoint left the inventory: its series leave with it
    families = scrape(store)
    assert "certwatch_cert_expiry_timestamp_seconds" not in families
    assert {s.labels["state"]: s.value for s in families["certwatch_targets"]}["critical"] == 0


def test_user_labels_are_unioned_across_targets(root: Issued) -> None:
    other = Endpoint(name="db", host="db.test", port=5432, protocol="postgres",
                     server_name="db.test", labels=(("env", "prod"),))
    store = Store()
    store.replace_endpoint("web", merge([], [judged(root)], ENDPOINT, rejudge_at(root, NOW)))
    failed = assess(Observation(Target(other, None), NOW, 0.1, error=NO_DNS), NOW,
                    TrustStore.of([root.cert]))
    store.replace_endpoint("db", merge([], [failed], other, rejudge_at(root, NOW)))
    samples = scrape(store)["certwatch_target_info"]
    assert sorted((s.labels["name"], s.labels.get("team"), s.labels.get("env"))
                  for s in samples) == [("db", None, "prod"), ("web", "pay", None)]
    (error,) = scrape(store)["certwatch_probe_error_info"]
    assert (error.labels["kind"], error.labels["phase"]) == ("dns", "dns")


def test_rendering_follows_each_status_and_escapes_labels(root: Issued) -> None:
    hostile = Endpoint(name='we"ird\\name\nx', host="svc.test", port=443,
                       server_name="svc.test", labels=(("team", 'a"b'),))
    store = Store()
    store.replace_endpoint(hostile.name, merge([], [judged(root, endpoint=hostile)], hostile,
                                                    rejudge_at(root, NOW)))
    exposition = TargetExposition(store.statuses, lambda: 0.0)
    first = exposition.render()
    (sample,) = {f.name: f.samples for f in text_string_to_metric_families(first)}[
        "certwatch_target_info"]
    assert sample.labels["name"] == 'we"ird\\name\nx' and sample.labels["team"] == 'a"b'
    assert exposition.render() == first  # unchanged statuses: the same text
    (status,) = store.statuses()
    store.replace_endpoint(hostile.name, merge([status], [judged(root, left=None, error=REFUSED,
                                                                      endpoint=hostile)],
                                               hostile, rejudge_at(root, NOW)))
    assert "certwatch_probe_success" in exposition.render()
    assert exposition.render() != first



def test_streamed_exposition_is_the_same_text_in_chunks(root: Issued) -> None:
    store = Store()
    for i in range(30):
        endpoint = Endpoint(name=f"web{i}", host="svc.test", port=443, server_name="svc.test")
        store.replace_endpoint(endpoint.name, merge([], [judged(root, endpoint=endpoint)],
                                                    endpoint, rejudge_at(root, NOW)))
    exposition = TargetExposition(store.statuses, lambda: 0.0)
    chunks = list(batched(exposition.pieces(), 2000))
    assert len(chunks) > 5 and all(len(chunk) >= 2000 for chunk in chunks[:-1])
    text = b"".join(chunks).decode()
    assert text == exposition.render()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert len(families["certwatch_probe_success"].samples) == 30
    assert len(families["certwatch_target_state"].samples) == 30  # the current state's
    assert text.count("# TYPE certwatch_target_state gauge") == 1  # one header per family
