"""A real PostgreSQL from Debian (apt: postgresql), for the shared-state tests.

One server per test session (`postgres_server`, session-scoped): initdb in a temporary
directory, listening on 127.0.0.1 only (and a Unix socket in that directory), password
authentication over TCP, as certwatch would meet it. PostgreSQL refuses to run as root,
so as root it runs as the `postgres` user Debian's package creates. Each test gets a
database of its own (`Postgres.database`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.test_daemon import free_port
from tests.test_prometheus import _stop

PASSWORD = "certwatch-test-password"
USER = "certwatch"


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


@dataclass
class Postgres:
    port: int
    socket_dir: Path
    directory: Path

    def url(self, database: str) -> str:
        """The URL certwatch is given: no password in it."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def database(self, name: str) -> str:
        """A fresh database (dropped first if a previous run left it); its URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD,
                             dbname="postgres", autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def connect(self, database: str):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD,
                               dbname=database, autocommit=True, connect_timeout=5)


def _as_postgres() -> tuple[list[str], int | None]:
    """The command prefix and uid to run the server with (not root)."""
    if os.geteuid() != 0:
        return [], None
    try:
        uid = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        pytest.fail("running as root needs the postgres user (Debian's postgresql package)")
    return ["runuser", "-u", "postgres", "--"], uid


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    binaries = _binaries()
    if binaries is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing: CI must install Debian's postgresql package")
        pytest.skip("PostgreSQL is not installed (apt: postgresql)")
    prefix, uid = _as_postgres()
    directory = Path(tempfile.mkdtemp(prefix="certwatch-pg-"))
    try:
        data, sockets = directory / "data", directory / "run"
        sockets.mkdir()
        (directory / "pwfile").write_text(PASSWORD + "\n")
        if uid is not None:
            for path in (directory, sockets, directory / "pwfile"):
                os.chown(path, uid, -1)
        subprocess.run([*prefix, str(binaries / "initdb"), "-D", str(data), "-U", USER,
                        f"--pwfile={directory / 'pwfile'}", "--auth-local=trust",
                        "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        port = free_port()
        log = (directory / "postgres.log").open("w")
        process = subprocess.Popen(
            [*prefix, str(binaries / "postgres"), "-D", str(data), "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sockets}",
             "-c", "fsync=off", "-c", "max_connections=100", "-c", "log_min_messages=warning"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            ready = shutil.which("pg_isready") or str(binaries / "pg_isready")
            deadline = time.monotonic() + 30
            while subprocess.run([ready, "-h", "127.0.0.1", "-p", str(port), "-q"],
                                 timeout=10).returncode != 0:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError((directory / "postgres.log").read_text()[-2000:])
                time.sleep(0.1)
            yield Postgres(port, sockets, directory)
        finally:
            _stop(process)
            log.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    with running_postgres() as server:
        yield server
