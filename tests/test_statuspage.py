"""The HTML status page as pure functions: order, counts, filters, pages, sorting, the
timeline, wording and hostile strings (a real browser: tests/test_browser.py)."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certwatch.core.assess import assess
from certwatch.core.verify import TrustStore
from certwatch.core.inventory import Endpoint
from certwatch.core.observation import Observation, ProbeError, Target
from certwatch.core.timestamps import rfc3339
from certwatch.core.status import TargetStatus
from certwatch.render.report import assessment_to_dict, status_facts, status_to_dict
from certwatch.render.selection import PAGE_SIZE, READS, Query, select
from certwatch.render.statuspage import render_status_page
from certwatch.render.stylesheet import CONTENT_SECURITY_POLICY
from certwatch.render.timeline import expiry_timeline
from tests.pki import Issued, make_intermediate, make_leaf, make_root

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
MINUTE = timedelta(minutes=1)
HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(1)> & \n\x1b[31mred'


def days(n: float) -> datetime:
    return NOW + n * DAY


class Page(HTMLParser):
    """The parsed page: every start tag, and each table row as {cell class: text}."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.rows: list[dict[str, str]] = []
        self.text: list[str] = []
        self.links: list[tuple[str, str]] = []  # (href, text)
        self._cell: str | None = None
        self._link: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        classes = dict(attrs).get("class") or ""
        if tag == "a":
            self.links.append((dict(attrs).get("href") or "", ""))
            self._link = []
        if tag == "tr" and classes.startswith("s-"):
            self.rows.append({"row": classes})
        elif tag == "td":
            self._cell = classes.split()[0]
            self.rows[-1][self._cell] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None
        if tag == "a" and self._link is not None:
            self.links[-1] = (self.links[-1][0], "".join(self._link))
            self._link = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._link is not None:
            self._link.append(data)
        if self._cell is not None:
            self.rows[-1][self._cell] += data

    def row(self, name: str) -> dict[str, str]:
        return next(r for r in self.rows if r["endpoint"].startswith(name))

    def names(self) -> list[str]:
        return [r["endpoint"].split("192.0.2.10")[0] for r in self.rows]

    def link(self, words: str) -> dict[str, list[str]]:
        """The query of the first link whose text is `words` (else starts with it), parsed."""
        href = next((h for h, t in self.links if t.strip() == words), None) or next(
            h for h, t in self.links if t.strip().startswith(words))
        query: dict[str, list[str]] = {}
        for key, value in parse_qsl(urlsplit(href).query):
            query.setdefault(key, []).append(value)
        return query


@dataclass
class Fleet:
    """Assessments from the real pipeline, as the HTTP API serves them."""

    root: Issued
    intermediate: Issued
    trust: TrustStore
    targets: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[TargetStatus] = field(default_factory=list)  # as the daemon keeps them

    def add(self, name: str, chain: list[x509.Certificate] | None = None, *,
            error: ProbeError | None = None, host: str | None = None, protocol: str = "tls",
            port: int = 443, labels: tuple[tuple[str, str], ...] = (),
            **daemon: Any) -> dict[str, Any]:
        host = host or f"{name}.example.test"
        endpoint = Endpoint(name=name, host=host, port=port, protocol=protocol,
                            server_name=host, labels=labels)
        der = tuple(c.public_bytes(Encoding.DER) for c in chain or ())
        observation = Observation(Target(endpoint, "192.0.2.10"), NOW, 0.05, chain=der,
                                  tls_version="TLSv1.3" if der else None, error=error)
        assessment = assess(observation, NOW, self.trust)
        self.statuses.append(TargetStatus(assessment, error, 1 if error else 0, NOW - 3 * MINUTE,
                                          0.05))
        target = assessment_to_dict(assessment)
        target.update(last_probe_at=rfc3339(NOW - 3 * MINUTE),
                      next_probe_at=rfc3339(NOW + 57 * MINUTE), probe_success=error is None,
                      last_error=None, consecutive_failures=0,
                      certificate_read_at=rfc3339(NOW) if der else None)
        if error is not None:
            target.update(last_error={"kind": error.kind, "phase": error.phase,
                                      "detail": error.detail}, consecutive_failures=1)
        target.update(daemon)
        self.targets.append(target)
        return target

    def leaf(self, host: str, left: float, parent: Issued | None = None) -> list[x509.Certificate]:
        issued = make_leaf(parent or self.intermediate, [host],
                           not_before=days(min(-30, left - 90)), not_after=days(left))
        return issued.chain()


