"""Real handshakes against real TLS servers on loopback, certificates made here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from certwatch.core.assess import Assessment
from certwatch.core.vocabulary import State
from certwatch.sweep import sweep
from certwatch.config import build_inventory
from certwatch.sources.wire import Prober
from tests.pki import Issued, make_intermediate, make_leaf, make_root
from tests.servers import (
    DripServer,
    GarbageServer,
    PlainHTTPServer,
    ResetServer,
    TarpitServer,
    TLSServer,
    closed_port,
)

# Every handshake here runs on asyncio's loop and on uvloop (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("both_event_loops")

NOW = datetime.now(timezone.utc)
DAY = timedelta(days=1)


@dataclass(frozen=True)
class PKI:
    root: Issued
    intermediate: Issued
    root_pem: Path
    directory: Path

    def serve(self, name: str, *, left: float = 90, names: tuple[str, ...] = ("svc.test",),
              parent: Issued | None | str = "intermediate", chain: bool = True,
              not_before: datetime | None = None, key_type: str = "ec") -> tuple[Path, Path]:
        """Writes a leaf with `left` days to live, issued at least 30 days ago and as a
        90-day certificate would be; returns (chain path, key path)."""
        issuer = self.intermediate if parent == "intermediate" else parent
        assert not isinstance(issuer, str)
        leaf = make_leaf(issuer, names, key_type=key_type,
                         not_before=not_before or NOW - max(30, 90 - left) * DAY,
                         not_after=NOW + left * DAY)
        return leaf.write(self.directory, name, chain=chain)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    directory = tmp_path_factory.mktemp("pki")
    root = make_root("certwatch Test Root", not_before=NOW - 3650 * DAY, not_after=NOW + 3650 * DAY)
    intermediate = make_intermediate(root, "certwatch Test Intermediate",
                                     not_before=NOW - 365 * DAY, not_after=NOW + 1000 * DAY)
    root_pem = directory / "root.pem"
    root_pem.write_bytes(root.cert_pem)
    return PKI(root, intermediate, root_pem, directory)


def run_check(pki: PKI, *endpoints: dict[str, Any], prober: Prober | None = None,
              timeout: float = 5) -> list[Assessment]:
    document = {
        "defaults": {"ca_file": str(pki.root_pem), "system_trust": False, "timeout": timeout},
        "endpoints": list(endpoints),
    }
    inventory = build_inventory(document, source="test")
    return asyncio.run(sweep(inventory.endpoints,
                             prober or Prober(max_concurrency=inventory.max_concurrency)))


def check_one(pki: PKI, server: TLSServer | Any, **entry: Any) -> Assessment:
    entry.setdefault("server_name", "svc.test")
    (result,) = run_check(pki, {"host": server.host, "port": server.port, **entry},
                          timeout=entry.pop("timeout", 5))
    return result


@pytest.mark.parametrize(
    ("left", "state", "reasons"),
    [(90, State.OK, ()), (28, State.WARNING, ("expiring",)),
     (20, State.WARNING, ("expiring", "renewal_overdue")),  # past 70% of its 90 days
     (5, State.CRITICAL, ("expiring", "renewal_overdue")), (-2, State.EXPIRED, ("expired",))],
)
def test_expiry_states_over_real_handshakes(pki: PKI, left: float, state: State,
                                            reasons: tuple[str, ...]) -> None:
    with TLSServer({None: pki.serve(f"left{left}", left=left)}) as server:
        result = check_one(pki, server)
    assert (result.state, result.reasons) == (state, reasons), result.summary
    assert result.observation.error is None
    assert result.days_left == pytest.approx(left, abs=0.01)
    assert [c.subject for c in result.chain] == ["CN=svc.test", "CN=certwatch Test Intermediate"]
    assert result.verification is not None
    assert result.verification.trusted


@pytest.mark.parametrize(
    ("case", "reasons"),
    [
        ("not_yet_valid", ("not_yet_valid",)),
        ("self_signed", ("self_signed",)),
        ("untrusted_root", ("untrusted",)),
        ("wrong_host", ("hostname_mismatch",)),
        ("no_intermediate", ("incomplete_chain",)),
    ],
)
def test_certificates_clients_reject_are_critical_yet_read(pki: PKI, case: str,
                                                           reasons: tuple[str, ...]) -> None:
    if case == "not_yet_valid":
        files = pki.serve(case, not_before=NOW + 2 * DAY, left=200)
    elif case == "self_signed":
        files = pki.serve(case, parent=None)
    elif case == "untrusted_root":
        other = make_root("Somebody Else's Root", not_before=NOW - DAY, not_after=NOW + 900 * DAY)
        leaf = make_leaf(other, ["svc.test"], not_before=NOW - DAY, not_after=NOW + 90 * DAY)
        files = leaf.write(pki.directory, case)
        files[0].write_bytes(files[0].read_bytes() + other.cert_pem)  # a server that sends its root
    elif case == "wrong_host":
        files = pki.serve(case, names=("other.test",))
    else:
        files = pki.serve(case, chain=False)
    with TLSServer({None: files}) as server:
        result = check_one(pki, server)
    assert result.state is State.CRITICAL, result.summary
    assert result.reasons == reasons
    assert result.leaf is not None  # fetched and parsed all the same
    # With verification off the same certificate is judged on expiry alone.
    with TLSServer({None: files}) as server:
        relaxed = check_one(pki, server, verify=False)
    assert relaxed.state is State.OK
    assert relaxed.verification is not None and relaxed.verification.problems == reasons


def test_intermediate_expiring_before_the_leaf(pki: PKI) -> None:
    short = make_intermediate(pki.root, "Short-lived Intermediate", not_before=NOW - 300 * DAY,
                              not_after=NOW + 6 * DAY)
    leaf = make_leaf(short, ["svc.test"], not_before=NOW - DAY, not_after=NOW + 80 * DAY)
    with TLSServer({None: leaf.write(pki.directory, "short")}) as server:
        result = check_one(pki, server)
    assert result.state is State.CRITICAL
    assert result.earliest is not None
    assert result.earliest.subject == "CN=Short-lived Intermediate"
    assert result.leaf is not None and result.leaf.not_after > result.earliest.not_after


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
@pytest.mark.parametrize(("version", "expected"), [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
                                                   (ssl.TLSVersion.TLSv1_3, "TLSv1.3")])
def test_key_types_and_tls_versions(pki: PKI, key_type: str, version: ssl.TLSVersion,
                                    expected: str) -> None:
    files = pki.serve(f"{key_type}-{expected}", key_type=key_type)
    with TLSServer({None: files}, min_version=version, max_version=version) as server:
        result = check_one(pki, server)
    assert result.state is State.OK, result.summary
    assert result.observation.tls_version == expected
    assert result.observation.cipher
    assert result.leaf is not None and result.leaf.key_type.startswith(key_type.upper())


def test_sni_selects_the_certificate(pki: PKI) -> None:
    certs = {
        "a.test": pki.serve("sni-a", names=("a.test",), left=60),
        "b.test": pki.serve("sni-b", names=("b.test",), left=10),
        None: pki.serve("sni-default", names=("default.test",), left=100),
    }
    with TLSServer(certs) as server:
        a, b = run_check(pki,
                         {"name": "a", "host": server.host, "port": server.port, "server_name": "a.test"},
                         {"name": "b", "host": server.host, "port": server.port, "server_name": "b.test"})
        no_sni = check_one(pki, server, server_name=False)
    assert (a.state, a.leaf.dns_names) == (State.OK, ("a.test",))  # type: ignore[union-attr]
    assert (b.state, b.leaf.dns_names) == (State.WARNING, ("b.test",))  # type: ignore[union-attr]
    # No SNI: the default certificate, checked against the host (an IP): a mismatch.
    assert no_sni.leaf is not None and no_sni.leaf.dns_names == ("default.test",)
    assert no_sni.reasons == ("hostname_mismatch",)


def test_ipv6_listener(pki: PKI) -> None:
    with TLSServer({None: pki.serve("v6", names=("svc.test", "::1"))}, host="::1") as server:
        by_name = check_one(pki, server)
        by_ip = check_one(pki, server, server_name=False)
    assert by_name.target.address == "::1"
    assert by_name.state is State.OK, by_name.summary
    assert by_ip.target.endpoint.name == f"[::1]:{server.port}"
    assert by_ip.state is State.OK, by_ip.summary


def test_every_address_of_a_name_is_probed_separately(pki: PKI) -> None:
    # The resolver is injected so the test needs no DNS: "svc.test" has two addresses
    # (two backends behind one name), and one of them serves a stale certificate.
    async def two_backends(host: str, port: int) -> list[str]:
        assert host == "svc.test"
        return ["127.0.0.1", "127.0.0.2"]

    with TLSServer({None: pki.serve("fresh", left=80)}, host="127.0.0.1") as fresh, \
            TLSServer({None: pki.serve("stale", left=3)}, host="127.0.0.2", port=fresh.port) as _:
        results = run_check(pki, {"host": "svc.test", "port": fresh.port},
                            prober=Prober(resolver=two_backends))
        first_only = run_check(pki, {"host": "svc.test", "port": fresh.port, "addresses": "first"},
                               prober=Prober(resolver=two_backends))
    by_address = {r.target.address: r for r in results}
    assert by_address["127.0.0.1"].state is State.OK
    assert by_address["127.0.0.2"].state is State.CRITICAL
    assert len({r.target.key for r in results}) == 2
    assert [r.target.address for r in first_only] == ["127.0.0.1"]


@pytest.mark.parametrize("protocol", ["smtp", "imap", "pop3", "ftp", "ldap", "postgres", "xmpp"])
def test_starttls_dialogues(pki: PKI, protocol: str) -> None:
    files = pki.serve(f"starttls-{protocol}", left=15)
    with TLSServer({None: files}, starttls=protocol) as server:
        result = check_one(pki, server, protocol=protocol)
    assert result.observation.error is None, result.summary
    assert result.state is State.WARNING
    assert result.leaf is not None and result.leaf.dns_names == ("svc.test",)


@pytest.mark.parametrize("protocol", ["smtp", "imap", "pop3", "ftp", "ldap", "postgres", "xmpp"])
def test_starttls_not_offered(pki: PKI, protocol: str) -> None:
    files = pki.serve(f"nostarttls-{protocol}")
    with TLSServer({None: files}, starttls=protocol, starttls_offered=False) as server:
        result = check_one(pki, server, protocol=protocol)
    assert result.state is State.ERROR
    assert result.reasons == ("starttls_unsupported",), result.summary


def test_certificate_is_read_from_a_server_demanding_a_client_certificate(pki: PKI) -> None:
    files = pki.serve("mtls", left=20)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        with TLSServer({None: files}, client_ca=pki.root_pem, min_version=version,
                       max_version=version) as server:
            result = check_one(pki, server)
        assert result.leaf is not None, (version, result.summary)
        assert result.state is State.WARNING
        if version is ssl.TLSVersion.TLSv1_2:  # 1.3 clients finish before the server judges
            assert result.observation.error is not None
            assert result.observation.error.kind == "handshake"
            assert "handshake_incomplete" in result.reasons


def test_client_certificate_is_presented_when_configured(pki: PKI) -> None:
    client = make_leaf(pki.intermediate, ["client.test"], not_before=NOW - DAY,
                       not_after=NOW + 30 * DAY, extra_extensions=[
                           (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)])
    cert, key = client.write(pki.directory, "client")
    with TLSServer({None: pki.serve("mtls-ok")}, client_ca=pki.root_pem,
                   max_version=ssl.TLSVersion.TLSv1_2) as server:
        result = check_one(pki, server, client_cert=str(cert), client_key=str(key))
    assert result.observation.error is None, result.summary
    assert result.state is State.OK


@pytest.mark.parametrize(
    ("peer", "kind", "phase"),
    [
        (lambda: TarpitServer(), "timeout", "handshake"),
        (lambda: DripServer(), "timeout", "handshake"),
        (lambda: ResetServer(), "reset", "handshake"),
        (lambda: GarbageServer(), "not_tls", "handshake"),
        (lambda: PlainHTTPServer(), "not_tls", "handshake"),
    ],
    ids=["tarpit", "drip", "reset", "garbage", "plain_http"],
)
def test_hostile_peers_give_their_error_kind_within_the_deadline(pki: PKI, peer: Any, kind: str,
                                                                 phase: str) -> None:
    with peer() as server:
        start = time.monotonic()
        result = check_one(pki, server, timeout=1.5)
        elapsed = time.monotonic() - start
    error = result.observation.error
    assert error is not None
    assert (result.state, error.kind, error.phase) == (State.ERROR, kind, phase), error
    assert elapsed < 1.5 + 0.5  # one phase deadline, plus set-up


def test_starttls_tarpit_times_out_in_the_dialogue(pki: PKI) -> None:
    with TarpitServer(banner=b"220 slow.test ESMTP\r\n") as server:
        result = check_one(pki, server, protocol="smtp", timeout=1)
    assert result.observation.error is not None
    assert (result.observation.error.kind, result.observation.error.phase) == ("timeout", "starttls")


def test_closed_port_and_unresolvable_name(pki: PKI) -> None:
    refused, unresolvable = run_check(
        pki,
        {"name": "closed", "host": "127.0.0.1", "port": closed_port()},
        {"name": "nowhere", "host": "certwatch-test.invalid", "port": 443},
        timeout=3,
    )
    assert refused.observation.error is not None and unresolvable.observation.error is not None
    assert (refused.state, refused.observation.error.kind) == (State.ERROR, "refused")
    assert (unresolvable.state, unresolvable.observation.error.kind) == (State.ERROR, "dns")
    assert unresolvable.target.address is None


def _client_connections(port: int) -> int:
    """This process's sockets connected or connecting TO `port` (the client side).

    Read from the kernel's table rather than from the server, which only notices a
    client's close a moment later and would count that connection a little too long;
    only sockets held by this process count (other test runs may use the same port
    number on another loopback address).
    """
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                ours.add(link[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                remote_port, state, inode = int(fields[2].rsplit(":", 1)[1], 16), fields[3], fields[9]
                # ESTABLISHED or SYN_SENT, and still held by one of our descriptors (not an
                # orphan already closed, which the kernel may list a moment longer)
                count += remote_port == port and state in ("01", "02") and inode in ours
    return count


def test_concurrency_bound_holds(pki: PKI) -> None:
    # A tarpit holds every connection for the whole handshake deadline, so the number
    # open at once is exactly what the bound allows, and slow enough to sample.
    peak = 0
    done = threading.Event()

    def watch(port: int) -> None:
        nonlocal peak
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            peak = max(peak, _client_connections(port))
            time.sleep(0.01)

    with TarpitServer() as server:
        watcher = threading.Thread(target=watch, args=(server.port,))
        watcher.start()
        endpoints = [{"name": f"e{i}", "host": server.host, "port": server.port}
                     for i in range(12)]
        try:
            results = run_check(pki, *endpoints, prober=Prober(max_concurrency=4), timeout=0.5)
        finally:
            done.set()
            watcher.join(5)
    assert [r.observation.error.kind for r in results if r.observation.error] == ["timeout"] * 12
    assert peak == 4, peak
