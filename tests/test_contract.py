"""The output contract: `/metrics`, `check --format json`, the API and the alerts, byte for byte.

A fixed set of targets in every state (certificates stored in tests/contract/, the clock
fixed) is rendered by the real code and compared with the files recorded beside them.
A refactoring must leave every byte as it was; a change of the contract is made on
purpose, by re-recording (`CERTWATCH_RECORD_CONTRACT=1 pytest tests/test_contract.py`)
and reviewing the diff of tests/contract/.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from dataclasses import replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certwatch.core.alerts import AlertPolicy, decide
from certwatch.config.refusals import shipped_policy
from certwatch.core.assess import assess as assess_expiry
from certwatch.core.refusals import judge_refusals
from certwatch.core.revocation import index_crl
from certwatch.core.x509 import sha256_hex
from certwatch.core.verify import TrustStore
from certwatch.config import build_inventory
from certwatch.render.exposition import EXTRA_GROUPS, TargetExposition
from certwatch.core.observation import Observation, ProbeError, Target
from certwatch.render.report import assessment_to_dict, open_alerts_by_target, status_to_dict
from certwatch.core.status import TargetStatus, merge

HERE = Path(__file__).parent / "contract"
POLICY = shipped_policy()
RECORD = os.environ.get("CERTWATCH_RECORD_CONTRACT") == "1"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)

# name -> inventory entry; the certificates each is served are in CERTIFICATES below.
ENTRIES: list[dict[str, Any]] = [
    {"name": "ok", "host": "ok.contract.test", "labels": {"team": "payments", "env": "prod"}},
    {"name": "warning", "host": "warning.contract.test", "labels": {"team": "web"}},
    {"name": "critical", "host": "critical.contract.test"},
    {"name": "expired", "host": "expired.contract.test", "warn_days": 40, "critical_days": 10},
    {"name": "self-signed", "host": "self.contract.test"},
    {"name": "wrong-name", "host": "wrong.contract.test"},
    {"name": "short-intermediate", "host": "short.contract.test"},
    {"name": "not-verified", "host": "self.contract.test", "verify": False},
    {"name": "mail", "url": "smtp://mail.contract.test:587", "addresses": "ipv6"},
    {"name": "no-dns", "host": "nowhere.contract.test"},
    {"name": "refused", "host": "127.0.0.9", "port": 8443},
    {"name": "carried", "host": "carried.contract.test", "labels": {"env": "staging"}},
    {"name": "client-cert-required", "host": "mtls.contract.test"},
    {"name": "malformed", "host": "bad.contract.test"},
    # issue 12: a CRL lists this one; the next staples a good OCSP response, under a
    # root taken as publicly trusted (it has no SCTs: a CT policy lint).
    {"name": "revoked", "host": "revoked.contract.test"},
    {"name": "stapled", "host": "stapled.contract.test"},
]
CRL_URL = "http://crl.contract.test/ca.crl"


def _record_certificates() -> dict[str, list[str]]:
    """Makes the contract's PKI once (run only when recording)."""
    from tests.pki import make_intermediate, make_leaf, make_root

    def at(days: float) -> datetime:
        return NOW + days * DAY

    root = make_root("Contract Root", not_before=at(-3650), not_after=at(3650))
    ca = make_intermediate(root, "Contract CA", not_before=at(-365), not_after=at(1000))
    short_ca = make_intermediate(root, "Contract Short CA", not_before=at(-365), not_after=at(9))

    def leaf(name: str, left: float, parent: Any = ca, names: list[str] | None = None) -> list[x509.Certificate]:
        issued = make_leaf(parent, names or [name], not_before=at(min(left - 90, -30)),
                           not_after=at(left),
                           serial=abs(hash((name, left))) % 2**63 or 1)
        return issued.chain()

    chains = {
        "root": [root.cert],
        "ok": leaf("ok.contract.test", 80),
        "warning": leaf("warning.contract.test", 20),
        "critical": leaf("critical.contract.test", 5),
        "expired": leaf("expired.contract.test", -3),
        "self-signed": leaf("self.contract.test", 200, parent=None),
        "wrong-name": leaf("other.contract.test", 60),
        "short-intermediate": leaf("short.contract.test", 70, parent=short_ca),
        "mail": leaf("mail.contract.test", 45, names=["mail.contract.test", "::1"]),
        "carried-old": leaf("carried.contract.test", 25),
        "client-cert-required": leaf("mtls.contract.test", 33),
    }
    return {name: [base64.b64encode(c.public_bytes(Encoding.DER)).decode() for c in certs]
            for name, certs in chains.items()}