TIMEOUT = ProbeError("timeout", "handshake", "no answer within 10s")


def make_fleet() -> Fleet:
    """Ten targets, one of each situation an operator meets."""
    root = make_root("Example Root X1", not_before=days(-3650), not_after=days(3650))
    intermediate = make_intermediate(root, "Example Issuing CA R11", not_before=days(-300),
                                     not_after=days(500))
    fleet = Fleet(root, intermediate, TrustStore.of([root.cert]))
    f = fleet
    f.add("www", f.leaf("www.example.test", 82.4), labels=(("env", "prod"), ("team", "web")))
    f.add("shop", f.leaf("shop.example.test", 18.25), labels=(("env", "prod"),))
    f.add("mail", f.leaf("mail.example.test", 3.5), protocol="smtp", port=25)
    f.add("legacy", f.leaf("legacy.example.test", -2))
    f.add("intranet", make_leaf(None, ["intranet.example.test"], not_before=days(-10),
                                not_after=days(200)).chain())
    f.add("wrongname", f.leaf("other.example.test", 120), host="wrongname.example.test")
    short_ca = make_intermediate(root, "Short-lived CA", not_before=days(-300),
                                 not_after=days(12))
    f.add("db", f.leaf("db.example.test", 60, short_ca), protocol="postgres", port=5432)
    f.add("ldap", error=TIMEOUT, protocol="ldap", port=389, consecutive_failures=4,
          last_probe_at=rfc3339(NOW - 20 * MINUTE), certificate_read_at=None)
    f.add("backup", error=ProbeError("refused", "connect", "connection refused"))
    f.add("portal", f.leaf("portal.example.test", 45), probe_success=False,
          last_error={"kind": "timeout", "phase": "handshake", "detail": "no answer within 10s"},
          consecutive_failures=3, certificate_read_at=rfc3339(NOW - 2 * 60 * MINUTE))
    return fleet


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return make_fleet()


def render(targets: list[dict[str, Any]], **kwargs: Any) -> str:
    return render_status_page(targets, now=NOW, **kwargs)


def test_rows_sorted_attention_first_then_soonest_expiry(fleet: Fleet) -> None:
    page = Page(render(fleet.targets, version="0.1.0"))
    assert page.names() == ["legacy",  # expired
                     "mail", "wrongname", "intranet",  # critical, by days left
                     "backup", "ldap",  # no certificate (by name)
                     "db", "shop",  # warning: an intermediate at 12 days, a leaf at 18
                     "portal", "www"]  # ok


def test_counts_total_and_generation_time(fleet: Fleet) -> None:
    html = render(fleet.targets)
    page = Page(html)
    expected = {"ok": 2, "warning": 2, "critical": 3, "expired": 1, "error": 2}
    for state, n in expected.items():
        assert page.link(f"{n} {state}") == {"state": [state]}  # each count filters
    assert page.link("10 total") == {}
    assert "generated 2026-06-01 12:00:00 UTC" in html
    assert "<title>certwatch: 1 expired, 3 critical, 2 error, 2 warning</title>" in html


def test_state_classes_and_colours(fleet: Fleet) -> None:
    html = render(fleet.targets)
    page = Page(html)
    assert {r["row"] for r in page.rows} == {"s-ok", "s-warning", "s-critical", "s-expired",
                                            "s-error"}
    assert page.row("legacy")["row"] == "s-expired"
    assert page.row("ldap")["state"] == "error"
    for colour in ("--ok:#1a7f37", "--warning:#9a4d08", "--critical:#c62828",
                   "--expired:#7f1d1d", "--error:#6d28d9"):
        assert colour in html
    zero = render(fleet.targets[:1])
    assert re.search(r'<a class="badge s-expired zero" [^>]*>0 expired</a>', zero)


