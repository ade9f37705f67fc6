"""`certwatch check` and `certwatch validate` as a user runs them: a real subprocess."""

from __future__ import annotations

import json
import os
import pty
import re
import selectors
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.pki import make_intermediate, make_leaf, make_root
from tests.servers import TLSServer, closed_port

NOW = datetime.now(timezone.utc)
DAY = timedelta(days=1)


def certwatch(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certwatch", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Three servers with 90-day certificates: 90 days left, 28.5 days left (a warning, its
    renewal not yet overdue), and one whose issuer's name is hostile."""
    directory = tmp_path_factory.mktemp("cli")
    root = make_root("CLI Root", not_before=NOW - 400 * DAY, not_after=NOW + 3000 * DAY)
    inter = make_intermediate(root, "CLI Intermediate", not_before=NOW - 400 * DAY,
                              not_after=NOW + 2000 * DAY)
    (directory / "root.pem").write_bytes(root.cert_pem)
    ok = make_leaf(inter, ["svc.test"], not_before=NOW - DAY, not_after=NOW + 90 * DAY)
    warn = make_leaf(inter, ["svc.test"], not_before=NOW - 61.5 * DAY, not_after=NOW + 28.5 * DAY)
    evil_ca = make_intermediate(root, "evil\x1b[2J\x1b]0;pwned\x07<b>", not_before=NOW - DAY,
                                not_after=NOW + 2000 * DAY)
    hostile = make_leaf(evil_ca, ["svc.test"], not_before=NOW - DAY, not_after=NOW + 90 * DAY)
    with TLSServer({None: ok.write(directory, "ok")}) as a, \
            TLSServer({None: warn.write(directory, "warn")}) as b, \
            TLSServer({None: hostile.write(directory, "hostile")}) as c:
        yield directory, a, b, c


def test_json_output_has_the_documented_fields(servers) -> None:  # type: ignore[no-untyped-def]
    directory, ok, warn, _ = servers
    inventory = directory / "inv.yaml"
    inventory.write_text(f"""
defaults: {{ca_file: root.pem, system_trust: false}}
endpoints:
  - {{name: fine, host: 127.0.0.1, port: {ok.port}, server_name: svc.test, labels: {{team: a}}}}
  - {{name: soon, host: 127.0.0.1, port: {warn.port}, server_name: svc.test}}
""")
    result = certwatch("check", "-c", str(inventory), "--format", "json")
    assert result.returncode == 1, result.stderr  # the worst is a warning
    soon, fine = json.loads(result.stdout)  # sorted: soonest expiry first
    assert (soon["name"], soon["state"], soon["reasons"]) == ("soon", "warning", ["expiring"])
    assert (fine["name"], fine["state"], fine["labels"]) == ("fine", "ok", {"team": "a"})
    for field in ("name", "host", "port", "address", "server_name", "protocol", "state",
                  "reasons", "days_left", "leaf_not_after", "earliest_not_after",
                  "earliest_subject", "verified", "verify_error", "hostname_match",
                  "tls_version", "cipher", "error_kind", "error", "labels", "chain"):
        assert field in fine, field
    assert fine["verified"] is True and fine["hostname_match"] is True
    assert fine["leaf_not_after"].endswith("Z")
    assert datetime.fromisoformat(fine["leaf_not_after"]) > NOW + 89 * DAY
    assert [c["subject"] for c in fine["chain"]] == ["CN=svc.test", "CN=CLI Intermediate"]
    assert len(fine["chain"][0]["fingerprint_sha256"]) == 64
    # The policy in force, and what a one-shot check cannot know.
    assert soon["lifetime_days"] == pytest.approx(90, abs=0.01)
    assert soon["lifetime_used"] == pytest.approx(61.5 / 90, abs=0.001)
    assert (soon["warn_days_in_force"], soon["critical_days_in_force"]) == (30, 7)
    assert soon["renewal"]["basis"] == "lifetime" and soon["renewal"]["overdue"] is False
    assert datetime.fromisoformat(soon["renewal"]["due_at"]) == pytest.approx(
        NOW - 61.5 * DAY + 0.7 * 90 * DAY, abs=timedelta(seconds=5))
    assert soon["certificate_history"] is None and soon["renewed"] is None


