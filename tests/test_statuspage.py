"""The HTML status page: order, counts, wording, hostile strings, and a real browser."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certwatch.core.assess import assess
from certwatch.core.verify import TrustStore
from certwatch.core.inventory import Endpoint
from certwatch.core.observation import Observation, ProbeError, Target
from certwatch.core.timestamps import rfc3339
from certwatch.render.report import assessment_to_dict
from certwatch.render.statuspage import CONTENT_SECURITY_POLICY, render_status_page
from tests.pki import Issued, make_intermediate, make_leaf, make_root

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
MINUTE = timedelta(minutes=1)
CHROMIUM = Path("/usr/bin/chromium")
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
        self._cell: str | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        classes = dict(attrs).get("class") or ""
        if tag == "tr" and classes.startswith("s-"):
            self.rows.append({"row": classes})
        elif tag == "td":
            self._cell = classes.split()[0]
            self.rows[-1][self._cell] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self.rows[-1][self._cell] += data

    def row(self, name: str) -> dict[str, str]:
        return next(r for r in self.rows if r["endpoint"].startswith(name))


@dataclass
class Fleet:
    """Assessments from the real pipeline, as the HTTP API serves them."""

    root: Issued
    intermediate: Issued
    trust: TrustStore
    targets: list[dict[str, Any]] = field(default_factory=list)

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
        target = assessment_to_dict(assess(observation, NOW, self.trust))
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
    names = [r["endpoint"].split("192.0.2.10")[0] for r in page.rows]
    assert names == ["legacy",  # expired
                     "mail", "wrongname", "intranet",  # critical, by days left
                     "backup", "ldap",  # no certificate (by name)
                     "db", "shop",  # warning: an intermediate at 12 days, a leaf at 18
                     "portal", "www"]  # ok


def test_counts_total_and_generation_time(fleet: Fleet) -> None:
    html = render(fleet.targets)
    expected = {"ok": 2, "warning": 2, "critical": 3, "expired": 1, "error": 2}
    for state, n in expected.items():
        assert f'<span class="badge s-{state}">{n} {state}</span>' in html
    assert ">10 total<" in html
    assert "generated 2026-06-01 12:00:00 UTC" in html
    assert "<title>certwatch: 1 expired, 3 critical, 2 error, 2 warning</title>" in html


def test_state_classes_and_colours(fleet: Fleet) -> None:
    html = render(fleet.targets)
    page = Page(html)
    assert {r["row"] for r in page.rows} == {"s-ok", "s-warning", "s-critical", "s-expired",
                                            "s-error"}
    assert page.row("legacy")["row"] == "s-expired"
    assert page.row("ldap")["state"] == "error"
    for colour in ("--ok:#1a7f37", "--warning:#b45309", "--critical:#c62828",
                   "--expired:#7f1d1d", "--error:#6d28d9"):
        assert colour in html
    zero = render(fleet.targets[:1])
    assert '<span class="badge s-expired zero">0 expired</span>' in zero


def test_cells_days_expiry_endpoint_issuer_and_verification(fleet: Fleet) -> None:
    page = Page(render(fleet.targets))
    www = page.row("www")
    assert www["days"] == "82.4"
    assert www["expires"] == "2026-08-22 21:36 UTC"
    assert www["endpoint"] == "www192.0.2.10:443 · tls · SNI www.example.testenv=prodteam=web"
    assert www["issuer"] == "CN=Example Issuing CA R11"
    assert www["verify"] == "verified"
    assert page.row("legacy")["days"] == "-2.0"
    db = page.row("db")
    assert db["expires"] == "2026-06-13 12:00 UTCchain certificate 1: CN=Short-lived CA"
    assert db["issuer"] == "CN=Example Root X1"
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


def test_never_probed_and_overdue() -> None:
    target = {"name": "new", "state": "pending", "last_probe_at": None, "checked_at": None,
              "next_probe_at": rfc3339(NOW - MINUTE)}
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


def hostile_target(fleet: Fleet) -> dict[str, Any]:
    target = dict(fleet.targets[0])
    target.update(
        name=HOSTILE, address=HOSTILE, server_name=HOSTILE, protocol=HOSTILE, summary=HOSTILE,
        earliest_subject=HOSTILE, earliest_position=1, labels={HOSTILE: HOSTILE},
        chain=[{"position": 0, "subject": "CN=x", "issuer": "CN=y"},
               {"position": 1, "subject": HOSTILE, "issuer": HOSTILE}],
        verify_problems=[HOSTILE], verified=False,
        last_error={"kind": HOSTILE, "phase": HOSTILE, "detail": HOSTILE})
    return target


def test_hostile_strings_are_text(fleet: Fleet) -> None:
    error_only = dict(hostile_target(fleet), days_left=None, last_error=None,
                      error_kind="handshake", error_phase="handshake", error=HOSTILE)
    html = render([hostile_target(fleet), error_only], title=HOSTILE, version=HOSTILE,
                  notices=[HOSTILE])
    assert "<script" not in html.lower()
    assert "<img" not in html.lower()
    assert "\x1b" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img" in html
    assert "&amp; \\n\\x1b[31mred" in html
    page = Page(html)
    assert {tag for tag, _ in page.tags} <= {  # br: between the lines of a notice
        "html", "head", "meta", "title", "style", "body", "header", "h1", "span", "div",
        "ul", "li", "main", "table", "thead", "tbody", "tr", "th", "td", "br"}
    assert not [name for _, attrs in page.tags for name, _ in attrs
                if name.lower().startswith("on")]
    shown = "".join(page.text)
    assert HOSTILE.replace("\n", "\\n").replace("\x1b", "\\x1b") in shown
    assert shown.count("<script>alert(1)</script>") >= 10  # every field, as plain text


def test_self_contained_with_a_strict_policy(fleet: Fleet) -> None:
    html = render(fleet.targets)
    for external in ("src=", "href=", "url(", "@import", "http://", "https://", "<script"):
        assert external not in html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    style = re.search(r"<style>(.*?)</style>", html, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert f'content="{CONTENT_SECURITY_POLICY}"' in html


# --- a real browser --------------------------------------------------------------------

def chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not CHROMIUM.exists():
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install chromium to run the "
                    "headless rendering checks")
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
         *args, page.as_uri()],
        capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.parametrize("size", [(1280, 900), (390, 844)], ids=["desktop", "phone"])
def test_browser_renders_page(fleet: Fleet, tmp_path: Path, size: tuple[int, int]) -> None:
    page = tmp_path / "page.html"
    page.write_text(render(fleet.targets, version="0.1.0",
                           notices=["configuration reload failed: deploy/inventory.yaml "
                                    "line 14: port must be 1-65535; still running the "
                                    "previous configuration"]), encoding="utf-8")
    shot = tmp_path / "page.png"
    chromium(tmp_path, page, f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}")
    assert png_size(shot) == size
    assert shot.stat().st_size > 30_000  # a blank page is a few kilobytes
    keep = os.environ.get("CERTWATCH_SCREENSHOTS")  # a directory, to look at the result
    if keep:
        shutil.copy(shot, Path(keep) / f"status-page-{size[0]}x{size[1]}.png")


def test_browser_dom_has_no_injected_elements(fleet: Fleet, tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text(render([hostile_target(fleet)], title=HOSTILE, notices=[HOSTILE]),
                    encoding="utf-8")
    dom = chromium(tmp_path, page, "--dump-dom").stdout
    assert "<tbody>" in dom  # the page really loaded
    assert "<script" not in dom.lower()
    assert "<img" not in dom.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
