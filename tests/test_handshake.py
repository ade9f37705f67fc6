"""The probe's pyOpenSSL handshake keeps the reach of the stdlib one it replaced (issue 12):
TLS 1.0 and legacy ciphers, no resumption, and it asks for the OCSP staple."""

from __future__ import annotations

import asyncio
import ssl
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from OpenSSL import SSL

from certwatch.config import build_inventory
from certwatch.sources.handshake import client_context
from certwatch.sources.wire import Prober
from certwatch.sweep import sweep
from tests.pki import make_leaf, make_root
from tests.servers import TLSServer

# Every handshake here runs on asyncio's loop and on uvloop (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("both_event_loops")

NOW = datetime.now(timezone.utc)
DAY = timedelta(days=1)


def probe(server: TLSServer, root_pem: Path) -> tuple[str | None, str | None, bytes | None]:
    inventory = build_inventory({"endpoints": [{
        "host": server.host, "port": server.port, "server_name": "old.test",
        "ca_file": str(root_pem), "system_trust": False}]}, source="test")
    (result,) = asyncio.run(sweep(inventory.endpoints, Prober()))
    assert result.leaf is not None, result.summary
    return result.observation.tls_version, result.observation.cipher, result.observation.ocsp_staple


@pytest.fixture(scope="module")
def old_box(tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple[Path, Path], Path]:
    directory = tmp_path_factory.mktemp("handshake")
    root = make_root("Old Box Root", not_before=NOW - DAY, not_after=NOW + 900 * DAY)
    leaf = make_leaf(root, ["old.test"], not_before=NOW - DAY, not_after=NOW + 90 * DAY,
                     key_type="rsa")
    root_pem = directory / "root.pem"
    root_pem.write_bytes(root.cert_pem)
    return leaf.write(directory, "old"), root_pem


def test_tls_1_0_with_a_legacy_cipher_is_still_reached(old_box: tuple[tuple[Path, Path], Path]) -> None:
    files, root_pem = old_box
    with TLSServer({None: files}, min_version=ssl.TLSVersion.TLSv1,
                   max_version=ssl.TLSVersion.TLSv1) as server:
        version, cipher, staple = probe(server, root_pem)
    assert version == "TLSv1"
    assert cipher and "GCM" not in cipher  # TLS 1.0 has only CBC (and RC4) suites
    assert staple == b""  # asked for; the stdlib server cannot staple


def test_the_client_context_never_resumes_and_verifies_nothing() -> None:
    context = client_context()
    assert context.get_session_cache_mode() == SSL.SESS_CACHE_OFF
    assert context.get_verify_mode() == SSL.VERIFY_NONE
    options = context.set_options(0)  # returns the options in force
    assert options & SSL.OP_NO_TICKET
