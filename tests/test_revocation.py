"""Revocation over real servers on loopback: stapled OCSP, CRLs and AIA OCSP (issue 12).

Every certificate, CRL and OCSP response is made here (cryptography's builders); the TLS
servers staple with pyOpenSSL, the CRLs and responders are a real HTTP server. The
misbehaving ones (slow, huge, garbage, a closed port) must cost one bounded wait and
leave the expiry judgement as it was.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from certwatch.config import build_inventory
from certwatch.config.refusals import shipped_policy
from certwatch.core.assess import Assessment
from certwatch.core.revocation import RevocationSource, check_ocsp
from certwatch.core.vocabulary import State
from certwatch.render.report import assessment_to_dict, render_table
from certwatch.sources.revocation import RefusalChecks, RevocationFetcher
from certwatch.sources.wire import Prober
from certwatch.sweep import sweep
from tests.pki import Issued, make_intermediate, make_leaf, make_root
from tests.revocation_servers import (
    EvidenceServer,
    StaplingTLSServer,
    aia_ocsp,
    cdp,
    make_crl,
    make_ocsp_response,
    must_staple,
    ocsp_signing,
)
from tests.servers import TLSServer, closed_port

NOW = datetime.now(timezone.utc)
DAY = timedelta(days=1)
NAME = "svc.test"


@dataclass
class PKI:
    root: Issued
    intermediate: Issued
    directory: Path
    root_pem: Path
    http: EvidenceServer

    def leaf(self, stem: str, *extensions: Any, left: float = 60) -> tuple[Issued, tuple[Path, Path]]:
        leaf = make_leaf(self.intermediate, [NAME], not_before=NOW - 400 * DAY, not_after=NOW + left * DAY,
                         extra_extensions=list(extensions))
        return leaf, leaf.write(self.directory, stem)


@pytest.fixture(scope="module")
def http() -> Iterator[EvidenceServer]:
    with EvidenceServer() as server:
        yield server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory, http: EvidenceServer) -> PKI:
    directory = tmp_path_factory.mktemp("revocation")
    root = make_root("Revocation Test Root", not_before=NOW - 3650 * DAY, not_after=NOW + 3650 * DAY)
    intermediate = make_intermediate(root, "Revocation Test CA", not_before=NOW - 365 * DAY,
                                     not_after=NOW + 1000 * DAY)
    root_pem = directory / "root.pem"
    root_pem.write_bytes(root.cert_pem)
    return PKI(root, intermediate, directory, root_pem, http)


def check(pki: PKI, server: Any, *, revocation: Any = None, timeout: float = 5,
          count: int = 1, refusals: RefusalChecks | None = None) -> list[Assessment]:
    entry: dict[str, Any] = {"host": server.host, "port": server.port, "server_name": NAME}
    if revocation is not None:
        entry["revocation"] = revocation
    document = {"defaults": {"ca_file": str(pki.root_pem), "system_trust": False,
                             "timeout": timeout},
                "endpoints": [{**entry, "name": f"t{i}"} for i in range(count)]}
    inventory = build_inventory(document, source="test")

    async def run() -> list[Assessment]:
        checks = refusals or RefusalChecks(shipped_policy())
        try:
            return await sweep(inventory.endpoints, Prober(), refusals=checks)
        finally:
            if refusals is None:
                await checks.aclose()

    return asyncio.run(run())


def one(pki: PKI, server: Any, **kwargs: Any) -> Assessment:
    (result,) = check(pki, server, **kwargs)
    return result


def revocation_of(a: Assessment) -> dict[str, Any]:
    shown = assessment_to_dict(a)
    return {k: shown[k] for k in ("revocation_status", "revocation_source", "revocation_reason")}


# --- stapled OCSP ----------------------------------------------------------------------------


def staple_for(pki: PKI, leaf: Issued, status: ocsp.OCSPCertStatus, **kwargs: Any) -> bytes:
    kwargs.setdefault("this_update", NOW - timedelta(hours=1))
    kwargs.setdefault("next_update", NOW + 3 * DAY)
    return make_ocsp_response(leaf.cert, pki.intermediate, status, **kwargs)


def test_a_stapled_revoked_response_makes_the_target_critical(pki: PKI) -> None:
    leaf, files = pki.leaf("staple-revoked")
    with StaplingTLSServer(files, staple_for(pki, leaf, ocsp.OCSPCertStatus.REVOKED)) as server:
        result = one(pki, server)
        assert server.asked == 1  # the probe asked for the staple
    assert result.state is State.CRITICAL, result.summary
    assert "revoked" in result.reasons
    assert revocation_of(result) == {"revocation_status": "revoked", "revocation_source": "staple",
                                     "revocation_reason": None}
    shown = assessment_to_dict(result)
    assert shown["revocation_checks"][0]["revocation_reason"] == "keyCompromise"
    assert shown["revocation_checked_at"] is not None
    assert "revoked (staple)" in render_table([result])


def test_a_stapled_good_response(pki: PKI) -> None:
    leaf, files = pki.leaf("staple-good")
    with StaplingTLSServer(files, staple_for(pki, leaf, ocsp.OCSPCertStatus.GOOD)) as server:
        result = one(pki, server)
    assert (result.state, result.reasons) == (State.OK, ()), result.summary
    assert revocation_of(result) == {"revocation_status": "good", "revocation_source": "staple",
                                     "revocation_reason": None}
    assert result.observation.tls_version in ("TLSv1.2", "TLSv1.3")


def test_a_delegated_responder_may_sign_the_staple(pki: PKI) -> None:
    responder = make_leaf(pki.intermediate, ["ocsp.test"], not_before=NOW - DAY,
                          not_after=NOW + 30 * DAY, extra_extensions=[ocsp_signing()])
    leaf, files = pki.leaf("staple-delegated")
    staple = staple_for(pki, leaf, ocsp.OCSPCertStatus.GOOD, responder=responder)
    with StaplingTLSServer(files, staple) as server:
        result = one(pki, server)
    assert revocation_of(result)["revocation_status"] == "good", result.refusals


@pytest.mark.parametrize(("case", "reason"), [
    ("unknown", "unknown_certificate"),
    ("expired", "stale"),
    ("wrong_key", "bad_signature"),
    ("garbage", "malformed"),
])
def test_a_staple_that_cannot_be_trusted_is_named_and_soft_fails(pki: PKI, case: str,
                                                                 reason: str) -> None:
    leaf, files = pki.leaf(f"staple-{case}")
    if case == "unknown":
        staple = staple_for(pki, leaf, ocsp.OCSPCertStatus.UNKNOWN)
    elif case == "expired":
        staple = staple_for(pki, leaf, ocsp.OCSPCertStatus.REVOKED,
                            this_update=NOW - 10 * DAY, next_update=NOW - 3 * DAY)
    elif case == "wrong_key":
        rogue = make_root("Rogue Responder", not_before=NOW - DAY, not_after=NOW + DAY)
        staple = staple_for(pki, leaf, ocsp.OCSPCertStatus.REVOKED, responder=rogue)
    else:
        staple = b"\x30\x03\x0a\x01\x00" + b"garbage"
    with StaplingTLSServer(files, staple) as server:
        result = one(pki, server)
    # Unknown is soft-fail: the state is the expiry judgement's (60 days left: ok).
    assert (result.state, result.reasons) == (State.OK, ()), result.summary
    assert revocation_of(result) == {"revocation_status": "unknown", "revocation_source": None,
                                     "revocation_reason": reason}


def test_a_response_about_another_certificate(pki: PKI) -> None:
    """Judged directly: OpenSSL's server side will not staple a response that is not
    about its own certificate, so no loopback server can send this one."""
    leaf, _ = pki.leaf("other-a")
    other, _ = pki.leaf("other-b")
    response = staple_for(pki, other, ocsp.OCSPCertStatus.REVOKED)
    check = check_ocsp(response, leaf.cert, pki.intermediate.cert, position=0,
                       source=RevocationSource.STAPLE, now=NOW, obtained_at=NOW)
    assert (check.status.value, check.reason) == ("unknown", "wrong_certificate")
    assert check_ocsp(response, other.cert, pki.intermediate.cert, position=0,
                      source=RevocationSource.STAPLE, now=NOW,
                      obtained_at=NOW).status.value == "revoked"


def test_must_staple_without_a_staple_is_flagged(pki: PKI) -> None:
    _, files = pki.leaf("must-staple", must_staple())
    with TLSServer({None: files}) as server:  # the stdlib server cannot staple
        result = one(pki, server)
        relaxed = one(pki, server, revocation={"staple": False})
    assert result.state is State.CRITICAL, result.summary
    assert result.reasons == ("must_staple_missing",)
    assert assessment_to_dict(result)["must_staple_missing"] is True
    # With the staple check turned off nothing is asked, and nothing flagged.
    assert (relaxed.state, relaxed.reasons) == (State.OK, ())


def test_must_staple_with_its_staple_is_fine(pki: PKI) -> None:
    leaf, files = pki.leaf("must-staple-ok", must_staple())
    with StaplingTLSServer(files, staple_for(pki, leaf, ocsp.OCSPCertStatus.GOOD)) as server:
        result = one(pki, server)
    assert (result.state, result.reasons) == (State.OK, ()), result.summary


# --- CRLs ----------------------------------------------------------------------------------------


def serve_crl(pki: PKI, path: str, revoked: tuple[int, ...] = (), **kwargs: Any) -> str:
    kwargs.setdefault("last_update", NOW - timedelta(hours=1))
    kwargs.setdefault("next_update", NOW + 7 * DAY)
    pki.http.files[path] = make_crl(pki.intermediate, revoked, **kwargs)
    return pki.http.url(path)


def test_a_crl_listing_the_leaf_makes_it_critical(pki: PKI) -> None:
    url = pki.http.url("/listed.crl")
    leaf, files = pki.leaf("crl-listed", cdp(url))
    serve_crl(pki, "/listed.crl", (leaf.cert.serial_number, 12345))
    with TLSServer({None: files}) as server:
        result = one(pki, server)
    assert result.state is State.CRITICAL, result.summary
    assert result.reasons == ("revoked",)
    assert revocation_of(result) == {"revocation_status": "revoked", "revocation_source": "crl",
                                     "revocation_reason": None}
    assert "lists serial" in result.summary


def test_a_crl_not_listing_the_leaf(pki: PKI) -> None:
    url = serve_crl(pki, "/clean.crl", (12345,))
    _, files = pki.leaf("crl-clean", cdp(url))
    with TLSServer({None: files}) as server:
        result = one(pki, server)
    assert (result.state, result.reasons) == (State.OK, ()), result.summary
    assert revocation_of(result)["revocation_status"] == "good"
    check_shown = assessment_to_dict(result)["revocation_checks"][0]
    assert (check_shown["source"], check_shown["url"]) == ("crl", url)
    assert check_shown["next_update"] is not None


def test_an_intermediate_listed_in_the_roots_crl(pki: PKI) -> None:
    url = pki.http.url("/root.crl")
    revoked_ca = make_intermediate(pki.root, "Revoked CA", not_before=NOW - DAY,
                                   not_after=NOW + 900 * DAY)
    # The intermediate names its CRL (the root's), which lists it.
    revoked_ca = Issued(_with_cdp(revoked_ca, pki.root, url), revoked_ca.key, pki.root)
    pki.http.files["/root.crl"] = make_crl(pki.root, (revoked_ca.cert.serial_number,),
                                           last_update=NOW - DAY, next_update=NOW + 30 * DAY)
    leaf = make_leaf(revoked_ca, [NAME], not_before=NOW - 400 * DAY, not_after=NOW + 60 * DAY)
    with TLSServer({None: leaf.write(pki.directory, "crl-intermediate")}) as server:
        result = one(pki, server)
    assert result.state is State.CRITICAL, result.summary
    assert "certificate 1 is revoked" in result.summary


def _with_cdp(ca: Issued, parent: Issued, url: str) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = ca.cert
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
               .public_key(cert.public_key()).serial_number(cert.serial_number)
               .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc))
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    builder = builder.add_extension(*cdp(url))
    return builder.sign(parent.key, hashes.SHA256())


def test_one_crl_serves_every_target_under_the_ca(pki: PKI) -> None:
    url = serve_crl(pki, "/shared.crl")
    _, files = pki.leaf("crl-shared", cdp(url))
    with TLSServer({None: files}) as server:
        results = check(pki, server, count=8)
        # The same checker again (as the daemon keeps it): served from its cache.
        checks = RefusalChecks(shipped_policy())
        try:
            check(pki, server, refusals=checks)
            check(pki, server, refusals=checks)
        finally:
            asyncio.run(checks.aclose())
    assert {revocation_of(r)["revocation_status"] for r in results} == {"good"}
    # 8 concurrent targets, one fetch; then one more for the second checker's first sweep.
    assert pki.http.requests["/shared.crl"] == 2


@pytest.mark.parametrize(("path", "reason"), [
    ("/slow", "unreachable"),  # the whole fetch has one deadline, however it drips
    ("/huge", "too_large"),
    ("/garbage", "malformed"),
    ("/missing.crl", "unreachable"),  # a 404
    ("closed", "unreachable"),
])
def test_a_crl_that_cannot_be_had_is_soft_fail_and_bounded(pki: PKI, path: str,
                                                           reason: str) -> None:
    url = f"http://127.0.0.1:{closed_port()}/ca.crl" if path == "closed" else pki.http.url(path)
    _, files = pki.leaf(f"crl-{path.strip('/').replace('.', '-')}", cdp(url), left=20)
    with TLSServer({None: files}) as server:
        start = time.monotonic()
        result = one(pki, server, revocation={"timeout": 1})
        elapsed = time.monotonic() - start
    # The expiry judgement stands (20 days: a warning), whatever happened to the fetch.
    assert (result.state, result.reasons) == (State.WARNING, ("expiring",)), result.summary
    assert result.days_left == pytest.approx(20, abs=0.01)
    assert revocation_of(result) == {"revocation_status": "unknown", "revocation_source": None,
                                     "revocation_reason": reason}
    assert elapsed < 1 + 1.5  # one revocation deadline, plus the handshake


def test_a_fetch_still_queued_reports_pending_and_serves_the_next_probe(pki: PKI) -> None:
    """One fetch at a time: a slow CRL holds the only slot, so another target's CRL waits
    past that target's deadline (pending), then arrives and serves its next probe."""
    checks = RefusalChecks(shipped_policy(), RevocationFetcher(concurrency=1))
    slow_url = pki.http.url("/slow")
    _, slow_files = pki.leaf("queue-slow", cdp(slow_url))
    url = pki.http.url("/queued.crl")
    leaf, files = pki.leaf("queue-listed", cdp(url))
    serve_crl(pki, "/queued.crl", (leaf.cert.serial_number,))

    def endpoint(server: Any, timeout: float) -> Any:
        return build_inventory({"endpoints": [{
            "host": server.host, "port": server.port, "server_name": NAME,
            "ca_file": str(pki.root_pem), "system_trust": False,
            "revocation": {"timeout": timeout}}]}, source="test").endpoints

    async def probes(slow: Any, listed: Any) -> tuple[Assessment, Assessment]:
        try:
            holding = asyncio.create_task(sweep(endpoint(slow, 1.5), Prober(), refusals=checks))
            await asyncio.sleep(0.3)
            (first,) = await sweep(endpoint(listed, 0.3), Prober(), refusals=checks)
            await holding
            await asyncio.sleep(0.3)  # the queued fetch (0.3 s at most) has run by now
            (second,) = await sweep(endpoint(listed, 0.3), Prober(), refusals=checks)
            return first, second
        finally:
            await checks.aclose()

    with TLSServer({None: slow_files}) as slow, TLSServer({None: files}) as listed:
        first, second = asyncio.run(probes(slow, listed))
    assert revocation_of(first)["revocation_reason"] == "pending"
    assert first.state is State.OK
    assert revocation_of(second)["revocation_status"] == "revoked"
    assert second.state is State.CRITICAL


