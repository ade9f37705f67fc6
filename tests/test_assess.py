"""The pure core: parsing, offline verification and the state, with `now` injected."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from certwatch.core.inventory import Thresholds
from certwatch.core.policy import judge_expiry
from certwatch.core.assess import assess
from certwatch.core.timestamps import minute_utc
from certwatch.core.vocabulary import State
from certwatch.core.verify import TrustStore, hostname_matches
from certwatch.core.x509 import parse_certificate
from certwatch.core.inventory import Endpoint
from certwatch.core.observation import Observation, ProbeError, Target
from tests.pki import Issued, make_intermediate, make_leaf, make_root

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)


def days(n: float) -> datetime:
    return NOW + n * DAY


@pytest.fixture(scope="module")
def root() -> Issued:
    return make_root("Test Root", not_before=days(-3650), not_after=days(3650))


@pytest.fixture(scope="module")
def intermediate(root: Issued) -> Issued:
    return make_intermediate(root, "Test Intermediate", not_before=days(-365), not_after=days(1000))


@pytest.fixture(scope="module")
def trust(root: Issued) -> TrustStore:
    return TrustStore.of([root.cert])


def leaf(parent: Issued | None, *, left: float = 90, names: tuple[str, ...] = ("svc.test",),
         **kwargs: object) -> Issued:
    """A leaf with `left` days to go, issued as a 90-day certificate would be."""
    return make_leaf(parent, names, not_before=days(left - max(90, left + 1)),
                     not_after=days(left), **kwargs)


def der(*certs: x509.Certificate) -> tuple[bytes, ...]:
    return tuple(c.public_bytes(Encoding.DER) for c in certs)


def observe(chain: tuple[bytes, ...], *, host: str = "svc.test", verify: bool = True,
            error: ProbeError | None = None) -> Observation:
    endpoint = Endpoint(name="svc", host=host, port=443, server_name=host, verify=verify)
    return Observation(Target(endpoint, "127.0.0.1"), NOW, 0.01, chain=chain,
                       tls_version="TLSv1.3", error=error)


def judge(issued: Issued, trust: TrustStore, **kwargs: object):  # type: ignore[no-untyped-def]
    return assess(observe(der(*issued.chain()), **kwargs), NOW, trust)  # type: ignore[arg-type]


def test_good_chain_is_ok_and_verified(intermediate: Issued, trust: TrustStore) -> None:
    result = judge(leaf(intermediate, left=90), trust)
    assert result.state is State.OK
    assert result.reasons == ()
    assert result.verification is not None and result.verification.ok
    assert [c.subject for c in result.verification.path] == [
        "CN=svc.test", "CN=Test Intermediate", "CN=Test Root"]
    assert result.days_left == pytest.approx(90)
    assert result.earliest is not None and result.earliest.position == 0


def test_ca_certificates_are_shared_between_targets(intermediate: Issued, trust: TrustStore) -> None:
    # Each probe reads its own bytes; the intermediate is kept once, the leaves each.
    first, second = (judge(leaf(intermediate, names=(name,)), trust, host=name)
                     for name in ("a.test", "b.test"))
    assert first.state is second.state is State.OK
    assert first.observation.chain[1] is second.observation.chain[1]
    assert first.chain[1] is second.chain[1]
    assert first.chain[0].dns_names == ("a.test",) and second.chain[0].dns_names == ("b.test",)


def test_a_leaf_served_by_several_targets_is_kept_once(intermediate: Issued,
                                                       trust: TrustStore) -> None:
    # A wildcard on two hosts: each probe reads its own bytes (and its own strings from
    # the handshake); what is kept is one DER, one CertInfo and one string of each name.
    wildcard = leaf(intermediate, names=("*.svc.test",))
    first, second = (
        assess(dataclasses.replace(observe(der(*wildcard.chain()), host=host),
                                   tls_version="".join(["TLS", "v1.3"]),
                                   cipher="".join(["TLS_AES_", "128_GCM_SHA256"])), NOW, trust)
        for host in ("a.svc.test", "b.svc.test"))
    assert first.state is second.state is State.OK
    assert first.observation.chain[0] is second.observation.chain[0]
    assert first.chain[0] is second.chain[0] and first.earliest is second.earliest
    assert first.observation.tls_version is second.observation.tls_version == "TLSv1.3"
    assert first.observation.cipher is second.observation.cipher == "TLS_AES_128_GCM_SHA256"
    # Both are judged alike, and the equal judgements are one object each...
    assert first.verification is second.verification is not None
    assert first.renewal is second.renewal is not None
    assert first.summary is second.summary
    # ...but what may be reused is each target's own: the name is part of it.
    assert first.verification_key is not None and second.verification_key is not None
    assert (first.verification_key.name, second.verification_key.name) == ("a.svc.test",
                                                                            "b.svc.test")
    mismatch = assess(observe(der(*wildcard.chain()), host="svc.other"), NOW, trust)
    assert mismatch.state is State.CRITICAL and mismatch.chain[0] is first.chain[0]


@pytest.mark.parametrize(
    ("left", "state", "reasons"),
    # Below 30% of a 90-day certificate's life (27 days) its renewal is overdue as well.
    [(31, State.OK, ()), (28, State.WARNING, ("expiring",)),
     (20, State.WARNING, ("expiring", "renewal_overdue")),
     (5, State.CRITICAL, ("expiring", "renewal_overdue")), (-1, State.EXPIRED, ("expired",))],
)
def test_thresholds(intermediate: Issued, trust: TrustStore, left: float, state: State,
                    reasons: tuple[str, ...]) -> None:
    result = judge(leaf(intermediate, left=left), trust)
    assert (result.state, result.reasons) == (state, reasons)


def test_threshold_policy_boundaries(root: Issued) -> None:
    cert = parse_certificate(root.cert.public_bytes(Encoding.DER), 0)
    thresholds = Thresholds(warn_days=30, critical_days=7)

    def state(not_after: datetime) -> State:
        return judge_expiry(dataclasses.replace(cert, not_after=not_after), NOW, thresholds).state

    assert state(days(30)) is State.OK
    assert state(days(29.99)) is State.WARNING
    assert state(days(7)) is State.WARNING
    assert state(days(6.99)) is State.CRITICAL
    assert state(NOW) is State.EXPIRED


def test_expired_chain_is_expired_not_untrusted(intermediate: Issued, trust: TrustStore) -> None:
    result = judge(leaf(intermediate, left=-3), trust)
    assert result.verification is not None
    assert result.verification.trusted
    assert result.verification.problems == ("expired",)
    assert "expired 2026-05-29" in result.verification.detail


def test_not_yet_valid_is_critical(intermediate: Issued, trust: TrustStore) -> None:
    early = make_leaf(intermediate, ["svc.test"], not_before=days(2), not_after=days(300))
    result = judge(early, trust)
    assert result.state is State.CRITICAL
    assert result.reasons == ("not_yet_valid",)


def test_self_signed_is_critical_unless_verify_is_off(trust: TrustStore) -> None:
    own = leaf(None, left=200)
    assert judge(own, trust).reasons == ("self_signed",)
    assert judge(own, trust).state is State.CRITICAL
    relaxed = judge(own, trust, verify=False)
    assert relaxed.state is State.OK
    assert relaxed.verification is not None and relaxed.verification.problems == ("self_signed",)


def test_unknown_root_is_untrusted(trust: TrustStore) -> None:
    other_root = make_root("Other Root", not_before=days(-10), not_after=days(1000))
    result = judge(leaf(other_root, left=200), trust)
    # The server sends the leaf only; its issuer is nobody we know.
    assert result.reasons == ("incomplete_chain",)
    presented_with_root = assess(
        observe(der(leaf(other_root, left=200).cert, other_root.cert)), NOW, trust)
    assert presented_with_root.reasons == ("untrusted",)
    assert presented_with_root.state is State.CRITICAL


def test_hostname_mismatch_is_told_apart_from_trust(intermediate: Issued, trust: TrustStore) -> None:
    result = judge(leaf(intermediate, names=("other.test",)), trust)
    assert result.reasons == ("hostname_mismatch",)
    assert result.verification is not None
    assert result.verification.trusted and not result.verification.hostname_match
    assert "not valid for 'svc.test' (it names other.test)" in result.verification.detail


def test_missing_intermediate_is_incomplete_chain(intermediate: Issued, trust: TrustStore) -> None:
    result = assess(observe(der(leaf(intermediate).cert)), NOW, trust)
    assert result.reasons == ("incomplete_chain",)
    assert "CN=Test Intermediate" in result.summary


def test_intermediate_expiring_first_sets_the_state(root: Issued, trust: TrustStore) -> None:
    short = make_intermediate(root, "Short Intermediate", not_before=days(-100), not_after=days(10))
    result = judge(leaf(short, left=300), trust)
    assert result.state is State.WARNING
    assert result.earliest is not None and result.earliest.subject == "CN=Short Intermediate"
    assert result.summary.startswith("certificate 1 of the chain expires in 10.0 days")


def test_summary_names_the_not_after_minute_in_utc(root: Issued, trust: TrustStore) -> None:
    short = make_intermediate(root, "Short Intermediate", not_before=days(-100), not_after=days(10))
    result = judge(leaf(short, left=300), trust)
    assert result.earliest is not None
    assert result.summary.endswith(f"({result.earliest.not_after:%Y-%m-%d %H:%M} UTC)")
    # Memoised by moment; a moment given in another zone is named in UTC all the same.
    paris = timezone(timedelta(hours=1))
    assert minute_utc(datetime(2027, 3, 4, 6, 6, 59, tzinfo=paris)) == "2027-03-04 05:06 UTC"
    assert minute_utc(datetime(2027, 3, 4, 5, 6, tzinfo=timezone.utc)) == "2027-03-04 05:06 UTC"


def test_leaf_without_aki_is_trusted_as_openssl_does(intermediate: Issued, trust: TrustStore) -> None:
    result = judge(leaf(intermediate, aki=False), trust)
    assert result.state is State.OK, result.summary


def test_critical_san_and_eku_are_accepted_as_openssl_does(intermediate: Issued,
                                                         trust: TrustStore) -> None:
    critical = leaf(intermediate, extra_extensions=[
        (x509.SubjectAlternativeName([x509.DNSName("svc.test")]), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), True),
    ])
    assert judge(critical, trust).state is State.OK


def test_client_only_certificate_is_rejected(intermediate: Issued, trust: TrustStore) -> None:
    client_only = leaf(intermediate, extra_extensions=[
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)])
    result = judge(client_only, trust)
    assert result.reasons == ("untrusted",)
    assert "server authentication" in result.summary


def test_rsa_and_ec_keys_are_described(intermediate: Issued, trust: TrustStore) -> None:
    rsa_leaf = judge(leaf(intermediate, key_type="rsa"), trust)
    ec_leaf = judge(leaf(intermediate, key_type="ec"), trust)
    assert rsa_leaf.leaf is not None and ec_leaf.leaf is not None
    assert (rsa_leaf.leaf.key_type, rsa_leaf.leaf.key_bits) == ("RSA", 2048)
    assert (ec_leaf.leaf.key_type, ec_leaf.leaf.key_bits) == ("EC secp256r1", 256)
    assert rsa_leaf.leaf.signature_algorithm == "ecdsa_with_sha256"  # signed by the EC CA
    assert rsa_leaf.state is ec_leaf.state is State.OK


def test_ip_address_targets_match_ip_sans(intermediate: Issued, trust: TrustStore) -> None:
    by_ip = leaf(intermediate, names=("127.0.0.1",))
    result = assess(observe(der(*by_ip.chain()), host="127.0.0.1"), NOW, trust)
    assert result.state is State.OK, result.summary


@pytest.mark.parametrize(
    ("names", "host", "expected"),
    [
        (("*.example.com",), "a.example.com", True),
        (("*.example.com",), "A.Example.COM.", True),
        (("*.example.com",), "example.com", False),
        (("*.example.com",), "a.b.example.com", False),
        (("*.com",), "example.com", False),
        (("f*.example.com",), "foo.example.com", False),
        (("www.example.com",), "www.example.com", True),
        (("127.0.0.1",), "127.0.0.1", True),
        (("::1",), "0:0::1", True),
        (("www.example.com",), "127.0.0.1", False),
        ((), "www.example.com", False),
    ],
)
def test_hostname_matching(intermediate: Issued, names: tuple[str, ...], host: str,
                           expected: bool) -> None:
    issued = make_leaf(intermediate, names, common_name="www.example.com",
                       not_before=days(-1), not_after=days(1))
    info = parse_certificate(issued.cert.public_bytes(Encoding.DER), 0)
    assert hostname_matches(info, host) is expected


def test_error_without_certificate_is_error_state(trust: TrustStore) -> None:
    error = ProbeError("timeout", "handshake", "no answer within 10s")
    result = assess(observe((), error=error), NOW, trust)
    assert (result.state, result.reasons) == (State.ERROR, ("timeout",))
    assert result.summary == "timeout (handshake): no answer within 10s"
    assert result.days_left is None


def test_certificate_read_before_a_failed_handshake_is_still_judged(intermediate: Issued,
                                                                   trust: TrustStore) -> None:
    error = ProbeError("handshake", "handshake", "peer requires a client certificate")
    result = assess(observe(der(*leaf(intermediate, left=5).chain()), error=error), NOW, trust)
    assert result.state is State.CRITICAL
    assert result.reasons == ("expiring", "renewal_overdue", "handshake_incomplete")


def test_malformed_certificates(intermediate: Issued, trust: TrustStore) -> None:
    good = der(*leaf(intermediate).chain())
    middle_broken = assess(observe((good[0], b"\x30\x03\x02\x01\x00", good[1])), NOW, trust)
    assert middle_broken.state is State.OK
    assert middle_broken.reasons == ("malformed_certificate",)
    leaf_broken = assess(observe((b"garbage", good[1])), NOW, trust)
    assert (leaf_broken.state, leaf_broken.reasons) == (State.ERROR, ("malformed_certificate",))


def test_serial_and_generalized_time_dates(intermediate: Issued) -> None:
    odd = make_leaf(intermediate, ["svc.test"], serial=0xABC, not_before=days(-1),
                    not_after=datetime(2071, 1, 1, tzinfo=timezone.utc))
    info = parse_certificate(odd.cert.public_bytes(Encoding.DER), 0)
    assert info.serial == "ABC"
    assert info.not_after == datetime(2071, 1, 1, tzinfo=timezone.utc)


def test_empty_trust_store_means_untrusted(intermediate: Issued) -> None:
    result = judge(leaf(intermediate), TrustStore.of([]))
    assert result.state is State.CRITICAL
    assert result.reasons == ("incomplete_chain",)
