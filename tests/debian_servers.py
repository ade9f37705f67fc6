"""Real servers from Debian, started on loopback for the tests: MariaDB and tinyproxy.

Each is a context manager that starts the real program with a configuration written
here (its own data directory, certificates made by the test), waits a bounded time
until it accepts connections, and stops it on exit. They listen on 127.0.0.1 only; the
proxy only opens tunnels to loopback addresses, so no test traffic leaves the machine.

A missing program skips its tests on a developer's machine and fails them under CI,
where .ci/run installs the packages (mariadb-server, tinyproxy).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

START_TIMEOUT = 30.0  # seconds for a server to accept connections
STOP_TIMEOUT = 10.0


def program(name: str, package: str) -> str:
    """The path of a Debian program (sbin included); skip, or fail under CI, without it."""
    for path in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if path and os.access(path, os.X_OK):
            return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is missing: .ci/run must install Debian's {package}")
    pytest.skip(f"{name} is not installed (Debian package {package}; CI installs it)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Process:
    """A server process whose output goes to a log file in its directory."""

    host = "127.0.0.1"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.log = directory / "server.log"
        self._process: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write configuration and data before the program starts."""

    def __enter__(self) -> Self:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._prepare()
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
        try:
            self._wait_until_listening()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _wait_until_listening(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self._command()[0]} exited with {self._process.returncode}:\n"
                                   + self.log.read_text(errors="replace")[-3000:])
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self._command()[0]} did not listen within {START_TIMEOUT}s:\n"
                           + self.log.read_text(errors="replace")[-3000:])

    def close(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(STOP_TIMEOUT)


class MariaDB(_Process):
    """mariadbd with its own data directory; TLS with `tls` = (certificate chain, key),
    else TLS off."""

    def __init__(self, directory: Path, *, tls: tuple[Path, Path] | None) -> None:
        super().__init__(directory)
        self.tls = tls
        self._server = program("mariadbd", "mariadb-server")
        self._install = program("mariadb-install-db", "mariadb-server")

    # Small InnoDB files: the data directory is made afresh for every test session.
    _STORAGE = ["--innodb-log-file-size=4M", "--innodb-data-file-path=ibdata1:4M:autoextend"]

    def _common(self) -> list[str]:
        user = ["--user=root"] if os.geteuid() == 0 else []  # mariadbd refuses root otherwise
        return ["--no-defaults", f"--datadir={self.directory / 'data'}", *user, *self._STORAGE]

    def _prepare(self) -> None:
        subprocess.run([self._install, *self._common(), "--skip-test-db",
                        "--auth-root-authentication-method=normal"],
                       check=True, capture_output=True, timeout=120)

    def _command(self) -> list[str]:
        tls = ([f"--ssl-cert={self.tls[0]}", f"--ssl-key={self.tls[1]}"] if self.tls
               else ["--skip-ssl"])
        return [self._server, *self._common(), f"--port={self.port}",
                f"--bind-address={self.host}", f"--socket={self.directory / 'mysql.sock'}",
                f"--pid-file={self.directory / 'mariadb.pid'}", "--skip-log-bin",
                "--skip-name-resolve", "--log-error=" + str(self.log), *tls]


class TinyProxy(_Process):
    """tinyproxy as an HTTP CONNECT proxy that opens tunnels to 127.0.0.1 only, with
    Basic credentials required when `credentials` = (user, password) is given."""

    def __init__(self, directory: Path, *, credentials: tuple[str, str] | None = None) -> None:
        super().__init__(directory)
        self.credentials = credentials
        self._program = program("tinyproxy", "tinyproxy")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _prepare(self) -> None:
        # Every target but 127.0.0.1 is refused (403) before any look-up or connection.
        (self.directory / "allowed").write_text("^127\\.0\\.0\\.1$\n")
        lines = [
            f"Port {self.port}", f"Listen {self.host}", "Allow 127.0.0.1",
            "Timeout 30", "MaxClients 100", "LogLevel Info",
            f'LogFile "{self.directory / "tinyproxy.log"}"',
            f'Filter "{self.directory / "allowed"}"', "FilterDefaultDeny Yes", "FilterType ere",
            "DisableViaHeader Yes",
        ]
        if self.credentials is not None:
            lines.append("BasicAuth {} {}".format(*self.credentials))
        (self.directory / "tinyproxy.conf").write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        return [self._program, "-d", "-c", str(self.directory / "tinyproxy.conf")]
