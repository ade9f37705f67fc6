"""The inventory loader: good files become values, bad ones one error listing everything."""

from __future__ import annotations

from pathlib import Path

import pytest

from certwatch.config import ConfigError, load_inventory, parse_inventory
from certwatch.core.inventory import TLS_ALIASES, Defaults, Endpoint

REPO = Path(__file__).resolve().parents[1]


def problems_of(text: str, base: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_inventory(text, source="inv.yaml", base=base, strict=True)
    assert str(info.value).startswith("inv.yaml: ")
    return list(info.value.problems)


def test_shipped_inventories_are_valid() -> None:
    default = load_inventory(REPO / "config" / "certwatch.yaml")
    assert default.demo  # the newcomer's default watches local demo endpoints
    reference = load_inventory(REPO / "config" / "reference.yaml")
    assert len(reference.endpoints) == 12 and not reference.demo and not reference.problems
    assert {e.source for e in reference.endpoints} == {"tls", "file", "kubernetes"}


def test_defaults_apply_and_endpoints_override(tmp_path: Path) -> None:
    (tmp_path / "root.pem").write_text("")
    inventory = parse_inventory(
        """
defaults:
  timeout: 3
  warn_days: 40
  ca_file: root.pem
endpoints:
  - host: a.example
  - host: b.example
    port: 8443
    warn_days: 20
    critical_days: 2
    verify: false
    labels: {team: payments, tier: 1, on_call: true}
""",
        base=tmp_path,
    )
    a, b = inventory.endpoints
    assert a == Endpoint(name="a.example:443", host="a.example", port=443,
                         server_name="a.example", timeout=3, warn_days=40,
                         ca_file=tmp_path / "root.pem")
    assert (b.port, b.warn_days, b.critical_days, b.verify) == (8443, 20, 2, False)
    assert b.labels == (("on_call", "true"), ("team", "payments"), ("tier", "1"))
    assert inventory.defaults == Defaults(timeout=3, warn_days=40, ca_file=tmp_path / "root.pem")


@pytest.mark.parametrize(
    ("entry", "host", "port", "protocol"),
    [
        ("url: https://www.example.com", "www.example.com", 443, "tls"),
        ("url: https://www.example.com:8443/login", "www.example.com", 8443, "tls"),
        ("url: smtp://mail.example.com", "mail.example.com", 25, "smtp"),
        ("url: imaps://mail.example.com", "mail.example.com", 993, "tls"),
        ("url: postgresql://db.example.com", "db.example.com", 5432, "postgres"),
        ("url: 'https://[2001:db8::1]:8443'", "2001:db8::1", 8443, "tls"),
        ("host: mail.example.com\n    protocol: smtps", "mail.example.com", 465, "tls"),
        ("host: ldap.example.com\n    protocol: ldap", "ldap.example.com", 389, "ldap"),
        ("host: x.example.com\n    protocol: xmpp", "x.example.com", 5222, "xmpp"),
        ("host: db.example.com\n    protocol: mysql", "db.example.com", 3306, "mysql"),
        ("url: mysql://db.example.com", "db.example.com", 3306, "mysql"),
    ],
)
def test_url_shorthand_and_protocol_ports(entry: str, host: str, port: int, protocol: str) -> None:
    (endpoint,) = parse_inventory(f"endpoints:\n  - {entry}\n").endpoints
    assert (endpoint.host, endpoint.port, endpoint.protocol) == (host, port, protocol)


@pytest.mark.parametrize(("alias", "port"), [
    ("https", 443), ("smtps", 465), ("submissions", 465), ("imaps", 993), ("pop3s", 995),
    ("ldaps", 636), ("ftps", 990)])
def test_implicit_tls_shorthands(alias: str, port: int) -> None:
    """The well-known implicit-TLS ports, as a protocol and as a URL scheme: plain TLS."""
    assert TLS_ALIASES[alias] == port
    as_protocol, as_url, other_port = parse_inventory(
        f"endpoints:\n  - {{host: a.example, protocol: {alias}}}\n  - {alias}://b.example\n"
        f"  - {{host: c.example, protocol: {alias}, port: 10443}}\n").endpoints
    assert (as_protocol.protocol, as_protocol.port) == ("tls", port)
    assert (as_url.protocol, as_url.port) == ("tls", port)
    assert (other_port.protocol, other_port.port) == ("tls", 10443)


def test_bare_string_entries_are_urls() -> None:
    a, b = parse_inventory("endpoints: ['a.example:8443', 'smtp://b.example']").endpoints
    assert (a.host, a.port, a.protocol) == ("a.example", 8443, "tls")
    assert (b.host, b.port, b.protocol) == ("b.example", 25, "smtp")


def test_server_name_rules() -> None:
    inventory = parse_inventory(
        """
endpoints:
  - {host: 192.0.2.1}
  - {host: 192.0.2.2, server_name: internal.example}
  - {host: a.example, server_name: false}
  - {host: b.example}
""")
    names = [e.server_name for e in inventory.endpoints]
    assert names == [None, "internal.example", None, "b.example"]
    # With no SNI the host itself is what the certificate must match.
    assert [e.verify_name for e in inventory.endpoints] == [
        "192.0.2.1", "internal.example", "a.example", "b.example"]
    assert inventory.endpoints[0].name == "192.0.2.1:443"


def test_every_problem_is_reported_once_with_its_line() -> None:
    problems = problems_of(
        """endpoints:
  - host: a.example
    prot: tls
  - host: "bad host"
    port: 70000
  - name: dup
    host: c.example
  - name: dup
    host: d.example
    protocol: smpt
    timeout: fast
    ca_file: /nonexistent/root.pem
    labels: {name: x, "bad-label": y}
""")
    assert problems == [
        "line 3: endpoint 1: unknown key 'prot' (did you mean 'port'?)",
        "line 4: endpoint 2: 'host' is not a valid host name: 'bad host'",
        "line 5: endpoint 2: 'port' must be a whole number from 1 to 65535, not int 70000",
        "line 8: endpoint 4 'dup': duplicate name (first used by endpoint 3); give each a distinct 'name'",
        "line 10: endpoint 4 'dup': unknown protocol 'smpt' (did you mean 'smtp'?); known: "
        "tls, smtp, imap, pop3, ftp, ldap, postgres, xmpp, mysql, https, smtps, submissions, "
        "imaps, pop3s, ldaps, ftps",
        "line 11: endpoint 4 'dup': 'timeout' must be a number, not 'fast'",
        "line 12: endpoint 4 'dup': 'ca_file': file not found: /nonexistent/root.pem",
        "line 13: endpoint 4 'dup': label name 'name' is reserved by certwatch",
        "line 13: endpoint 4 'dup': label name 'bad-label' must match [a-zA-Z_][a-zA-Z0-9_]* "
        "and not start with '__'",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty"),
        ("[1, 2]", "must be a mapping with 'endpoints:'"),
        ("endpoints: {a: 1}", "'endpoints' must be a list"),
        ("endpoints: [1]", "must be a mapping or a URL, not int 1"),
        ("endpoints:\n  - host: a.example\n    port: true", "'port' must be a whole number"),
        ("endpoints:\n  - host: a.example\n    warn_days: 5\n    critical_days: 9",
         "critical_days (9) must not exceed warn_days (5)"),
        ("endpoints:\n  - host: a.example\n    addresses: some", "'addresses' must be one of"),
        ("endpoints:\n  - url: gopher://a.example", "'url' scheme 'gopher' is not one of"),
        ("endpoints:\n  - url: https://a.example\n    port: 1", "give either 'url' or 'port'"),
        ("endpoints:\n  - host: a.example\n    client_key: k.pem", "'client_key': file not found"),
        ("endpoints:\n  - port: 443", "'host' must be a host name or IP address, not empty"),
        ("endpoints: [\n", "not valid YAML"),
        ("defaults: {verify: yes please}\nendpoints: []", "'verify' must be true or false"),
        ("max_concurrency: 0\nendpoints: []", "'max_concurrency' must be between 1 and 100000"),
        ("endpoints: []\nendpoint: []", "unknown key 'endpoint' (did you mean 'endpoints'?)"),
    ],
)
def test_bad_inventories_say_why(text: str, expected: str) -> None:
    assert any(expected in problem for problem in problems_of(text)), problems_of(text)


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_inventory(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"endpoints: [\xff\xfe]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_inventory(binary)


def test_relative_paths_are_relative_to_the_inventory(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "root.pem").write_text("")
    inventory_file = tmp_path / "sub" / "inv.yaml"
    inventory_file.write_text("endpoints:\n  - host: a.example\n    ca_file: root.pem\n")
    (endpoint,) = load_inventory(inventory_file).endpoints
    assert endpoint.ca_file == tmp_path / "sub" / "root.pem"


def test_deeply_nested_yaml_is_a_clear_error() -> None:
    (problem,) = problems_of("endpoints: " + "[" * 5000 + "]" * 5000)
    # libyaml stops at its depth limit with a position; the pure-Python parser recurses
    # until Python's limit: either way one clear line.
    assert problem in ("top: YAML nested too deeply",
                       "line 1, column 1011: not valid YAML: exceeded maximum nesting depth")


def test_daemon_settings() -> None:
    inventory = parse_inventory(
        """
listen: "127.0.0.1:9999"
demo: true
defaults: {interval: 2h, retry_interval: 90s}
endpoints:
  - {host: a.example, interval: 300}
  - {host: b.example, retry_interval: "1.5m"}
""")
    a, b = inventory.endpoints
    assert (inventory.listen, inventory.demo) == ("127.0.0.1:9999", True)
    assert (a.interval, a.retry_interval) == (300, 90)
    assert (b.interval, b.retry_interval) == (7200, 90)
    assert parse_inventory("endpoints: []").listen == ":9795"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listen: 9795\nendpoints: []", "'listen' must be HOST:PORT or :PORT, not int 9795"),
        ("listen: 'host:port'\nendpoints: []", "'listen' must be HOST:PORT or :PORT"),
        ("defaults: {interval: soon}\nendpoints: []", "'interval' must be a duration"),
        ("defaults: {interval: 0.5}\nendpoints: []", "between 1s and 30d"),
        ("endpoints:\n  - {host: a.example, retry_interval: 40d}", "'retry_interval' must be a duration"),
    ],
)
def test_bad_daemon_settings(text: str, expected: str) -> None:
    assert any(expected in problem for problem in problems_of(text)), problems_of(text)