def test_a_crl_signed_by_another_key(pki: PKI) -> None:
    url = pki.http.url("/forged.crl")
    leaf, files = pki.leaf("crl-forged", cdp(url))
    pki.http.files["/forged.crl"] = make_crl(pki.intermediate, (leaf.cert.serial_number,),
                                             last_update=NOW - DAY, next_update=NOW + DAY,
                                             signer=ec.generate_private_key(ec.SECP256R1()))
    with TLSServer({None: files}) as server:
        result = one(pki, server)
    assert (result.state, result.reasons) == (State.OK, ()), result.summary
    assert revocation_of(result)["revocation_reason"] == "bad_signature"


def test_a_stale_crl_is_unknown(pki: PKI) -> None:
    url = serve_crl(pki, "/stale.crl", last_update=NOW - 10 * DAY, next_update=NOW - DAY)
    _, files = pki.leaf("crl-stale", cdp(url))
    with TLSServer({None: files}) as server:
        result = one(pki, server)
    assert revocation_of(result)["revocation_reason"] == "stale"
    assert result.state is State.OK


def test_crl_checks_can_be_turned_off(pki: PKI) -> None:
    url = pki.http.url("/off.crl")
    leaf, files = pki.leaf("crl-off", cdp(url))
    serve_crl(pki, "/off.crl", (leaf.cert.serial_number,))
    with TLSServer({None: files}) as server:
        off = one(pki, server, revocation=False)
    assert (off.state, off.reasons) == (State.OK, ())
    assert revocation_of(off)["revocation_reason"] == "not_checked"
    assert pki.http.requests["/off.crl"] == 0


