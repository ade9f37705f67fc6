"""Equal values kept once: many targets that serve one certificate are judged alike.

Every target behind a wildcard, or every address behind one name, gets a verification,
a renewal judgement and refusals equal to its neighbours'. Each was its own object
(~500 bytes a target together); :func:`shared` returns the first equal value it was
given instead, from a bounded memo, so equal judgements are one object. Only for
immutable values that compare equal exactly when they are interchangeable: frozen
dataclasses and tuples whose fields have one type each (1 == 1.0 == True, and a StrEnum
member equals its string: equal values of different types would stand for each other),
and datetimes in UTC, as certwatch's all are. What differs between targets (the moment
of the probe, the days left) is not given to it.

:func:`remember` is the step of the other bounded memos, those keyed by something else
than the value (the verified paths by their chain): oldest out first.
"""

from __future__ import annotations

import functools
from typing import Hashable, TypeVar, cast

__all__ = ["SHARED_VALUES", "remember", "shared"]

SHARED_VALUES = 2048  # distinct values remembered; the least recently used go first

T = TypeVar("T", bound=Hashable)
K = TypeVar("K")
V = TypeVar("V")


# typed: 1 and 1.0 and True are equal, and must not stand for one another.
@functools.lru_cache(maxsize=SHARED_VALUES, typed=True)
def _first(value: Hashable) -> Hashable:
    return value


def shared(value: T) -> T:
    """`value`, or an equal one seen before (the same object for equal values)."""
    return cast(T, _first(value))


def remember(memo: dict[K, V], key: K, value: V, bound: int) -> V:
    """`value`, kept in `memo` under `key`; the oldest entry goes once `bound` are kept."""
    if len(memo) >= bound:
        del memo[next(iter(memo))]
    memo[key] = value
    return value
