"""certwatch's own endpoints: TLS with rotation, client certificates, basic auth, secrets.

The real daemon runs as a subprocess on 127.0.0.1 with a web configuration file
(`--web.config.file`), certificates made by tests/pki.py, and real clients
(http.client, ssl). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from certwatch.config import ConfigError
from certwatch.config.web import TLSServerConfig, parse_web_config
from certwatch.serving.auth import BasicAuth
from certwatch.serving.tls import ServerTLS, build_server_context, tls_problem
from tests.pki import Issued, make_intermediate, make_leaf, make_root
from tests.servers import TLSServer
from tests.test_alerting import Receiver
from tests.test_daemon import DAY, NOW, RunningDaemon, free_port, wait_for
from tests.test_sinks import SMTPReceiver

NAME = "certwatch.test"  # the name on certwatch's own serving certificate


# --- certificates -----------------------------------------------------------------------


@dataclass
class Pki:
    directory: Path
    inter: Issued  # signs certwatch's serving certificates; its root is root.pem
    client_ca: Issued  # signs client certificates; client-ca.pem

    def serving(self, stem: str, days: float) -> Issued:
        # issued as a 90-day certificate would be (one with 20 days left is in warning)
        leaf = make_leaf(self.inter, [NAME, "127.0.0.1"], not_before=NOW - max(1, 90 - days) * DAY,
                         not_after=NOW + days * DAY)
        (self.directory / stem).parent.mkdir(parents=True, exist_ok=True)
        leaf.write(self.directory, stem)
        return leaf

    def client(self, stem: str, issuer: Issued | None = None) -> tuple[Path, Path]:
        leaf = make_leaf(issuer or self.client_ca, ["scraper.test"], not_before=NOW - DAY,
                         not_after=NOW + 30 * DAY, extra_extensions=[
                             (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)])
        return leaf.write(self.directory, stem)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    root = make_root("Web Root", not_before=NOW - DAY, not_after=NOW + 3000 * DAY)
    inter = make_intermediate(root, "Web Intermediate", not_before=NOW - DAY,
                              not_after=NOW + 2000 * DAY)
    client_ca = make_root("Client CA", not_before=NOW - DAY, not_after=NOW + 3000 * DAY)
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    (tmp_path / "client-ca.pem").write_bytes(client_ca.cert_pem)
    return Pki(tmp_path, inter, client_ca)


def sha256_of(issued: Issued) -> str:
    return hashlib.sha256(issued.cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def served_fingerprint(port: int) -> str:
    """The SHA-256 of the certificate a new connection is given (no SNI, no verification)."""
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=5)
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def replace_file(path: Path, data: bytes) -> None:
    """Atomically, as a deployment tool (or a Kubernetes secret update) does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def bcrypt_hash(password: str, cost: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- the daemon and a client ------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: str


class SecureDaemon(RunningDaemon):
    """`certwatch run --web.config.file ...`, spoken to over HTTPS."""

    def __init__(self, directory: Path, inventory: Path, web_config: Path, *, port: int,
                 env: dict[str, str] | None = None, log_level: str | None = None,
                 tag: str = "daemon") -> None:
        self.directory = directory
        super().__init__(inventory, directory / f"{tag}.log", port=port, env=env,
                         options=["--log-level", log_level] if log_level else [],
                         run_options=["--web.config.file", str(web_config)])

    def context(self, client: tuple[Path, Path] | None = None,
                maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.directory / "root.pem"))
        if client is not None:
            context.load_cert_chain(*client)
        if maximum is not None:
            context.maximum_version = maximum
        return context

    def request(self, path: str, *, context: ssl.SSLContext | None = None, tls: bool = True,
                authorization: str | None = None) -> Response:
        """Raises OSError/HTTPException when the connection or handshake fails."""
        connection: http.client.HTTPConnection
        if tls:
            connection = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=5,
                                                     context=context or self.context())
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            headers = {"Authorization": authorization} if authorization else {}
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            return Response(response.status, dict(response.getheaders()),
                            response.read().decode())
        finally:
            connection.close()

    def poll(self, path: str, **kwargs: Any) -> Response | None:
        try:
            return self.request(path, **kwargs)
        except (OSError, http.client.HTTPException):
            return None

    def targets(self, **kwargs: Any) -> dict[str, dict[str, Any]]:
        response = self.poll("/api/v1/targets", **kwargs)
        if response is None or response.status != 200:
            return {}
        return {t["name"]: t for t in json.loads(response.body)}

    def log_text(self) -> str:
        return self.log_path.read_text()

    def logs(self) -> list[dict[str, Any]]:
        # Unlike the base class, tolerates lines that are not JSON (a traceback, say).
        return [json.loads(line) for line in self.log_text().splitlines() if line.startswith("{")]