def test_cells_days_expiry_endpoint_issuer_and_verification(fleet: Fleet) -> None:
    page = Page(render(fleet.targets))
    www = page.row("www")
    assert www["days"] == "82.4"
    assert www["expires"] == ("2026-08-22 21:36 UTC"
                              "112d certificate, 27% used; warns at 30d, pages at 7d"
                              "renew by 2026-07-20 04:19 UTC")
    assert www["endpoint"] == "www192.0.2.10:443 · tls · SNI www.example.testenv=prodteam=web"
    assert www["issuer"] == "Example Issuing CA R11"  # its CN; the DN is on the target page
    assert www["verify"] == "verified"
    assert page.row("legacy")["days"] == "-2.0"
    db = page.row("db")
    assert db["expires"].startswith("2026-06-13 12:00 UTCchain certificate 1: CN=Short-lived CA"
                                    "312d certificate, 96% used; warns at 30d, pages at 7d")
    assert db["issuer"] == "Short-lived CA"  # who issued the leaf
    assert page.row("intranet")["verify"] == "self-signed"
    assert page.row("wrongname")["verify"] == "name mismatch"
    assert page.row("mail")["endpoint"].startswith("mail192.0.2.10:25 · smtp")
    assert page.row("ldap")["days"] == page.row("ldap")["expires"] == ""


@pytest.mark.parametrize(("problems", "words"), [
    (["incomplete_chain", "untrusted"], "incomplete chain, untrusted issuer"),
    (["not_yet_valid"], "not yet valid"),
    (["expired", "hostname_mismatch"], "expired, name mismatch"),
    (["some_new_code"], "some new code"),
])
def test_verification_problems_in_words(fleet: Fleet, problems: list[str], words: str) -> None:
    target = dict(fleet.targets[0], verified=False, verify_problems=problems)
    assert Page(render([target])).rows[0]["verify"] == words


@pytest.mark.parametrize(("ago", "words"), [
    (timedelta(seconds=20), "just now"), (timedelta(seconds=-5), "just now"),
    (3 * MINUTE, "3 min ago"), (59 * MINUTE, "59 min ago"), (timedelta(hours=2), "2 h ago"),
    (timedelta(hours=47), "47 h ago"), (2 * DAY, "2 days ago"), (DAY * 40, "40 days ago"),
])
def test_last_checked_is_relative_to_now(fleet: Fleet, ago: timedelta, words: str) -> None:
    target = dict(fleet.targets[0], last_probe_at=rfc3339(NOW - ago))
    assert Page(render([target])).rows[0]["checked"] == f"{words}next in 57 min"


@pytest.mark.parametrize(("due", "words"), [
    (timedelta(seconds=14), "next in 14 s"),  # a 15 s interval, just probed: not "now"
    (timedelta(seconds=59), "next in 59 s"), (timedelta(minutes=3), "next in 3 min"),
    (timedelta(hours=1), "next in 1 h"), (timedelta(seconds=-20), "next probe due now"),
    (timedelta(minutes=-5), "next probe overdue by 5 min"),
])
def test_next_probe_says_when(fleet: Fleet, due: timedelta, words: str) -> None:
    target = dict(fleet.targets[0], next_probe_at=rfc3339(NOW + due))
    assert Page(render([target])).rows[0]["checked"] == f"3 min ago{words}"


def test_never_probed_and_overdue() -> None:
    target = {"name": "new", "state": "pending", "last_probe_at": None, "checked_at": None,
              "next_probe_at": rfc3339(NOW - timedelta(seconds=30))}
    row = Page(render([target])).rows[0]
    assert row["checked"] == "nevernext probe due now"
    assert row["row"] == "s-unknown"


