"""International host names: A-labels (IDNA 2008 + UTS #46) on the wire and in machine
fields, Unicode for people, an invalid name a validation error with its line.

"faß" tells IDNA 2008 from IDNA 2003 (Python's own codec): 2008 keeps the sharp s
(xn--fa-hia), 2003 maps it to "ss". A certificate for fass.example is for another name.
"""

from __future__ import annotations

import asyncio
import ipaddress
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from certwatch.config import ConfigError, parse_inventory
from certwatch.core.names import a_label, for_people, ip_literal, match_form
from certwatch.core.status import TargetStatus
from certwatch.core.verify import hostname_matches
from certwatch.core.x509 import parse_certificate
from certwatch.render.exposition import TargetExposition
from certwatch.render.report import assessment_to_dict, render_table
from certwatch.render.statuspage import render_status_page
from certwatch.sources.wire import Prober
from certwatch.sweep import sweep
from tests.pki import make_leaf, make_root
from tests.servers import TLSServer

NOW = datetime.now(timezone.utc)
DAY = timedelta(days=1)
DER = Encoding.DER
SHARP = "faß.example"
SHARP_A = "xn--fa-hia.example"  # IDNA 2008; IDNA 2003 would say fass.example


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (SHARP, SHARP_A),
        ("Bücher.Example", "xn--bcher-kva.example"),  # UTS #46 maps case
        ("bücher。example", "xn--bcher-kva.example"),  # and the ideographic full stop
        ("bücher.example.", "xn--bcher-kva.example."),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("_sip._tcp.Example.com", "_sip._tcp.Example.com"),  # ASCII stays as written
    ],
)
def test_a_labels(name: str, expected: str) -> None:
    assert a_label(name) == expected
    assert SHARP.encode("idna") == b"fass.example"  # what the old codec would have sent


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("☃.example", "not a valid international name (Codepoint U+2603"),
        ("bü..example", "not a valid international name"),
        ("xn--zz.example", "not a valid host name (its label 'xn--zz' is not a valid A-label)"),
        ("bad host", "not a valid host name"),
        ("a" * 64 + ".example", "not a valid host name"),
    ],
)
def test_invalid_names(name: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        a_label(name)
    assert str(info.value).startswith(why)


@pytest.mark.parametrize("name", [
    "127.0.0.1", "10.1.2.3", "::1", "2001:db8::1", "fe80::1%eth0", "::ffff:192.0.2.1",
    "t5.bench.certwatch.test", "1.2.3", "1.2.3.4.5", "01.2.3.4", "256.1.1.1", "", "...",
    "١٢٧.0.0.1", "a:b", "1234", "xn--fa-hia.example", "[::1]"])
def test_ip_literal_answers_as_ipaddress_does(name: str) -> None:
    """The cheap test before the parse never turns away a literal ipaddress accepts."""
    try:
        expected = ipaddress.ip_address(name)
    except ValueError:
        expected = None
    assert ip_literal(name) == expected


def test_for_people_shows_unicode_and_leaves_the_rest() -> None:
    assert for_people("xn--bcher-kva.example:443") == "bücher.example:443"
    assert for_people(f"{SHARP_A}") == SHARP
    assert for_people("shop.example") == "shop.example"
    assert for_people("xn--zz.example") == "xn--zz.example"  # not an A-label: as it is


def test_names_match_in_idna_2008(tmp_path: Path) -> None:
    root = make_root("Names Root", not_before=NOW - DAY, not_after=NOW + 90 * DAY)
    sharp = parse_certificate(make_leaf(root, [SHARP_A], not_before=NOW - DAY,
                                        not_after=NOW + 9 * DAY).cert.public_bytes(DER), 0)
    fass = parse_certificate(make_leaf(root, ["fass.example", "*.xn--bcher-kva.example"],
                                       not_before=NOW - DAY, not_after=NOW + 9 * DAY).cert.public_bytes(DER), 0)
    assert hostname_matches(sharp, SHARP) and hostname_matches(sharp, SHARP_A)
    assert hostname_matches(sharp, "FAß.example.")
    assert not hostname_matches(fass, SHARP)  # IDNA 2003 matched this
    assert not hostname_matches(sharp, "fass.example")
    assert hostname_matches(fass, "shop.bücher.example")
    assert match_form("Shop.Bücher.Example.") == "shop.xn--bcher-kva.example"


def test_the_inventory_holds_a_labels_and_names_invalid_ones_with_their_line() -> None:
    a, b, c = parse_inventory(f"""
endpoints:
  - host: {SHARP}
  - url: https://bücher.example:8443/
  - host: 192.0.2.1
    server_name: Bücher.example
""").endpoints
    assert (a.host, a.server_name, a.name) == (SHARP_A, SHARP_A, f"{SHARP_A}:443")
    assert (b.host, b.port, b.name) == ("xn--bcher-kva.example", 8443, "xn--bcher-kva.example:8443")
    assert (c.host, c.server_name) == ("192.0.2.1", "xn--bcher-kva.example")
    with pytest.raises(ConfigError) as info:
        parse_inventory("endpoints:\n  - host: ok.example\n  - host: ☃.example\n"
                        "  - host: 192.0.2.1\n    server_name: xn--zz.example\n"
                        "  - url: https://☃.example\n", source="inv.yaml", strict=True)
    assert info.value.problems == (
        "line 3: endpoint 2: 'host' is not a valid international name (Codepoint U+2603 at "
        "position 1 of '☃' not allowed): '☃.example'",
        "line 5: endpoint 3: 'server_name' is not a valid host name (its label 'xn--zz' is not a "
        "valid A-label): 'xn--zz.example'",
        "line 6: endpoint 4: 'host' is not a valid international name (Codepoint U+2603 at "
        "position 1 of '☃' not allowed): '☃.example'",
    )


def test_sni_dns_and_matching_use_the_a_label(tmp_path: Path) -> None:
    """A real TLS server records the SNI it received; the resolver the name it was asked."""
    root = make_root("Names Root", not_before=NOW - DAY, not_after=NOW + 90 * DAY)
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    files = make_leaf(root, [SHARP_A], not_before=NOW - DAY,
                      not_after=NOW + 60 * DAY).write(tmp_path, "sharp")
    asked: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    with TLSServer({SHARP_A: files}) as server:
        inventory = parse_inventory(f"""
defaults: {{ca_file: root.pem, system_trust: false, timeout: 5}}
endpoints:
  - {{host: "{SHARP}", port: {server.port}}}
  - {{name: by-address, host: 127.0.0.1, port: {server.port}, server_name: "{SHARP}"}}
""", base=tmp_path)
        results = asyncio.run(sweep(inventory.endpoints, Prober(resolver=resolver)))
        received = list(server.server_names)
    assert asked == [SHARP_A] and received == [SHARP_A, SHARP_A]
    for result in results:
        assert result.verification is not None and result.verification.ok, result.summary
    by_name, by_address = results
    # Machine fields carry the A-label ...
    shown = assessment_to_dict(by_name)
    assert (shown["name"], shown["host"], shown["server_name"]) == (
        f"{SHARP_A}:{server.port}", SHARP_A, SHARP_A)
    status = TargetStatus(by_name, None, 0, NOW, 0.1)
    metrics = TargetExposition(lambda: [status], lambda: 0.0).render()
    assert f'host="{SHARP_A}"' in metrics and SHARP not in metrics
    # ... people read Unicode.
    table = render_table(results)
    assert f"{SHARP}:{server.port}" in table and SHARP_A not in table
    page = render_status_page([shown, assessment_to_dict(by_address)], now=NOW)
    assert f">{SHARP}:{server.port}</a></div>" in page  # the name, linked to its page
    assert f"SNI {SHARP} ({SHARP_A})" in page
