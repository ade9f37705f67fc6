"""Security of certwatch's own HTTP endpoints: TLS, client certificates, basic auth.

The file format is that of Prometheus' exporter-toolkit (`--web.config.file`), so one
web configuration can serve certwatch and the exporters beside it::

    tls_server_config:
      cert_file: server.crt            # PEM: the certificate, then its intermediates
      key_file: server.key             # PEM, unencrypted
      client_auth_type: RequireAndVerifyClientCert   # | VerifyClientCertIfGiven | NoClientCert
      client_ca_file: clients-ca.pem   # the CAs client certificates must chain to
      min_version: TLS12               # TLS12 (default) | TLS13
      max_version: TLS13               # TLS12 | TLS13 (default)
    basic_auth_users:                  # user: bcrypt hash ($2a$, $2b$ or $2y$)
      prometheus: $2b$12$...
    http_server_config:
      headers:                         # added to every response
        Strict-Transport-Security: max-age=31536000
      open_paths: [/healthz]           # certwatch's addition: served without basic auth

Loading (:func:`load_web_config`) validates everything into an immutable
:class:`WebConfig`, gathering every problem into one :class:`ConfigError` that names the
file, the line and the key, as the inventory loader does. Relative paths are relative to
the web configuration file. Hashes and passwords never appear in a message or a repr.

The shell part: :class:`ServerTLS` owns the HTTP server's SSLContext and follows the
certificate files (rotation without a restart); :class:`BasicAuth` checks credentials
with bcrypt, off the event loop, caching successes briefly.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import difflib
import hashlib
import logging
import os
import re
import secrets
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certwatch.config import ConfigError, Problems, load_yaml, read_text, unknown_keys
from certwatch.config import describe as _describe
from certwatch.config import line_of as _line_of

__all__ = [
    "CLIENT_AUTH_TYPES",
    "BasicAuth",
    "HTTPServerConfig",
    "ServerTLS",
    "TLSLoadError",
    "TLSServerConfig",
    "WebConfig",
    "build_server_context",
    "build_web_config",
    "load_web_config",
    "parse_web_config",
]

log = logging.getLogger(__name__)

CLIENT_AUTH_TYPES: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# The headers exporter-toolkit allows; a typo is reported with a suggestion.
HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options",
           "X-XSS-Protection", "Strict-Transport-Security")
# Paths that `open_paths` may name (the daemon's fixed routes).
ROUTES = ("/", "/metrics", "/healthz", "/readyz", "/api/v1/targets")

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
             "max_version", "prefer_server_cipher_suites")
_HTTP_KEYS = ("headers", "open_paths", "http2")
# exporter-toolkit settings certwatch does not implement. Ignoring them silently would
# loosen what the operator asked for, so they are refused with a reason.
_UNSUPPORTED = {
    "cert": "inline PEM is not supported: use 'cert_file'",
    "key": "an inline key is not supported: use 'key_file' (a file the secret store mounts)",
    "client_ca": "inline PEM is not supported: use 'client_ca_file'",
    "client_allowed_sans": "not supported by certwatch: give the allowed clients their own "
                           "CA in 'client_ca_file'",
    "cipher_suites": "not supported by certwatch: OpenSSL's defaults are used (TLS 1.3 "
                     "suites are not configurable anyway); use min_version: TLS13 to be strict",
    "curve_preferences": "not supported by certwatch: OpenSSL's defaults are used",
    "rate_limit": "not supported by certwatch: put a reverse proxy in front to rate-limit",
}
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_HEADER_VALUE = re.compile(r"^[\x20-\x7e]*$")  # printable ASCII: no CR/LF header injection


# --- the values -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TLSServerConfig:
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"


@dataclass(frozen=True, slots=True)
class HTTPServerConfig:
    headers: tuple[tuple[str, str], ...] = ()
    open_paths: frozenset[str] = frozenset()  # served without basic auth


@dataclass(frozen=True, slots=True)
class WebConfig:
    tls: TLSServerConfig | None = None  # None: plain HTTP
    # user -> bcrypt hash. Hidden from repr: a hash is an offline-crackable secret.
    basic_auth_users: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    http: HTTPServerConfig = field(default_factory=HTTPServerConfig)
    source: str = "<web config>"

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"


class TLSLoadError(ValueError):
    """The certificate, key or client CA files cannot be used; the message names them."""


# --- loading ----------------------------------------------------------------------------


def load_web_config(path: Path | str) -> WebConfig:
    """Reads and validates a web configuration file; raises ConfigError with every problem."""
    path = Path(path)
    return parse_web_config(read_text(path), source=str(path), base=path.parent.resolve())


def parse_web_config(text: str, source: str = "<web config>", base: Path | None = None) -> WebConfig:
    return build_web_config(load_yaml(text, source), source, base)


def build_web_config(document: Any, source: str = "<web config>", base: Path | None = None) -> WebConfig:
    """Validates a parsed document. An empty document means plain HTTP without auth, as in
    exporter-toolkit."""
    base = base or Path.cwd()
    if document is None:
        return WebConfig(source=source)
    if not isinstance(document, dict):
        raise ConfigError(source, [f"top: must be a mapping, not {_describe(document)}"])
    problems = Problems()
    unknown_keys(document, _TOP_KEYS, "", problems)
    tls = _read_tls(document.get("tls_server_config"), _line_of(document, "tls_server_config"),
                    problems, base)
    users = _read_users(document.get("basic_auth_users"),
                        _line_of(document, "basic_auth_users"), problems)
    http = _read_http(document.get("http_server_config"),
                      _line_of(document, "http_server_config"), problems)
    if http.open_paths and not users:
        problems.add(_line_of(document.get("http_server_config"), "open_paths"),
                     "http_server_config", "'open_paths' only matters with 'basic_auth_users'")
    if len(problems):
        raise ConfigError(source, problems.items)
    return WebConfig(tls=tls, basic_auth_users=users, http=http, source=source)


def _mapping(raw: Any, line: int, where: str, problems: Problems) -> dict | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.add(line, where, f"must be a mapping, not {_describe(raw)}")
        return None
    return raw


def _refuse(raw: dict, where: str, problems: Problems) -> None:
    for key in list(raw):
        if key in _UNSUPPORTED:
            problems.add(_line_of(raw, key), where, f"'{key}': {_UNSUPPORTED[key]}")


def _path(raw: dict, key: str, where: str, problems: Problems, base: Path) -> Path | None:
    value = raw.get(key)
    line = _line_of(raw, key)
    if not isinstance(value, str) or not value.strip():
        problems.add(line, where, f"'{key}' must be a file path, not {_describe(value)}")
        return None
    path = Path(os.path.expanduser(value))
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        problems.add(line, where, f"'{key}': file not found: {path}")
        return None
    if not os.access(path, os.R_OK):
        problems.add(line, where, f"'{key}': file not readable: {path}")
        return None
    return path


def _read_tls(raw: Any, line: int, problems: Problems, base: Path) -> TLSServerConfig | None:
    where = "tls_server_config"
    mapping = _mapping(raw, line, where, problems)
    if mapping is None:
        return None
    before = len(problems)
    _refuse(mapping, where, problems)
    unknown_keys(mapping, _TLS_KEYS, where, problems, skip=tuple(_UNSUPPORTED))
    for key in ("cert_file", "key_file"):
        if key not in mapping:
            problems.add(_line_of(mapping), where, f"'{key}' is required")
    cert = _path(mapping, "cert_file", where, problems, base) if "cert_file" in mapping else None
    key = _path(mapping, "key_file", where, problems, base) if "key_file" in mapping else None

    auth = mapping.get("client_auth_type", "NoClientCert")
    if not isinstance(auth, str) or auth not in CLIENT_AUTH_TYPES:
        hint = _suggest(auth, CLIENT_AUTH_TYPES)
        problems.add(_line_of(mapping, "client_auth_type"), where,
                     f"'client_auth_type' must be one of {', '.join(CLIENT_AUTH_TYPES)}, not "
                     f"{_describe(auth)}{hint}"
                     + ("; certwatch does not offer Go's RequestClientCert or "
                        "RequireAnyClientCert: a client certificate is either verified or "
                        "not asked for" if auth in ("RequestClientCert", "RequireAnyClientCert")
                        else ""))
        auth = "NoClientCert"
    ca = None
    if mapping.get("client_ca_file") is not None:
        ca = _path(mapping, "client_ca_file", where, problems, base)
        if auth == "NoClientCert":
            problems.add(_line_of(mapping, "client_ca_file"), where,
                         "'client_ca_file' is set but 'client_auth_type' is NoClientCert; set "
                         "client_auth_type: RequireAndVerifyClientCert to require client "
                         "certificates")
    elif auth != "NoClientCert":
        problems.add(_line_of(mapping, "client_auth_type"), where,
                     f"client_auth_type {auth} needs 'client_ca_file' (the CA that signs "
                     "client certificates)")
    versions = {}
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        value = mapping.get(name, default)
        if not isinstance(value, str) or value not in TLS_VERSIONS:
            problems.add(_line_of(mapping, name), where,
                         f"'{name}' must be one of {', '.join(TLS_VERSIONS)}, not "
                         f"{_describe(value)}" + ("; TLS 1.0 and 1.1 are not offered"
                                                   if value in ("TLS10", "TLS11") else ""))
            value = default
        versions[name] = value
    if TLS_VERSIONS[versions["min_version"]] > TLS_VERSIONS[versions["max_version"]]:
        problems.add(_line_of(mapping, "min_version"), where,
                     f"min_version {versions['min_version']} is above max_version "
                     f"{versions['max_version']}")
    if "prefer_server_cipher_suites" in mapping \
            and not isinstance(mapping["prefer_server_cipher_suites"], bool):
        problems.add(_line_of(mapping, "prefer_server_cipher_suites"), where,
                     "'prefer_server_cipher_suites' must be true or false")
    if len(problems) > before or cert is None or key is None:
        return None
    config = TLSServerConfig(cert_file=cert, key_file=key, client_auth_type=auth,
                             client_ca_file=ca, **versions)
    try:  # the files exist; check that they are a usable pair now, not at the first client
        build_server_context(config)
    except TLSLoadError as exc:
        problems.add(_line_of(mapping, "cert_file"), where, str(exc))
        return None
    return config


def _suggest(value: Any, choices: Mapping[str, Any] | tuple[str, ...]) -> str:
    hint = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{hint[0]}'?)" if hint else ""


def _read_users(raw: Any, line: int, problems: Problems) -> tuple[tuple[str, bytes], ...]:
    where = "basic_auth_users"
    mapping = _mapping(raw, line, where, problems)
    if not mapping:
        return ()
    users = []
    for user, hashed in mapping.items():
        user_line = _line_of(mapping, user)
        if not isinstance(user, str) or not user or ":" in user or not user.isprintable():
            # A user name with ':' cannot be sent in a Basic header. The value is not shown.
            problems.add(user_line, where, f"user name {_describe(user)} must be non-empty "
                                           "printable text without ':'")
            continue
        # Never echo the value: it is a hash, or worse, a password written by mistake.
        if not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed):
            problems.add(user_line, where,
                         f"the password of '{user}' is not a bcrypt hash (expected 60 "
                         "characters starting with $2a$, $2b$ or $2y$ and a cost from 04 to "
                         "31; make one with `htpasswd -nBC 12 \"\" | tr -d ':\\n'` or "
                         "`python -c 'import bcrypt,getpass; print(bcrypt.hashpw("
                         "getpass.getpass().encode(), bcrypt.gensalt(12)).decode())'`); "
                         "quote it in YAML")
            continue
        users.append((user, hashed.encode("ascii")))
    return tuple(users)


def _read_http(raw: Any, line: int, problems: Problems) -> HTTPServerConfig:
    where = "http_server_config"
    mapping = _mapping(raw, line, where, problems)
    if mapping is None:
        return HTTPServerConfig()
    unknown_keys(mapping, _HTTP_KEYS, where, problems)
    if "http2" in mapping and not isinstance(mapping["http2"], bool):
        problems.add(_line_of(mapping, "http2"), where, "'http2' must be true or false "
                                                       "(certwatch serves HTTP/1.1 either way)")
    headers: list[tuple[str, str]] = []
    raw_headers = _mapping(mapping.get("headers"), _line_of(mapping, "headers"),
                           f"{where}.headers", problems) or {}
    for name, value in raw_headers.items():
        header_line = _line_of(raw_headers, name)
        if not isinstance(name, str) or name not in HEADERS:
            problems.add(header_line, f"{where}.headers",
                         f"unknown header {_describe(name)}{_suggest(name, HEADERS)}; "
                         f"known: {', '.join(HEADERS)}")
        elif value is None or value == "":
            continue  # exporter-toolkit: blank means unset
        elif not isinstance(value, str) or not _HEADER_VALUE.match(value):
            problems.add(header_line, f"{where}.headers",
                         f"'{name}' must be one line of printable ASCII, not {_describe(value)}")
        elif name == "X-Frame-Options" and value.lower() not in ("deny", "sameorigin"):
            problems.add(header_line, f"{where}.headers",
                         f"'X-Frame-Options' must be deny or sameorigin, not {_describe(value)}")
        elif name == "X-Content-Type-Options" and value.lower() != "nosniff":
            problems.add(header_line, f"{where}.headers",
                         f"'X-Content-Type-Options' must be nosniff, not {_describe(value)}")
        else:
            headers.append((name, value))
    open_paths: set[str] = set()
    raw_paths = mapping.get("open_paths") or []
    if not isinstance(raw_paths, list):
        problems.add(_line_of(mapping, "open_paths"), where,
                     f"'open_paths' must be a list of paths, not {_describe(raw_paths)}")
        raw_paths = []
    for item in raw_paths:
        if not isinstance(item, str) or item not in ROUTES:
            problems.add(_line_of(mapping, "open_paths"), where,
                         f"'open_paths' entry {_describe(item)} is not one of certwatch's "
                         f"paths{_suggest(item, ROUTES)}; known: {', '.join(ROUTES)}")
        else:
            open_paths.add(item)
    return HTTPServerConfig(headers=tuple(headers), open_paths=frozenset(open_paths))


# --- TLS: contexts and rotation ---------------------------------------------------------


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise TLSLoadError("encrypted")


def _reason(exc: BaseException) -> str:
    """OpenSSL's reason, without the source location: "key values mismatch", "pem lib"."""
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    reason = re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(reason))
    return re.sub(r"^\[[A-Z_]+\]\s*", "", reason).replace("_", " ").lower() or "unknown error"