def test_errors_in_words(fleet: Fleet) -> None:
    page = Page(render(fleet.targets))
    assert page.row("ldap")["probe"] == (
        "timeout during handshake: no answer within 10s (4× in a row)")
    assert page.row("backup")["probe"] == "connection refused"
    assert page.row("www")["probe"] == ""
    dns = dict(fleet.targets[0], days_left=None, last_error={
        "kind": "dns", "phase": "dns", "detail": "Name or service not known"})
    assert Page(render([dns])).rows[0]["probe"] == "DNS lookup failed: Name or service not known"


def test_failed_probe_beside_last_good_certificate(fleet: Fleet) -> None:
    portal = Page(render(fleet.targets)).row("portal")
    assert portal["probe"] == ("last probe failed (3×): timeout during handshake: no answer "
                               "within 10s; showing certificate read 2 h ago")
    assert portal["days"] == "45.0"
    assert portal["row"] == "s-ok"


def test_notices_and_starting_banner(fleet: Fleet) -> None:
    html = render(fleet.targets, ready=False,
                  notices=["configuration reload failed: line 3: bad port"])
    text = "".join(Page(html).text)
    assert "starting: first sweep not finished" in text
    assert "configuration reload failed: line 3: bad port" in text
    assert "first sweep" not in render(fleet.targets)


def test_empty_list_is_friendly() -> None:
    assert "no targets configured" in render([])
    assert "<table" not in render([])
    assert "no results yet" in render([], ready=False)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        render_status_page([], now=datetime(2026, 1, 1))


# Keys that other work adds to the API (issues 11, 12, 13): the pages show them when
# present, so hostile values there must stay text too.
FUTURE_KEYS: dict[str, Any] = {
    "source": {"kind": "file", "location": "/etc/ssl/x.pem"}, "source_location": "/etc/x",
    "location": "/etc/ssl/x.pem#0", "origin": "ingress shop/web", "key_match": False,
    "key_problem": "the key does not match the certificate",
    "lifetime_days": 90, "lifetime_used": 0.5, "warning_at": "2026-06-10T00:00:00Z",
    "renewal": {"window_start": "2026-06-05T00:00:00Z", "window_end": "2026-06-07T00:00:00Z"},
    "certificate_history": [{"fingerprint_sha256": "ab", "first_seen": "2026-05-01T00:00:00Z"}],
    "renewed": {"from": "2026-07-02", "to": "2026-09-24"},
    "revocation_status": "good", "revocation_source": "crl",
    "revocation_checked_at": "2026-06-01T11:00:00Z",
    "sct_count": 2, "lints": ["validity_too_long", {"code": "x", "message": "y"}],
    "recent_errors": [{"at": "2026-06-01T11:00:00Z", "kind": "timeout", "phase": "handshake",
                       "detail": "no answer"}],
    "alerts": [{"key": "k", "kind": "expiry", "severity": "warning", "summary": "s",
                "started_at": "2026-06-01T10:00:00Z",
                "last_notification": {"action": "trigger", "sinks": {
                    "hook": {"status": "failed", "attempts": 3, "error": "503",
                             "delivered_at": None}}}}],
    "some_new_field": {"nested": ["a", "b"]},
}


