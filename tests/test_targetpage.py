"""A target's own page as a pure function: the chain with its lifetime bars, the verdict in
words, alerts and deliveries, the probe's errors and next due time, the fields other work
adds, and hostile strings in every field (a real browser: tests/test_browser.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from certwatch.core.assess import assess
from certwatch.core.inventory import Endpoint
from certwatch.core.observation import Observation, Target
from certwatch.core.status import TargetStatus
from certwatch.core.verify import TrustStore
from certwatch.render.report import status_to_dict
from certwatch.render.selection import Query
from certwatch.render.statuspage import render_status_page
from certwatch.render.targetpage import render_target_page, target_missing_page
from tests.pki import make_intermediate, make_leaf, make_root
from tests.test_statuspage import (
    FUTURE_KEYS,
    HOSTILE,
    MINUTE,
    NOW,
    Fleet,
    Page,
    assert_harmless,
    days,
    hostile_target,
    make_fleet,
)


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return make_fleet()


def target(fleet: Fleet, name: str, **changes: Any) -> dict[str, Any]:
    return dict(next(t for t in fleet.targets if t["name"] == name), **changes)


def render(target: dict[str, Any], **kwargs: Any) -> str:
    return render_target_page(target, now=NOW, **kwargs)


def sections(html: str) -> dict[str, str]:
    """Each section's text after its heading, by id."""
    found = re.findall(r'<section class="panel" id="([^"]+)"[^>]*><h2[^>]*>[^<]*</h2>(.*?)'
                       r"</section>", html, re.S)
    return {sid: "".join(Page(f"<div>{body}</div>").text) for sid, body in found}


def test_the_whole_chain_each_certificate_with_its_fields(fleet: Fleet) -> None:
    html = render(target(fleet, "db"))
    chain = sections(html)["chain"]
    leaf, intermediate = chain.split("1 · intermediate")
    assert leaf.startswith("0 · leaf: db.example.test")
    for words in ("SubjectCN=db.example.test", "IssuerCN=Short-lived CA", "SANsdb.example.test",
                  "KeyEC secp256r1 256 bits", "Signatureecdsa_with_sha256",
                  "Valid from2026-05-02 12:00 UTC (30 days ago)",
                  "Valid until2026-07-31 12:00 UTC (in 60 days)", "Lifetime90.0 days"):
        assert words in leaf, words
    assert re.search(r"SHA-256[0-9a-f]{64}", leaf) and re.search(r"SHA-1[0-9a-f]{40}", leaf)
    assert re.search(r"Serial[0-9A-F]+", leaf)
    assert ": Short-lived CA" in intermediate and "IssuerCN=Example Root X1" in intermediate


def test_each_certificate_has_a_lifetime_bar_with_today_and_the_thresholds(fleet: Fleet) -> None:
    html = render(target(fleet, "db"))
    bars = re.findall(r'<svg viewBox="0 0 1000 32" role="img" aria-label="Lifetime: ([^"]*)"'
                      r'.*?</svg>', html)
    assert bars == [
        "33% of 90 days used; 60.0 days left; warning from 2026-07-01 12:00 UTC, critical "
        "from 2026-07-24 12:00 UTC",
        "96% of 312 days used; 12.0 days left; warning from 2026-05-14 12:00 UTC, critical "
        "from 2026-06-06 12:00 UTC"]
    leaf_svg = html.split('aria-label="Lifetime: ')[1].split("</svg>")[0]
    assert '<rect class="used s-ok" x="0" y="11" width="333.3"' in leaf_svg  # 30 of 90 days
    assert '<line class="mark" x1="333.3"' in leaf_svg  # today
    assert '<rect class="zone-warning" x="666.7" y="8" width="255.6"' in leaf_svg
    assert '<rect class="zone-critical" x="922.2"' in leaf_svg
    inter_svg = html.split('aria-label="Lifetime: ')[2].split("</svg>")[0]
    assert 'class="used s-warning"' in inter_svg  # 12 days left: inside its warning stretch
    expired = render(target(fleet, "legacy"))
    assert "expired 2.0 days ago" in expired and 'class="used s-expired"' in expired


