"""Absurd certificates and awkward names, over real handshakes on loopback (issue 6).

Each case ends in a classified Assessment within one phase deadline, leaves no file
descriptor or asyncio task behind, and never raises. The certificates are made here;
those cryptography's builder refuses to write (negative serials, reversed validity,
v1, raw name bytes) are edited as DER and signed again (tests/pki.py). A chain that
Python's ssl module cannot load is judged at the assessment level instead, from an
Observation built here as the probe would have built it; each such case says so.

Run with -s to see the report table: one "HOSTILE |" line per case.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from certwatch.core.assess import Assessment, assess
from certwatch.core.vocabulary import State
from certwatch.core.verify import TrustStore
from certwatch.sweep import sweep
from certwatch.config import build_inventory
from certwatch.core.inventory import Endpoint
from certwatch.core.observation import Observation, Target
from certwatch.sources.wire import Prober
from certwatch.render.report import assessment_to_dict, render_table
from tests.pki import (
    Issued,
    as_version_1,
    der_name,
    make_ca_chain,
    make_intermediate,
    make_leaf,
    make_leaf_with_key,
    make_root,
    weak_rsa_key,
    with_names,
    with_serial,
    with_validity,
    write_chain,
)
from tests.servers import TLSServer

NOW = datetime.now(timezone.utc)
DAY = timedelta(days=1)
TIMEOUT = 5.0  # each phase's deadline; no case here should come near it
NAME = "svc.test"


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


@dataclass(frozen=True)
class PKI:
    root: Issued
    intermediate: Issued
    root_pem: Path
    directory: Path
    trust: TrustStore

    def leaf(self, names: Sequence[str] = (NAME,), *, left: float = 90, **kwargs: Any) -> Issued:
        return make_leaf(self.intermediate, names, not_before=NOW - max(30, 90 - left) * DAY,
                         not_after=NOW + left * DAY, **kwargs)

    @property
    def intermediate_der(self) -> bytes:
        return der(self.intermediate.cert)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    directory = tmp_path_factory.mktemp("hostile")
    root = make_root("Hostile Test Root", not_before=NOW - 3650 * DAY, not_after=NOW + 3650 * DAY)
    intermediate = make_intermediate(root, "Hostile Test Intermediate",
                                     not_before=NOW - 365 * DAY, not_after=NOW + 1000 * DAY)
    root_pem = directory / "root.pem"
    root_pem.write_bytes(root.cert_pem)
    return PKI(root, intermediate, root_pem, directory, TrustStore.of([root.cert]))


# --- running a case -----------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    results: list[Assessment]
    elapsed: float  # probe and assessment, wall clock
    fds_leaked: int
    tasks_left: int

    @property
    def result(self) -> Assessment:
        (only,) = self.results
        return only


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _check(endpoints: list[dict[str, Any]], pki: PKI, prober: Prober | None,
                 timeout: float) -> tuple[list[Assessment], int]:
    document = {
        "defaults": {"ca_file": str(pki.root_pem), "system_trust": False, "timeout": timeout},
        "endpoints": endpoints,
    }
    inventory = build_inventory(document, source="test")
    results = await sweep(inventory.endpoints,
                          prober or Prober(max_concurrency=inventory.max_concurrency))
    return results, len(asyncio.all_tasks() - {asyncio.current_task()})


def check(pki: PKI, *endpoints: dict[str, Any], prober: Prober | None = None,
          timeout: float = TIMEOUT) -> tuple[list[Assessment], float, int]:
    start = time.monotonic()
    results, tasks_left = asyncio.run(_check(list(endpoints), pki, prober, timeout))
    return results, time.monotonic() - start, tasks_left


def serve(pki: PKI, files: tuple[Path, Path], *, server_name: str | bool = NAME,
          timeout: float = TIMEOUT, **server: Any) -> Run:
    """Serves one chain on loopback, probes it once; counts what was left open."""
    before = open_fds()
    with TLSServer({None: files}, **server) as tls:
        results, elapsed, tasks_left = check(
            pki, {"host": tls.host, "port": tls.port, "server_name": server_name}, timeout=timeout)
    return Run(results, elapsed, open_fds() - before, tasks_left)


def serve_chain(pki: PKI, stem: str, chain: Sequence[bytes], key: Any, **kwargs: Any) -> Run:
    return serve(pki, write_chain(pki.directory, stem, chain, key), **kwargs)


def judge(pki: PKI, chain: Sequence[bytes], *, host: str = NAME) -> tuple[Assessment, float]:
    """The assessment level: the Observation the probe would have made of this chain."""
    endpoint = Endpoint(name="svc", host=host, port=443, server_name=host)
    observation = Observation(Target(endpoint, "127.0.0.1"), NOW, 0.01, chain=tuple(chain),
                              tls_version="TLSv1.3")
    start = time.monotonic()
    result = assess(observation, NOW, pki.trust)
    return result, time.monotonic() - start


def report(case: str, result: Assessment, elapsed: float) -> None:
    """One line of the issue's report table (visible with pytest -s)."""
    error = result.observation.error
    said = f"{result.state.value} {','.join(result.reasons) or '-'}"
    if error is not None:
        said += f" [{error.kind}/{error.phase}: {error.detail}]"
    print(f"\nHOSTILE | {case} | {said} | {elapsed:.3f}s")


