"""The path cryptography builds is shared by the targets that present one chain (the
trust store's `paths`): names under one wildcard are verified once, and sharing never
changes a result. Pure: certificates made here, `now` injected."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from certwatch.core.verify import PATHS_REMEMBERED, TrustStore, Verification, verify_chain
from certwatch.core.x509 import ParsedChain, parse_chain
from tests.pki import Issued, make_intermediate, make_leaf, make_root

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)

# SAN entries in the forms both matchers compare and in forms only ours normalises
# (upper case, a trailing dot, a base of one label, an underscore), IP entries, none.
SANS = {
    "wildcard": ("*.wild.test",),
    "upper-wildcard": ("*.Wild.Test",),
    "one-label-base": ("*.test",),
    "several": ("a.multi.test", "B.multi.test", "c.multi.test.", "xn--bcher-kva.test"),
    "underscore": ("a_b.odd.test", "*.odd.test"),
    "addresses": ("127.0.0.1", "::1", "host.ip.test"),
    "none": (),
}
NAMES = ("x.wild.test", "Y.WILD.TEST", "z.wild.test.", "deep.x.wild.test", "wild.test",
         "a_b.wild.test", "-x.wild.test", "q" * 64 + ".wild.test", "foo.test", "a.multi.test",
         "b.multi.test", "c.multi.test", "d.multi.test", "bücher.test", "BÜCHER.test.",
         "a_b.odd.test", "x.odd.test", "127.0.0.1", "::1", "::ffff:127.0.0.1", "10.0.0.1",
         "host.ip.test", "", "*.wild.test", "x.*.test")


@pytest.fixture(scope="module")
def root() -> Issued:
    return make_root("Paths Root", not_before=NOW - 3650 * DAY, not_after=NOW + 3650 * DAY)


@pytest.fixture(scope="module")
def chains(root: Issued) -> dict[str, ParsedChain]:
    intermediate = make_intermediate(root, "Paths Intermediate", not_before=NOW - 365 * DAY,
                                     not_after=NOW + 365 * DAY)
    made = {}
    for label, sans in SANS.items():
        leaf = make_leaf(intermediate, sans, common_name=None if sans else "cn-only.test",
                         not_before=NOW - DAY, not_after=NOW + 30 * DAY)
        made[label] = parse_chain(tuple(c.public_bytes(Encoding.DER)
                                        for c in (leaf.cert, intermediate.cert)))
    return made


def alone(chain: ParsedChain, root: Issued, name: str, at: datetime) -> Verification:
    """The verification with nothing shared: a store of its own."""
    return verify_chain(chain, TrustStore.of([root.cert]), name, at)


def test_names_under_one_wildcard_share_one_path(chains: dict[str, ParsedChain],
                                                 root: Issued) -> None:
    trust = TrustStore.of([root.cert])
    results = [verify_chain(chains["wildcard"], trust, f"t{i}.wild.test", NOW)
               for i in range(50)]
    assert all(r.ok and r.trusted for r in results)
    assert len(trust.paths) == 1  # one path built for 50 names
    # A name the leaf does not match: its trust is judged for a name of the leaf's, the
    # same path again, and the mismatch reported on its own.
    mismatch = verify_chain(chains["wildcard"], trust, "other.test", NOW)
    assert mismatch.trusted and not mismatch.hostname_match
    assert len(trust.paths) == 1
    # A name we match only through an entry cryptography reads otherwise (a trailing
    # dot, here) keys paths of its own: none now, and none at a moment the chain is valid.
    dotted = verify_chain(chains["several"], trust, "c.multi.test", NOW)
    assert dotted.hostname_match and not dotted.trusted
    assert len(trust.paths) == 3
    assert verify_chain(chains["several"], trust, "a.multi.test", NOW).ok
    assert len(trust.paths) == 4


def test_sharing_never_changes_a_result(chains: dict[str, ParsedChain], root: Issued) -> None:
    """Every name against every leaf, in two orders, through one store, as with none
    shared: including names cryptography refuses, and SAN entries only we normalise."""
    trust = TrustStore.of([root.cert])
    pairs = list(itertools.product(chains, NAMES))
    for label, name in pairs + pairs[::-1]:
        assert verify_chain(chains[label], trust, name, NOW) == alone(
            chains[label], root, name, NOW), (label, name)
    assert 0 < len(trust.paths) < len(pairs)


def test_a_path_is_shared_only_inside_its_stretch_of_time(chains: dict[str, ParsedChain],
                                                          root: Issued) -> None:
    trust = TrustStore.of([root.cert])
    chain = chains["wildcard"]
    for at in (NOW, NOW + 29 * DAY, NOW + 31 * DAY, NOW - 2 * DAY, NOW + 400 * DAY, NOW):
        for name in ("x.wild.test", "y.wild.test"):
            assert verify_chain(chain, trust, name, at) == alone(chain, root, name, at)
    expired = verify_chain(chain, trust, "x.wild.test", NOW + 31 * DAY)
    assert not expired.ok and expired.trusted  # expired, judged as such, not as distrust


def test_another_store_shares_nothing(chains: dict[str, ParsedChain], root: Issued) -> None:
    first, other = TrustStore.of([root.cert]), TrustStore.of([make_root(
        "Other Root", not_before=NOW - DAY, not_after=NOW + 3650 * DAY).cert])
    assert verify_chain(chains["wildcard"], first, "x.wild.test", NOW).trusted
    assert not verify_chain(chains["wildcard"], other, "x.wild.test", NOW).trusted
    # The other store found no path now, nor at a moment when the chain is valid.
    assert len(first.paths) == 1 and len(other.paths) == 2
    assert not set(first.paths.values()) & set(other.paths.values())


def test_the_paths_kept_are_bounded(root: Issued) -> None:
    trust = TrustStore.of([root.cert])
    chain = parse_chain((make_leaf(root, ("*.up.test.",), not_before=NOW - DAY,
                                   not_after=NOW + DAY).cert.public_bytes(Encoding.DER),))
    # An entry with a trailing dot is one only we normalise: each name under it keys its own
    # path, as many chains would.
    for name in (f"n{i}.up.test" for i in range(PATHS_REMEMBERED + 20)):
        verify_chain(chain, trust, name, NOW)
    assert len(trust.paths) == PATHS_REMEMBERED
