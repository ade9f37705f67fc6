"""Every file certwatch reads is a regular file within a cap (issue 17).

The one reader (certwatch.config.files) against real file types: devices, FIFOs nobody
writes to, directories, sockets, symlink loops, and sizes around the cap; then each
place that reads a file (the inventory, the web configuration, secret files, ca_file,
certificates and keys, at load time, at probe time and on rotation), through the CLI
as a user runs it. Every wait is bounded: a FIFO that were opened blocking would hang
the test until pytest-timeout ends it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certwatch.config import ConfigError, load_inventory, parse_inventory
from certwatch.config.files import (
    CONFIG_FILE,
    PEM_FILE,
    SECRET_FILE,
    FileRefused,
    Limit,
    check_file,
    read_bounded,
)
from certwatch.config.web import TLSServerConfig, load_web_config
from certwatch.core.inventory import Endpoint
from certwatch.core.vocabulary import ErrorKind
from certwatch.serving.tls import ServerTLS, TLSLoadError, build_server_context
from certwatch.sources.trust import read_pem_certificates
from certwatch.sources.wire import Prober
from tests.pki import make_leaf, make_root
from tests.servers import TLSServer

NOW = datetime.now(timezone.utc)
DAY = timedelta(days=1)
QUICK = 10.0  # seconds: a refusal is immediate; this only bounds a regression


def certwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certwatch", *args], capture_output=True,
                          text=True, timeout=60)


def fifo(path: Path) -> Path:
    os.mkfifo(path)  # nobody ever writes to it
    return path


def unix_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    return sock


# --- the reader -------------------------------------------------------------------------


def test_regular_files_within_the_cap_are_read_whole(tmp_path: Path) -> None:
    limit = Limit(1000, "a test file")
    for size in (0, 1, 999, 1000):
        path = tmp_path / f"f{size}"
        path.write_bytes(os.urandom(size))
        assert read_bounded(path, limit) == path.read_bytes()
        check_file(path, limit)
    (tmp_path / "big").write_bytes(b"x" * 1001)
    with pytest.raises(FileRefused, match=r"^larger than the 1000-byte limit") as refused:
        read_bounded(tmp_path / "big", Limit(1000, "a test file"))
    assert str(refused.value).endswith("for a test file")
    with pytest.raises(FileRefused, match="larger than"):
        check_file(tmp_path / "big", limit)


def test_the_caps_are_named_in_binary_units() -> None:
    assert str(CONFIG_FILE) == "the 16 MiB limit for a configuration file"
    assert str(SECRET_FILE) == "the 64 KiB limit for a secret file"
    assert str(Limit(1536, "x")) == "the 1536-byte limit for x"
    assert str(PEM_FILE) == "the 16 MiB limit for a certificate, key or CA file"


@pytest.mark.timeout(30)
def test_what_is_not_a_regular_file_is_refused_at_once(tmp_path: Path) -> None:
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dir").mkdir()
    listener = unix_socket(tmp_path / "sock")
    cases = {
        "/dev/zero": "not a regular file (a character device)",
        tmp_path / "zero": "not a regular file (a character device)",
        fifo(tmp_path / "fifo"): "not a regular file (a FIFO)",
        tmp_path / "dir": "not a regular file (a directory)",
        tmp_path / "sock": "not a regular file (a socket)",
        tmp_path / "loop": "a symlink loop",
    }
    try:
        for path, reason in cases.items():
            for read in (lambda p: read_bounded(p, CONFIG_FILE), lambda p: check_file(p, PEM_FILE)):
                started = time.monotonic()
                with pytest.raises(FileRefused) as refused:
                    read(Path(path))
                assert str(refused.value) == reason, path
                assert time.monotonic() - started < QUICK
    finally:
        listener.close()
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "absent", CONFIG_FILE)


def test_a_file_that_says_it_is_empty_is_still_capped(tmp_path: Path) -> None:
    """/proc files report size 0: the read itself stops one byte past the cap."""
    status = Path("/proc/self/status")
    assert os.stat(status).st_size == 0
    assert read_bounded(status, Limit(1 << 20, "x")).startswith(b"Name:")
    with pytest.raises(FileRefused, match="larger than the 10-byte limit"):
        read_bounded(status, Limit(10, "x"))


KINDS = ("regular", "empty", "directory", "fifo", "device", "symlink", "symlink loop",
         "dangling symlink", "socket")


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), size=st.integers(min_value=0, max_value=3000),
       cap=st.integers(min_value=0, max_value=3000), through_link=st.booleans())
@pytest.mark.timeout(60)
def test_property_any_file_is_read_whole_or_refused_with_a_reason(
        tmp_path_factory: pytest.TempPathFactory, kind: str, size: int, cap: int,
        through_link: bool) -> None:
    directory = tmp_path_factory.mktemp("kinds")
    path = directory / "target"
    data = os.urandom(size)
    listener = None
    if kind in ("regular", "symlink"):
        (directory / "real").write_bytes(data)
        path = directory / "real"
    elif kind == "empty":
        path.write_bytes(b"")
        data = b""
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        fifo(path)
    elif kind == "device":
        path = Path("/dev/null" if size % 2 else "/dev/zero")
    elif kind == "symlink loop":
        path.symlink_to(path)
    elif kind == "dangling symlink":
        path.symlink_to(directory / "nowhere")
    elif kind == "socket":
        listener = unix_socket(path)
    if kind == "symlink" or through_link:
        (directory / "link").symlink_to(path)
        path = directory / "link"
    limit = Limit(cap, "a test file")
    try:
        started = time.monotonic()
        try:
            got = read_bounded(path, limit)
        except FileRefused as exc:
            regular = kind in ("regular", "symlink", "empty")
            assert (regular and len(data) > cap and str(exc) == f"larger than {limit}") or (
                not regular and (str(exc).startswith("not a regular file (")
                                 or str(exc) == "a symlink loop")), (kind, str(exc))
        except FileNotFoundError:
            assert kind == "dangling symlink"
        else:
            assert kind in ("regular", "symlink", "empty") and got == data and len(data) <= cap
        assert time.monotonic() - started < QUICK
    finally:
        if listener is not None:
            listener.close()


# --- the places certwatch reads files ---------------------------------------------------


def test_validate_refuses_an_inventory_that_is_a_device_at_once(tmp_path: Path) -> None:
    """`validate -c zero.yaml`, zero.yaml a symlink to /dev/zero, grew to 12.9 GB."""
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    started = time.monotonic()
    result = certwatch("validate", "-c", str(tmp_path / "zero.yaml"))
    assert result.returncode == 3
    assert result.stderr.strip().splitlines()[-1] == (
        "  - top: cannot read the file: not a regular file (a character device)")
    assert "Traceback" not in result.stderr and time.monotonic() - started < 30


@pytest.mark.timeout(60)
def test_an_inventory_fifo_or_directory_is_refused(tmp_path: Path) -> None:
    for path, kind in ((fifo(tmp_path / "inv.yaml"), "a FIFO"), (tmp_path, "a directory")):
        result = certwatch("check", "-c", str(path))
        assert result.returncode == 3
        assert f"cannot read the file: not a regular file ({kind})" in result.stderr


def test_an_inventory_over_16_mib_is_refused_without_reading_it(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.write(b"endpoints:\n")
        f.truncate(CONFIG_FILE.size + 1)  # sparse: nothing to read, and nothing is
    started = time.monotonic()
    with pytest.raises(ConfigError) as refused:
        load_inventory(big)
    assert refused.value.problems == (
        "top: cannot read the file: larger than the 16 MiB limit for a configuration file",)
    assert time.monotonic() - started < 1.0
    exactly = tmp_path / "exact.yaml"
    exactly.write_bytes(b"endpoints: []\n" + b"#" * (CONFIG_FILE.size - 15) + b"\n")
    assert load_inventory(exactly).endpoints == ()  # the cap itself is allowed


def test_secret_files_are_refused_when_not_regular_or_over_64_kib(tmp_path: Path) -> None:
    """A sink's `url_file:` pointing at /dev/zero raised MemoryError."""
    (tmp_path / "huge").write_text("https://hooks.example/" + "a" * SECRET_FILE.size)
    (tmp_path / "ok").write_text("https://hooks.example/x\n")
    fifo(tmp_path / "pipe")
    cases = {"/dev/zero": "cannot read /dev/zero: not a regular file (a character device)",
             str(tmp_path / "pipe"): "not a regular file (a FIFO)",
             str(tmp_path / "huge"): "larger than the 64 KiB limit for a secret file",
             str(tmp_path / "ok"): None}
    for path, expected in cases.items():
        text = (f"endpoints: []\nalerts:\n  state_dir: {tmp_path}\n  sinks:\n"
                f"    - {{name: chat, type: slack, url_file: '{path}'}}\n")
        if expected is None:
            parse_inventory(text, environ={})
            continue
        with pytest.raises(ConfigError) as refused:
            parse_inventory(text, environ={})
        (problem,) = refused.value.problems
        assert problem.startswith("line 5: alerts.sinks[0] 'chat': 'url_file': ")
        assert expected in problem


