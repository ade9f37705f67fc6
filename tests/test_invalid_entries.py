"""One bad entry costs only itself: it is a target in error, the others are probed."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from certwatch.config import ConfigError, parse_inventory
from tests.pki import make_leaf
from tests.servers import TLSServer
from tests.test_daemon import RunningDaemon, wait_for

NOW = datetime.now(timezone.utc)


def certwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certwatch", *args], capture_output=True,
                          text=True, timeout=120)


BAD = """\
  - name: typo
    host: mail.example
    protocol: smpt
  - name: spaces
    host: "not a host"
"""


def inventory(port: int, good: int) -> str:
    entries = "".join(f"  - {{name: ok{i}, host: 127.0.0.1, port: {port}, verify: false}}\n"
                      for i in range(good))
    return "defaults: {timeout: 2}\nendpoints:\n" + entries + BAD


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    directory = tmp_path_factory.mktemp("invalid")
    chain = make_leaf(None, ["svc.test"], not_before=NOW - timedelta(days=1),
                      not_after=NOW + timedelta(days=90)).write(directory, "svc")
    with TLSServer({None: chain}) as tls:
        yield tls


def test_an_invalid_entry_is_a_target_in_error(tmp_path: Path, server: TLSServer) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(inventory(server.port, 46))
    result = certwatch("check", "-c", str(path), "--format", "json")
    assert result.returncode == 3, result.stderr  # an error among oks: unknown
    targets = {t["name"]: t for t in json.loads(result.stdout)}
    assert len(targets) == 48
    assert all(targets[f"ok{i}"]["state"] == "ok" for i in range(46))
    typo, spaces = targets["typo"], targets["spaces"]
    assert (typo["state"], typo["error_kind"], typo["error_phase"]) == ("error", "invalid", "config")
    assert typo["error"] == (f"{path}: line 51: endpoint 47 'typo': unknown protocol 'smpt' "
                             "(did you mean 'smtp'?); known: tls, smtp, imap, pop3, ftp, ldap, "
                             "postgres, xmpp, mysql, https, smtps, submissions, imaps, pop3s, "
                             "ldaps, ftps")
    assert spaces["error"] == (f"{path}: line 53: endpoint 48 'spaces': 'host' is not a valid "
                               "host name: 'not a host'")
    assert "line 51" in result.stderr and "line 53" in result.stderr  # said once, on stderr too

    validate = certwatch("validate", "-c", str(path))
    assert validate.returncode == 3 and "2 problems" in validate.stderr
    strict = certwatch("check", "-c", str(path), "--format", "json", "--strict")
    assert (strict.returncode, strict.stdout) == (3, "")
    assert "2 problems" in strict.stderr


def test_strict_in_the_file_and_fatal_problems() -> None:
    with pytest.raises(ConfigError, match="unknown protocol"):
        parse_inventory("strict: true\nendpoints:\n" + BAD, source="s.yaml")
    lenient = parse_inventory("endpoints:\n" + BAD, source="s.yaml")
    assert [e.name for e in lenient.endpoints] == ["typo", "spaces"]
    assert all(e.rejected for e in lenient.endpoints) and len(lenient.problems) == 2
    # A problem outside the entries still refuses the file, and says every problem.
    with pytest.raises(ConfigError) as info:
        parse_inventory("defaults: {timeout: fast}\nendpoints:\n" + BAD, source="s.yaml")
    assert len(info.value.problems) == 3
    duplicate = parse_inventory("endpoints:\n  - {name: a, host: a.example}\n"
                                "  - {name: a, host: b.example}\n", source="d.yaml")
    assert [e.name for e in duplicate.endpoints] == ["a", "a (endpoint 2)"]
    assert not duplicate.endpoints[0].rejected and duplicate.endpoints[1].rejected


def test_the_daemon_probes_the_rest_and_keeps_the_last_good_file_on_a_syntax_error(
        tmp_path: Path, server: TLSServer) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(inventory(server.port, 2))
    daemon = RunningDaemon(path, tmp_path / "daemon.log")
    try:
        targets = wait_for("every target", lambda: len(daemon.targets()) == 4 and daemon.targets())
        assert targets["ok0"]["state"] == "ok" and targets["typo"]["state"] == "error"
        assert "line 7" in targets["typo"]["error"]
        metrics = daemon.metrics()
        assert metrics["certwatch_config_invalid_entries"][0].value == 2
        assert metrics["certwatch_config_last_reload_successful"][0].value == 1
        path.write_text("endpoints:\n  - host: [unclosed\n")
        wait_for("the rejected reload", lambda: daemon.metrics()[
            "certwatch_config_last_reload_successful"][0].value == 0)
        assert set(daemon.targets()) == {"ok0", "ok1", "typo", "spaces"}
    finally:
        daemon.stop()


def test_a_syntax_error_is_fatal_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text("endpoints:\n  - host: [unclosed\n")
    assert certwatch("check", "-c", str(path)).returncode == 3
    run = subprocess.run([sys.executable, "-m", "certwatch", "run", "-c", str(path),
                          "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "not valid YAML" in run.stderr
