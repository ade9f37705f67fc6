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