def assert_clean(run: Run, *, deadline: float = TIMEOUT) -> None:
    assert run.elapsed < deadline, run.elapsed
    assert run.fds_leaked <= 0, f"{run.fds_leaked} file descriptors left open"
    assert run.tasks_left == 0
    json.dumps(assessment_to_dict(run.result))  # every result renders as JSON


# --- absurd chains, served ------------------------------------------------------------


def test_chain_of_100_certificates_most_of_them_unrelated(pki: PKI) -> None:
    """A server that sends its whole CA bundle: 98 certificates nobody needs."""
    leaf = pki.leaf()
    bundle = [der(make_root(f"Bundled Root {i}", not_before=NOW - DAY, not_after=NOW + 900 * DAY).cert)
              for i in range(98)]
    run = serve_chain(pki, "bundle100", [der(leaf.cert), pki.intermediate_der, *bundle], leaf.key)
    result = run.result
    report("100 certificates (leaf, intermediate, 98 unrelated roots)", result, run.elapsed)
    assert_clean(run)
    assert (result.state, result.reasons) == (State.OK, ()), result.summary
    assert len(result.chain) == 100
    assert result.verification is not None
    assert [c.subject for c in result.verification.path] == [
        "CN=svc.test", "CN=Hostile Test Intermediate", "CN=Hostile Test Root"]


def test_chain_100_deep(pki: PKI) -> None:
    """99 intermediates, each signing the next: far past any client's depth limit."""
    cas = make_ca_chain(pki.root, 99, not_before=NOW - DAY, not_after=NOW + 900 * DAY)
    leaf = make_leaf(cas[-1], [NAME], not_before=NOW - DAY, not_after=NOW + 90 * DAY)
    chain = [der(leaf.cert), *(der(ca.cert) for ca in reversed(cas))]
    run = serve_chain(pki, "deep100", chain, leaf.key)
    result = run.result
    report("100 certificates, one path 100 deep", result, run.elapsed)
    assert_clean(run)
    assert len(result.chain) == 100
    assert (result.state, result.reasons) == (State.CRITICAL, ("untrusted",)), result.summary
    assert result.verification is not None and "depth" in result.verification.detail


def _filler(index: int, size: int) -> bytes:
    """A self-signed certificate padded to about `size` bytes by an unknown extension."""
    padding = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"),
                                         b"\x04\x83" + (size).to_bytes(3, "big") + b"\x00" * size)
    filler = make_leaf(None, [f"filler{index}.test"], not_before=NOW - DAY, not_after=NOW + DAY,
                       extra_extensions=[(padding, False)])
    return der(filler.cert)


@pytest.mark.parametrize(("size", "fetched"), [(90_000, True), (1_000_000, False)],
                         ids=["90KB", "1MB"])
