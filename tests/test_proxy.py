"""Egress proxies: real handshakes through a real tinyproxy on loopback, its refusals
classified, and the configuration that names a proxy and its credentials.

The proxies are started once per session. They open tunnels to 127.0.0.1 only (every
other target is refused before any look-up), so nothing here leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from certwatch.config import ConfigError, build_inventory, parse_inventory
from certwatch.core.assess import Assessment
from certwatch.core.inventory import Proxy
from certwatch.core.vocabulary import ErrorKind, Phase, State
from certwatch.render.report import assessment_to_dict, render_table
from certwatch.render.statuspage import render_status_page
from certwatch.sources.wire import Prober
from certwatch.sweep import sweep
from tests.debian_servers import TinyProxy
from tests.pki import make_leaf, make_root
from tests.servers import GarbageServer, PlainHTTPServer, TarpitServer, TLSServer, closed_port

NOW = datetime.now(timezone.utc)
DAY = timedelta(days=1)
USER, PASSWORD = "alice", "s3cret-proxy-pw"


@pytest.fixture(scope="session")
def proxy_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("proxy-pki")
    root = make_root("Proxy Test Root", not_before=NOW - DAY, not_after=NOW + 900 * DAY)
    leaf = make_leaf(root, ["svc.test"], not_before=NOW - DAY, not_after=NOW + 90 * DAY)
    (directory / "root.pem").write_bytes(root.cert_pem)
    return directory / "root.pem", leaf.write(directory, "svc")


@pytest.fixture(scope="session")
def open_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyProxy]:
    with TinyProxy(tmp_path_factory.mktemp("tinyproxy")) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def auth_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyProxy]:
    with TinyProxy(tmp_path_factory.mktemp("tinyproxy-auth"), credentials=(USER, PASSWORD)) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def tls_server(proxy_pki: tuple[Path, tuple[Path, Path]]) -> Iterator[TLSServer]:
    with TLSServer({None: proxy_pki[1]}) as server:
        yield server


async def _no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"certwatch looked up {host!r} itself; the proxy should have")


def check(root_pem: Path, *endpoints: dict[str, Any], environ: dict[str, str] | None = None,
          timeout: float = 5) -> list[Assessment]:
    document = {"defaults": {"ca_file": str(root_pem), "system_trust": False, "timeout": timeout},
                "endpoints": list(endpoints)}
    inventory = build_inventory(document, source="test", environ=environ or {}, with_sinks=False)
    return asyncio.run(sweep(inventory.endpoints, Prober(resolver=_no_dns)))


def error_of(result: Assessment) -> tuple[ErrorKind, Phase, str]:
    error = result.observation.error
    assert error is not None, result.summary
    assert result.state is State.ERROR
    return error.kind, error.phase, error.detail


# --- through the proxy --------------------------------------------------------------


def test_a_handshake_through_the_proxy(proxy_pki: tuple[Path, tuple[Path, Path]],
                                       open_proxy: TinyProxy, tls_server: TLSServer) -> None:
    (result,) = check(proxy_pki[0], {"name": "shop", "host": "127.0.0.1", "port": tls_server.port,
                                     "server_name": "svc.test", "proxy_url": open_proxy.url})
    assert result.observation.error is None, result.summary
    assert result.state is State.OK and result.verification is not None and result.verification.ok
    # The proxy resolved the name: the target is the name the CONNECT asked for.
    assert (result.target.address, result.target.key) == ("127.0.0.1", "shop@127.0.0.1")
    shown = assessment_to_dict(result)
    assert (shown["address"], shown["proxy"]) == ("127.0.0.1", open_proxy.url)
    assert f"127.0.0.1:{tls_server.port} via {open_proxy.url}" in render_table([result])
    page = render_status_page([shown], now=NOW)
    assert f"via proxy {open_proxy.url}" in page
    log = (open_proxy.directory / "tinyproxy.log").read_text()
    assert f"CONNECT 127.0.0.1:{tls_server.port} HTTP/1.1" in log


def test_starttls_through_the_proxy(proxy_pki: tuple[Path, tuple[Path, Path]],
                                    open_proxy: TinyProxy) -> None:
    with TLSServer({None: proxy_pki[1]}, starttls="smtp") as mail:
        (result,) = check(proxy_pki[0], {"host": "127.0.0.1", "port": mail.port, "protocol": "smtp",
                                         "server_name": "svc.test", "proxy_url": open_proxy.url})
    assert result.observation.error is None, result.summary
    assert result.verification is not None and result.verification.ok


def test_credentials_from_env_and_from_file(proxy_pki: tuple[Path, tuple[Path, Path]],
                                            auth_proxy: TinyProxy, tls_server: TLSServer,
                                            tmp_path: Path) -> None:
    (tmp_path / "password").write_text(PASSWORD + "\n")
    base = {"host": "127.0.0.1", "port": tls_server.port, "server_name": "svc.test",
            "proxy_url": auth_proxy.url, "proxy_username": USER}
    by_env, by_file = check(proxy_pki[0], {**base, "name": "env", "proxy_password_env": "PW"},
                            {**base, "name": "file",
                             "proxy_password_file": str(tmp_path / "password")},
                            environ={"PW": PASSWORD})
    assert by_env.observation.error is None, by_env.summary
    assert by_file.observation.error is None, by_file.summary


def test_the_proxys_refusals_are_classified(proxy_pki: tuple[Path, tuple[Path, Path]],
                                            open_proxy: TinyProxy, auth_proxy: TinyProxy,
                                            tls_server: TLSServer) -> None:
    target = {"host": "127.0.0.1", "port": tls_server.port, "server_name": "svc.test"}
    no_credentials, wrong_password, denied, unreachable, proxy_down = check(
        proxy_pki[0],
        {**target, "name": "none", "proxy_url": auth_proxy.url},
        {**target, "name": "wrong", "proxy_url": auth_proxy.url, "proxy_username": USER,
         "proxy_password_env": "PW"},
        # Refused by the proxy's rules before it looks the name up.
        {"name": "denied", "host": "elsewhere.invalid", "proxy_url": open_proxy.url},
        {"name": "unreachable", "host": "127.0.0.1", "port": closed_port(),
         "proxy_url": open_proxy.url},
        {**target, "name": "down", "proxy_url": f"http://127.0.0.1:{closed_port()}"},
        environ={"PW": "not-the-password"},
    )
    kind, phase, detail = error_of(no_credentials)
    assert (kind, phase) == (ErrorKind.PROXY_AUTH, Phase.PROXY)
    assert "407" in detail and "requires credentials" in detail
    kind, _, detail = error_of(wrong_password)
    assert kind is ErrorKind.PROXY_AUTH and "refused the credentials of 'alice'" in detail
    assert "not-the-password" not in detail
    kind, _, detail = error_of(denied)
    assert kind is ErrorKind.PROXY_DENIED and "elsewhere.invalid:443" in detail and "403" in detail
    kind, _, detail = error_of(unreachable)
    assert kind is ErrorKind.PROXY_TARGET_UNREACHABLE and "Unable to connect" in detail
    kind, phase, _ = error_of(proxy_down)
    assert (kind, phase) == (ErrorKind.REFUSED, Phase.PROXY)
    page = render_status_page([assessment_to_dict(proxy_down)], now=NOW)
    assert "proxy: connection refused" in page


@pytest.mark.parametrize(
    ("make", "kind", "expected"),
    [
        (lambda: GarbageServer(), ErrorKind.PROXY_ERROR, "did not answer with HTTP"),
        (lambda: PlainHTTPServer(), ErrorKind.PROXY_ERROR, "answered CONNECT with 400 Bad Request"),
        (lambda: TarpitServer(banner=b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                     b"Proxy-Authenticate: Negotiate\r\n\r\n"),
         ErrorKind.PROXY_AUTH, "asks for 'Negotiate' authentication"),
        (lambda: TarpitServer(banner=b"HTTP/1.1 503 Service Unavailable\r\n"
                                     b"X-Squid-Error: ERR_CONNECT_FAIL 111\r\n\r\n"),
         ErrorKind.PROXY_TARGET_UNREACHABLE, "503 Service Unavailable ('ERR_CONNECT_FAIL 111')"),
        (lambda: TarpitServer(banner=b"HTTP/1.1 200 OK\r\n" + b"X-Pad: a\r\n" * 8000),
         ErrorKind.PROXY_ERROR, "overlong answer"),
        (lambda: TarpitServer(banner=b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 20000),
         ErrorKind.PROXY_ERROR, "overlong line"),
        (lambda: TarpitServer(), ErrorKind.TIMEOUT, "no answer within 0.5s"),
    ],
)
def test_hostile_proxies_cost_one_bounded_error(proxy_pki: tuple[Path, tuple[Path, Path]],
                                                make: Any, kind: ErrorKind, expected: str) -> None:
    with make() as fake:
        (result,) = check(proxy_pki[0], {"host": "127.0.0.1", "port": 443,
                                         "proxy_url": f"http://{fake.host}:{fake.port}"},
                          timeout=0.5)
    got, phase, detail = error_of(result)
    assert (got, phase) == (kind, Phase.PROXY) and expected in detail, detail
    assert result.observation.duration_seconds < 3


def test_check_reaches_through_a_proxy_with_the_password_from_the_environment(
        proxy_pki: tuple[Path, tuple[Path, Path]], auth_proxy: TinyProxy, tls_server: TLSServer,
        tmp_path: Path) -> None:
    """`certwatch check` as a user runs it: ad hoc, and with an inventory file."""
    (tmp_path / "inventory.yaml").write_text(f"""