def _certificates() -> dict[str, tuple[bytes, ...]]:
    path = HERE / "certificates.json"
    if RECORD and not path.exists():
        HERE.mkdir(exist_ok=True)
        path.write_text(json.dumps(_record_certificates(), indent=1) + "\n")
    stored = json.loads(path.read_text())
    return {name: tuple(base64.b64decode(c) for c in chain) for name, chain in stored.items()}


def _record_revocation() -> dict[str, list[str]]:
    """A second PKI for the revocation targets, with its CRL and a staple (made once)."""
    from cryptography.x509 import ocsp

    from tests.pki import make_intermediate, make_leaf, make_root
    from tests.revocation_servers import cdp, make_crl, make_ocsp_response

    root = make_root("Contract Public Root", not_before=NOW - 3650 * DAY, not_after=NOW + 3650 * DAY)
    ca = make_intermediate(root, "Contract Public CA", not_before=NOW - 365 * DAY,
                           not_after=NOW + 1000 * DAY)
    revoked = make_leaf(ca, ["revoked.contract.test"], not_before=NOW - 10 * DAY,
                        not_after=NOW + 50 * DAY, serial=0x12C, extra_extensions=[cdp(CRL_URL)])
    stapled = make_leaf(ca, ["stapled.contract.test"], not_before=NOW - 10 * DAY,
                        not_after=NOW + 60 * DAY, serial=0x12D)
    crl = make_crl(ca, (0x12C,), last_update=NOW - DAY, next_update=NOW + 6 * DAY)
    staple = make_ocsp_response(stapled.cert, ca, ocsp.OCSPCertStatus.GOOD,
                                this_update=NOW - timedelta(hours=2),
                                next_update=NOW + 3 * DAY)

    def b64(*items: bytes) -> list[str]:
        return [base64.b64encode(item).decode() for item in items]

    der = Encoding.DER
    return {"root": b64(root.cert.public_bytes(der)),
            "revoked": b64(*(c.public_bytes(der) for c in revoked.chain())),
            "stapled": b64(*(c.public_bytes(der) for c in stapled.chain())),
            "crl": b64(crl), "staple": b64(staple)}


def _revocation_material() -> dict[str, tuple[bytes, ...]]:
    path = HERE / "revocation.json"
    if RECORD and not path.exists():
        path.write_text(json.dumps(_record_revocation(), indent=1) + "\n")
    stored = json.loads(path.read_text())
    return {name: tuple(base64.b64decode(c) for c in items) for name, items in stored.items()}


class _Evidence:
    """The contract's CRL, as the fetcher would have it."""

    def __init__(self, crl: bytes) -> None:
        self._crl = index_crl(crl, CRL_URL, NOW - timedelta(minutes=20))

    def crl(self, url: str) -> Any:
        return self._crl if url == CRL_URL else None

    def ocsp(self, url: str, request: bytes) -> None:
        return None