def test_a_short_lived_certificate_is_judged_by_its_own_lifetime(tmp_path: Path) -> None:
    """A 6-day certificate: ok with 4 days left (fixed 30/7 would page), critical with
    one; and a 398-day one renewed by nobody is overdue long before 30 days."""
    root = make_root("Short Root", not_before=NOW - 400 * DAY, not_after=NOW + 3000 * DAY)
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    fresh = make_leaf(root, ["svc.test"], not_before=NOW - 2 * DAY, not_after=NOW + 4 * DAY)
    late = make_leaf(root, ["svc.test"], not_before=NOW - 5 * DAY, not_after=NOW + 1 * DAY)
    # 398 days as CAs issue them: notAfter one second short of 398 days after notBefore
    stale = make_leaf(root, ["svc.test"], not_before=NOW - 298 * DAY,
                      not_after=NOW + 100 * DAY - timedelta(seconds=1))
    common = ["--server-name", "svc.test", "--ca-file", str(tmp_path / "root.pem")]
    with TLSServer({None: fresh.write(tmp_path, "fresh")}) as a, \
            TLSServer({None: late.write(tmp_path, "late")}) as b, \
            TLSServer({None: stale.write(tmp_path, "stale")}) as c:
        ok = certwatch("check", f"127.0.0.1:{a.port}", *common)
        critical = certwatch("check", f"127.0.0.1:{b.port}", *common, "--format", "json")
        overdue = certwatch("check", f"127.0.0.1:{c.port}", *common)
        fixed = certwatch("check", f"127.0.0.1:{a.port}", *common, "--warn-fraction", "1",
                          "--critical-fraction", "1")
    assert ok.returncode == 0, ok.stdout
    header, row = ok.stdout.splitlines()[:2]
    assert header.split()[7:10] == ["LIFE", "WARN/CRIT", "RENEW"]
    assert "6d 33%" in row and "2/1.2d" in row
    assert ok.stdout.splitlines()[-1].startswith("renewals: a one-shot check keeps no")
    (judged,) = json.loads(critical.stdout)
    assert critical.returncode == 2
    assert (judged["state"], judged["reasons"]) == ("critical", ["expiring", "renewal_overdue"])
    assert (judged["warn_days_in_force"], judged["critical_days_in_force"]) == (2, 1.2)
    assert overdue.returncode == 1 and "renewal_overdue" in overdue.stdout
    assert "WARNING" in overdue.stdout and "398d 75%" in overdue.stdout
    assert fixed.returncode == 2  # fractions of 1: the fixed 30/7 days, which page at once


def test_ad_hoc_targets_and_exit_codes(servers) -> None:  # type: ignore[no-untyped-def]
    directory, ok, warn, _ = servers
    common = ["--server-name", "svc.test", "--ca-file", str(directory / "root.pem")]
    assert certwatch("check", f"127.0.0.1:{ok.port}", *common).returncode == 0
    assert certwatch("check", f"127.0.0.1:{warn.port}", *common).returncode == 1
    critical = certwatch("check", f"127.0.0.1:{warn.port}", *common, "--critical-days", "29",
                         "--warn-days", "40", "--warn-fraction", "1", "--critical-fraction", "1")
    assert critical.returncode == 2
    # Without the private root the chain is untrusted: critical.
    assert certwatch("check", f"127.0.0.1:{ok.port}", "--server-name", "svc.test").returncode == 2
    unreachable = certwatch("check", f"127.0.0.1:{closed_port()}", *common)
    assert unreachable.returncode == 3
    assert "refused" in unreachable.stdout
    # Critical outranks unknown; unknown outranks warning.
    both = certwatch("check", f"127.0.0.1:{closed_port()}", f"127.0.0.1:{warn.port}", *common,
                     "--critical-days", "29", "--warn-days", "40", "--critical-fraction", "1",
                     "--warn-fraction", "1")
    assert both.returncode == 2
    mixed = certwatch("check", f"127.0.0.1:{closed_port()}", f"127.0.0.1:{warn.port}", *common)
    assert mixed.returncode == 3


