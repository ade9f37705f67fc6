"""Host names as the wire wants them (A-labels) and as people read them (Unicode).

An international name in the inventory ("bücher.example") is converted once, when the
inventory is read, to its A-label ("xn--bcher-kva.example") by IDNA 2008 with the UTS #46
mapping, through the maintained `idna` library. Everything after that (DNS, the proxy's
CONNECT, SNI, name matching, JSON and metric labels) uses the A-label, so Python's own
`idna` codec, which implements IDNA 2003 and maps "faß" to "fass", is never involved.
Renderings for people turn the A-labels back into Unicode.

Pure: no look-ups, no I/O.
"""

from __future__ import annotations

import functools
import ipaddress
import re

import idna

__all__ = ["a_label", "for_people", "ip_literal", "match_form"]

# The ASCII names certwatch has always accepted (underscores included: `_service` labels
# are real); IDNA 2008 would refuse the underscore, so ASCII names do not go through it.
_ASCII_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_MAX_NAME = 253


def a_label(name: str) -> str:
    """The A-label form of a host name; ValueError (in words) if it is not a valid one.

    ASCII names are kept as written, once each label is checked (an `xn--` label must
    be a valid A-label); a name with any other character is converted by IDNA 2008 +
    UTS #46 (non-transitional: "ß" stays "ß", as browsers do).
    """
    if name.isascii():
        ascii_name = name
    else:
        try:
            ascii_name = idna.encode(name, uts46=True, transitional=False).decode("ascii")
        except idna.IDNAError as exc:
            raise ValueError(f"not a valid international name ({exc})") from None
    labels = ascii_name.rstrip(".").split(".")
    if len(ascii_name) > _MAX_NAME or not all(_ASCII_LABEL.fullmatch(label) for label in labels):
        raise ValueError("not a valid host name")
    for label in labels:
        if label[:4].lower() == "xn--":
            try:
                idna.decode(label)
            except idna.IDNAError:
                raise ValueError(f"not a valid host name (its label {label!r} is not a "
                                 "valid A-label)") from None
    return ascii_name


def ip_literal(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `name` writes, if it is an IPv4 or IPv6 literal; else None. Only a name
    with a ':' or of digits and dots alone can be one, and only those are parsed: a
    failed parse costs ~8 us, and a verification asks twice of every host name."""
    if ":" not in name and not name.replace(".", "").isdigit():
        return None
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


# The SAN entries compared again at every verification: kept (the targets' own names
# recur too, but each only once a sweep, and thousands of them would cost a megabyte).
@functools.lru_cache(maxsize=256)
def match_form(name: str) -> str:
    """The form two names are compared in: A-labels, lower case, no trailing dot. A name
    that cannot be converted is only lower-cased (it will match nothing but itself)."""
    name = name.rstrip(".").lower()
    try:
        return a_label(name).lower()
    except ValueError:
        return name


def for_people(text: str) -> str:
    """`text` with every A-label in it shown in Unicode ("xn--bcher-kva.example:443" ->
    "bücher.example:443"); text without one, or with an invalid one, is returned as is."""
    if "xn--" not in text.lower():
        return text
    try:
        return ".".join(idna.decode(label) if label[:4].lower() == "xn--" else label
                        for label in text.split("."))
    except idna.IDNAError:
        return text