# --- OCSP from the AIA responder -------------------------------------------------------------------


def test_aia_ocsp_is_asked_only_when_turned_on(pki: PKI) -> None:
    url = pki.http.url("/ocsp")
    leaf, files = pki.leaf("aia-ocsp", aia_ocsp(url))
    pki.http.ocsp["/ocsp"] = lambda request: staple_for(pki, leaf, ocsp.OCSPCertStatus.REVOKED)
    with TLSServer({None: files}) as server:
        default = one(pki, server)
        assert pki.http.requests["/ocsp"] == 0
        asked = one(pki, server, revocation={"ocsp": True})
    assert (default.state, revocation_of(default)["revocation_reason"]) == (State.OK, "not_checked")
    assert asked.state is State.CRITICAL, asked.summary
    assert revocation_of(asked) == {"revocation_status": "revoked", "revocation_source": "ocsp",
                                    "revocation_reason": None}
    assert pki.http.requests["/ocsp"] == 1


def test_aia_ocsp_good_and_its_request(pki: PKI) -> None:
    url = pki.http.url("/ocsp-good")
    leaf, files = pki.leaf("aia-good", aia_ocsp(url))
    seen: list[bytes] = []

    def responder(request: bytes) -> bytes:
        seen.append(request)
        return staple_for(pki, leaf, ocsp.OCSPCertStatus.GOOD)

    pki.http.ocsp["/ocsp-good"] = responder
    with TLSServer({None: files}) as server:
        result = one(pki, server, revocation={"ocsp": True})
    assert revocation_of(result)["revocation_status"] == "good"
    assert ocsp.load_der_ocsp_request(seen[0]).serial_number == leaf.cert.serial_number