@pytest.fixture
def start(pki: Pki) -> Iterator[Callable[..., SecureDaemon]]:
    started: list[SecureDaemon] = []

    def run(web_config: str, endpoints: list[str] | None = None, *, port: int | None = None,
            alerts: str = "", ready: Callable[[SecureDaemon], bool] | None = None,
            **kwargs: Any) -> SecureDaemon:
        (pki.directory / "web.yml").write_text(web_config)
        inventory = pki.directory / "certwatch.yaml"
        inventory.write_text(
            "defaults: {ca_file: root.pem, system_trust: false, interval: 1s, "
            "retry_interval: 1s, timeout: 2}\n" + alerts + "endpoints:"
            + ("".join(f"\n  - {e}" for e in endpoints) if endpoints else " []") + "\n")
        daemon = SecureDaemon(pki.directory, inventory, pki.directory / "web.yml",
                              port=port or free_port(), tag=f"daemon{len(started)}", **kwargs)
        started.append(daemon)
        probe = ready or (lambda d: (r := d.poll("/healthz")) is not None and r.status == 200)
        try:
            wait_for("the daemon to serve", lambda: probe(daemon) or daemon.process.poll() is not None)
        finally:
            if daemon.process.poll() is not None:
                raise AssertionError(f"the daemon exited: {daemon.log_text()}")
        return daemon

    yield run
    for daemon in started:
        daemon.stop()


TLS = "tls_server_config: {cert_file: server.crt, key_file: server.key"


# --- TLS ----------------------------------------------------------------------------------


def test_https_serves_and_plain_http_or_old_tls_is_refused(pki: Pki, start) -> None:  # type: ignore[no-untyped-def]
    serving = pki.serving("server", 60)
    daemon = start(TLS + ", min_version: TLS13}\n")

    response = daemon.request("/metrics")  # verified against root.pem, for the name 127.0.0.1
    assert response.status == 200 and "certwatch_" in response.body
    with pytest.raises((OSError, http.client.HTTPException)):
        daemon.request("/healthz", tls=False)  # plain HTTP on the TLS port
    with pytest.raises(ssl.SSLError):  # min_version: TLS13 refuses a TLS 1.2 client
        daemon.request("/healthz", context=daemon.context(maximum=ssl.TLSVersion.TLSv1_2))
    assert daemon.request("/healthz").status == 200  # none of that hurt the server

    logs = daemon.logs()
    listening = [e for e in logs if e["message"].startswith("listening on")]
    assert listening[0]["message"] == f"listening on https://127.0.0.1:{daemon.port}/"
    (serving_log,) = [e for e in logs if e["message"] == "serving TLS"]
    assert serving_log["sha256"] == sha256_of(serving)
    assert serving_log["min_version"] == "TLS13"
    assert daemon.stop() == 0
    assert not [e for e in daemon.logs() if e["level"] == "error"]


