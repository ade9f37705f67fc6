"""Which targets the status page shows, in which order, on which page: the filter lives in
the URL and is applied on the server, so a 10,000-target inventory with a filter is a
small page, and a link to a view can be shared or bookmarked.

The query is the page's URL query, for example ``?state=critical&team=payments&q=api``:

- ``state``: any of the given states (repeatable);
- ``source``: where the certificate was read (``tls`` today; files and Kubernetes next);
- ``q``: words that must each appear (case-insensitively) in the name, host, address,
  server name, SANs, issuers, labels (``team=payments`` matches a label exactly so), or
  where the source found the certificate (a file's path, a Secret's name);
- any other key is a label: ``team=payments``; several values of one key match any of
  them, several keys must all match. A label whose key is one of the words above is
  written ``label.<key>=``;
- ``sort`` (:data:`SORTS`) and ``order`` (``asc``, ``desc``); ``page`` from 1.

Selection reads API-shaped target dicts and only the keys in :data:`READS` (the daemon
gives it :func:`certwatch.render.report.status_facts`, which has exactly those), and keeps
only a handle of each matching target, so that whole dicts are built for one page only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar
from urllib.parse import urlencode

from certwatch.render.pagekit import STATES, state_of

__all__ = ["PAGE_SIZE", "READS", "SORTS", "Query", "Selection", "issuer_name", "select",
           "source_of"]

T = TypeVar("T")

PAGE_SIZE = 100  # rows a page shows
MAX_TEXT = 200  # characters of `q` considered
MAX_WORDS = 10
MAX_PARAMETERS = 64  # query parameters read; the rest are ignored
MAX_FACET_VALUES = 50  # a label with more values is filtered with a text box, not a list
READS = ("key", "name", "host", "address", "server_name", "state", "days_left", "labels",
         "last_probe_at", "chain", "source", "location", "origin")
SORTS: dict[str, str] = {  # the sort orders, and what each is called on the page
    "state": "problems first", "expiry": "soonest expiry", "name": "name",
    "issuer": "issuer", "checked": "last checked",
}
_OWN = frozenset({"state", "source", "q", "sort", "order", "page", "key"})
_LABEL = "label."


def source_of(target: Mapping[str, Any]) -> str:
    """Where the certificate was read: the API's `source` (a word, or a mapping with a
    `kind`); a target without one was read over the wire."""
    source = target.get("source")
    if isinstance(source, Mapping):
        source = source.get("kind") or source.get("type")
    return str(source) if source else "tls"


def source_location(target: Mapping[str, Any]) -> str:
    """Where the source found the certificate: the API's `location` ("path#0", an object
    in Kubernetes, or address:port for a handshake)."""
    source = target.get("source")
    location = source.get("location") if isinstance(source, Mapping) else None
    location = location or target.get("location") or target.get("source_location")
    return str(location) if location else ""


def _chain(target: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    chain = target.get("chain")
    return [c for c in chain if isinstance(c, Mapping)] if isinstance(chain, list) else []


def issuer_name(target: Mapping[str, Any]) -> str:
    """Who issued the target's certificate, as people name it (the leaf's issuer's CN or O)."""
    chain = _chain(target)
    if not chain:
        return ""
    return str(chain[0].get("issuer_name") or chain[0].get("issuer") or "")


def _labels(target: Mapping[str, Any]) -> Mapping[str, Any]:
    labels = target.get("labels")
    return labels if isinstance(labels, Mapping) else {}


def search_text(target: Mapping[str, Any]) -> str:
    """Everything `q` looks in, folded to lower case."""
    chain = _chain(target)
    fields = [target.get(k) for k in ("name", "host", "address", "server_name")]
    fields += [source_location(target), target.get("origin")]
    if chain:
        fields += [*(chain[0].get("dns_names") or ()), *(chain[0].get("ip_addresses") or ())]
    fields += [c.get(k) for c in chain for k in ("issuer", "issuer_name")]
    fields += [f"{k}={v}" for k, v in _labels(target).items()]
    return "\n".join(str(f) for f in fields if f).casefold()


def label_parameter(key: str) -> str:
    """The URL parameter that filters label `key`."""
    return _LABEL + key if key in _OWN or key.startswith(_LABEL) else key