def build_server_context(config: TLSServerConfig) -> ssl.SSLContext:
    """A server SSLContext from the files as they are now; TLSLoadError names the file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[config.min_version]
    context.maximum_version = TLS_VERSIONS[config.max_version]
    context.set_alpn_protocols(["http/1.1"])
    describe_certificate(config.cert_file)  # a clear message for a file with no certificate
    try:
        context.load_cert_chain(config.cert_file, config.key_file, password=_no_password)
    except TLSLoadError:
        raise TLSLoadError(f"'key_file' {config.key_file} is encrypted; certwatch needs an "
                           "unencrypted key (protect it with file permissions)") from None
    except ssl.SSLError as exc:
        reason = _reason(exc)
        if "mismatch" in reason:
            raise TLSLoadError(f"'key_file' {config.key_file} does not match the certificate "
                               f"in 'cert_file' {config.cert_file}") from None
        raise TLSLoadError(f"'key_file' {config.key_file} holds no usable private key for "
                           f"'cert_file' {config.cert_file} ({reason})") from None
    except OSError as exc:
        raise TLSLoadError(f"cannot read 'cert_file' {config.cert_file} or 'key_file' "
                           f"{config.key_file}: {exc.strerror or exc}") from None
    context.verify_mode = CLIENT_AUTH_TYPES[config.client_auth_type]
    if config.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=config.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise TLSLoadError(f"'client_ca_file' {config.client_ca_file} holds no usable CA "
                               f"certificate ({_reason(exc)})") from None
        if not context.get_ca_certs():
            raise TLSLoadError(f"'client_ca_file' {config.client_ca_file} holds no CA "
                               "certificate")
    return context


@dataclass(frozen=True, slots=True)
class CertificateSummary:
    subject: str
    not_after: datetime
    sha256: str  # hex fingerprint of the leaf


def describe_certificate(cert_file: Path) -> CertificateSummary:
    """The first certificate of a PEM file, for logs; TLSLoadError if there is none."""
    try:
        data = cert_file.read_bytes()
    except OSError as exc:
        raise TLSLoadError(f"cannot read 'cert_file' {cert_file}: {exc.strerror or exc}") from None
    try:
        cert = x509.load_pem_x509_certificates(data)[0]
    except (ValueError, IndexError):
        raise TLSLoadError(f"'cert_file' {cert_file} holds no PEM certificate") from None
    return CertificateSummary(subject=cert.subject.rfc4514_string(),
                              not_after=cert.not_valid_after_utc,
                              sha256=cert.fingerprint(hashes.SHA256()).hex())


Signature = tuple[tuple[int, int, int, int, int] | None, ...]


def _signature(config: TLSServerConfig) -> Signature:
    """(mtime, ctime, size, inode, device) of each file: a rename, an in-place write and a
    Kubernetes secret update (a symlink swap) all change it."""
    result = []
    for path in (config.cert_file, config.key_file, config.client_ca_file):
        if path is None:
            continue
        try:
            st = os.stat(path)
        except OSError:
            result.append(None)
            continue
        result.append((st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev))
    return tuple(result)


class ServerTLS:
    """The HTTP server's SSLContext, whose certificate follows its files.

    One SSLContext is given to the server and never replaced. Its `sni_callback` runs
    early in every handshake (OpenSSL calls it whether or not the client sent SNI); it
    checks the files' signatures, at most once per `check_interval`, loads a changed set
    into a new SSLContext, and points the connection at the newest context. Connections
    already open keep the certificate they started with. A new set that cannot be loaded
    (half written, mismatched, garbage) is logged and the previous context keeps serving;
    it is tried again when the files change again.
    """

    def __init__(self, config: TLSServerConfig, *, check_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.check_interval = check_interval
        self._clock = clock
        self._signature = _signature(config)
        self.context = build_server_context(config)  # raises TLSLoadError
        self.certificate = describe_certificate(config.cert_file)
        self._current = self.context
        self._checked_at = clock()
        self.reloads = 0
        self.failures = 0
        self.context.sni_callback = self._on_client_hello

    def _on_client_hello(self, connection: Any, server_name: str | None,
                         context: ssl.SSLContext) -> None:
        try:
            self.check()
            if self._current is not context:
                connection.context = self._current
        except Exception:  # an exception here would abort the handshake; serve the old one
            log.exception("checking the TLS certificate files failed")
        return None

    def check(self, *, force: bool = False) -> bool:
        """Reloads the files if they changed; True when a new certificate was loaded."""
        now = self._clock()
        if not force and now - self._checked_at < self.check_interval:
            return False
        self._checked_at = now
        signature = _signature(self.config)
        if signature == self._signature:
            return False
        self._signature = signature  # a failure is retried when the files change again
        try:
            context = build_server_context(self.config)
            summary = describe_certificate(self.config.cert_file)
        except TLSLoadError as exc:
            self.failures += 1
            log.error("new TLS certificate files rejected; the previous certificate keeps "
                      "serving: %s", exc,
                      extra={"cert_file": str(self.config.cert_file),
                             "serving_sha256": self.certificate.sha256})
            return False
        self._current, self.certificate = context, summary
        self.reloads += 1
        log.info("TLS certificate reloaded", extra=_summary_fields(summary))
        return True


def _summary_fields(summary: CertificateSummary) -> dict[str, str]:
    return {"subject": summary.subject, "not_after": summary.not_after.isoformat(),
            "sha256": summary.sha256}


def log_serving(tls: ServerTLS) -> None:
    log.info("serving TLS", extra={**_summary_fields(tls.certificate),
                                   "client_auth_type": tls.config.client_auth_type,
                                   "min_version": tls.config.min_version})


# --- basic auth -------------------------------------------------------------------------


class BasicAuth:
    """Checks `Authorization: Basic` headers against bcrypt hashes.

    bcrypt costs 50-250 ms by design, and a Prometheus scraping every 15 s would pay it
    on every scrape. So a *successful* check is remembered for `cache_ttl` seconds (at most
    `cache_size` entries), keyed by a salted SHA-256 of (user, password, stored hash): the
    cache holds no password, a wrong password never hits it, and a changed hash misses it.
    Failures are not cached; every one costs a bcrypt, run in a worker thread (never on the
    event loop) with at most `max_concurrent` at once, so a password-guessing client slows
    itself down, not the scrapes. An unknown user is checked against a dummy hash so the
    answer takes as long as for a known one. bcrypt compares in constant time. Passwords
    longer than 72 bytes are cut to 72, as bcrypt (and htpasswd) always did.
    """

    REALM = "certwatch"

    def __init__(self, users: tuple[tuple[str, bytes], ...], *, cache_ttl: float = 300.0,
                 cache_size: int = 256, max_concurrent: int = 2,
                 clock: Callable[[], float] = time.monotonic,
                 checkpw: Callable[[bytes, bytes], bool] = bcrypt.checkpw) -> None:
        self._users = dict(users)
        self._cache: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self._cache_ttl, self._cache_size = cache_ttl, cache_size
        self._clock = clock
        self._checkpw = checkpw
        self._salt = secrets.token_bytes(32)
        self._slots = asyncio.Semaphore(max_concurrent)
        self._dummy: bytes | None = None

    @property
    def challenge(self) -> str:
        return f'Basic realm="{self.REALM}", charset="UTF-8"'

    @staticmethod
    def parse(header: str | None) -> tuple[str, bytes] | None:
        """(user, password) from an Authorization header, or None."""
        if not header:
            return None
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        user, colon, password = decoded.partition(b":")
        if not colon:
            return None
        try:
            return user.decode("utf-8"), password
        except UnicodeDecodeError:
            return None

    async def check(self, header: str | None) -> bool:
        credentials = self.parse(header)
        if credentials is None:
            return False
        user, password = credentials
        password = password[:72]
        stored = self._users.get(user)
        if stored is None:
            if self._dummy is None:
                self._dummy = await asyncio.to_thread(self._make_dummy)
            await self._bcrypt(password, self._dummy)
            return False
        key = self._key(user, password, stored)
        now = self._clock()
        expires = self._cache.get(key)
        if expires is not None and expires > now:
            return True
        if not await self._bcrypt(password, stored):
            return False
        self._cache[key] = now + self._cache_ttl
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return True

    def _key(self, user: str, password: bytes, stored: bytes) -> bytes:
        digest = hashlib.sha256(self._salt)
        for part in (user.encode("utf-8"), password, stored):
            digest.update(len(part).to_bytes(4, "big"))
            digest.update(part)
        return digest.digest()

    def _make_dummy(self) -> bytes:
        """A hash of a random password at the highest configured cost."""
        cost = max([int(h[4:6]) for h in self._users.values()] or [10])
        return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))

    async def _bcrypt(self, password: bytes, stored: bytes) -> bool:
        async with self._slots:
            try:
                return await asyncio.to_thread(self._checkpw, password, stored)
            except ValueError:  # a malformed hash cannot get past validation; refuse anyway
                return False