def test_certificate_rotates_without_restart_and_self_watch_sees_it(pki: Pki, start) -> None:  # type: ignore[no-untyped-def]
    # The files live behind a symlinked directory, as in a mounted Kubernetes secret,
    # whose update swaps the link: both files change at once.
    first, second = pki.serving("v1/server", 60), pki.serving("v2/server", 90)
    live = pki.directory / "live"
    live.symlink_to("v1")
    port = free_port()
    # certwatch watches its own serving certificate like any other target.
    self_entry = f"{{name: self, host: 127.0.0.1, port: {port}, server_name: {NAME}}}"
    daemon = start("tls_server_config: {cert_file: live/server.crt, key_file: live/server.key}\n",
                   [self_entry], port=port)
    assert served_fingerprint(port) == sha256_of(first)
    watched = wait_for("the self-watch target", lambda: daemon.targets().get("self"))
    assert watched["state"] == "ok" and watched["verified"] is True
    assert watched["days_left"] == pytest.approx(60, abs=0.1)
    assert watched["chain"][0]["fingerprint_sha256"] == sha256_of(first)

    def rejections() -> list[dict[str, Any]]:
        return [e for e in daemon.logs() if "files rejected" in e["message"]]

    # Rotation: a new connection gets the new certificate, without a restart.
    (pki.directory / "live.new").symlink_to("v2")
    started = time.monotonic()
    (pki.directory / "live.new").replace(live)
    wait_for("the new certificate", lambda: served_fingerprint(port) == sha256_of(second), timeout=10)
    rotation_seconds = time.monotonic() - started
    renewed = wait_for("the self-watch to see the renewal", lambda: (
        (t := daemon.targets().get("self")) and t["chain"][0]["fingerprint_sha256"] == sha256_of(second) and t))
    assert renewed["days_left"] == pytest.approx(90, abs=0.1)
    reloaded = [e for e in daemon.logs() if e["message"] == "TLS certificate reloaded"]
    assert [e["sha256"] for e in reloaded] == [sha256_of(second)]
    assert rejections() == []  # an atomic swap is never seen half done

    # A broken replacement (garbage) is rejected; the previous certificate keeps serving.
    replace_file(pki.directory / "v2/server.crt", b"-----BEGIN CERTIFICATE-----\ngarbage\n")
    garbage = wait_for("the garbage to be rejected",
                       lambda: served_fingerprint(port) and rejections(), timeout=10)
    assert garbage[0]["level"] == "error" and "holds no PEM certificate" in garbage[0]["message"]
    assert served_fingerprint(port) == sha256_of(second)

    # So is a certificate with somebody else's key (files written one after the other).
    third = make_leaf(pki.inter, [NAME], not_before=NOW - DAY, not_after=NOW + 120 * DAY)
    stranger = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    replace_file(pki.directory / "v2/server.key", stranger)
    replace_file(pki.directory / "v2/server.crt", third.cert_pem)
    mismatch = wait_for("the mismatched pair to be rejected", lambda: served_fingerprint(port) and [
        e for e in rejections() if "does not match" in e["message"]], timeout=10)
    assert "the previous certificate keeps serving" in mismatch[0]["message"]
    assert served_fingerprint(port) == sha256_of(second)
    assert daemon.request("/healthz").status == 200

    # Fixing the files brings the new certificate in: a failure is retried on the next change.
    replace_file(pki.directory / "v2/server.key", third.key_pem)
    wait_for("the repaired pair", lambda: served_fingerprint(port) == sha256_of(third), timeout=10)
    assert daemon.process.poll() is None
    print(f"rotation seen by a new connection after {rotation_seconds:.2f}s")
    assert rotation_seconds < 5