def test_anchors_aliases_and_merge_keys() -> None:
    # Sequence items are built one at a time (to bound memory); YAML's sharing still works
    # across them, and lines still point at the right item.
    text = (
        "endpoints:\n"
        "  - &first {host: a.example, port: 8443, labels: &web {team: web}}\n"
        "  - {host: b.example, port: 8443, labels: *web}\n"
        "  - {<<: *first, name: again}\n"
        "  - {host: c.example, port: 8443, labels: {<<: *web, tier: 1}}\n"
    )
    a, b, again, c = parse_inventory(text).endpoints
    assert (a.name, a.port, a.labels) == ("a.example:8443", 8443, (("team", "web"),))
    assert (b.name, b.labels) == ("b.example:8443", (("team", "web"),))
    assert (again.name, again.host, again.port) == ("again", "a.example", 8443)
    assert c.labels == (("team", "web"), ("tier", "1"))
    assert problems_of(text + "  - {<<: *first, port: 0}\n") == [
        "line 6: endpoint 5: 'port' must be a whole number from 1 to 65535, not int 0"]


def test_lifetime_fractions_acme_directory_and_state_dir(tmp_path: Path) -> None:
    inventory = parse_inventory("""
state_dir: state
defaults:
  warn_fraction: 1/2
  critical_fraction: 0.25
  acme_directory: https://acme.example/directory
endpoints:
  - host: a.example
  - host: b.example
    warn_fraction: 1
    critical_fraction: "1/1"
    renewal_due_fraction: 0.9
""", base=tmp_path)
    a, b = inventory.endpoints
    assert (a.warn_fraction, a.critical_fraction, a.renewal_due_fraction) == (0.5, 0.25, 0.7)
    assert a.acme_directory == b.acme_directory == "https://acme.example/directory"
    assert (b.thresholds.warn_fraction, b.thresholds.critical_fraction) == (1.0, 1.0)
    assert b.renewal_due_fraction == 0.9
    assert inventory.state_dir == tmp_path / "state"
    # Without state_dir, the alerts section's directory (or none: memory only).
    assert parse_inventory("endpoints: []\n").state_dir is None
    with_alerts = parse_inventory("alerts: {state_dir: /srv/cw}\nendpoints: []\n")
    assert with_alerts.state_dir == Path("/srv/cw") == with_alerts.alerts.state_dir  # type: ignore[union-attr]

    assert problems_of("""
state_dir: /a
alerts: {state_dir: /b}
defaults:
  warn_fraction: 0
  critical_fraction: 1/0
  acme_directory: ftp://acme.example/
endpoints:
  - host: a.example
    warn_fraction: 0.1
    critical_fraction: 0.2
    acme_directory: https://user:pw@acme.example/
""") == [
        "line 2: 'state_dir' and 'alerts.state_dir' name different directories; there is one "
        "state database: keep 'state_dir'",
        "line 5: defaults: 'warn_fraction' must be between 0.001 and 1, not 0",
        "line 6: defaults: 'critical_fraction' must be a fraction above 0 and at most 1, such as "
        "0.25 or \"1/3\", not '1/0'",
        "line 7: defaults: 'acme_directory' must be an http:// or https:// URL, not "
        "'ftp://acme.example/'",
        "line 11: endpoint 1: critical_fraction (0.2) must not exceed warn_fraction (0.1)",
        "line 12: endpoint 1: 'acme_directory' must not hold credentials",
    ]


