"""The verification a target's last assessment lends the next one (VerificationKey): it
is reused only while nothing it depends on changed, and reusing it never changes a
result. Pure: certificates made here, `now` injected."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certwatch.core.assess import Assessment, assess
from certwatch.core.inventory import Endpoint
from certwatch.core.observation import Observation, Target
from certwatch.core.verify import WEB_PKI, TrustStore, VerifyPolicy, verification_key
from certwatch.core.vocabulary import Problem, State
from certwatch.core.x509 import parse_chain
from tests.pki import Issued, make_intermediate, make_leaf, make_root

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)


@pytest.fixture(scope="module")
def root() -> Issued:
    return make_root("Key Root", not_before=NOW - 3650 * DAY, not_after=NOW + 3650 * DAY)


@pytest.fixture(scope="module")
def intermediate(root: Issued) -> Issued:
    # It expires in 30 days, before the leaf (60 by default): a boundary of the chain
    # that is not the leaf's, inside a lifetime the tests walk through.
    return make_intermediate(root, "Key Intermediate", not_before=NOW - 365 * DAY,
                             not_after=NOW + 30 * DAY)


@pytest.fixture(scope="module")
def trust(root: Issued) -> TrustStore:
    return TrustStore.of([root.cert])


def der(*certs: x509.Certificate) -> tuple[bytes, ...]:
    return tuple(c.public_bytes(Encoding.DER) for c in certs)


def chain_of(intermediate: Issued, *, left: float = 60, names: tuple[str, ...] = ("svc.test",)
             ) -> tuple[bytes, ...]:
    leaf = make_leaf(intermediate, names, not_before=NOW - 30 * DAY, not_after=NOW + left * DAY)
    return der(leaf.cert, intermediate.cert)


def observe(chain: tuple[bytes, ...], name: str = "svc.test", at: datetime = NOW) -> Observation:
    endpoint = Endpoint(name="svc", host=name, port=443, server_name=name)
    return Observation(Target(endpoint, "127.0.0.1"), at, 0.01, chain=chain)


def reused(first: Assessment, second: Assessment) -> bool:
    """Whether `second` took `first`'s parsed chain and verification, under its key (a
    verification made again has a key of its own; its result, when equal, may be the
    same shared object: certwatch.core.sharing)."""
    return (second.verification_key is first.verification_key is not None
            and second.chain is first.chain and second.verification is first.verification)


def same_judgement(a: Assessment, b: Assessment) -> bool:
    """Equal in every judged field (the key itself may differ: its window moves)."""
    return dataclasses.replace(a, verification_key=None) == dataclasses.replace(
        b, verification_key=None)


def test_nothing_changed_reuses_and_judges_the_same(intermediate: Issued, trust: TrustStore) -> None:
    chain = chain_of(intermediate)
    first = assess(observe(chain), NOW, trust)
    assert first.verification_key is not None and first.state is State.OK
    later = NOW + timedelta(hours=1)
    # A new probe: equal bytes in new objects, as the wire hands them over.
    fresh = observe(tuple(bytes(bytearray(d)) for d in chain), at=later)
    second = assess(fresh, later, trust, previous=first)
    assert reused(first, second)
    assert same_judgement(second, assess(fresh, later, trust))


def test_another_chain_is_verified_again(intermediate: Issued, trust: TrustStore) -> None:
    first = assess(observe(chain_of(intermediate)), NOW, trust)
    renewed = chain_of(intermediate, left=80)
    second = assess(observe(renewed), NOW, trust, previous=first)
    assert not reused(first, second)
    assert second.leaf is not None and second.leaf.not_after == NOW + 80 * DAY


def test_another_trust_store_is_verified_again(root: Issued, intermediate: Issued,
                                               trust: TrustStore) -> None:
    chain = chain_of(intermediate)
    first = assess(observe(chain), NOW, trust)
    reloaded = TrustStore.of([root.cert])  # the same roots, but another store (a reload)
    assert not reused(first, assess(observe(chain), NOW, reloaded, previous=first))
    other = make_root("Another Root", not_before=NOW - DAY, not_after=NOW + 3650 * DAY)
    distrusted = assess(observe(chain), NOW, TrustStore.of([other.cert]), previous=first)
    assert not reused(first, distrusted)
    assert distrusted.verification is not None and not distrusted.verification.trusted


def test_another_name_is_verified_again(intermediate: Issued, trust: TrustStore) -> None:
    chain = chain_of(intermediate)
    first = assess(observe(chain), NOW, trust)
    second = assess(observe(chain, name="other.test"), NOW, trust, previous=first)
    assert not reused(first, second)
    assert second.verification is not None
    assert Problem.HOSTNAME_MISMATCH in second.verification.problems


def test_another_policy_is_verified_again(intermediate: Issued, trust: TrustStore) -> None:
    chain = chain_of(intermediate)
    first = assess(observe(chain), NOW, trust)
    policy = VerifyPolicy(WEB_PKI.ee, WEB_PKI.sanless_ee, WEB_PKI.ca)  # equal, but another
    second = assess(observe(chain), NOW, trust, previous=first, policy=policy)
    assert not reused(first, second)
    assert reused(second, assess(observe(chain), NOW, trust, previous=second, policy=policy))


@pytest.mark.parametrize("boundary", ["leaf_not_after", "intermediate_not_after",
                                      "root_not_after", "intermediate_not_before"])
def test_a_validity_boundary_ends_the_reuse(boundary: str, root: Issued,
                                            intermediate: Issued) -> None:
    leaf_end = NOW + 10 * DAY
    moments = {"leaf_not_after": leaf_end,
               "intermediate_not_after": NOW + 5 * DAY,
               "root_not_after": NOW + 3 * DAY,
               "intermediate_not_before": NOW + 2 * DAY}
    moment = moments[boundary]
    top = make_root("Short Root", not_before=NOW - DAY,
                    not_after=moment if boundary == "root_not_after" else NOW + 3650 * DAY)
    middle = make_intermediate(
        top, "Short Intermediate",
        not_before=moment if boundary == "intermediate_not_before" else NOW - DAY,
        not_after=moment if boundary == "intermediate_not_after" else NOW + 3650 * DAY)
    leaf = make_leaf(middle, ["svc.test"], not_before=NOW - DAY, not_after=leaf_end)
    chain, store = der(leaf.cert, middle.cert), TrustStore.of([top.cert])
    start = moment - timedelta(hours=1)
    first = assess(observe(chain, at=start), start, store)
    before = moment - 2 * SECOND
    assert reused(first, assess(observe(chain, at=before), before, store, previous=first))
    for after in (moment, moment + SECOND, moment + timedelta(hours=1)):
        crossed = assess(observe(chain, at=after), after, store, previous=first)
        assert not reused(first, crossed), after
        assert same_judgement(crossed, assess(observe(chain, at=after), after, store))
    late = moment + timedelta(hours=1)
    assert assess(observe(chain, at=late), late, store).verification != first.verification


def test_on_a_boundary_there_is_no_key(intermediate: Issued, trust: TrustStore) -> None:
    chain = chain_of(intermediate, left=60)
    parsed = parse_chain(chain)
    leaf_end = parsed.infos[0].not_after
    for at in (leaf_end - SECOND, leaf_end + SECOND):
        assert verification_key(chain, parsed.infos, trust, "svc.test", WEB_PKI, at) is None
    key = verification_key(chain, parsed.infos, trust, "svc.test", WEB_PKI, leaf_end)
    assert key is not None and key.after is not None and key.before is not None
    assert key.after < leaf_end < key.before


def test_reuse_never_changes_a_result_across_a_lifetime(intermediate: Issued,
                                                        trust: TrustStore) -> None:
    """Hour by hour over the leaf's last days and past its end, assessed with the last
    assessment lent and without: the same judgement each time."""
    chain = chain_of(intermediate, left=3)
    previous: Assessment | None = None
    for hour in range(0, 5 * 24, 7):
        at = NOW + timedelta(hours=hour)
        lent = assess(observe(chain, at=at), at, trust, previous=previous)
        assert same_judgement(lent, assess(observe(chain, at=at), at, trust)), at
        previous = lent
    assert previous is not None and previous.state is State.EXPIRED


def test_a_failed_probe_is_judged_afresh(intermediate: Issued, trust: TrustStore) -> None:
    chain = chain_of(intermediate)
    first = assess(observe(chain), NOW, trust)
    empty = assess(observe(()), NOW, trust, previous=first)
    assert empty.state is State.ERROR and empty.verification_key is None