def test_server_tls_context_follows_the_files(pki: Pki) -> None:
    """In process: the check is rate-limited and a failure is retried only on a change."""
    first = pki.serving("server", 60)
    now = [0.0]
    config = TLSServerConfig(cert_file=pki.directory / "server.crt",
                             key_file=pki.directory / "server.key")
    tls = ServerTLS(config, check_interval=1.0, clock=lambda: now[0])
    assert tls.certificate.sha256 == sha256_of(first)
    second = pki.serving("next", 90)
    replace_file(config.key_file, (pki.directory / "next.key").read_bytes())
    replace_file(config.cert_file, (pki.directory / "next.crt").read_bytes())
    assert tls.check() is False  # checked less than a second ago
    now[0] = 1.0
    assert tls.check() is True and tls.certificate.sha256 == sha256_of(second)
    replace_file(config.cert_file, b"not a certificate")
    now[0] = 2.0
    assert tls.check() is False and tls.failures == 1
    now[0] = 3.0
    assert tls.check() is False and tls.failures == 1  # unchanged files are not retried
    assert tls.certificate.sha256 == sha256_of(second)
    # The client-auth types as OpenSSL modes.
    pki.serving("server", 60)
    for kind, mode in (("NoClientCert", ssl.CERT_NONE), ("VerifyClientCertIfGiven", ssl.CERT_OPTIONAL),
                       ("RequireAndVerifyClientCert", ssl.CERT_REQUIRED)):
        ca = pki.directory / "client-ca.pem" if kind != "NoClientCert" else None
        context = build_server_context(TLSServerConfig(config.cert_file, config.key_file, kind, ca))
        assert context.verify_mode == mode
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2


# --- client certificates -------------------------------------------------------------------


def test_client_certificates_are_required_and_verified(pki: Pki, start) -> None:  # type: ignore[no-untyped-def]
    pki.serving("server", 60)
    good = pki.client("client")
    other_ca = make_root("Someone Else", not_before=NOW - DAY, not_after=NOW + 300 * DAY)
    foreign = pki.client("foreign", issuer=other_ca)
    port = free_port()
    self_entry = (f"{{name: self, host: 127.0.0.1, port: {port}, server_name: {NAME}, "
                  "client_cert: client.crt, client_key: client.key}")
    daemon = start(TLS + ", client_auth_type: RequireAndVerifyClientCert, "
                         "client_ca_file: client-ca.pem}\n", [self_entry], port=port,
                   ready=lambda d: d.poll("/healthz", context=d.context(good)) is not None)

    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        daemon.request("/metrics")  # no client certificate: the handshake is refused
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        daemon.request("/metrics", context=daemon.context(foreign))
    response = daemon.request("/metrics", context=daemon.context(good))
    assert response.status == 200 and "certwatch_" in response.body
    # The self-watch entry presents a client certificate too, so its probe succeeds.
    watched = wait_for("the self-watch target", lambda: daemon.targets(context=daemon.context(good)).get("self"))
    assert watched["probe_success"] is True and watched["state"] == "ok"
    assert daemon.process.poll() is None


# --- basic auth ----------------------------------------------------------------------------


def test_basic_auth(pki: Pki, start) -> None:  # type: ignore[no-untyped-def]
    password = "pässwörd with spaces: and a colon"
    daemon = start(
        "basic_auth_users:\n"
        f"  prometheus: '{bcrypt_hash(password)}'\n"
        f"  grafana: '{bcrypt_hash('another one')}'\n"
        "http_server_config:\n"
        "  open_paths: [/healthz]\n"
        "  headers: {X-Frame-Options: deny, Content-Security-Policy: \"default-src 'none'\"}\n",
        ready=lambda d: (r := d.poll("/healthz", tls=False)) is not None and r.status == 200)
    right = basic("prometheus", password)

    for authorization in (None, basic("prometheus", "wrong"), basic("nobody", password),
                          basic("grafana", password), "Basic !!!notbase64", "Bearer abc",
                          "Basic " + base64.b64encode(b"no-colon").decode()):
        response = daemon.request("/metrics", tls=False, authorization=authorization)
        assert response.status == 401, authorization
        assert response.headers["WWW-Authenticate"] == 'Basic realm="certwatch", charset="UTF-8"'
        assert response.headers["X-Frame-Options"] == "deny"
        assert "certwatch_" not in response.body
    for path in ("/metrics", "/api/v1/targets", "/", "/readyz"):
        response = daemon.request(path, tls=False, authorization=right)
        assert response.status == 200, path
        assert response.headers["X-Frame-Options"] == "deny"
    assert daemon.request("/metrics", tls=False, authorization=basic("grafana", "another one")).status == 200
    # The status page keeps its own stricter CSP; other responses get the configured one.
    page = daemon.request("/", tls=False, authorization=right)
    assert "style-src" in page.headers["Content-Security-Policy"]
    assert daemon.request("/metrics", tls=False, authorization=right).headers[
        "Content-Security-Policy"] == "default-src 'none'"
    # /healthz is open (a container health check has no password); nothing else is.
    assert daemon.request("/healthz", tls=False).status == 200
    assert daemon.request("/readyz", tls=False).status == 401
    assert daemon.request("/no/such/path", tls=False).status == 401  # paths are not revealed
    assert daemon.request("/no/such/path", tls=False, authorization=right).status == 404
    assert any("basic auth without TLS" in e["message"] for e in daemon.logs())


