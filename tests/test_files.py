"""The files source: real files of every format, bad ones beside good ones, bounded reads,
and the daemon re-reading a file that changed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    pkcs12,
)

from certwatch.config import parse_inventory
from certwatch.core.assess import Assessment
from certwatch.core.status import merge
from certwatch.render.report import assessment_to_dict
from certwatch.sources.files import MAX_FILE_BYTES, FileSource
from certwatch.sources.registry import Sources
from certwatch.sources.trust import TrustStores
from certwatch.sweep import judge_endpoint
from tests.pki import Issued, make_intermediate, make_leaf, make_root, write_pem
from tests.test_daemon import RunningDaemon, wait_for

NOW = datetime.now(timezone.utc)
DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def ca() -> tuple[Issued, Issued]:
    root = make_root("Files Root", not_before=NOW - DAY, not_after=NOW + 3000 * DAY)
    inter = make_intermediate(root, "Files CA", not_before=NOW - DAY, not_after=NOW + 2000 * DAY)
    return root, inter


def leaf(issuer: Issued, days: float, name: str = "svc.test") -> Issued:
    return make_leaf(issuer, [name], not_before=NOW - 400 * DAY, not_after=NOW + days * DAY)


def judge(yaml_text: str, base: Path, environ: dict[str, str] | None = None,
          source: FileSource | None = None) -> list[Assessment]:
    inventory = parse_inventory(yaml_text, source="files.yaml", base=base, environ=environ or {})
    sources = Sources(inventory)
    if source is not None:
        sources._made["file"] = (None, source)
    trust = TrustStores()

    async def run() -> list[Assessment]:
        judged = [await judge_endpoint(e, sources, trust) for e in inventory.endpoints]
        return [a for j in judged for a in j.assessments]

    return asyncio.run(run())


def by_location(assessments: list[Assessment]) -> dict[str, dict[str, Any]]:
    return {d["location"]: d for d in map(assessment_to_dict, assessments)}


def test_a_pem_bundle_is_one_target_per_certificate(tmp_path: Path, ca: tuple[Issued, Issued]) -> None:
    root, inter = ca
    write_pem(tmp_path / "root.pem", [root.cert])
    bundle = write_pem(tmp_path / "fullchain.pem", leaf(inter, 20).chain())
    found = by_location(judge(f"defaults: {{ca_file: root.pem, system_trust: false}}\n"
                              f"endpoints:\n  - name: web\n    files: fullchain.pem\n", tmp_path))
    assert set(found) == {f"{bundle}#0", f"{bundle}#1"}
    leaf_target, ca_target = found[f"{bundle}#0"], found[f"{bundle}#1"]
    assert leaf_target["source"] == "file" and leaf_target["key"] == f"web@{bundle}#0"
    assert leaf_target["state"] == "warning" and leaf_target["verified"] is True
    # The leaf's chain is its issuers from the same file: the intermediate follows it.
    assert [c["subject"] for c in leaf_target["chain"]] == ["CN=svc.test", "CN=Files CA"]
    assert leaf_target["hostname_match"] is None  # no host name is checked at rest
    assert ca_target["state"] == "ok" and [c["subject"] for c in ca_target["chain"]] == ["CN=Files CA"]


def test_untrusted_and_self_signed_at_rest(tmp_path: Path, ca: tuple[Issued, Issued]) -> None:
    root, inter = ca
    write_pem(tmp_path / "chain.pem", leaf(inter, 90).chain())
    self_signed = make_leaf(None, ["self.test"], not_before=NOW - DAY, not_after=NOW + 90 * DAY)
    write_pem(tmp_path / "self.pem", [self_signed.cert])
    write_pem(tmp_path / "root.pem", [root.cert])
    found = by_location(judge("defaults: {system_trust: false}\nendpoints:\n"
                              "  - {name: chain, files: chain.pem}\n"
                              "  - {name: self, files: self.pem}\n"
                              "  - {name: root, files: root.pem}\n", tmp_path))
    assert found[f"{tmp_path}/chain.pem#0"]["verify_problems"] == ["incomplete_chain"]
    assert found[f"{tmp_path}/chain.pem#0"]["state"] == "critical"
    assert found[f"{tmp_path}/self.pem#0"]["verify_problems"] == ["self_signed"]
    # A root at rest is its own anchor: judged on its dates.
    assert found[f"{tmp_path}/root.pem#0"]["state"] == "ok"


def test_der_pkcs12_and_a_wrong_password(tmp_path: Path, ca: tuple[Issued, Issued]) -> None:
    _, inter = ca
    issued = leaf(inter, 5)
    (tmp_path / "leaf.der").write_bytes(issued.cert.public_bytes(Encoding.DER))
    p12 = pkcs12.serialize_key_and_certificates(b"svc", issued.key, issued.cert,  # type: ignore[arg-type]
                                                [inter.cert], BestAvailableEncryption(b"s3cret"))
    (tmp_path / "keystore.p12").write_bytes(p12)
    (tmp_path / "other.p12").write_bytes(p12)
    text = ("defaults: {verify: false}\nendpoints:\n"
            "  - {name: der, files: leaf.der}\n"
            "  - {name: p12, files: keystore.p12, pkcs12_password_env: P12_PASSWORD}\n"
            "  - {name: wrong, files: other.p12, pkcs12_password_env: WRONG_PASSWORD}\n")
    found = by_location(judge(text, tmp_path, {"P12_PASSWORD": "s3cret", "WRONG_PASSWORD": "nope"}))
    assert found[f"{tmp_path}/leaf.der#0"]["state"] == "critical"
    keystore = found[f"{tmp_path}/keystore.p12#0"]
    assert keystore["state"] == "critical" and keystore["key_match"] is True
    assert f"{tmp_path}/keystore.p12#1" in found  # the CA certificate it carries
    wrong = found[f"{tmp_path}/other.p12"]
    assert (wrong["state"], wrong["error_kind"]) == ("error", "bad_password")
    assert str(tmp_path / "other.p12") in wrong["error"] and "nope" not in json.dumps(found)


def test_bad_files_cost_only_themselves(tmp_path: Path, ca: tuple[Issued, Issued]) -> None:
    _, inter = ca
    certs = tmp_path / "certs"
    certs.mkdir()
    good = leaf(inter, 60)
    write_pem(certs / "good.pem", [good.cert])
    (certs / "notes.pem").write_text("these are not the certificates you are looking for\n")
    mismatched = leaf(inter, 60)
    (certs / "combined.pem").write_bytes(mismatched.cert_pem + leaf(inter, 60).key_pem)
    (certs / "readme.txt").write_text("not a certificate suffix: not read\n")
    with (certs / "huge.pem").open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    os.symlink("/dev/zero", certs / "device.pem")
    os.symlink(certs / "loop-b.pem", certs / "loop-a.pem")
    os.symlink(certs / "loop-a.pem", certs / "loop-b.pem")
    os.mkfifo(certs / "pipe.pem")
    (certs / "locked.pem").write_bytes(good.cert_pem)
    started = time.monotonic()
    found = by_location(judge("defaults: {verify: false}\nendpoints:\n  - {name: dir, files: certs/}\n"
                              "  - {name: none, files: 'nowhere/*.pem'}\n", tmp_path))
    assert time.monotonic() - started < 5  # the pipe and the device did not block it
    assert found[f"{certs}/good.pem#0"]["state"] == "ok"
    assert found[f"{certs}/locked.pem#0"]["state"] == "ok"
    combined = found[f"{certs}/combined.pem#0"]
    assert combined["state"] == "critical" and "key_mismatch" in combined["reasons"]
    assert combined["key_match"] is False and "does not belong" in combined["key_problem"]
    errors = {loc.rsplit("/", 1)[1]: (d["error_kind"], d["error"]) for loc, d in found.items()
              if d["state"] == "error"}
    assert errors["notes.pem"][0] == "not_a_certificate"
    assert errors["huge.pem"] == ("unreadable", f"{certs}/huge.pem: larger than {MAX_FILE_BYTES} bytes")
    assert errors["device.pem"][0] == "unreadable" and "not a regular file" in errors["device.pem"][1]
    assert errors["pipe.pem"][0] == "unreadable" and "not a regular file" in errors["pipe.pem"][1]
    assert "symlink loop" in errors["loop-a.pem"][1] and "symlink loop" in errors["loop-b.pem"][1]
    assert errors["*.pem"] == ("unreadable", f"{tmp_path}/nowhere/*.pem: no file matches")
    assert not any("readme" in loc for loc in found)


def test_a_file_that_breaks_keeps_its_certificate_beside_the_error(tmp_path: Path,
                                                                 ca: tuple[Issued, Issued]) -> None:
    _, inter = ca
    path = write_pem(tmp_path / "web.pem", [leaf(inter, 40).cert])
    text = "defaults: {verify: false}\nendpoints:\n  - {name: web, files: web.pem}\n"
    source = FileSource()
    (first,) = judge(text, tmp_path, source=source)
    path.write_text("half a certificate -----BEGIN CERTIFICATE-----\nAAAA\n")
    (broken,) = judge(text, tmp_path, source=source)
    assert broken.target.key == first.target.key == f"web@{path}#0"
    assert broken.observation.error is not None and broken.observation.error.kind == "not_a_certificate"
    (status,) = merge(merge([], [first], first.target.endpoint, lambda o: first),
                      [broken], first.target.endpoint, lambda o: first)
    assert status.state.value == "ok" and status.consecutive_failures == 1
    assert status.last_error is not None and str(path) in str(status.last_error)


def test_check_shows_the_source_and_location(tmp_path: Path, ca: tuple[Issued, Issued]) -> None:
    _, inter = ca
    path = write_pem(tmp_path / "client.pem", [leaf(inter, 3).cert])
    (tmp_path / "inventory.yaml").write_text(
        "endpoints:\n  - {name: client, files: client.pem, verify: false}\n")
    table = subprocess.run([sys.executable, "-m", "certwatch", "check", "-c",
                            str(tmp_path / "inventory.yaml"), "--colour", "never"],
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 2, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[3:6] == ["NAME", "SOURCE", "LOCATION"]
    assert row.split()[3:5] == ["client", "file"] and row.split()[5].endswith("/client.pem#0")


def test_the_daemon_rereads_a_file_that_changed(tmp_path: Path, ca: tuple[Issued, Issued]) -> None:
    _, inter = ca
    path = write_pem(tmp_path / "web.pem", [leaf(inter, 5).cert])
    config = tmp_path / "certwatch.yaml"
    config.write_text("defaults: {verify: false, interval: 1h}\n"
                      "endpoints:\n  - {name: web, files: web.pem}\n")
    daemon = RunningDaemon(config, tmp_path / "daemon.log")
    try:
        def state() -> str | None:
            status, body = daemon.get("/api/v1/targets")
            return json.loads(body)[0]["state"] if status == 200 and body != "[]" else None

        assert wait_for("the file's certificate", state) == "critical"
        renewed = tmp_path / "web.pem.new"
        write_pem(renewed, [leaf(inter, 90).cert])
        renewed.replace(path)  # as certbot and cert-manager do
        wait_for("the renewed certificate (the interval is an hour)", lambda: state() == "ok",
                 timeout=20)
        metrics = daemon.metrics()
        (up,) = metrics["certwatch_source_up"]
        assert (up.labels, up.value) == ({"source": "file"}, 1.0)
        (expiry,) = metrics["certwatch_cert_expiry_timestamp_seconds"]
        assert expiry.labels["location"] == f"{path}#0"
        (info,) = metrics["certwatch_target_info"]
        assert info.labels["source"] == "file" and info.labels["location"] == f"{path}#0"
    finally:
        daemon.stop()