def hostile(value: Any) -> Any:
    """`value` with every string in it, keys of mappings included, made hostile."""
    if isinstance(value, str):
        return HOSTILE + value
    if isinstance(value, dict):
        return {hostile(k) if k not in ("position",) and not _structural(k) else k: hostile(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [hostile(v) for v in value]
    return value


def _structural(key: str) -> bool:
    """Keys of the API's own shape keep their names (their values are made hostile); the
    keys of free mappings (labels, future fields' contents) do not."""
    return key in API_KEYS


API_KEYS: set[str] = set()


def hostile_target(fleet: Fleet) -> dict[str, Any]:
    """The fleet's first target with every string field hostile, the future keys too."""
    target = dict(fleet.targets[6], **FUTURE_KEYS)  # db: a chain of two
    API_KEYS.update(target, *(c for c in target["chain"]), "kind", "phase", "detail", "at",
                    "action", "sinks", "status", "attempts", "error", "delivered_at",
                    "started_at", "last_notification", "severity", "summary", "key")
    target = hostile(target)
    target["labels"] = {HOSTILE: HOSTILE}
    target["last_error"] = {"kind": HOSTILE, "phase": HOSTILE, "detail": HOSTILE}
    return target


ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "span",
    "div", "ul", "li", "main", "table", "thead", "tbody", "tr", "th", "td", "a", "nav",
    "form", "label", "input", "select", "option", "button", "figure", "figcaption", "svg",
    "desc", "line", "text", "g", "rect", "p", "footer", "section", "article", "dl", "dt",
    "dd", "time", "br"}


def assert_harmless(html: str, *, at_least: int) -> None:
    """No element or attribute from the hostile strings, which are all shown as text."""
    assert "<script" not in html.lower()
    assert "<img" not in html.lower()
    assert "\x1b" not in html  # the escape is shown, never sent
    assert "&amp; \\n\\x1b[31mred" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img" in html
    page = Page(html)
    assert {tag for tag, _ in page.tags} <= ALLOWED_TAGS
    assert not [name for _, attrs in page.tags for name, _ in attrs
                if name.lower().startswith("on")]
    for tag, attrs in page.tags:
        for name, value in attrs:
            if name == "href":
                assert value and value.startswith(("/", "#")), value  # our own links only
    shown = "".join(page.text)
    assert HOSTILE.replace("\n", "\\n").replace("\x1b", "\\x1b") in shown
    assert shown.count("<script>alert(1)</script>") >= at_least


def test_hostile_strings_are_text(fleet: Fleet) -> None:
    error_only = dict(hostile_target(fleet), days_left=None, last_error=None,
                      error_kind="handshake", error_phase="handshake", error=HOSTILE)
    html = render([hostile_target(fleet), error_only], title=HOSTILE, version=HOSTILE,
                  notices=[HOSTILE])
    assert_harmless(html, at_least=20)
    # And in the filter form and the links, as the URL brings them back:
    query = Query.parse([("q", HOSTILE), ("state", HOSTILE), (HOSTILE, HOSTILE),
                         ("source", HOSTILE), ("sort", HOSTILE), ("page", HOSTILE)])
    html = render([hostile_target(fleet)], query=query)
    assert_harmless(html, at_least=1)
    shown = HOSTILE.replace("\n", "\\n").replace("\x1b", "\\x1b")
    values = [dict(attrs).get("value") for tag, attrs in Page(html).tags if tag == "input"]
    assert shown in values  # the search box holds it as typed, as a value, not markup


def test_self_contained_with_a_strict_policy(fleet: Fleet) -> None:
    html = render(fleet.targets)
    for external in ("src=", "url(", "@import", "http://", "https://", "<script", "<img"):
        assert external not in html
    hrefs = re.findall(r'href="([^"]*)"', html)
    assert hrefs and all(h.startswith(("/", "#")) for h in hrefs)  # only its own pages
    assert re.findall(r'action="([^"]*)"', html) == ["/"]  # the filter: a GET to itself
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    style = re.search(r"<style>(.*?)</style>", html, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY  # so no script, image or font
    assert "script-src" not in CONTENT_SECURITY_POLICY
    assert "form-action 'self'" in CONTENT_SECURITY_POLICY
    assert f'content="{CONTENT_SECURITY_POLICY}"' in html


# --- filters, search, pages and sorting --------------------------------------------------


def shown(fleet: Fleet, *pairs: tuple[str, str]) -> list[str]:
    return Page(render(fleet.targets, query=Query.parse(pairs))).names()


def test_counters_filter_and_keep_the_rest_of_the_filter(fleet: Fleet) -> None:
    assert shown(fleet, ("state", "critical")) == ["mail", "wrongname", "intranet"]
    assert shown(fleet, ("state", "critical"), ("state", "expired")) == [
        "legacy", "mail", "wrongname", "intranet"]
    page = Page(render(fleet.targets, query=Query.parse([("env", "prod"), ("state", "ok")])))
    assert page.names() == ["www"]
    # Counts are of the other filters (env=prod): what clicking each would show.
    assert page.link("1 ok") == {"env": ["prod"]}  # the active one: clicking clears it
    assert page.link("1 warning") == {"env": ["prod"], "state": ["warning"]}
    assert page.link("0 critical") == {"env": ["prod"], "state": ["critical"]}
    assert page.link("2 total") == {"env": ["prod"]}
    html = render(fleet.targets, query=Query.parse([("state", "ok")]))
    assert re.search(r'<a class="badge s-ok" href="/" aria-label="2 ok: show every state" '
                     r"aria-current=true>", html)


@pytest.mark.parametrize(("words", "names"), [
    ("www", ["www"]),  # name
    ("MAIL.example", ["mail"]),  # host and SAN, any case
    ("192.0.2.10", None),  # address: every one
    ("other.example.test", ["wrongname"]),  # a SAN that is not the host
    ("short-lived", ["db"]),  # issuer's name
    ("Example Issuing", None),  # the issuer every leaf but two has
    ("team=web", ["www"]),  # a label, as key=value
    ("prod", ["shop", "www"]),  # a label's value
    ("prod web", ["www"]),  # every word must match
    ("nothing-like-this", []),
])
def test_search_matches_names_hosts_addresses_sans_issuers_and_labels(
        fleet: Fleet, words: str, names: list[str] | None) -> None:
    found = shown(fleet, ("q", words))
    if names is None:
        assert len(found) > 3
    else:
        assert found == names


def test_search_finds_the_issuer_dn_and_every_chain_issuer(fleet: Fleet) -> None:
    assert shown(fleet, ("q", "CN=Short-lived CA")) == ["db"]  # the DN, as well as the CN
    # The intermediates' issuer: every target that sent one.
    assert sorted(shown(fleet, ("q", "Example Root X1"))) == [
        "db", "legacy", "mail", "portal", "shop", "wrongname", "www"]
    assert "intranet" in shown(fleet, ("q", "intranet.example.test"))


def test_label_and_source_filters(fleet: Fleet) -> None:
    assert shown(fleet, ("env", "prod")) == ["shop", "www"]
    assert shown(fleet, ("env", "prod"), ("team", "web")) == ["www"]  # all keys
    assert shown(fleet, ("team", "web"), ("team", "mail")) == ["www"]  # any value
    assert shown(fleet, ("env", "staging")) == []
    assert len(shown(fleet, ("source", "tls"))) == 10  # today every target is read over TLS
    assert shown(fleet, ("source", "file")) == []
    # As the files source (issue 13) shapes it, and as a mapping:
    for source in ({"source": "file", "location": "/etc/ssl/a.pem#0"},
                   {"source": {"kind": "file", "location": "/etc/ssl/a.pem#0"}}):
        target = dict(fleet.targets[0], **source)
        for pairs in ([("source", "file")], [("q", "/etc/ssl")]):
            (row,) = Page(render([target], query=Query.parse(pairs))).rows
            assert row["endpoint"].startswith("wwwfile · /etc/ssl/a.pem#0 · SNI"), row
    # A label named like one of the page's own words is written label.<key>:
    odd = dict(fleet.targets[0], labels={"state": "x"})
    assert Page(render([odd], query=Query.parse([("label.state", "x")]))).names() == ["www"]
    assert Query.parse([("label.state", "x")]).href() == "/?label.state=x"


def test_the_form_shows_the_filter_in_force(fleet: Fleet) -> None:
    html = render(fleet.targets, query=Query.parse(
        [("q", "exa mple"), ("team", "web"), ("state", "ok"), ("sort", "name")]))
    page = Page(html)
    assert ('input', [("type", "search"), ("name", "q"), ("value", "exa mple"),
                      ("placeholder", "name, host, SAN, issuer, label"),
                      ("maxlength", "200")]) in page.tags
    selected = re.findall(r'<select name="([^"]+)">.*?<option value="([^"]*)" selected>',
                          html.replace("</select>", "</select>\n"))
    assert ("team", "web") in selected and ("state", "ok") in selected
    assert ("sort", "name") in selected and ("env", "") in selected
    assert "Clear filters" in "".join(page.text)


def test_the_url_is_the_filter(fleet: Fleet) -> None:
    query = Query.parse([("state", "critical"), ("team", "payments"), ("q", "api"),
                         ("sort", "expiry"), ("order", "desc"), ("page", "2"), ("env", "")])
    assert query.href() == "/?state=critical&team=payments&q=api&sort=expiry&order=desc"
    assert query.href(page=2).endswith("&page=2")
    assert Query.parse(parse_qsl(urlsplit(query.href(page=2)).query)) == query
    assert Query().href() == "/"
    # Nonsense is ignored, and bounded:
    odd = Query.parse([("sort", "<x>"), ("page", "-3"), ("page", "99999999999"),
                       ("q", "a" * 1000)])
    assert (odd.sort, odd.page, len(odd.text)) == ("state", 1, 200)
    many = Query.parse([(f"k{i}", "v") for i in range(1000)])
    assert len(many.labels) == 64
    assert Query.parse([("q", " ".join("w" * 3 for _ in range(50)))]).words == ("www",) * 10


def big_fleet(fleet: Fleet, count: int) -> list[dict[str, Any]]:
    """`count` copies of the fleet's targets under distinct names and keys."""
    out = []
    for i in range(count):
        base = fleet.targets[i % len(fleet.targets)]
        out.append(dict(base, name=f"{base['name']}-{i:05d}", key=f"{base['name']}-{i}@x"))
    return out


def test_a_large_inventory_is_paged_and_a_filter_is_a_small_page(fleet: Fleet) -> None:
    targets = big_fleet(fleet, 10_000)
    whole = render(targets)
    page = Page(whole)
    assert len(page.rows) == PAGE_SIZE
    assert "Targets 1–100 of 10000" in "".join(page.text)
    assert page.rows[0]["row"] == "s-expired"  # problems first, on the first page
    assert page.link("2")["page"] == ["2"] and page.link("next")["page"] == ["2"]
    assert page.link("100") == {"page": ["100"]}  # the last page, linked
    assert len(whole) < 200_000  # the whole inventory was 8 MB on one page
    last = Page(render(targets, query=Query.parse([("page", "100")])))
    assert len(last.rows) == PAGE_SIZE and last.rows[-1]["row"] == "s-ok"
    beyond = Page(render(targets, query=Query.parse([("page", "500")])))
    assert "Targets 9901–10000 of 10000" in "".join(beyond.text)  # the last page
    one = Page(render(targets, query=Query.parse([("q", "mail-00012")])))
    assert one.names() == ["mail-00012"] and "(of 10000 in all)" in "".join(one.text)


def test_the_problems_come_first_even_behind_thousands_of_errors(fleet: Fleet) -> None:
    # The trial: 2,000 unreachable and 2 critical put the critical at row 2,001.
    errors = [dict(fleet.targets[8], name=f"down-{i}", key=f"down-{i}@x") for i in range(2000)]
    critical = [dict(fleet.targets[2], name=f"crit-{i}", key=f"crit-{i}@x") for i in range(2)]
    ok = [dict(fleet.targets[0], name=f"ok-{i}", key=f"ok-{i}@x") for i in range(100)]
    page = Page(render(ok + errors + critical))
    assert page.names()[:3] == ["crit-0", "crit-1", "down-0"]


@pytest.mark.parametrize(("sort", "descending", "first", "last"), [
    ("state", False, "legacy", "www"),
    ("state", True, "www", "legacy"),
    ("expiry", False, "legacy", "ldap"),  # without a certificate: last, by name
    ("expiry", True, "intranet", "ldap"),  # either way
    ("name", False, "backup", "www"),
    ("name", True, "www", "backup"),
    ("issuer", False, "legacy", "ldap"),
    ("checked", False, "ldap", "www"),  # the stalest first
])
def test_every_sortable_column(fleet: Fleet, sort: str, descending: bool, first: str,
                               last: str) -> None:
    pairs = [("sort", sort)] + ([("order", "desc")] if descending else [])
    names = shown(fleet, *pairs)
    assert (names[0], names[-1]) == (first, last)
    assert len(names) == 10


def test_headings_link_to_their_sort_and_say_which_is_in_force(fleet: Fleet) -> None:
    html = render(fleet.targets, query=Query.parse([("sort", "name"), ("team", "web")]))
    page = Page(html)
    assert page.link("Endpoint") == {"team": ["web"], "sort": ["name"], "order": ["desc"]}
    assert page.link("Days left") == {"team": ["web"], "sort": ["expiry"]}
    assert page.link("State") == {"team": ["web"]}
    assert '<th aria-sort="ascending"><a href="/?team=web&amp;sort=name&amp;order=desc">' \
           'Endpoint<span aria-hidden="true"> ▲</span>' in html
    assert html.count("aria-sort=") == 1


def test_each_row_links_to_its_target_page_with_the_view(fleet: Fleet) -> None:
    page = Page(render(fleet.targets, query=Query.parse([("state", "critical")])))
    assert page.link("mail") == {"key": ["mail@192.0.2.10"], "state": ["critical"]}


def test_no_match_says_so(fleet: Fleet) -> None:
    page = Page(render(fleet.targets, query=Query.parse([("q", "nope")])))
    assert page.rows == []
    assert "No target matches this filter. Clear filters" in "".join(page.text)


def test_facts_are_the_api_values_the_selection_reads(fleet: Fleet) -> None:
    """status_facts must say what status_to_dict says, for every key selection reads."""
    for number, target in enumerate(fleet.targets):
        status = next(s for s in fleet.statuses if s.target.endpoint.name == target["name"])
        full, facts = status_to_dict(status, NOW), status_facts(status)
        for key in READS:
            if key == "chain":
                assert [{k: list(v) if isinstance(v, tuple) else v for k, v in c.items()}
                        for c in facts["chain"]] == [{k: c[k] for k in facts["chain"][0]}
                                                     for c in full["chain"]] if full["chain"] else True
            else:
                assert facts.get(key) == full.get(key), (target["name"], key)
        assert set(facts) <= set(READS)
        # and the page selects the same from either
        both = [select([(1, facts)], q).matched == select([(1, full)], q).matched
                for q in (Query.parse([("q", "example")]), Query.parse([("state", "ok")]),
                          Query.parse([("env", "prod")]))]
        assert all(both), number


# --- the timeline -------------------------------------------------------------------------


def bars(html: str) -> list[tuple[str, str]]:
    """(title, rect classes) of each bar of the wide drawing."""
    wide = html.split('class="tl-narrow"')[0]
    return [(title, " ".join(re.findall(r'<rect class="(s-\w+)"', rects)))
            for title, rects in re.findall(r"<g><title>([^<]*)</title>(.*?)</g>", wide)]


def test_timeline_of_the_next_90_days() -> None:
    html = expiry_timeline([(0.5, "critical"), (0.7, "critical"), (0.9, "warning"),
                            (12.2, "warning"), (-3, "expired"), (89.9, "ok"), (90.0, "ok"),
                            (400, "ok")], NOW)
    assert bars(html) == [("already expired: 1 expired", "s-expired"),
                          ("2026-06-01: 2 critical, 1 warning", "s-critical s-warning"),
                          ("2026-06-13: 1 warning", "s-warning"),
                          ("2026-08-29: 1 ok", "s-ok")]  # day 90 and beyond: not drawn
    assert "Expiring: 3 within 7 days; 4 within 30 days; 5 within 90 days; 1 already " \
           "expired." in html
    assert '<svg class="tl-wide"' in html and '<svg class="tl-narrow"' in html
    assert "<script" not in html and "href" not in html


def test_timeline_size_is_bounded_and_shows_the_filtered_targets(fleet: Fleet) -> None:
    html = expiry_timeline([(i % 120 - 10 + 0.5, STATE) for i in range(10_000)
                            for STATE in ("ok",)], NOW)
    assert len(html) < 40_000  # one bar a day, whatever the count
    page = render(fleet.targets, query=Query.parse([("state", "warning")]))
    assert bars(page) == [("2026-06-13: 1 warning", "s-warning"),
                          ("2026-06-19: 1 warning", "s-warning")]