def test_basic_auth_checker_caches_successes_only() -> None:
    calls: list[bytes] = []

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return bcrypt.checkpw(password, hashed)

    now = [0.0]
    long_password = "x" * 72
    users = (("prometheus", bcrypt_hash("secret").encode()),
             ("long", bcrypt_hash(long_password).encode()))

    async def scenario() -> None:
        auth = BasicAuth(users, cache_ttl=300, cache_size=2, clock=lambda: now[0], checkpw=counting)
        for _ in range(5):  # a scraper every 15 s pays one bcrypt per cache_ttl
            assert await auth.check(basic("prometheus", "secret"))
            now[0] += 15
        assert len(calls) == 1
        for _ in range(3):  # wrong passwords are never cached: a bcrypt each
            assert not await auth.check(basic("prometheus", "guess"))
        assert len(calls) == 4
        assert not await auth.check(basic("nobody", "secret"))  # a dummy bcrypt, same timing
        assert len(calls) == 5
        now[0] += 301
        assert await auth.check(basic("prometheus", "secret"))  # expired: checked again
        assert len(calls) == 6
        # bcrypt reads 72 bytes; longer passwords are cut there, as htpasswd does.
        assert await auth.check(basic("long", long_password + "ignored"))
        assert not await auth.check(basic("long", "y" + long_password[1:]))

    asyncio.run(scenario())
    assert BasicAuth.parse(basic("a", "b:c")) == ("a", b"b:c")
    assert BasicAuth.parse("basic " + base64.b64encode(b"a:").decode()) == ("a", b"")
    assert BasicAuth.parse(None) is None and BasicAuth.parse("Digest x") is None
    config = parse_web_config(f"basic_auth_users: {{u: '{users[0][1].decode()}'}}")
    assert config.basic_auth_users == (("u", users[0][1]),)
    assert users[0][1].decode() not in repr(config)  # hashes stay out of reprs (and logs)


