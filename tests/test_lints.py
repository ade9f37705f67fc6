"""Certificate Transparency and root-program lints (issue 12): publicly trusted chains only.

"Publicly trusted" means the path ends at one of the system's roots. The tests make a
root "public" by handing it to TrustStores as the system's roots (real handshakes, real
servers); the same chain under a `ca_file` root is a private CA's and gets no lints.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certwatch.config import ConfigError, build_inventory, parse_inventory
from certwatch.config.refusals import load_ct_log_list, policy_for, shipped_distrust, shipped_policy
from certwatch.core.assess import Assessment, assess
from certwatch.core.ctpolicy import CTLog, CTLogList, SCT, judge_ct
from certwatch.core.inventory import Endpoint
from certwatch.core.observation import Observation, Target
from certwatch.core.refusals import Policy, judge_refusals
from certwatch.core.rootprograms import DistrustRule, maximum_validity, validity_of
from certwatch.core.verify import TrustStore
from certwatch.core.vocabulary import State
from certwatch.core.x509 import parse_certificate, sha256_hex
from certwatch.render.report import assessment_to_dict
from certwatch.sources.revocation import RefusalChecks
from certwatch.sources.trust import TrustStores
from certwatch.sources.wire import Prober
from certwatch.sweep import sweep
from tests.pki import Issued, make_intermediate, make_leaf, make_root
from tests.revocation_servers import embedded_scts
from tests.servers import TLSServer

NOW = datetime.now(timezone.utc)
DAY = timedelta(days=1)
NAME = "svc.test"
GOOGLE, CLOUDFLARE, DIGICERT = (hashlib.sha256(n.encode()).digest() for n in "gcd")
UNLISTED = hashlib.sha256(b"not in the list").digest()
LOGS = CTLogList({
    GOOGLE: CTLog(GOOGLE, "Google", "test log g", "usable"),
    CLOUDFLARE: CTLog(CLOUDFLARE, "Cloudflare", "test log c", "usable"),
    DIGICERT: CTLog(DIGICERT, "DigiCert", "test log d", "usable"),
}, "test", NOW - 30 * DAY, "test")


@pytest.fixture(scope="module")
def cas() -> tuple[Issued, Issued]:
    root = make_root("Public Test Root", not_before=NOW - 3650 * DAY, not_after=NOW + 3650 * DAY)
    ca = make_intermediate(root, "Public Test CA", not_before=NOW - 365 * DAY,
                           not_after=NOW + 1000 * DAY)
    return root, ca


def leaf(ca: Issued, *scts: tuple[bytes, datetime], days: float = 90,
         not_before: datetime | None = None) -> Issued:
    start = not_before or NOW - DAY
    extensions = [embedded_scts(*scts)] if scts else []
    return make_leaf(ca, [NAME], not_before=start, not_after=start + days * DAY,
                     extra_extensions=extensions)


def judged(issued: Issued, root: Issued, *, public: bool, policy: Policy | None = None,
           now: datetime = NOW) -> Assessment:
    """Assessment level: the observation of this chain, judged with `root` trusted."""
    endpoint = Endpoint(name="svc", host=NAME, port=443, server_name=NAME)
    chain = tuple(c.public_bytes(Encoding.DER) for c in issued.chain())
    observation = Observation(Target(endpoint, "127.0.0.1"), now, 0.01, chain=chain,
                              tls_version="TLSv1.3")
    trust = TrustStore.of([root.cert])
    a = assess(observation, now, trust)
    return judge_refusals(a, trust, endpoint.revocation, _NoEvidence(),
                          policy or Policy(LOGS, ()), now,
                          public_roots=frozenset({sha256_hex(root.cert)}) if public else frozenset())


class _NoEvidence:
    def crl(self, url: str) -> None:
        return None

    def ocsp(self, url: str, request: bytes) -> None:
        return None


# --- CT ---------------------------------------------------------------------------------------


def test_embedded_scts_from_two_operators_are_compliant(cas: tuple[Issued, Issued]) -> None:
    root, ca = cas
    result = judged(leaf(ca, (GOOGLE, NOW - DAY), (CLOUDFLARE, NOW - DAY)), root, public=True)
    assert (result.state, result.reasons) == (State.OK, ()), result.summary
    shown = assessment_to_dict(result)
    assert (shown["sct_count"], shown["sct_operators"], shown["lints"]) == (
        2, ["Cloudflare", "Google"], [])
    assert shown["publicly_trusted"] is True


@pytest.mark.parametrize(("scts", "days", "words"), [
    ((), 90, "no embedded SCTs"),
    (((GOOGLE, NOW - DAY),), 90, "1 qualifying log where Chrome needs 2"),
    (((GOOGLE, NOW - DAY), (GOOGLE, NOW - DAY)), 90, "1 log operator where Chrome needs 2"),
    (((GOOGLE, NOW - DAY), (CLOUDFLARE, NOW - DAY)), 190, "2 qualifying logs where Chrome needs 3"),
    (((GOOGLE, NOW - DAY), (UNLISTED, NOW - 40 * DAY)), 90, "from logs not in the log list"),
], ids=["none", "one", "one_operator", "long_lifetime", "unlisted_log"])
def test_scts_short_of_chromes_policy_are_a_warning(cas: tuple[Issued, Issued], scts: Any,
                                                    days: float, words: str) -> None:
    root, ca = cas
    result = judged(leaf(ca, *scts, days=days), root, public=True)
    assert result.state is State.WARNING, result.summary
    assert result.reasons == ("ct_not_compliant",)
    (lint,) = assessment_to_dict(result)["lints"]
    assert lint["code"] == "ct_not_compliant" and lint["severity"] == "warning"
    assert words in lint["detail"]


def test_an_sct_from_a_log_newer_than_the_list_gets_the_benefit_of_the_doubt() -> None:
    scts = (SCT(GOOGLE, NOW - DAY), SCT(UNLISTED, NOW - DAY))  # after the list's timestamp
    verdict = judge_ct(scts, timedelta(days=90), LOGS)
    assert verdict.compliant and verdict.unknown_logs == 1


def test_the_same_chain_under_a_private_root_gets_no_lints(cas: tuple[Issued, Issued]) -> None:
    root, ca = cas
    result = judged(leaf(ca), root, public=False)  # no SCTs at all
    assert (result.state, result.reasons) == (State.OK, ())
    shown = assessment_to_dict(result)
    assert (shown["publicly_trusted"], shown["lints"], shown["sct_count"]) == (False, [], 0)


# --- over real handshakes: public (system roots) and private (ca_file) -----------------------


def _sweep(files: tuple[Path, Path], root: Issued, tmp_path: Path, *, public: bool,
           policy: Policy) -> Assessment:
    with TLSServer({None: files}) as server:
        entry: dict[str, Any] = {"host": server.host, "port": server.port, "server_name": NAME,
                                 "revocation": False}
        if not public:
            (tmp_path / "private.pem").write_bytes(root.cert_pem)
            entry.update(ca_file=str(tmp_path / "private.pem"), system_trust=False)
        inventory = build_inventory({"endpoints": [entry]}, source="test")
        trust = TrustStores(system=lambda: [root.cert] if public else [])

        async def run() -> list[Assessment]:
            checks = RefusalChecks(policy)
            try:
                return await sweep(inventory.endpoints, Prober(), trust, refusals=checks)
            finally:
                await checks.aclose()

        (result,) = asyncio.run(run())
    return result


def test_lints_apply_to_a_chain_trusted_through_the_system_roots(cas: tuple[Issued, Issued],
                                                                 tmp_path: Path) -> None:
    root, ca = cas
    files = leaf(ca, (GOOGLE, NOW - DAY)).write(tmp_path, "public")
    public = _sweep(files, root, tmp_path, public=True, policy=Policy(LOGS, ()))
    private = _sweep(files, root, tmp_path, public=False, policy=Policy(LOGS, ()))
    assert (public.state, public.reasons) == (State.WARNING, ("ct_not_compliant",)), public.summary
    assert (private.state, private.reasons) == (State.OK, ()), private.summary
    assert assessment_to_dict(public)["sct_count"] == assessment_to_dict(private)["sct_count"] == 1


# --- SC-081 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("issued", "days", "allowed"), [
    (datetime(2026, 4, 1, tzinfo=timezone.utc), 200, 200),
    (datetime(2027, 3, 15, tzinfo=timezone.utc), 100, 100),
    (datetime(2029, 3, 15, tzinfo=timezone.utc), 47, 47),
    (datetime(2025, 6, 1, tzinfo=timezone.utc), 398, 398),
])
def test_maximum_validity_by_issuance_date(cas: tuple[Issued, Issued], issued: datetime,
                                           days: int, allowed: int) -> None:
    root, ca = cas
    at_limit = leaf(ca, not_before=issued, days=days - 1 / 86400)  # inclusive: one second more
    info = parse_certificate(at_limit.cert.public_bytes(Encoding.DER), 0)
    rule = maximum_validity(info)
    assert rule is not None and rule.days == allowed
    assert validity_of(info) <= timedelta(days=allowed)
    now = issued + DAY
    scts = ((GOOGLE, issued), (CLOUDFLARE, issued))
    ok = judged(leaf(ca, *scts, not_before=issued, days=days - 1 / 86400), root, public=True,
                policy=Policy(CTLogList(LOGS.logs, "t", None, "t"), ()), now=now)
    over = judged(leaf(ca, *scts, not_before=issued, days=days + 1), root, public=True,
                  policy=Policy(CTLogList(LOGS.logs, "t", None, "t"), ()), now=now)
    assert "validity_too_long" not in ok.reasons, ok.summary
    assert "validity_too_long" in over.reasons
    # 398 days is what Safari and Chrome already refuse; the SC-081 steps are warnings.
    assert over.state is (State.CRITICAL if allowed == 398 else State.WARNING)


# --- distrusted CAs ---------------------------------------------------------------------------------


def _rule(root: Issued, after: datetime, measure: str = "sct") -> DistrustRule:
    return DistrustRule("chrome", "Test CA", frozenset({sha256_hex(root.cert)}), after, measure,
                        "https://example.invalid/announcement", "2026-01-01")


def test_a_certificate_past_a_distrust_cutoff_is_critical(cas: tuple[Issued, Issued]) -> None:
    root, ca = cas
    rule = _rule(root, NOW - 10 * DAY)
    cert = leaf(ca, (GOOGLE, NOW - 2 * DAY), (CLOUDFLARE, NOW - 2 * DAY))
    result = judged(cert, root, public=True, policy=Policy(LOGS, (rule,)))
    assert result.state is State.CRITICAL, result.summary
    assert result.reasons == ("distrusted_ca",)
    assert "earliest SCT" in result.summary


def test_a_certificate_before_the_cutoff_warns_that_its_renewal_will_not_be(
        cas: tuple[Issued, Issued]) -> None:
    root, ca = cas
    rule = _rule(root, NOW - 10 * DAY, measure="not_before")
    cert = leaf(ca, (GOOGLE, NOW - 20 * DAY), (CLOUDFLARE, NOW - 20 * DAY),
                not_before=NOW - 20 * DAY)
    result = judged(cert, root, public=True, policy=Policy(LOGS, (rule,)))
    assert (result.state, result.reasons) == (State.WARNING, ("distrusted_at_renewal",))
    lint = assessment_to_dict(result)["lints"][0]
    assert "renewal" in lint["detail"] and lint["severity"] == "warning"


def test_the_shipped_distrust_table_names_its_sources() -> None:
    rules = shipped_distrust()
    assert {(r.program, r.ca) for r in rules} >= {("chrome", "Entrust"), ("mozilla", "Entrust"),
                                                  ("chrome", "Chunghwa Telecom"),
                                                  ("chrome", "NetLock")}
    assert all(r.source.startswith("https://") and r.announced for r in rules)
    entrust = next(r for r in rules if (r.program, r.ca) == ("chrome", "Entrust"))
    assert entrust.after == datetime(2024, 11, 11, 23, 59, 59, tzinfo=timezone.utc)
    assert entrust.measure == "sct" and len(entrust.roots) == 9


def test_an_inventory_extends_the_distrust_table(cas: tuple[Issued, Issued]) -> None:
    root, _ = cas
    inventory = parse_inventory(f"""