@pytest.mark.timeout(60)
def test_certificate_and_key_paths_must_be_regular_files(tmp_path: Path) -> None:
    fifo(tmp_path / "ca.pem")
    with pytest.raises(ConfigError) as refused:
        parse_inventory("endpoints:\n  - {host: a.example, ca_file: ca.pem}\n", base=tmp_path, strict=True)
    assert refused.value.problems == (
        f"line 2: endpoint 1: 'ca_file': cannot read {tmp_path / 'ca.pem'}: not a regular file "
        "(a FIFO)",)
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config: {cert_file: /dev/zero, key_file: /dev/zero}\n")
    with pytest.raises(ConfigError) as refused:
        load_web_config(web)
    assert refused.value.problems == tuple(
        f"line 1: tls_server_config: '{key}': cannot read /dev/zero: not a regular file "
        "(a character device)"
        for key in ("cert_file", "key_file"))


def _serving_files(directory: Path) -> tuple[Path, Path]:
    root = make_root("Files Root", not_before=NOW - DAY, not_after=NOW + 90 * DAY)
    return make_leaf(root, ["localhost"], not_before=NOW - DAY,
                     not_after=NOW + 30 * DAY).write(directory, "serving")


@pytest.mark.timeout(60)
def test_rotated_serving_files_that_are_not_regular_are_refused(tmp_path: Path) -> None:
    """The TLS files are read again on rotation, with the event loop waiting: a key
    swapped for a FIFO must be refused at once, the previous certificate serving on."""
    cert, key = _serving_files(tmp_path)
    tls = ServerTLS(TLSServerConfig(cert_file=cert, key_file=key))
    key.unlink()
    fifo(key)
    started = time.monotonic()
    assert tls.check(force=True) is False and tls.failures == 1
    assert time.monotonic() - started < QUICK
    with pytest.raises(TLSLoadError, match=r"cannot read 'key_file' .*: not a regular file \(a FIFO\)"):
        build_server_context(tls.config)
    cert.unlink()
    cert.symlink_to("/dev/zero")
    with pytest.raises(TLSLoadError, match=r"cannot read 'cert_file' .*character device"):
        build_server_context(tls.config)


def test_trust_store_files_are_read_bounded(tmp_path: Path) -> None:
    fifo(tmp_path / "ca.pem")
    with pytest.raises(FileRefused, match="FIFO"):
        read_pem_certificates(tmp_path / "ca.pem")


@pytest.mark.timeout(60)
def test_a_client_key_swapped_for_a_fifo_fails_the_probe_not_the_daemon(tmp_path: Path) -> None:
    """The client certificate is loaded at probe time, after validation: it is checked
    again there, and a FIFO becomes a client_cert error instead of a hung probe."""
    import asyncio

    cert, key = _serving_files(tmp_path)
    fifo(tmp_path / "client.key")
    with TLSServer({None: (cert, key)}) as server:
        endpoint = Endpoint(name="s", host="127.0.0.1", port=server.port, timeout=5,
                            client_cert=cert, client_key=tmp_path / "client.key")
        observation = asyncio.run(Prober().probe_address(endpoint, "127.0.0.1"))
    assert observation.error is not None and observation.error.kind == ErrorKind.CLIENT_CERT
    assert "not a regular file (a FIFO)" in observation.error.detail
