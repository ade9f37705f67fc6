"""The smaller defects of issue 17, each with a test that fails without its fix.

- a trailing-dot server_name was sent in SNI with the dot (RFC 6066 forbids it);
- label values in /metrics carried raw ESC, BEL, CR and BS from certificate fields;
- the reload banner showed a literal "\\n" between problems;
- `delivered_at` in the API was an epoch float, where every other time is RFC 3339;
- a 23-certificate chain was reported as "exceeds max depth None";
- a credential that had worked waited behind every queued wrong guess for its bcrypt.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client.parser import text_string_to_metric_families

from certwatch.config import build_inventory
from certwatch.core.assess import assess
from certwatch.core.observation import Observation, Target
from certwatch.core.status import merge
from certwatch.core.verify import MAX_CHAIN_DEPTH, TrustStore, verify_chain
from certwatch.core.x509 import parse_chain
from certwatch.render.exposition import TargetExposition
from certwatch.render.report import open_alerts_by_target
from certwatch.render.statuspage import render_status_page
from certwatch.serving.auth import BasicAuth
from certwatch.sources.wire import Prober
from tests.pki import make_intermediate, make_leaf, make_root
from tests.servers import TLSServer
from tests.test_web_security import basic

NOW = datetime.now(timezone.utc)
DAY = timedelta(days=1)


def test_a_trailing_dot_server_name_is_sent_without_the_dot(tmp_path: Path) -> None:
    root = make_root("SNI Root", not_before=NOW - DAY, not_after=NOW + 90 * DAY)
    right = make_leaf(root, ["svc.test"], not_before=NOW - DAY, not_after=NOW + 30 * DAY)
    other = make_leaf(root, ["default.test"], not_before=NOW - DAY, not_after=NOW + 30 * DAY)
    with TLSServer({"svc.test": right.write(tmp_path, "right"),
                    None: other.write(tmp_path, "other")}) as server:
        inventory = build_inventory({"endpoints": [
            {"name": "dotted", "host": "127.0.0.1", "port": server.port,
             "server_name": "svc.test."}]})
        (endpoint,) = inventory.endpoints
        assert endpoint.server_name == "svc.test"
        (observation,) = asyncio.run(Prober().observe(endpoint))
    assessment = assess(observation, NOW, TrustStore.of([root.cert]))
    assert observation.chain[0] == right.cert.public_bytes(Encoding.DER)  # chosen by SNI
    assert assessment.verification is not None and assessment.verification.ok


def test_metrics_label_values_show_control_characters_rather_than_send_them() -> None:
    root = make_root("Metrics Root", not_before=NOW - DAY, not_after=NOW + 90 * DAY)
    hostile = "evil\x1b]0;pwned\x07\x1b[2J\r\x08\x85 ok"
    inter = make_intermediate(root, hostile, not_before=NOW - DAY, not_after=NOW + 60 * DAY)
    leaf = make_leaf(inter, ["svc.test"], not_before=NOW - DAY, not_after=NOW + 30 * DAY)
    (endpoint,) = build_inventory({"endpoints": [{"name": "n", "host": "svc.test"}]}).endpoints
    trust = TrustStore.of([root.cert])
    observation = Observation(Target(endpoint, "127.0.0.1"), NOW, 0.01,
                              chain=tuple(c.public_bytes(Encoding.DER) for c in leaf.chain()))
    statuses = merge([], [assess(observation, NOW, trust)], endpoint,
                     lambda o: assess(o, NOW, trust))
    text = TargetExposition(lambda: statuses, lambda: 0.0).render()
    assert not [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) <= 0x9f]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    issuers = {s.labels["issuer"] for s in families["certwatch_cert_info"].samples}
    assert r"CN=evil\x1b]0\;pwned\x07\x1b[2J\r\x08\x85 ok" in issuers  # the text, shown


def test_a_multi_line_notice_is_shown_as_lines() -> None:
    notice = ("configuration reload (file changed) failed; still running the previous "
              "inventory. inv.yaml: 2 problems:\n  - line 3: bad\n  - line 7: worse <x>")
    page = render_status_page([], now=NOW, notices=[notice])
    assert "2 problems:<br>  - line 3: bad<br>  - line 7: worse &lt;x&gt;</div>" in page
    assert "\\n" not in page


def test_delivered_at_is_rfc3339_in_the_api() -> None:
    from certwatch.core.alerts import Alert

    alert = Alert(key="n@127.0.0.1/expiry", kind="expiry", severity="warning",
                  started_at=NOW, last_sent_at=NOW, summary="s", details={},
                  target={"key": "n@127.0.0.1"})
    moment = datetime(2026, 7, 1, 8, 30, 15, tzinfo=timezone.utc)
    last = {alert.key: {"action": "trigger", "sinks": {
        "pager": {"status": "delivered", "attempts": 1, "error": None,
                  "delivered_at": moment.timestamp() + 0.25},
        "chat": {"status": "pending", "attempts": 2, "error": "500", "delivered_at": None}}}}
    (shown,) = open_alerts_by_target({alert.key: alert}, last)["n@127.0.0.1"]
    sinks = shown["last_notification"]["sinks"]
    assert sinks["pager"]["delivered_at"] == "2026-07-01T08:30:15Z"
    assert sinks["chat"]["delivered_at"] is None
    assert last[alert.key]["sinks"]["pager"]["delivered_at"] == moment.timestamp() + 0.25


def test_a_chain_too_long_to_follow_says_how_long_it_may_be() -> None:
    root = make_root("Deep Root", not_before=NOW - DAY, not_after=NOW + 900 * DAY)
    issuer = root
    for depth in range(21):
        issuer = make_intermediate(issuer, f"Deep {depth}", not_before=NOW - DAY,
                                   not_after=NOW + 800 * DAY, path_length=None)
    leaf = make_leaf(issuer, ["svc.test"], not_before=NOW - DAY, not_after=NOW + 90 * DAY)
    ders = tuple(c.public_bytes(Encoding.DER) for c in leaf.chain(include_root=True))
    assert len(ders) == 23
    verification = verify_chain(parse_chain(ders), TrustStore.of([root.cert]), "svc.test", NOW)
    assert not verification.trusted and "None" not in verification.detail
    assert (f"the chain exceeds the maximum depth: certwatch follows at most {MAX_CHAIN_DEPTH} "
            "intermediate certificates, and the server sent 21") in verification.detail
    short = tuple(c.public_bytes(Encoding.DER) for c in make_leaf(
        make_intermediate(root, "Shallow", not_before=NOW - DAY, not_after=NOW + 800 * DAY),
        ["svc.test"], not_before=NOW - DAY, not_after=NOW + 90 * DAY).chain())
    assert verify_chain(parse_chain(short), TrustStore.of([root.cert]), "svc.test", NOW).ok


def test_credentials_that_worked_are_not_starved_by_guessing() -> None:
    """A valid login not in the cache waited 3.7 s behind 40 parallel wrong guesses."""
    import bcrypt

    stored = bcrypt.hashpw(b"secret", bcrypt.gensalt(4))
    now = [0.0]
    bcrypt_seconds = 0.05

    def slow_checkpw(password: bytes, hashed: bytes) -> bool:
        time.sleep(bcrypt_seconds)  # a realistic cost, without burning the CPU
        return bcrypt.checkpw(password, hashed)

    async def scenario() -> tuple[int, float]:
        auth = BasicAuth((("prometheus", stored),), cache_ttl=300, clock=lambda: now[0],
                         checkpw=slow_checkpw)
        assert await auth.check(basic("prometheus", "secret"))  # it worked once
        now[0] += 301  # its cache entry expires while someone guesses
        done: list[bool] = []

        async def guess(i: int) -> None:
            done.append(await auth.check(basic("prometheus", f"guess{i}")))

        guesses = [asyncio.create_task(guess(i)) for i in range(40)]
        await asyncio.sleep(0)  # every guess is queued first
        started = time.monotonic()
        assert await auth.check(basic("prometheus", "secret"))
        took = time.monotonic() - started
        finished_before = len(done)
        await asyncio.gather(*guesses)
        assert done == [False] * 40
        return finished_before, took

    finished_before, took = asyncio.run(scenario())
    # Two guesses run at a time: behind all 40 the scrape would wait 20 bcrypts.
    assert finished_before <= 4 and took < 8 * bcrypt_seconds, (finished_before, took)