@pytest.mark.parametrize(("name", "words"), [
    ("www", "Clients will accept this certificate: the chain is trusted, which chains to the "
            "trusted root CN=Example Root X1, the name matches and every certificate is "
            "valid now."),
    ("intranet", "Clients will refuse this certificate: self-signed."),
    ("wrongname", "Clients will refuse this certificate: name mismatch."),
    ("legacy", "Clients will refuse this certificate: expired."),
    ("ldap", "Not verified: no certificate was read."),
])
def test_the_verdict_in_words(fleet: Fleet, name: str, words: str) -> None:
    assert sections(render(target(fleet, name)))["verification"].startswith(words)


def test_verdict_detail_and_verification_not_enforced(fleet: Fleet) -> None:
    off = sections(render(target(fleet, "wrongname", verify=False)))["verification"]
    assert "This endpoint has verify: false, so these problems do not raise its state." in off
    assert "Detailcertificate is not valid for 'wrongname.example.test' (it names " \
           "other.example.test)" in off
    assert "Name matchesno" in off


def test_open_alerts_and_how_each_delivery_fared(fleet: Fleet) -> None:
    alerts = [{"key": "mail@192.0.2.10/expiry", "kind": "expiry", "severity": "critical",
               "summary": "mail expires in 3.5 days", "started_at": "2026-06-01T09:00:00Z",
               "last_notification": {"action": "escalate", "sinks": {
                   "pager": {"status": "delivered", "attempts": 1, "error": None,
                             "delivered_at": "2026-06-01T09:00:05Z"},
                   "chat": {"status": "failed", "attempts": 4, "error": "HTTP 503",
                            "delivered_at": None}}}}]
    shown = sections(render(target(fleet, "mail", alerts=alerts)))["alerts"]
    assert shown.startswith("expiry · critical")
    assert "Summarymail expires in 3.5 days" in shown
    assert "Open since2026-06-01 09:00 UTC (3 h ago)" in shown
    assert "Last notification (escalate):chat: failed, 4 attempts: HTTP 503pager: delivered, " \
           "1 attempt, delivered 2026-06-01 09:00 UTC (2 h ago)" in shown
    assert "alerts" not in sections(render(target(fleet, "mail")))  # none open: no section


def test_the_last_errors_and_when_the_next_probe_is_due(fleet: Fleet) -> None:
    recent = [{"at": "2026-06-01T11:40:00Z", "kind": "timeout", "phase": "handshake",
               "detail": "no answer within 10s"},
              {"at": "2026-06-01T11:00:00Z", "kind": "refused", "phase": "connect",
               "detail": "connection refused"}]
    probe = sections(render(target(fleet, "ldap", recent_errors=recent)))["probe"]
    assert "Last probe2026-06-01 11:40 UTC (20 min ago)" in probe
    assert "Resultfailed" in probe
    assert "Errortimeout during handshake: no answer within 10s" in probe
    assert "Failures in a row4" in probe
    assert ("Recent errors2026-06-01 11:40 UTC (20 min ago): timeout during handshake: no "
            "answer within 10s2026-06-01 11:00 UTC (1 h ago): connection refused") in probe
    assert "Next probe2026-06-01 12:57 UTC (in 57 min)" in probe
    soon = sections(render(target(fleet, "www", next_probe_at="2026-06-01T12:00:14Z")))
    assert "Next probe2026-06-01 12:00 UTC (in 14 s)" in soon["probe"]  # not "now"


def test_fields_other_work_adds_are_shown_when_present(fleet: Fleet) -> None:
    html = render(target(fleet, "www", **FUTURE_KEYS))
    found = sections(html)
    assert "Lifetime used50%" in found["renewal"]
    assert "Renewalwindow_start2026-06-05 00:00 UTC (in 3 days)window_end2026-06-07" \
        in found["renewal"]
    assert "Certificate historyfingerprint_sha256abfirst_seen2026-05-01" in found["renewal"]
    assert "StatusgoodSettled bycrlChecked2026-06-01 11:00 UTC (1 h ago)" in found["revocation"]
    assert "SCTs2" in found["revocation"] and "validity_too_long" in found["revocation"]
    assert "Sourcefile: /etc/ssl/x.pem" in found["endpoint"]
    assert "Found atingress shop/web" in found["endpoint"]
    assert "Key matchesnoKey problemthe key does not match the certificate" in found["verification"]
    assert found["more"] == "some_new_fieldnestedab"
    index = re.search(r'<nav aria-label="Sections" class="sub">(.*?)</nav>', html)
    assert index and "#renewal" in index.group(1) and "#more" in index.group(1)