def test_huge_chain(pki: PKI, size: int, fetched: bool) -> None:
    """OpenSSL clients refuse a certificate message over 100 KiB (max_cert_list), so a
    1 MB chain reaches no client: certwatch says so, as a handshake error."""
    leaf = pki.leaf()
    count = max(1, size // 60_000)
    fillers = [_filler(i, size // count) for i in range(count)]
    chain = [der(leaf.cert), pki.intermediate_der, *fillers]
    assert sum(map(len, chain)) >= size
    run = serve_chain(pki, f"huge{size}", chain, leaf.key)
    result = run.result
    report(f"a {sum(map(len, chain)) // 1000} kB chain", result, run.elapsed)
    assert_clean(run)
    error = result.observation.error
    if fetched:
        assert (result.state, result.reasons) == (State.OK, ()), result.summary
        assert len(result.chain) == 2 + count
    else:
        assert result.state is State.ERROR
        assert error is not None and (error.kind, error.phase) == ("handshake", "handshake")
        assert "excessive message size" in error.detail


def test_malformed_certificate_in_the_middle_of_a_served_chain(pki: PKI) -> None:
    """A certificate OpenSSL loads but cryptography cannot (a PrintableString with '*'
    in its subject), sent between the leaf and its intermediate."""
    odd = make_leaf(None, ["odd.test"], not_before=NOW - DAY, not_after=NOW + DAY)
    odd_der = with_names(odd, subject=der_name((NameOID.COMMON_NAME, 0x13, b"*.odd.test")))
    leaf = pki.leaf()
    run = serve_chain(pki, "middle", [der(leaf.cert), odd_der, pki.intermediate_der], leaf.key)
    result = run.result
    report("unreadable certificate in the middle of a served chain", result, run.elapsed)
    assert_clean(run)
    assert (result.state, result.reasons) == (State.OK, ("malformed_certificate",)), result.summary
    assert [c.position for c in result.chain] == [0, 2]


def test_malformed_der_in_the_middle_of_a_chain(pki: PKI) -> None:
    """Assessment level: a server cannot load a PEM file with broken DER in it."""
    leaf = der(pki.leaf().cert)
    truncated = pki.intermediate_der[: len(pki.intermediate_der) // 2]
    garbage = b"\x30\x82\xff\xff" + os.urandom(200)
    result, elapsed = judge(pki, [leaf, garbage, truncated, pki.intermediate_der])
    report("malformed DER in the middle of a chain (assessment level)", result, elapsed)
    assert (result.state, result.reasons) == (State.OK, ("malformed_certificate",)), result.summary
    assert [c.position for c in result.chain] == [0, 3]
    # With its only copy of the intermediate broken, the chain is incomplete.
    broken, _ = judge(pki, [leaf, truncated])
    assert (broken.state, broken.reasons) == (State.CRITICAL, ("incomplete_chain", "malformed_certificate"))


def test_ten_thousand_sans(pki: PKI) -> None:
    """10,000 SANs fit under OpenSSL's 100 KiB limit as IP addresses; the name is last."""
    ips = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(9_999)]
    leaf = pki.leaf([*ips, NAME])
    run = serve_chain(pki, "sans", [der(leaf.cert), pki.intermediate_der], leaf.key)
    result = run.result
    report("10,000 SANs (9,999 IP addresses, then the name)", result, run.elapsed)
    assert_clean(run)
    assert (result.state, result.reasons) == (State.OK, ()), result.summary
    assert result.leaf is not None and len(result.leaf.ip_addresses) == 9_999


def test_ten_thousand_dns_sans(pki: PKI) -> None:
    """As DNS names they are over 100 KiB: no client can fetch them (a handshake error);
    judged at the assessment level they are read, and the last one matches."""
    names = [f"host{i}.svc.test" for i in range(9_999)] + [NAME]
    leaf = pki.leaf(names)
    run = serve_chain(pki, "dns-sans", [der(leaf.cert), pki.intermediate_der], leaf.key)
    report("10,000 DNS SANs, served (over OpenSSL's 100 KiB limit)", run.result, run.elapsed)
    assert_clean(run)
    assert run.result.state is State.ERROR
    assert run.result.observation.error is not None
    assert "excessive message size" in run.result.observation.error.detail
    result, elapsed = judge(pki, [der(leaf.cert), pki.intermediate_der])
    report("10,000 DNS SANs (assessment level)", result, elapsed)
    assert (result.state, result.reasons) == (State.OK, ()), result.summary
    assert result.leaf is not None and len(result.leaf.dns_names) == 10_000
    assert elapsed < 1


# Names with terminal escapes, HTML, newlines, a right-to-left override and, in a
# T61String, Latin-1 bytes that are not UTF-8 (OpenSSL and old CAs accept them).
EVIL_CA = der_name(
    (NameOID.COMMON_NAME, 0x0C, "Evil\x1b[2J\x1b]0;pwned\x07 CA\n<b>\"x\"</b>\u202e".encode()),
    (NameOID.ORGANIZATION_NAME, 0x14, b"Soci\xe9t\xe9 G\xe9n\xe9rale"),
)
EVIL_LEAF = der_name((NameOID.COMMON_NAME, 0x0C, b"svc.test\r\n\x00\x1b[31m"))


def _evil_chain(pki: PKI) -> tuple[list[bytes], Issued]:
    intermediate = make_intermediate(pki.root, "to be renamed", not_before=NOW - 365 * DAY,
                                     not_after=NOW + 1000 * DAY)
    # as a 90-day certificate would be, a little before its renewal is overdue
    leaf = make_leaf(intermediate, [NAME], not_before=NOW - 62 * DAY, not_after=NOW + 28 * DAY)
    return [with_names(leaf, subject=EVIL_LEAF, issuer=EVIL_CA),
            with_names(intermediate, subject=EVIL_CA)], leaf


def test_control_characters_and_non_utf8_in_names(pki: PKI) -> None:
    chain, leaf = _evil_chain(pki)
    run = serve_chain(pki, "evil", chain, leaf.key)
    result = run.result
    report("control characters, escapes and Latin-1 (T61String) in names", result, run.elapsed)
    assert_clean(run)
    # Read, trusted and judged like any other chain: the leaf expires in 28 days.
    assert (result.state, result.reasons) == (State.WARNING, ("expiring",)), result.summary
    assert result.leaf is not None
    assert "Soci\\xe9t\\xe9" in result.leaf.issuer or "Société" in result.leaf.issuer
    table = render_table([result])
    assert all(ch.isprintable() for line in table.splitlines() for ch in line), table
    assert "\\x1b[2J" in table


def test_cli_output_of_hostile_names_is_valid_json_and_a_harmless_table(pki: PKI,
                                                                     tmp_path: Path) -> None:
    chain, leaf = _evil_chain(pki)
    files = write_chain(pki.directory, "evil-cli", chain, leaf.key)
    with TLSServer({None: files}) as server:
        inventory = tmp_path / "inventory.yaml"
        inventory.write_text(json.dumps({
            "defaults": {"ca_file": str(pki.root_pem), "system_trust": False, "timeout": TIMEOUT},
            "endpoints": [{"name": "evil", "host": server.host, "port": server.port,
                           "server_name": NAME}],
        }))
        outputs = {
            fmt: subprocess.run([sys.executable, "-m", "certwatch", "check", "-c", str(inventory),
                                 "--format", fmt, "--colour", "never"],
                                capture_output=True, timeout=60, check=False)
            for fmt in ("json", "table")
        }
    for fmt, done in outputs.items():
        assert done.returncode == 1, (fmt, done.stderr.decode(errors="replace"))  # a warning
        assert done.stderr == b""
    (entry,) = json.loads(outputs["json"].stdout.decode("utf-8"))  # strict UTF-8, valid JSON
    subjects = [cert["subject"] for cert in entry["chain"]]
    assert "\x1b[2J" in subjects[1]  # the JSON keeps the text; the table escapes it
    table = outputs["table"].stdout.decode("utf-8")
    assert all(ch.isprintable() for line in table.splitlines() for ch in line), table
    assert "\\x1b[2J" in table


def test_ca_certificate_with_a_latin1_name_served_as_the_leaf(pki: PKI) -> None:
    """A server that sends its CA certificate instead of a leaf, the CA's name in a
    Latin-1 T61String: cryptography cannot even describe it in a verification error."""
    ca = make_intermediate(pki.root, "to be renamed", not_before=NOW - DAY, not_after=NOW + 900 * DAY)
    latin1 = with_names(ca, subject=der_name((NameOID.COMMON_NAME, 0x14, b"Soci\xe9t\xe9 CA")))
    run = serve_chain(pki, "ca-as-leaf", [latin1], ca.key)
    result = run.result
    report("a CA certificate with a Latin-1 name sent as the leaf", result, run.elapsed)
    assert_clean(run)
    assert result.leaf is not None and result.leaf.subject == "CN=Soci\u00e9t\u00e9 CA"
    assert (result.state, result.reasons) == (State.CRITICAL, ("hostname_mismatch", "untrusted"))


def test_overlong_common_name(pki: PKI) -> None:
    """RFC 5280 caps a CN at 64 characters; cryptography warns when it reads a longer
    one, and that warning is the peer's doing, not certwatch's to raise."""
    leaf = pki.leaf()
    cn = "x" * 1000 + ".svc.test"
    long_cn = with_names(leaf, subject=der_name((NameOID.COMMON_NAME, 0x0C, cn.encode())))
    run = serve_chain(pki, "long-cn", [long_cn, pki.intermediate_der], leaf.key)
    result = run.result
    report("a 1,009-character common name", result, run.elapsed)
    assert_clean(run)
    assert (result.state, result.reasons) == (State.OK, ()), result.summary
    assert result.leaf is not None and result.leaf.common_name == cn


def test_undecodable_names_at_the_assessment_level(pki: PKI) -> None:
    """Names OpenSSL itself refuses to load: bad UTF-8 in a UTF8String is shown escaped;
    a lone surrogate in a BMPString makes the certificate unreadable (cryptography
    refuses it), which is a classified error, not a crash."""
    leaf = pki.leaf()
    bad_utf8 = with_names(leaf, subject=der_name((NameOID.COMMON_NAME, 0x0C, b"svc\xff\xfe.test")))
    result, elapsed = judge(pki, [bad_utf8, pki.intermediate_der])
    report("invalid UTF-8 in a UTF8String subject (assessment level)", result, elapsed)
    assert (result.state, result.reasons) == (State.OK, ()), result.summary
    assert result.leaf is not None and "\\xff\\xfe" in result.leaf.subject
    # cryptography cannot describe such a certificate in a verification error either.
    alone, _ = judge(pki, [bad_utf8])
    assert (alone.state, alone.reasons) == (State.CRITICAL, ("incomplete_chain",)), alone.summary
    surrogate = with_names(leaf, subject=der_name((NameOID.COMMON_NAME, 0x1E, b"\xd8\x00")))
    result, elapsed = judge(pki, [surrogate, pki.intermediate_der])
    report("lone surrogate in a BMPString subject (assessment level)", result, elapsed)
    assert (result.state, result.reasons) == (State.ERROR, ("malformed_certificate",))
    json.dumps(assessment_to_dict(result))


@pytest.mark.parametrize(("serial", "shown", "state", "reasons"), [
    (-0x1234, "-1234", State.CRITICAL, ("untrusted",)),
    (0, "0", State.OK, ()),
], ids=["negative", "zero"])
def test_negative_and_zero_serials(pki: PKI, serial: int, shown: str, state: State,
                                   reasons: tuple[str, ...]) -> None:
    """cryptography's verifier (and Go since 1.23) rejects a negative serial; OpenSSL
    does not. certwatch reads it and names the rejection."""
    leaf = pki.leaf()
    run = serve_chain(pki, f"serial{serial}", [with_serial(leaf, serial), pki.intermediate_der],
                      leaf.key)
    result = run.result
    report(f"serial {serial}", result, run.elapsed)
    assert_clean(run)
    assert result.leaf is not None and result.leaf.serial == shown
    assert (result.state, result.reasons) == (state, reasons), result.summary
    if serial < 0:
        assert result.verification is not None and "serial" in result.verification.detail


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)  # type: ignore[misc]


@pytest.mark.parametrize(("case", "not_before", "not_after", "state", "reasons"), [
    ("past 2050 (GeneralizedTime)", NOW - DAY, _utc(2080, 1, 1), State.OK, ()),
    ("until 9999-12-31 (no expiry)", NOW - DAY, _utc(9999, 12, 31, 23, 59, 59), State.OK, ()),
    ("from 1900 (GeneralizedTime)", _utc(1900, 1, 1), NOW + 90 * DAY, State.OK, ()),
    ("from year 1", _utc(1, 1, 1), NOW + 90 * DAY, State.OK, ()),
    ("from 1950 (UTCTime's first year)", _utc(1950, 1, 1), NOW + 90 * DAY, State.OK, ()),
    ("1960 to 1965", _utc(1960, 1, 1), _utc(1965, 1, 1), State.EXPIRED, ("expired", "untrusted")),
    ("not_after before not_before", NOW + 10 * DAY, NOW - 10 * DAY, State.EXPIRED,
     ("expired", "untrusted", "not_yet_valid")),
], ids=["2080", "9999", "1900", "year1", "1950", "1960s", "reversed"])
def test_odd_validity_periods(pki: PKI, case: str, not_before: datetime, not_after: datetime,
                              state: State, reasons: tuple[str, ...]) -> None:
    leaf = pki.leaf()
    chain = [with_validity(leaf, not_before, not_after), pki.intermediate_der]
    run = serve_chain(pki, f"validity-{not_before.year}-{not_after.year}", chain, leaf.key)
    result = run.result
    report(f"validity {case}", result, run.elapsed)
    assert_clean(run)
    assert result.leaf is not None
    assert (result.leaf.not_before, result.leaf.not_after) == (
        not_before.replace(microsecond=0), not_after.replace(microsecond=0))
    assert (result.state, result.reasons) == (state, reasons), result.summary


def test_timestamps_before_year_1000_are_rfc3339(pki: PKI) -> None:
    leaf = pki.leaf()
    result, _ = judge(pki, [with_validity(leaf, _utc(1, 1, 1), NOW + 90 * DAY), pki.intermediate_der])
    assert assessment_to_dict(result)["leaf_not_before"] == "0001-01-01T00:00:00Z"


def test_unknown_critical_extension_is_rejected_as_clients_do(pki: PKI) -> None:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.2"), b"\x05\x00")
    leaf = pki.leaf(extra_extensions=[(unknown, True)])
    run = serve_chain(pki, "critical-ext", [der(leaf.cert), pki.intermediate_der], leaf.key)
    result = run.result
    report("unknown critical extension", result, run.elapsed)
    assert_clean(run)
    assert (result.state, result.reasons) == (State.CRITICAL, ("untrusted",)), result.summary
    assert result.verification is not None and "1.3.6.1.4.1.55555.2" in result.verification.detail


@pytest.mark.parametrize(("bits", "state", "reasons"), [
    (512, State.CRITICAL, ("untrusted",)),
    (1024, State.OK, ()),
])
def test_weak_rsa_keys(pki: PKI, bits: int, state: State, reasons: tuple[str, ...]) -> None:
    """cryptography generates no RSA key under 1024 bits; weak_rsa_key makes one from
    its primes. A 512-bit key cannot sign with RSA-PSS (TLS 1.3), so that server speaks
    TLS 1.2. No client accepts a 512-bit key; Go and OpenSSL at security level 1 still
    accept 1024 bits, so that is reported (key_bits) but not called untrusted."""
    leaf = make_leaf_with_key(pki.intermediate, [NAME], weak_rsa_key(bits),
                              not_before=NOW - DAY, not_after=NOW + 90 * DAY)
    run = serve_chain(pki, f"rsa{bits}", [der(leaf.cert), pki.intermediate_der], leaf.key,
                      max_version=ssl.TLSVersion.TLSv1_2)
    result = run.result
    report(f"RSA-{bits} key", result, run.elapsed)
    assert_clean(run)
    assert result.leaf is not None and (result.leaf.key_type, result.leaf.key_bits) == ("RSA", bits)
    assert (result.state, result.reasons) == (state, reasons), result.summary
    if state is State.CRITICAL:
        assert result.verification is not None
        assert "512-bit RSA key is too weak" in result.verification.detail


def test_version_1_leaf(pki: PKI) -> None:
    """A v1 certificate has no extensions, so no SAN: no modern client matches its name.
    cryptography also requires v3 (OpenSSL does not), hence "untrusted" beside it."""
    leaf = pki.leaf()
    run = serve_chain(pki, "v1", [as_version_1(leaf), pki.intermediate_der], leaf.key)
    result = run.result
    report("v1 leaf", result, run.elapsed)
    assert_clean(run)
    assert result.leaf is not None and result.leaf.version == 1
    assert (result.state, result.reasons) == (State.CRITICAL, ("hostname_mismatch", "untrusted"))
    assert result.verification is not None and "X509v3" in result.verification.detail


def test_version_1_root_in_the_trust_store(pki: PKI) -> None:
    """Assessment level. Old roots are v1 and OpenSSL still lets them anchor a chain;
    cryptography's verifier requires v3 of every certificate, trust anchors included,
    so certwatch reports such a chain as untrusted, naming why (a known difference)."""
    root = make_root("V1 Root", not_before=NOW - DAY, not_after=NOW + 900 * DAY)
    v1 = Issued(x509.load_der_x509_certificate(as_version_1(root)), root.key, None)
    intermediate = make_intermediate(v1, "Below V1", not_before=NOW - DAY, not_after=NOW + 800 * DAY)
    leaf = make_leaf(intermediate, [NAME], not_before=NOW - DAY, not_after=NOW + 90 * DAY)
    endpoint = Endpoint(name="svc", host=NAME, port=443, server_name=NAME)
    observation = Observation(Target(endpoint, "127.0.0.1"), NOW, 0.01,
                              chain=(der(leaf.cert), der(intermediate.cert)))
    start = time.monotonic()
    result = assess(observation, NOW, TrustStore.of([v1.cert]))
    report("v1 root in the trust store (assessment level)", result, time.monotonic() - start)
    assert (result.state, result.reasons) == (State.CRITICAL, ("untrusted",))
    assert result.verification is not None and "X509v3" in result.verification.detail
    json.dumps(assessment_to_dict(result))


def test_leaf_without_san(pki: PKI) -> None:
    leaf = make_leaf(pki.intermediate, [], common_name=NAME, not_before=NOW - DAY,
                     not_after=NOW + 90 * DAY)
    run = serve_chain(pki, "no-san", [der(leaf.cert), pki.intermediate_der], leaf.key)
    result = run.result
    report("leaf with a CN and no SAN", result, run.elapsed)
    assert_clean(run)
    assert result.leaf is not None and result.leaf.common_name == NAME
    # The chain itself is trusted: only the name fails, as in OpenSSL, Go and browsers.
    assert (result.state, result.reasons) == (State.CRITICAL, ("hostname_mismatch",))
    assert result.verification is not None and result.verification.trusted
    assert result.verification is not None
    assert "no subjectAltName" in result.verification.detail


def test_expired_root_sent_but_not_needed(pki: PKI) -> None:
    """The AddTrust case (2020): besides a good chain the server sends an old, expired
    root (here with a cross-signed copy of the intermediate). Clients build the path
    to the trusted root and never look at the expired one, and neither may certwatch."""
    old_root = make_root("Old Expired Root", not_before=NOW - 7000 * DAY, not_after=NOW - 30 * DAY)
    cross = make_intermediate(old_root, "Hostile Test Intermediate", not_before=NOW - 7000 * DAY,
                              not_after=NOW - 31 * DAY)
    leaf = pki.leaf()
    chain = [der(leaf.cert), pki.intermediate_der, der(cross.cert), der(old_root.cert)]
    run = serve_chain(pki, "addtrust", chain, leaf.key)
    result = run.result
    report("expired root (and cross-sign) sent, not needed for the path", result, run.elapsed)
    assert_clean(run)
    assert (result.state, result.reasons) == (State.OK, ()), result.summary
    assert result.earliest is not None and result.earliest.position == 0
    assert result.days_left == pytest.approx(90, abs=0.1)


# --- names ----------------------------------------------------------------------------


def test_a_name_with_50_addresses(pki: PKI) -> None:
    """Every address is probed and reported on its own; one stale backend stands out."""
    addresses = [f"127.0.50.{i}" for i in range(1, 51)]

    async def fifty(host: str, port: int) -> list[str]:
        assert host == NAME
        return addresses

    fresh_leaf = pki.leaf()
    fresh = write_chain(pki.directory, "fifty", [der(fresh_leaf.cert), pki.intermediate_der],
                        fresh_leaf.key)
    stale_leaf = pki.leaf(left=3)
    stale = write_chain(pki.directory, "fifty-stale", [der(stale_leaf.cert), pki.intermediate_der],
                        stale_leaf.key)
    before = open_fds()
    servers = [TLSServer({None: fresh}, host=addresses[0]).__enter__()]
    try:
        for address in addresses[1:]:
            files = stale if address == "127.0.50.37" else fresh
            servers.append(TLSServer({None: files}, host=address, port=servers[0].port).__enter__())
        results, elapsed, tasks_left = check(
            pki, {"host": NAME, "port": servers[0].port}, prober=Prober(resolver=fifty))
    finally:
        for server in servers:
            server.close()
    leaked = open_fds() - before
    states = {r.target.address: r.state for r in results}
    print(f"\nHOSTILE | a name with 50 addresses | 49 ok, 1 critical (the stale one) | {elapsed:.3f}s")
    assert sorted(states) == sorted(addresses)
    assert states.pop("127.0.50.37") is State.CRITICAL
    assert set(states.values()) == {State.OK}
    assert len({r.target.key for r in results}) == 50
    assert elapsed < TIMEOUT and leaked <= 0 and tasks_left == 0


def test_a_name_that_does_not_resolve(pki: PKI) -> None:
    before = open_fds()
    (result,), elapsed, tasks_left = check(pki, {"host": "certwatch-hostile.invalid", "port": 443})
    report("a name that does not resolve (.invalid)", result, elapsed)
    assert result.state is State.ERROR and result.reasons == ("dns",)
    assert result.target.address is None
    assert elapsed < TIMEOUT and tasks_left == 0 and open_fds() - before <= 0


def test_a_dns_black_hole(pki: PKI) -> None:
    """A resolver that never answers costs one DNS deadline."""
    async def black_hole(host: str, port: int) -> list[str]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    (result,), elapsed, tasks_left = check(pki, {"host": NAME, "port": 443}, timeout=1,
                                           prober=Prober(resolver=black_hole))
    report("a DNS black hole (1 s deadline)", result, elapsed)
    error = result.observation.error
    assert error is not None and (error.kind, error.phase) == ("timeout", "dns")
    assert elapsed < 1 + 0.5 and tasks_left == 0


def test_ipv6_only_names(pki: PKI) -> None:
    async def v6_only(host: str, port: int) -> list[str]:
        return ["::1"]

    leaf = pki.leaf()
    files = write_chain(pki.directory, "v6", [der(leaf.cert), pki.intermediate_der], leaf.key)
    before = open_fds()
    with TLSServer({None: files}, host="::1") as server:
        entry = {"host": NAME, "port": server.port}
        (ipv4,), elapsed4, tasks4 = check(pki, {**entry, "addresses": "ipv4"},
                                          prober=Prober(resolver=v6_only))
        (every,), elapsed, tasks = check(pki, entry, prober=Prober(resolver=v6_only))
    report("an IPv6-only name, addresses: ipv4", ipv4, elapsed4)
    report("an IPv6-only name, addresses: all", every, elapsed)
    assert (ipv4.state, ipv4.reasons) == (State.ERROR, ("dns",))
    assert ipv4.observation.error is not None
    assert ipv4.observation.error.detail == f"{NAME} has no ipv4 address"
    assert (every.state, every.target.address) == (State.OK, "::1"), every.summary
    assert max(elapsed4, elapsed) < TIMEOUT and tasks4 == tasks == 0
    assert open_fds() - before <= 0
