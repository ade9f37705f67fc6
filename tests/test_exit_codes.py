"""Exit codes and first contact, as a user meets them (issue 17): a real subprocess.

- A usage error exits 3 (unknown), not argparse's 2 (critical, under the convention).
- `check` on the shipped inventory (`demo: true`) probes the demo endpoints.
- A bad or busy `--listen` is one clear line and exit 2, with no traceback.
- --log-level and --log-format are accepted on either side of the subcommand.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from certwatch.serving.listener import ListenerLimits

REPO = Path(__file__).resolve().parents[1]


def certwatch(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certwatch", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("args", [
    ["check", "--fromat", "json"],
    ["check", "--warn-days", "abc", "example.com"],
    ["check", "--protocol", "gopher", "example.com"],
    ["run", "--web.max-connections", "0"],
    ["run", "--web.read-header-timeout", "soon"],
    ["validate", "--unknown"],
    ["frobnicate"],
    [],
])
def test_usage_errors_exit_unknown(args: list[str]) -> None:
    result = certwatch(*args)
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("usage: certwatch")
    assert "error: " in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_check_on_the_shipped_inventory_probes_the_demo_endpoints() -> None:
    """`make check` printed "no targets" and exited 3: `check` ignored `demo: true`."""
    result = certwatch("check", "-c", "config/certwatch.yaml", "--format", "json")
    states = {t["name"]: t["state"] for t in json.loads(result.stdout)}
    assert states == {"demo-ok": "ok", "demo-warning": "warning", "demo-critical": "critical",
                      "demo-expired": "expired", "demo-untrusted": "critical",
                      "demo-wrong-name": "critical", "demo-unreachable": "error"}
    assert result.returncode == 2  # the demo has critical endpoints, and says so


def test_make_check_says_what_its_exit_code_means() -> None:
    result = subprocess.run(["make", "--no-print-directory", "check"], capture_output=True,
                            text=True, timeout=120, cwd=REPO)
    assert "no targets" not in result.stdout
    assert "demo-critical" in result.stdout
    assert "certwatch check exited 2 (0 ok, 1 warning, 2 critical or expired, 3 unknown)" \
        in result.stdout


def test_a_bad_listen_address_is_one_line_and_exit_2() -> None:
    for listen, reason in (("127.0.0.1:70000", "--listen: must be HOST:PORT or :PORT, not "
                                               "'127.0.0.1:70000'"),
                           ("127.0.0.1:http", "--listen: must be HOST:PORT or :PORT, not "
                                              "'127.0.0.1:http'")):
        result = certwatch("--log-format", "json", "run", "-c", "config/certwatch.yaml",
                           "--listen", listen)
        assert result.returncode == 2
        (line,) = result.stderr.splitlines()
        assert json.loads(line)["message"] == reason


def test_a_busy_or_foreign_listen_address_is_one_line_and_exit_2(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("endpoints: []\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for listen, reason in ((f"127.0.0.1:{port}", "address already in use"),
                               ("192.0.2.1:9795", "cannot assign requested address")):
            result = certwatch("--log-format", "json", "run", "-c", str(inventory),
                               "--listen", listen)
            assert result.returncode == 2, result.stderr
            assert "Traceback" not in result.stderr
            errors = [json.loads(l) for l in result.stderr.splitlines()
                      if json.loads(l)["level"] == "error"]
            (error,) = errors
            assert error["message"].startswith(f"cannot listen on {listen}: ")
            assert reason in error["message"].lower()


def test_global_flags_are_accepted_after_the_subcommand(tmp_path: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    target = f"127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    for args in (["--log-level", "debug", "check", target],
                 ["check", "--log-level", "debug", target],
                 ["check", target, "--log-level", "debug", "--log-format", "text"],
                 ["--log-level", "error", "check", "--log-level", "debug", target]):
        result = certwatch(*args)
        assert result.returncode == 3, (args, result.stderr)  # unreachable: unknown
        assert re.search(r"^\d\d:\d\d:\d\d DEBUG ", result.stderr, re.M), (args, result.stderr)
    quiet = certwatch("check", target)
    assert "DEBUG" not in quiet.stderr


def test_run_help_states_the_listener_defaults() -> None:
    limits = ListenerLimits()
    text = " ".join(certwatch("run", "--help").stdout.split())
    assert f"(default {limits.max_connections})" in text
    assert f"(default {limits.header_timeout:g})" in text
    assert limits.handshake_timeout == limits.header_timeout  # one flag sets both