def test_table_is_sorted_and_shows_hostile_names_harmlessly(servers) -> None:  # type: ignore[no-untyped-def]
    directory, ok, warn, hostile = servers
    result = certwatch("check", f"127.0.0.1:{ok.port}", f"127.0.0.1:{warn.port}",
                       f"127.0.0.1:{hostile.port}", "--server-name", "svc.test",
                       "--ca-file", str(directory / "root.pem"), "--colour", "always")
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["STATE", "DAYS", "EXPIRES", "NAME"]
    assert "WARNING" in lines[1] and lines[1].startswith("\x1b[33m")  # soonest first, coloured
    assert "\x07" not in result.stdout and "\x1b]" not in result.stdout
    assert r"CN=evil\x1b[2J\x1b]0\;pwned\x07\<b\>" in result.stdout  # shown, not obeyed
    assert result.stdout.count("\x1b[") == 2 * 3  # only our colour codes: on and off per row
    assert "2 ok, 1 warning" in result.stdout.replace("1 warning, 2 ok", "2 ok, 1 warning")
    plain = certwatch("check", f"127.0.0.1:{ok.port}", "--server-name", "svc.test",
                      "--ca-file", str(directory / "root.pem"))
    assert "\x1b" not in plain.stdout  # never colour when not asked and not a terminal


def on_terminal(args: list[str], terminal: set[str], *, env: dict[str, str] | None = None,
                timeout: float = 60.0) -> tuple[int, bytes, bytes]:
    """`certwatch *args` with stdout and/or stderr (named in `terminal`) on a real
    pseudo-terminal and the other on a pipe: (exit status, stdout, stderr) as received."""
    ends: dict[str, tuple[int, int]] = {name: pty.openpty() for name in terminal}
    process = subprocess.Popen(
        [sys.executable, "-m", "certwatch", *args], stdin=subprocess.DEVNULL,
        stdout=ends["stdout"][1] if "stdout" in ends else subprocess.PIPE,
        stderr=ends["stderr"][1] if "stderr" in ends else subprocess.PIPE,
        env={**{k: v for k, v in os.environ.items() if k != "NO_COLOR"}, **(env or {})})
    readers = {name: ends[name][0] for name in ends}
    for name in ("stdout", "stderr"):
        if name in ends:
            os.close(ends[name][1])  # the child holds the terminal now
        else:
            readers[name] = getattr(process, name).fileno()
    received = {name: b"" for name in readers}
    selector = selectors.DefaultSelector()
    for name, fd in readers.items():
        selector.register(fd, selectors.EVENT_READ, name)
    deadline = time.monotonic() + timeout
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            try:
                data = os.read(key.fd, 65536)
            except OSError:  # EIO: a terminal whose other end is closed
                data = b""
            if data:
                received[key.data] += data
            else:
                selector.unregister(key.fd)
    selector.close()
    status = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    for name in ends:
        os.close(ends[name][0])
    for name in ("stdout", "stderr"):
        if name not in ends:
            getattr(process, name).close()
    return status, received["stdout"], received["stderr"]