# --- configuration errors -------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("tls_server_confg: {}\n", "line 1: unknown key 'tls_server_confg' (did you mean 'tls_server_config'?)"),
    ("tls_server_config: {cert_file: server.crt}\n", "'key_file' is required"),
    ("tls_server_config: {cert_file: missing.crt, key_file: server.key}\n",
     "'cert_file': file not found: "),
    ("tls_server_config: {cert_file: server.crt, key_file: other.key}\n",
     "other.key does not match the certificate in 'cert_file'"),
    ("tls_server_config: {cert_file: root.pem, key_file: root.pem}\n", "holds no usable private key"),
    ("tls_server_config: {cert_file: server.key, key_file: server.key}\n", "holds no PEM certificate"),
    ("tls_server_config: {cert_file: server.crt, key_file: server.key, client_auth_type: RequireAndVerifyClientCert}\n",
     "needs 'client_ca_file'"),
    ("tls_server_config: {cert_file: server.crt, key_file: server.key, client_auth_type: RequireAndVerifyClientCrt, client_ca_file: client-ca.pem}\n",
     "(did you mean 'RequireAndVerifyClientCert'?)"),
    ("tls_server_config: {cert_file: server.crt, key_file: server.key, min_version: TLS11}\n",
     "'min_version' must be one of TLS12, TLS13, not 'TLS11'"),
    ("tls_server_config: {cert_file: server.crt, key_file: server.key, cipher_suites: [TLS_AES_128_GCM_SHA256]}\n",
     "'cipher_suites': not supported by certwatch"),
    ("tls_server_config: {cert_file: server.crt, key_file: server.key, client_ca_file: client-ca.pem}\n",
     "'client_ca_file' is set but 'client_auth_type' is NoClientCert"),
    ("basic_auth_users: {admin: hunter2-in-plain-text}\n", "the password of 'admin' is not a bcrypt hash"),
    ("http_server_config: {headers: {X-Frame-Option: deny}}\n", "(did you mean 'X-Frame-Options'?)"),
    ("http_server_config: {open_paths: [/healthz]}\n", "'open_paths' only matters with 'basic_auth_users'"),
    ("tls_server_config: [cert_file\n", "not valid YAML"),
    ("- a list\n", "must be a mapping"),
])
def test_config_problems_are_named(pki: Pki, text: str, expected: str) -> None:
    pki.serving("server", 60)
    (pki.directory / "other.key").write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(ConfigError) as caught:
        parse_web_config(text, source="web.yml", base=pki.directory, check_tls=tls_problem)
    message = str(caught.value)
    assert message.startswith("web.yml: ") and expected in message, message
    assert "hunter2" not in message  # a value in basic_auth_users is never echoed