def _statuses() -> list[TargetStatus]:
    certs = _certificates()
    extra = _revocation_material()
    public_root = x509.load_der_x509_certificate(extra["root"][0])
    trust = TrustStore.of([x509.load_der_x509_certificate(certs["root"][0]), public_root])
    evidence = _Evidence(extra["crl"][0])
    public = frozenset({sha256_hex(public_root)})

    def assess(observation: Observation, now: datetime, store: TrustStore) -> Any:
        """As the sweep judges: expiry first, then the refusals (with the contract's CRL)."""
        judged = assess_expiry(observation, now, store)
        return judge_refusals(judged, store, observation.target.endpoint.revocation, evidence,
                              POLICY, now, public_roots=public)
    inventory = build_inventory({"endpoints": ENTRIES}, source="contract")
    endpoints = {e.name: e for e in inventory.endpoints}

    def seen(name: str, address: str | None, *, chain: tuple[bytes, ...] = (),
             error: ProbeError | None = None, at: datetime = NOW) -> Observation:
        return Observation(Target(endpoints[name], address), at, 0.0421, chain=chain,
                           tls_version="TLSv1.3" if chain and error is None else None,
                           cipher="TLS_AES_128_GCM_SHA256" if chain and error is None else None,
                           error=error)

    observations = {
        "ok": [seen("ok", "127.0.0.1", chain=certs["ok"])],
        "warning": [seen("warning", "127.0.0.2", chain=certs["warning"])],
        "critical": [seen("critical", "127.0.0.3", chain=certs["critical"])],
        "expired": [seen("expired", "127.0.0.4", chain=certs["expired"])],
        "self-signed": [seen("self-signed", "127.0.0.5", chain=certs["self-signed"])],
        "wrong-name": [seen("wrong-name", "127.0.0.6", chain=certs["wrong-name"])],
        "short-intermediate": [seen("short-intermediate", "127.0.0.7",
                                    chain=certs["short-intermediate"])],
        "not-verified": [seen("not-verified", "127.0.0.8", chain=certs["self-signed"])],
        "mail": [seen("mail", "::1", chain=certs["mail"])],
        "no-dns": [seen("no-dns", None, error=ProbeError("dns", "dns", "Name or service not known"))],
        "refused": [seen("refused", "127.0.0.9",
                         error=ProbeError("refused", "connect", "connection refused"))],
        "client-cert-required": [seen(
            "client-cert-required", "127.0.0.11", chain=certs["client-cert-required"],
            error=ProbeError("handshake", "handshake",
                             "peer rejected the handshake (tlsv13 alert certificate required); "
                             "it may require a client certificate"))],
        "malformed": [seen("malformed", "127.0.0.12", chain=(b"\x30\x03\x02\x01\x00",))],
        "revoked": [seen("revoked", "127.0.0.13", chain=extra["revoked"])],
        "stapled": [replace(seen("stapled", "127.0.0.14", chain=extra["stapled"]),
                            ocsp_staple=extra["staple"][0])],
    }
    statuses: list[TargetStatus] = []
    for name, seen_now in observations.items():
        fresh = [assess(o, NOW, trust) for o in seen_now]
        statuses += merge([], fresh, endpoints[name], lambda o: assess(o, NOW, trust))
    # A target whose certificate was read an hour ago and whose latest two probes failed.
    carried = endpoints["carried"]
    earlier = assess(seen("carried", "127.0.0.10", chain=certs["carried-old"],
                          at=NOW - timedelta(hours=1)), NOW - timedelta(hours=1), trust)
    known = merge([], [earlier], carried, lambda o: assess(o, NOW, trust))
    for minutes in (30, 0):
        moment = NOW - timedelta(minutes=minutes)
        failed = assess(seen("carried", "127.0.0.10", at=moment,
                             error=ProbeError("timeout", "handshake", "no answer within 10s")),
                        moment, trust)
        known = merge(known, [failed], carried, lambda o: assess(o, NOW, trust))
    return statuses + known


def _outputs() -> dict[str, str]:
    statuses = _statuses()
    check = json.dumps([assessment_to_dict(s.assessment) for s in statuses], indent=2) + "\n"
    changes, notices = decide({}, statuses, NOW, AlertPolicy(probe_failures=2,
                                                             external_url="https://cw.test"))
    open_alerts = {key: alert for key, alert in changes.items() if alert is not None}
    last = {n.alert_key: {"action": n.action, "sinks": {
        "pager": {"status": "delivered", "attempts": 1, "error": None, "delivered_at": None}}}
        for n in notices}
    alerts = open_alerts_by_target(open_alerts, last)
    api = json.dumps([status_to_dict(s, NOW + timedelta(minutes=55), alerts.get(s.target.key))
                      for s in statuses], indent=1) + "\n"
    metrics = TargetExposition(lambda: statuses, lambda: 1.25).render()
    every_group = TargetExposition(lambda: statuses, lambda: 1.25,
                                   lambda: frozenset(EXTRA_GROUPS)).render()
    notifications = json.dumps([n.to_dict() for n in notices], indent=1) + "\n"
    return {"check.json": check, "api.json": api, "metrics.txt": metrics,
            "metrics-every-group.txt": every_group, "notifications.json": notifications}


def test_every_state_is_covered() -> None:
    states = {s.state.value for s in _statuses()}
    assert states == {"ok", "warning", "critical", "expired", "error"}


@pytest.mark.parametrize("name", ["check.json", "api.json", "metrics.txt",
                                  "metrics-every-group.txt", "notifications.json"])
def test_output_is_unchanged(name: str) -> None:
    produced = _outputs()[name]
    path = HERE / name
    if RECORD:
        path.write_text(produced)
    assert produced == path.read_text(), f"{name} differs from the recorded contract"