def test_metric_groups_are_opt_in() -> None:
    endpoints = "endpoints:\n  - host: a.example\n"
    assert parse_inventory(endpoints).metrics_extra == frozenset()
    chosen = parse_inventory("metrics: {extra: [tls, chain]}\n" + endpoints)
    assert chosen.metrics_extra == {"tls", "chain"}
    assert parse_inventory("metrics: {extra: all}\n" + endpoints).metrics_extra == {
        "probe", "leaf", "chain", "verification", "tls", "revocation"}
    assert parse_inventory("metrics: {extra: tls}\n" + endpoints).metrics_extra == {"tls"}


def test_metric_group_problems_name_their_line() -> None:
    found = problems_of("endpoints:\n  - host: a.example\nmetrics:\n  extra: [tsl]\n  extras: 1\n")
    assert any("line 4" in p and "'tsl' is not one of" in p and "did you mean 'tls'" in p
               for p in found), found
    assert any("line 5" in p and "unknown key 'extras'" in p for p in found), found
    assert any("must be a mapping" in p for p in problems_of(
        "endpoints:\n  - host: a.example\nmetrics: [tls]\n"))
    assert any("must be a list of" in p for p in problems_of(
        "endpoints:\n  - host: a.example\nmetrics: {extra: 3}\n"))