endpoints: [example.com]
distrust:
  - program: acme-corp
    ca: Old Internal CA
    roots: ["{sha256_hex(root.cert).upper()}"]
    after: 2025-01-01
    measure: not_before
    source: https://wiki.example.invalid/pki
""")
    (rule,) = inventory.distrust
    assert rule.roots == frozenset({sha256_hex(root.cert)})
    assert rule.after == datetime(2025, 1, 1, 23, 59, 59, tzinfo=timezone.utc)
    assert policy_for(inventory.distrust).distrust[-1] == rule
    with pytest.raises(ConfigError) as raised:
        parse_inventory("endpoints: [example.com]\ndistrust:\n  - program: x\n    ca: y\n"
                        "    roots: [abc]\n    after: soon\n    mesure: sct\n    source: s\n")
    text = str(raised.value)
    assert "line 5: distrust[0]: not a SHA-256 fingerprint" in text
    assert "'after' must be a date" in text and "did you mean 'measure'" in text


# --- the shipped log list ------------------------------------------------------------------------------


def test_the_shipped_log_list_is_chromes_format_with_consistent_ids() -> None:
    logs = shipped_policy().logs
    assert logs.version and logs.timestamp is not None
    assert {log.operator for log in logs.logs.values()} >= {"Google", "Cloudflare", "DigiCert",
                                                           "Let's Encrypt", "Sectigo"}
    path = Path(__file__).parents[1] / "certwatch" / "data" / "ct_log_list.json"
    for operator in json.loads(path.read_text())["operators"]:
        for entry in operator["logs"] + operator["tiled_logs"]:
            key_hash = hashlib.sha256(base64.b64decode(entry["key"])).digest()
            assert base64.b64decode(entry["log_id"]) == key_hash, entry["description"]
    with pytest.raises(ConfigError):
        load_ct_log_list("{}", "broken.json")


def test_real_sct_extension_parses(cas: tuple[Issued, Issued]) -> None:
    _, ca = cas
    cert = leaf(ca, (GOOGLE, NOW - DAY), (DIGICERT, NOW - 2 * DAY)).cert
    value = cert.extensions.get_extension_for_class(
        x509.PrecertificateSignedCertificateTimestamps).value
    assert [s.log_id for s in value] == [GOOGLE, DIGICERT]