def test_bad_web_config_exits_2_with_a_clear_message(pki: Pki) -> None:
    pki.serving("server", 60)
    inventory = pki.directory / "certwatch.yaml"
    inventory.write_text("endpoints: []\n")
    bad = pki.directory / "web.yml"
    bad.write_text("tls_server_config: {cert_file: server.crt, key_fle: server.key}\n"
                   "basic_auth_users: {admin: not-a-hash-but-a-secret}\n")
    for flag, path in (("--web.config.file", bad), ("--web-config", pki.directory / "absent.yml")):
        result = subprocess.run(
            [sys.executable, "-m", "certwatch", "run", "-c", str(inventory), "--listen",
             f"127.0.0.1:{free_port()}", flag, str(path)],
            capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, result.stderr
        (entry,) = [json.loads(line) for line in result.stderr.splitlines()]
        assert entry["level"] == "error" and entry["source"] == str(path)
        if path == bad:
            assert entry["problems"] == [
                "line 1: tls_server_config: unknown key 'key_fle' (did you mean 'key_file'?)",
                "line 1: tls_server_config: 'key_file' is required",
                "line 2: basic_auth_users: the password of 'admin' is not a bcrypt hash "
                + entry["problems"][2].split("bcrypt hash ", 1)[1]]
            assert "not-a-hash-but-a-secret" not in result.stderr + result.stdout
        else:
            assert "cannot read the file" in entry["problems"][0]


# --- secrets ---------------------------------------------------------------------------------


class ThreadedSMTP:
    """tests.test_sinks' SMTP server (STARTTLS, AUTH PLAIN) on its own loop in a thread."""

    def __init__(self, context: ssl.SSLContext, password: str) -> None:
        self.context, self.password = context, password
        self.ready = threading.Event()

    def __enter__(self) -> SMTPReceiver:
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self.thread.start()
        assert self.ready.wait(5), "the SMTP server did not start"
        return self.server

    async def _main(self) -> None:
        self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()
        async with SMTPReceiver(self.context, password=self.password) as server:
            self.server = server
            self.ready.set()
            await self.stop.wait()

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(5)



def test_secrets_never_appear_in_output_or_responses(pki: Pki, start) -> None:  # type: ignore[no-untyped-def]
    """A run that uses every kind of secret; then everything it said is searched for them."""
    pki.serving("server", 60)
    password = "Sc0pe-of-the-scrape-7f3a"
    wrong = "Wr0ng-guess-9c1d"
    hashed = bcrypt_hash(password, cost=5)
    token = "hooktoken-5be8e2d1"
    hmac_secret = "hmac-key-0d6f93aa"
    smtp_password = "smtp-pass-a41c77e2"
    pki.serving("shop", 20)
    shop_files = (pki.directory / "shop.crt", pki.directory / "shop.key")
    smtp_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    smtp_tls.load_cert_chain(*shop_files)
    with Receiver() as receiver, TLSServer({None: shop_files}) as shop, \
            ThreadedSMTP(smtp_tls, password="the-server-wants-another") as smtp:
        receiver.mode = "fail"  # every delivery fails with HTTP 500
        hook_url = f"{receiver.url}/{token}?key={token}"
        port = free_port()
        alerts = (
            "alerts:\n"
            f"  state_dir: {pki.directory / 'state'}\n"
            "  retry: {initial: 1s, maximum: 2s}\n"
            "  sinks:\n"
            "    - {name: hook, type: webhook, url_env: CW_TEST_HOOK_URL, hmac_secret_env: CW_TEST_HMAC}\n"
            f"    - {{name: mail, type: email, smtp_host: 127.0.0.1, smtp_port: {smtp.port}, "
            "username: certwatch, password_env: CW_TEST_SMTP_PASSWORD, from: cw@example.com, "
            "to: [oncall@example.com], ca_file: root.pem, timeout: 5}\n")
        right = basic("prometheus", password)
        daemon = start(
            TLS + "}\nbasic_auth_users:\n"
            f"  prometheus: '{hashed}'\n",
            [f"{{name: shop, host: 127.0.0.1, port: {shop.port}, server_name: {NAME}}}",
             f"{{name: self, host: 127.0.0.1, port: {port}, server_name: {NAME}}}"],
            port=port, alerts=alerts, log_level="debug",
            env={"CW_TEST_HOOK_URL": hook_url, "CW_TEST_HMAC": hmac_secret,
                 "CW_TEST_SMTP_PASSWORD": smtp_password},
            ready=lambda d: (r := d.poll("/readyz", authorization=right)) is not None and r.status == 200)

        responses: list[Response] = []
        for path in ("/metrics", "/api/v1/targets", "/api/v1/targets/shop", "/", "/readyz",
                     "/healthz", "/api/v1/targets/nope", "/target?key=shop%40127.0.0.1"):
            for authorization in (right, basic("prometheus", wrong), None):
                responses.append(daemon.request(path, authorization=authorization))
        # Both sinks fail, the webhook more than once, and say so in the logs.
        def failures(sink: str) -> int:
            return sum(1 for e in daemon.logs() if e["level"] in ("warning", "error")
                       and f" to {sink}: " in e["message"])

        wait_for("failed deliveries", lambda: failures("hook") >= 2 and failures("mail") >= 1,
                 timeout=20)
        for path in ("/metrics", "/api/v1/targets", "/"):
            responses.append(daemon.request(path, authorization=right))
        assert daemon.targets(authorization=right)["shop"]["alerts"]
        assert daemon.stop() == 0
        # The secrets were really used: the SMTP password was sent (and refused).
        assert ("certwatch", smtp_password) in smtp.logins

    assert all(r.status in (200, 401, 404) for r in responses)
    assert [r.status for r in responses].count(200) == 10  # 7 paths + 3 later, with the password
    assert [r.status for r in responses].count(401) == 16  # 8 paths, wrong or no password
    output = daemon.log_text()
    state = b"".join(p.read_bytes() for p in (pki.directory / "state").iterdir() if p.is_file())
    said = [output] + [r.body + json.dumps(r.headers) for r in responses]
    secrets = {"password": password, "wrong password": wrong, "bcrypt hash": hashed,
               "bcrypt digest": hashed[-31:], "authorization": right.split()[1],
               "webhook token": token, "webhook URL": hook_url, "HMAC key": hmac_secret,
               "SMTP password": smtp_password}
    for what, secret in secrets.items():
        assert not [text for text in said if secret in text], f"the {what} leaked"
        assert secret.encode() not in state, f"the {what} is in the state database"
    assert "Authorization" not in output