@dataclass(frozen=True, slots=True)
class Query:
    """A view of the targets: filters, order and page. Empty filters match everything."""

    states: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    labels: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (key, any of these values)
    text: str = ""  # the search words as typed
    sort: str = "state"
    descending: bool = False
    page: int = 1

    @classmethod
    def parse(cls, pairs: Iterable[tuple[str, str]]) -> Query:
        """From URL query pairs; what cannot be used is ignored (an unknown sort is the
        default one, a bad page number the first page), and the sizes are bounded."""
        states: list[str] = []
        sources: list[str] = []
        labels: dict[str, list[str]] = {}
        words, sort, order, page = "", "state", "asc", 1
        for count, (name, value) in enumerate(pairs):
            if count >= MAX_PARAMETERS:
                break
            value = value.strip()
            if not value:
                continue  # a form's "any" choice
            if name == "state":
                states.append(value)
            elif name == "source":
                sources.append(value)
            elif name == "q":
                words = value[:MAX_TEXT]
            elif name == "sort":
                sort = value if value in SORTS else "state"
            elif name == "order":
                order = value
            elif name == "page":
                page = int(value) if value.isdigit() and len(value) < 7 else 1
            elif name != "key":
                key = name[len(_LABEL):] if name.startswith(_LABEL) else name
                labels.setdefault(key, []).append(value)
        return cls(tuple(dict.fromkeys(states)), tuple(dict.fromkeys(sources)),
                   tuple((k, tuple(dict.fromkeys(v))) for k, v in sorted(labels.items())),
                   words, sort, order == "desc", max(page, 1))

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(self.text.casefold().split()[:MAX_WORDS])

    @property
    def filtering(self) -> bool:
        return bool(self.states or self.sources or self.labels or self.words)

    def label_values(self, key: str) -> tuple[str, ...]:
        return next((values for k, values in self.labels if k == key), ())

    def pairs(self) -> list[tuple[str, str]]:
        out = [("state", s) for s in self.states] + [("source", s) for s in self.sources]
        out += [(label_parameter(k), v) for k, values in self.labels for v in values]
        if self.text:
            out.append(("q", self.text))
        if self.sort != "state":
            out.append(("sort", self.sort))
        if self.descending:
            out.append(("order", "desc"))
        if self.page > 1:
            out.append(("page", str(self.page)))
        return out

    def href(self, path: str = "/", **changes: Any) -> str:
        """A link to this view with `changes` (Query fields); back on page 1 unless a
        page is given. URL-encoded; HTML-escape it for an attribute."""
        changes.setdefault("page", 1)
        query = urlencode(dataclasses.replace(self, **changes).pairs())
        return f"{path}?{query}" if query else path

    def matches(self, target: Mapping[str, Any], *, states: bool = True) -> bool:
        """Whether `target` is in this view (`states=False`: whatever its state)."""
        if states and self.states and state_of(target) not in self.states:
            return False
        if self.sources and source_of(target) not in self.sources:
            return False
        labels = _labels(target)
        for key, values in self.labels:
            if key not in labels or str(labels[key]) not in values:
                return False
        words = self.words
        if words:
            haystack = search_text(target)
            return all(word in haystack for word in words)
        return True


def _days(target: Mapping[str, Any]) -> float | None:
    days = target.get("days_left")
    return float(days) if isinstance(days, (int, float)) else None


def _name(target: Mapping[str, Any]) -> str:
    return str(target.get("name") or "")


def row_order(state: object, days_left: object, name: object) -> tuple[int, float, str]:
    """Problems first: states in their one order, worst first
    (:meth:`certwatch.core.vocabulary.State.rank`: expired, critical, error, warning, ok;
    unknown ones last), then days left ascending (no certificate after the rest), then name.
    """
    tier = STATES.index(state) if isinstance(state, str) and state in STATES else len(STATES)
    return (tier, days_left if isinstance(days_left, (int, float)) else float("inf"), str(name))


# Each sort: the key of a target that has the sorted value, or None for one that has not
# (those come last, whichever the direction, by name).
_SORT_KEYS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "state": lambda t: (*row_order(state_of(t), _days(t), _name(t)), str(t.get("key"))),
    "expiry": lambda t: None if _days(t) is None else (_days(t), _name(t)),
    "name": lambda t: (_name(t).casefold(), str(t.get("key"))),
    "issuer": lambda t: (issuer_name(t).casefold(), _name(t)) if issuer_name(t) else None,
    "checked": lambda t: (str(t["last_probe_at"]), _name(t)) if t.get("last_probe_at") else None,
}


@dataclass(slots=True)
class Selection(Generic[T]):
    """What a query selects: one page of handles in order, and what the page says of the rest."""

    query: Query
    rows: list[T]  # this page's, in order
    matched: int  # targets the whole query matches
    total: int  # every target
    counts: dict[str, int]  # by state, of the targets the query matches but for its states
    pages: int
    first: int  # the position of rows[0] among the matched, from 1 (0 when there is none)
    labels: dict[str, list[str]] = field(default_factory=dict)  # every label key: its values
    crowded: set[str] = field(default_factory=set)  # label keys with too many values to list
    sources: list[str] = field(default_factory=list)
    days_left: list[tuple[float, str]] = field(default_factory=list)  # (days, state) matched


def select(items: Iterable[tuple[T, Mapping[str, Any]]], query: Query,
           page_size: int = PAGE_SIZE) -> Selection[T]:
    """One pass over (handle, target dict) pairs: counts, filter facets and the page."""
    key_of = _SORT_KEYS[query.sort]
    keyed: list[tuple[Any, int, T]] = []
    unkeyed: list[tuple[str, int, T]] = []
    counts = {state: 0 for state in (*STATES, "unknown")}
    labels: dict[str, set[str]] = {}
    sources: set[str] = set()
    days_left: list[tuple[float, str]] = []
    total = 0
    for index, (handle, target) in enumerate(items):
        total += 1
        sources.add(source_of(target))
        for key, value in _labels(target).items():
            values = labels.setdefault(str(key), set())
            if len(values) <= MAX_FACET_VALUES:
                values.add(str(value))
        if not query.matches(target, states=False):
            continue
        state = state_of(target)
        counts[state] += 1
        if query.states and state not in query.states:
            continue
        if (days := _days(target)) is not None:
            days_left.append((days, state))
        sort_key = key_of(target)
        if sort_key is None:
            unkeyed.append((_name(target), index, handle))
        else:
            keyed.append((sort_key, index, handle))
    keyed.sort(reverse=query.descending)
    unkeyed.sort()
    ordered = [handle for *_, handle in keyed] + [handle for *_, handle in unkeyed]
    pages = max(1, -(-len(ordered) // page_size))
    page = min(query.page, pages)
    start = (page - 1) * page_size
    return Selection(
        query=dataclasses.replace(query, page=page), rows=ordered[start:start + page_size],
        matched=len(ordered), total=total, counts=counts, pages=pages,
        first=start + 1 if ordered else 0,
        labels={k: sorted(v) for k, v in sorted(labels.items())},
        crowded={k for k, v in labels.items() if len(v) > MAX_FACET_VALUES},
        sources=sorted(sources), days_left=days_left)