defaults: {{ca_file: {proxy_pki[0]}, system_trust: false, proxy_url: {auth_proxy.url},
            proxy_username: {USER}, proxy_password_env: CW_PROXY_PW}}
endpoints:
  - {{host: 127.0.0.1, port: {tls_server.port}, server_name: svc.test}}
""")
    environ = {**os.environ, "CW_PROXY_PW": PASSWORD}
    ad_hoc = subprocess.run(
        [sys.executable, "-m", "certwatch", "check", f"127.0.0.1:{tls_server.port}",
         "--server-name", "svc.test", "--ca-file", str(proxy_pki[0]), "--format", "json",
         "--proxy-url", auth_proxy.url, "--proxy-username", USER,
         "--proxy-password-env", "CW_PROXY_PW"],
        capture_output=True, text=True, timeout=60, env=environ)
    from_file = subprocess.run(
        [sys.executable, "-m", "certwatch", "check", "-c", str(tmp_path / "inventory.yaml")],
        capture_output=True, text=True, timeout=60, env=environ)
    assert ad_hoc.returncode == 0, ad_hoc.stdout + ad_hoc.stderr
    (shown,) = json.loads(ad_hoc.stdout)
    assert (shown["state"], shown["proxy"], shown["address"]) == ("ok", auth_proxy.url, "127.0.0.1")
    assert from_file.returncode == 0, from_file.stdout + from_file.stderr
    assert f"via {auth_proxy.url}" in from_file.stdout
    assert PASSWORD not in ad_hoc.stdout + ad_hoc.stderr + from_file.stdout + from_file.stderr


# --- configuration ------------------------------------------------------------------


def test_proxies_are_inherited_and_can_be_turned_off(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(PASSWORD)
    inventory = parse_inventory(f"""
