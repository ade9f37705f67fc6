"""Equal values kept once (certwatch.core.sharing): the same object for equal values only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from certwatch.core.sharing import SHARED_VALUES, shared
from certwatch.core.verify import TrustStore
from certwatch.core.x509 import CertInfo, root_info
from certwatch.sources.trust import read_pem_certificates
from tests.pki import make_root, write_pem


@dataclass(frozen=True, slots=True)
class Value:
    name: str
    count: int


def test_equal_values_are_one_object() -> None:
    first = shared(Value("".join(["a", "b"]), 1))
    again = Value("".join(["a", "b"]), 1)
    assert again is not first and shared(again) is first
    assert shared(Value("ab", 2)) is not first  # unequal: its own


def test_values_of_another_type_are_not_taken_for_each_other() -> None:
    # 1 == 1.0 == True: equal, but not interchangeable. (Inside a value only its own
    # equality decides, which is why only values of one type all the way down are shared.)
    assert type(shared(1)) is int and type(shared(1.0)) is float and shared(True) is True


def test_it_is_bounded() -> None:
    first = shared(Value("bounded", -1))
    for count in range(SHARED_VALUES + 1):
        shared(Value("filler", count))
    again = Value("bounded", -1)
    assert shared(again) is again  # forgotten: the memo holds SHARED_VALUES at most


def test_certificates_differing_only_beside_the_fingerprint_stay_apart() -> None:
    """CertInfo hashes its fingerprint and position only; equality still reads every
    field, so a parse that differs in any (a lenient name, say) is not taken for another."""
    moment = datetime(2027, 1, 1, tzinfo=timezone.utc)
    one = CertInfo(0, "CN=a", "CN=ca", "a", ("a.test",), (), "01", moment, moment, "ab" * 32,
                   "ec", 256, "ecdsa-with-sha256", 3, False, False)
    same = CertInfo(0, "CN=a", "CN=ca", "a", ("a.test",), (), "01", moment, moment, "ab" * 32,
                    "ec", 256, "ecdsa-with-sha256", 3, False, False)
    other = CertInfo(0, "CN=b", "CN=ca", "a", ("a.test",), (), "01", moment, moment, "ab" * 32,
                     "ec", 256, "ecdsa-with-sha256", 3, False, False)
    assert one == same and hash(one) == hash(same) and shared((one,))[0] is one
    assert shared((same,))[0] is one
    assert other != one and shared((other,))[0] is other


def test_roots_read_again_are_not_parsed_again(tmp_path: Path) -> None:
    """A trust store describes its roots from the parse that read them, and a reload
    that reads the same file gets the same certificates (each was parsed twice a store,
    ~48 ms for the system's roots)."""
    now = datetime.now(timezone.utc)
    roots = [make_root(f"Shared Root {i}", not_before=now - timedelta(days=1),
                       not_after=now + timedelta(days=30)) for i in range(2)]
    path = write_pem(tmp_path / "roots.pem", [r.cert for r in roots])
    first, again = read_pem_certificates(path), read_pem_certificates(path)
    assert len(first) == 2 and all(a is b for a, b in zip(first, again))
    store = TrustStore.of(first)
    for cert in first:
        info = root_info(cert.public_bytes(Encoding.DER))
        assert store.infos[info.fingerprint_sha256] is info and info.position == -1
    assert {i.subject for i in store.infos.values()} == {"CN=Shared Root 0", "CN=Shared Root 1"}
