"""Protocol `mysql`: a real MariaDB from Debian on loopback, with TLS on and off.

The servers are started once per session (a data directory each, made by
mariadb-install-db) and shared by the tests here; the certificate is made here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from certwatch.config import build_inventory
from certwatch.core.assess import Assessment
from certwatch.core.vocabulary import ErrorKind, Phase, State
from certwatch.sources.wire import Prober
from certwatch.sweep import sweep
from tests.debian_servers import MariaDB, TinyProxy
from tests.pki import make_intermediate, make_leaf, make_root
from tests.servers import TarpitServer

NOW = datetime.now(timezone.utc)
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Database:
    server: MariaDB
    root_pem: Path


@pytest.fixture(scope="session")
def database_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("mysql-pki")
    root = make_root("MySQL Test Root", not_before=NOW - 10 * DAY, not_after=NOW + 900 * DAY)
    intermediate = make_intermediate(root, "MySQL Test Intermediate", not_before=NOW - 10 * DAY,
                                     not_after=NOW + 800 * DAY)
    leaf = make_leaf(intermediate, ["db.test"], key_type="rsa", not_before=NOW - 400 * DAY,
                     not_after=NOW + 20 * DAY)
    root_pem = directory / "root.pem"
    root_pem.write_bytes(root.cert_pem)
    return root_pem, leaf.write(directory, "db")


@pytest.fixture(scope="session")
def mariadb_tls(tmp_path_factory: pytest.TempPathFactory,
                database_pki: tuple[Path, tuple[Path, Path]]) -> Iterator[Database]:
    root_pem, files = database_pki
    with MariaDB(tmp_path_factory.mktemp("mariadb-tls"), tls=files) as server:
        yield Database(server, root_pem)


@pytest.fixture(scope="session")
def mariadb_plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    with MariaDB(tmp_path_factory.mktemp("mariadb-plain"), tls=None) as server:
        yield server


def check(*endpoints: dict[str, Any], root_pem: Path | None = None) -> list[Assessment]:
    defaults: dict[str, Any] = {"timeout": 5, "system_trust": False}
    if root_pem is not None:
        defaults["ca_file"] = str(root_pem)
    inventory = build_inventory({"defaults": defaults, "endpoints": list(endpoints)}, source="test")
    return asyncio.run(sweep(inventory.endpoints, Prober()))


def test_mariadb_presents_its_chain_after_the_ssl_request(mariadb_tls: Database) -> None:
    server = mariadb_tls.server
    (result,) = check({"host": server.host, "port": server.port, "protocol": "mysql",
                       "server_name": "db.test"}, root_pem=mariadb_tls.root_pem)
    assert result.observation.error is None, result.summary
    assert (result.state, result.reasons) == (State.WARNING, ("expiring",))
    assert [c.subject for c in result.chain] == ["CN=db.test", "CN=MySQL Test Intermediate"]
    assert result.days_left == pytest.approx(20, abs=0.01)
    assert result.verification is not None and result.verification.ok
    assert result.observation.tls_version in ("TLSv1.2", "TLSv1.3")


def test_the_url_form_and_default_port(mariadb_tls: Database) -> None:
    server = mariadb_tls.server
    (endpoint,) = build_inventory({"endpoints": ["mysql://db.example"]}).endpoints
    assert (endpoint.protocol, endpoint.port) == ("mysql", 3306)
    (result,) = check({"url": f"mysql://{server.host}:{server.port}", "server_name": "db.test"},
                      root_pem=mariadb_tls.root_pem)
    assert result.verification is not None and result.verification.ok, result.summary


def test_mariadb_without_tls_is_starttls_unsupported(mariadb_plain: MariaDB) -> None:
    (result,) = check({"host": mariadb_plain.host, "port": mariadb_plain.port,
                       "protocol": "mysql", "server_name": "db.test"})
    error = result.observation.error
    assert error is not None and result.state is State.ERROR
    assert (error.kind, error.phase) == (ErrorKind.STARTTLS_UNSUPPORTED, Phase.STARTTLS)
    assert "MariaDB" in error.detail and "does not offer TLS (CLIENT_SSL is off" in error.detail


def _packet(payload: bytes, sequence: int = 0) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([sequence]) + payload


@pytest.mark.parametrize(
    ("banner", "expected"),
    [
        # What MariaDB sends a host it has blocked (ER_HOST_IS_BLOCKED), then closes.
        (_packet(b"\xff\x69\x04Host '127.0.0.1' is blocked because of many connection errors"),
         "refused the connection: error 1129 \"Host '127.0.0.1' is blocked"),
        (_packet(b"\x09" + b"4.0.0\x00" + bytes(20)), "is not protocol version 10"),
        (_packet(b"\x0a5.7.0\x00" + bytes(4)), "greeting is truncated"),
        # An SMTP server on the MySQL port: its "220" reads as a 3-MB packet length.
        (b"220 mail.test ESMTP\r\n", "announced a 3158578-byte greeting: not a MySQL server?"),
    ],
)
def test_servers_that_are_not_a_usable_mysql_are_classified(banner: bytes, expected: str) -> None:
    with TarpitServer(banner=banner) as server:
        (result,) = check({"host": server.host, "port": server.port, "protocol": "mysql",
                           "server_name": "db.test", "timeout": 2})
    error = result.observation.error
    assert error is not None and error.kind is ErrorKind.STARTTLS_UNSUPPORTED, result.summary
    assert expected in error.detail


def test_a_greeting_cut_short_costs_one_deadline() -> None:
    with TarpitServer(banner=_packet(b"\x0a5.7.0\x00" + bytes(30))[:12]) as server:
        (result,) = check({"host": server.host, "port": server.port, "protocol": "mysql",
                           "timeout": 0.5})
    error = result.observation.error
    assert error is not None and (error.kind, error.phase) == (ErrorKind.TIMEOUT, Phase.STARTTLS)
    assert result.observation.duration_seconds < 2


def test_mariadb_through_a_real_proxy(mariadb_tls: Database, tmp_path: Path) -> None:
    server = mariadb_tls.server
    with TinyProxy(tmp_path / "proxy") as proxy:
        (result,) = check({"host": server.host, "port": server.port, "protocol": "mysql",
                           "server_name": "db.test", "proxy_url": proxy.url},
                          root_pem=mariadb_tls.root_pem)
        log = (tmp_path / "proxy" / "tinyproxy.log").read_text()
    assert result.observation.error is None, result.summary
    assert result.verification is not None and result.verification.ok
    assert f"CONNECT 127.0.0.1:{server.port}" in log