defaults:
  proxy_url: http://proxy.example:3128
  proxy_username: {USER}
  proxy_password_file: pw
endpoints:
  - host: a.example
  - host: b.example
    proxy_url: 'http://[2001:db8::8]:8080'
  - host: c.example
    proxy_url: false
""", base=tmp_path)
    a, b, c = inventory.endpoints
    assert a.proxy == Proxy("proxy.example", 3128, USER, PASSWORD)
    assert b.proxy == Proxy("2001:db8::8", 8080) and b.proxy.url == "http://[2001:db8::8]:8080"
    assert c.proxy is None
    assert PASSWORD not in repr(inventory)


def problems_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_inventory(text, source="inv.yaml", environ=environ or {}, with_sinks=False,
                        strict=True)
    return list(info.value.problems)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("proxy_url: https://proxy.example:3128", "'proxy_url' must be http://HOST:PORT (an HTTP CONNECT"),
        ("proxy_url: http://proxy.example", "'proxy_url' must be http://HOST:PORT, with the port"),
        ("proxy_url: 3128", "'proxy_url' must be http://HOST:PORT or false, not int 3128"),
        ("proxy_url: http://☃.example:3128", "'proxy_url' host is not a valid international name"),
        ("proxy_url: http://p.example:1\n    proxy_password_env: NOPE",
         "'proxy_password_env': environment variable NOPE is not set"),
        ("proxy_url: http://p.example:1\n    proxy_password_env: PW",
         "a proxy password needs 'proxy_username'"),
        ("proxy_username: alice", "'proxy_username' needs 'proxy_url' beside it"),
        ("proxy_url: http://p.example:1\n    proxy_username: 'a:b'", "must not contain ':'"),
        ("proxy_url: http://p.example:1\n    addresses: ipv6",
         "'addresses: ipv6' cannot be honoured through a proxy"),
    ],
)
def test_bad_proxy_settings_say_why_with_their_line(entry: str, expected: str) -> None:
    problems = problems_of(f"endpoints:\n  - host: a.example\n    {entry}\n", {"PW": "x"})
    assert any(expected in p and p.startswith(("line 3:", "line 4:")) for p in problems), problems


def test_credentials_in_the_url_are_refused_without_being_repeated() -> None:
    problems = problems_of(f"endpoints:\n  - host: a.example\n"
                           f"    proxy_url: http://{USER}:{PASSWORD}@proxy.example:3128\n")
    assert problems == ["line 3: endpoint 1: credentials do not belong in 'proxy_url': use "
                        "'proxy_username' and 'proxy_password_env' or 'proxy_password_file'"]
    assert PASSWORD not in json.dumps(problems)
