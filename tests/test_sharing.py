"""Equal values kept once (certwatch.core.sharing): the same object for equal values only."""

from __future__ import annotations

from dataclasses import dataclass
from certwatch.core.sharing import SHARED_VALUES, shared


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
    from datetime import datetime, timezone

    from certwatch.core.x509 import CertInfo

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