def test_absent_keys_are_simply_not_shown(fleet: Fleet) -> None:
    html = render({"name": "bare", "key": "bare@-", "state": "error"})
    assert set(sections(html)) == {"summary", "endpoint"}
    assert "<dd></dd>" not in html
    plain = sections(render(target(fleet, "www")))
    assert set(plain) == {"summary", "verification", "chain", "renewal", "probe", "endpoint"}


def test_the_way_back_keeps_the_view(fleet: Fleet) -> None:
    back = Query.parse([("state", "critical"), ("team", "web"), ("page", "2")])
    html = render(target(fleet, "mail"), back=back)
    assert '<a href="/?state=critical&amp;team=web&amp;page=2">← all targets</a>' in html
    assert '<a href="/api/v1/targets/mail">this target as JSON</a>' in html


def test_the_row_links_here_and_a_missing_key_says_so(fleet: Fleet) -> None:
    listed = Page(render_status_page(fleet.targets, now=NOW))
    assert listed.link("mail") == {"key": ["mail@192.0.2.10"]}
    missing = target_missing_page(HOSTILE, now=NOW, back=Query.parse([("q", HOSTILE)]))
    assert "No target has the key" in missing
    assert_harmless(missing, at_least=1)


def test_hostile_strings_in_every_field_are_text(fleet: Fleet) -> None:
    hostile = hostile_target(fleet)
    assert_harmless(render(hostile, title=HOSTILE), at_least=40)
    shown = "".join(Page(render(hostile)).text)
    for field in ("subject", "issuer", "dns_names", "fingerprint_sha256", "serial",
                  "key_type", "signature_algorithm"):  # each was made hostile
        value = hostile["chain"][0][field]
        value = value[0] if isinstance(value, list) else value
        assert value.replace("\n", "\\n").replace("\x1b", "\\x1b") in shown, field


def test_a_real_certificate_with_hostile_names_through_the_pipeline() -> None:
    """Subject, issuer and SANs from a certificate made here, parsed and judged by the real
    code, on both pages."""
    root = make_root("Hostile Root", not_before=days(-10), not_after=days(1000))
    ca = make_intermediate(root, HOSTILE[:60], not_before=days(-10), not_after=days(900))
    leaf = make_leaf(ca, [HOSTILE, "ok.example.test"], not_before=days(-400),
                     not_after=days(20), common_name=HOSTILE[25:])
    endpoint = Endpoint(name=HOSTILE, host="ok.example.test", port=443,
                        server_name="ok.example.test", labels=((HOSTILE, HOSTILE),))
    chain = tuple(c.public_bytes(Encoding.DER) for c in leaf.chain())
    observation = Observation(Target(endpoint, "192.0.2.1"), NOW, 0.02, chain=chain)
    status = TargetStatus(assess(observation, NOW, TrustStore.of([root.cert])), None, 0, NOW,
                          0.02)
    api = status_to_dict(status, NOW + 5 * MINUTE)
    assert api["chain"][0]["dns_names"][0] == HOSTILE and api["state"] == "warning"
    assert_harmless(render(api), at_least=5)
    assert_harmless(render_status_page([api], now=NOW), at_least=3)
    assert "issuer" in Page(render_status_page([api], now=NOW)).rows[0]
    assert (Page(render_status_page([api], now=NOW)).rows[0]["issuer"]
            == HOSTILE[:60].replace("\n", "\\n").replace("\x1b", "\\x1b"))  # readable: its CN


def test_naive_now_is_refused(fleet: Fleet) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        render_target_page(fleet.targets[0], now=NOW.replace(tzinfo=None))


def test_a_target_page_is_small(fleet: Fleet) -> None:
    many_sans = target(fleet, "www")
    many_sans["chain"] = [dict(many_sans["chain"][0], dns_names=[f"n{i}.test" for i in range(10000)])]
    html = render(many_sans)
    assert "and 9950 more" in html and len(html) < 60_000