@pytest.fixture(scope="module")
def long_inventory(servers, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """Five endpoints: three with certificates, two refused."""
    directory, ok, warn, hostile = servers
    inventory = tmp_path_factory.mktemp("long") / "inventory.yaml"
    entries = [f"{{name: s{i}, host: 127.0.0.1, port: {server.port}, server_name: svc.test}}"
               for i, server in enumerate((ok, warn, hostile))]
    entries += [f"{{name: down{i}, host: 127.0.0.1, port: {closed_port()}}}" for i in range(2)]
    inventory.write_text(f"defaults: {{ca_file: {directory / 'root.pem'}, system_trust: false}}\n"
                         "endpoints:\n" + "".join(f"  - {e}\n" for e in entries))
    return inventory


def test_check_shows_its_progress_on_a_terminal(long_inventory: Path) -> None:
    status, out, err = on_terminal(["check", "-c", str(long_inventory)], {"stderr"})
    assert status == 3  # two errors
    bars = re.findall(rb"\r\[([#.]{24})\] (\d)/5 endpoints, (\d) errors?", err)
    assert bars[0] == (b"." * 24, b"0", b"0") and bars[-1] == (b"#" * 24, b"5", b"2")
    assert [int(done) for _, done, _ in bars] == sorted(int(d) for _, d, _ in bars)
    assert err.endswith(b"\r\x1b[K")  # and the line is cleared before the table
    assert b"\x1b" not in out and b"STATE" in out  # stdout is a pipe: no colour


def test_no_progress_and_no_colour_when_not_on_a_terminal(long_inventory: Path) -> None:
    status, out, err = on_terminal(["check", "-c", str(long_inventory)], set())
    assert (status, err) == (3, b"")  # nothing at all on stderr
    assert b"\x1b" not in out
    status, out, err = on_terminal(["check", "-c", str(long_inventory), "--format", "json"],
                                   set())
    assert err == b"" and len(json.loads(out)) == 5


def test_the_table_is_coloured_on_a_terminal_unless_no_color(long_inventory: Path) -> None:
    _, out, err = on_terminal(["check", "-c", str(long_inventory)], {"stdout"})
    assert err == b""  # stderr is a pipe: no progress
    assert b"\x1b[32m" in out and b"\x1b[35m" in out  # ok green, errors purple
    _, plain, _ = on_terminal(["check", "-c", str(long_inventory)], {"stdout", "stderr"},
                              env={"NO_COLOR": "1"})
    assert b"\x1b[3" not in plain and b"STATE" in plain
    _, forced, _ = on_terminal(["check", "-c", str(long_inventory), "--colour", "always"],
                               {"stdout"}, env={"NO_COLOR": "1"})
    assert b"\x1b[32m" in forced  # asked for on the command line: that wins


def test_validate(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("endpoints:\n  - url: https://a.example\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("endpoints:\n  - host: a.example\n    warn_day: 3\n")
    ok = certwatch("validate", "-c", str(good))
    assert (ok.returncode, ok.stdout.strip()) == (0, f"{good}: ok, 1 endpoints")
    failed = certwatch("validate", "-c", str(bad))
    assert failed.returncode == 3  # unknown: the file cannot be used
    assert f"{bad}: 1 problem:" in failed.stderr
    assert "line 3: endpoint 1: unknown key 'warn_day' (did you mean 'warn_days'?)" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_validate_a_web_config(tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    root = make_root("CLI Web Root", not_before=now - timedelta(days=1), not_after=now + timedelta(days=90))
    cert, key = make_leaf(root, ["localhost"], not_before=now - timedelta(days=1),
                          not_after=now + timedelta(days=30)).write(tmp_path, "web")
    _, other_key = make_leaf(root, ["other"], not_before=now - timedelta(days=1),
                             not_after=now + timedelta(days=30)).write(tmp_path, "other")
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("endpoints: []\n")
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    ok = certwatch("validate", "-c", str(inventory), "--web.config.file", str(web))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == [f"{inventory}: ok, 0 endpoints",
                                      f"{web}: ok, TLS, 0 basic auth users"]
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {other_key}\n")
    failed = certwatch("validate", "-c", str(inventory), "--web.config.file", str(web))
    assert failed.returncode == 3  # unknown: the file cannot be used
    assert "does not match the certificate" in failed.stderr and "Traceback" not in failed.stderr


def test_check_with_a_bad_inventory_is_unknown(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("endpoints: 3\n")
    result = certwatch("check", "-c", str(bad))
    assert result.returncode == 3
    assert "'endpoints' must be a list" in result.stderr


def test_every_problem_of_every_file_in_one_pass(tmp_path: Path) -> None:
    """The inventory, its sinks and the web configuration are read with one kit: one run
    of `validate` (and of `run`) names every problem of all three, each with its line."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        "endpoints:\n"
        "  - host: a.example\n"
        "    interval: 90 seconds\n"           # line 3: not a duration
        "alerts:\n"
        "  sinks:\n"
        "    - name: hook\n"
        "      type: webhook\n"
        "      url: http://127.0.0.1:9/x\n"
        "      timeout: 250ms\n"               # the one grammar: fine
        "      min_severty: critical\n"        # line 10: a typo
        "    - name: page\n"
        "      type: pagerduty\n"
        "      routing_key_env: CERTWATCH_TEST_UNSET\n")  # line 13: an unset secret
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config: {cert_file: absent.crt, key_file: absent.key}\n"
                   "http_server_config: {headrs: {}}\n")
    failed = certwatch("validate", "-c", str(inventory), "--web.config.file", str(web))
    assert failed.returncode == 3  # unknown: the file cannot be used
    expected = [
        f"{inventory}: 3 problems:",
        "line 3: endpoint 1: 'interval' must be a duration",
        "line 10: alerts.sinks[0] 'hook': unknown key 'min_severty' for a webhook sink "
        "(did you mean 'min_severity'?)",
        "line 13: alerts.sinks[1] 'page': 'routing_key_env': environment variable "
        "CERTWATCH_TEST_UNSET is not set",
        f"{web}: 3 problems:",
        f"line 1: tls_server_config: 'cert_file': file not found: {tmp_path / 'absent.crt'}",
        "line 2: http_server_config: unknown key 'headrs' (did you mean 'headers'?)",
    ]
    for text in expected:
        assert text in failed.stderr, (text, failed.stderr)
    assert failed.stderr.index(expected[0]) < failed.stderr.index(expected[4])

    started = subprocess.run(
        [sys.executable, "-m", "certwatch", "run", "-c", str(inventory), "--listen",
         "127.0.0.1:0", "--web.config.file", str(web)],
        capture_output=True, text=True, timeout=30)
    assert started.returncode == 2
    logged = [json.loads(line) for line in started.stderr.splitlines()]
    assert [(e["level"], e["source"], len(e["problems"])) for e in logged] == [
        ("error", str(inventory), 3), ("error", str(web), 3)]
    assert all(e["message"] == "configuration rejected" for e in logged)


def test_a_reader_that_leaves_early_is_no_traceback(servers) -> None:  # type: ignore[no-untyped-def]
    """`certwatch check --format json | head -1`: the pipe closes before the output ends."""
    directory, ok, *_ = servers
    inventory = directory / "many.yaml"
    inventory.write_text("defaults: {ca_file: root.pem, system_trust: false}\nendpoints:\n" + "".join(
        f"  - {{name: t{i}, host: 127.0.0.1, port: {ok.port}, server_name: svc.test}}\n"
        for i in range(40)))  # ~100 KB of JSON: more than a pipe's buffer
    read, write = os.pipe()
    with subprocess.Popen([sys.executable, "-m", "certwatch", "check", "-c", str(inventory),
                           "--format", "json"], stdout=write, stderr=subprocess.PIPE) as check:
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            assert pipe.read(1) == b"["  # then the reader leaves, as head does
        _, stderr = check.communicate(timeout=60)
    assert check.returncode == 3, stderr  # unknown: the output did not reach its reader
    assert b"Traceback" not in stderr and b"BrokenPipe" not in stderr, stderr
