"""The web configuration of certwatch's own HTTP endpoints: TLS, client certificates, basic auth.

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

Loading validates everything into an immutable :class:`WebConfig`, gathering every
problem into one :class:`ConfigError` that names the file, the line and the key.
Relative paths are relative to the web configuration file. Hashes and passwords never
appear in a message or a repr. Whether a certificate and key make a usable pair is the
TLS layer's to say (:func:`certwatch.serving.tls.tls_problem`), passed in as `check_tls`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from certwatch.config.kit import ConfigError, Problems, Reader, describe, line_of, suggest
from certwatch.config.yamlfile import parse, read_text

__all__ = [
    "CLIENT_AUTH_TYPES",
    "HTTPServerConfig",
    "TLSServerConfig",
    "TLS_VERSIONS",
    "WebConfig",
    "build_web_config",
    "load_web_config",
    "parse_web_config",
]

CLIENT_AUTH_TYPES = ("NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
TLS_VERSIONS = ("TLS12", "TLS13")  # in rising order
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


TLSCheck = Callable[[TLSServerConfig], "str | None"]  # why the files cannot serve, or None


def load_web_config(path: Path | str, check_tls: TLSCheck | None = None) -> WebConfig:
    """Reads and validates a web configuration file; raises ConfigError with every problem."""
    path = Path(path)
    return parse_web_config(read_text(path), source=str(path), base=path.parent.resolve(),
                            check_tls=check_tls)


def parse_web_config(text: str, source: str = "<web config>", base: Path | None = None,
                     check_tls: TLSCheck | None = None) -> WebConfig:
    return parse(text, source, lambda document: build_web_config(document, source, base, check_tls))


def build_web_config(document: Any, source: str = "<web config>", base: Path | None = None,
                     check_tls: TLSCheck | None = None) -> WebConfig:
    """Validates a parsed document. An empty document means plain HTTP without auth, as in
    exporter-toolkit."""
    base = base or Path.cwd()
    if document is None:
        return WebConfig(source=source)
    if not isinstance(document, dict):
        raise ConfigError(source, [f"top: must be a mapping, not {describe(document)}"])
    problems = Problems()
    Reader(document, "", problems, base).unknown_keys(_TOP_KEYS)
    tls = _read_tls(_section(document, "tls_server_config", problems, base), check_tls)
    users = _read_users(_section(document, "basic_auth_users", problems, base))
    http = _read_http(_section(document, "http_server_config", problems, base))
    if http.open_paths and not users:
        problems.add(line_of(document.get("http_server_config"), "open_paths"),
                     "http_server_config", "'open_paths' only matters with 'basic_auth_users'")
    problems.raise_for(source)
    return WebConfig(tls=tls, basic_auth_users=users, http=http, source=source)


def _section(document: dict[Any, Any], key: str, problems: Problems, base: Path) -> Reader | None:
    raw = document.get(key)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.add(line_of(document, key), key, f"must be a mapping, not {describe(raw)}")
        return None
    return Reader(raw, key, problems, base)


def _read_tls(read: Reader | None, check_tls: TLSCheck | None) -> TLSServerConfig | None:
    if read is None:
        return None
    mapping = read.mapping
    for key in list(mapping):
        if key in _UNSUPPORTED:
            read.problem(key, f"'{key}': {_UNSUPPORTED[key]}")
    read.unknown_keys(_TLS_KEYS, skip=tuple(_UNSUPPORTED))
    for key in ("cert_file", "key_file"):
        if key not in mapping:
            read.problem(None, f"'{key}' is required")
    cert = read.path("cert_file", None)
    key = read.path("key_file", None)
    auth = _client_auth(read)
    ca = None
    if mapping.get("client_ca_file") is not None:
        ca = read.path("client_ca_file", None)
        if auth == "NoClientCert":
            read.problem("client_ca_file",
                         "'client_ca_file' is set but 'client_auth_type' is NoClientCert; set "
                         "client_auth_type: RequireAndVerifyClientCert to require client "
                         "certificates")
    elif auth != "NoClientCert":
        read.problem("client_auth_type", f"client_auth_type {auth} needs 'client_ca_file' (the "
                                         "CA that signs client certificates)")
    versions = {}
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        value = mapping.get(name, default)
        if not isinstance(value, str) or value not in TLS_VERSIONS:
            read.problem(name, f"'{name}' must be one of {', '.join(TLS_VERSIONS)}, not "
                               f"{describe(value)}" + ("; TLS 1.0 and 1.1 are not offered"
                                                       if value in ("TLS10", "TLS11") else ""))
            value = default
        versions[name] = value
    if TLS_VERSIONS.index(versions["min_version"]) > TLS_VERSIONS.index(versions["max_version"]):
        read.problem("min_version", f"min_version {versions['min_version']} is above "
                                    f"max_version {versions['max_version']}")
    if "prefer_server_cipher_suites" in mapping \
            and not isinstance(mapping["prefer_server_cipher_suites"], bool):
        read.problem("prefer_server_cipher_suites",
                     "'prefer_server_cipher_suites' must be true or false")
    if read.failed or cert is None or key is None:
        return None
    config = TLSServerConfig(cert_file=cert, key_file=key, client_auth_type=auth,
                             client_ca_file=ca, **versions)
    # The files exist; whether they are a usable pair is known now, not at the first client.
    problem = check_tls(config) if check_tls is not None else None
    if problem is not None:
        read.problem("cert_file", problem)
        return None
    return config


def _client_auth(read: Reader) -> str:
    auth = read.mapping.get("client_auth_type", "NoClientCert")
    if isinstance(auth, str) and auth in CLIENT_AUTH_TYPES:
        return auth
    go_only = auth in ("RequestClientCert", "RequireAnyClientCert")
    read.problem("client_auth_type",
                 f"'client_auth_type' must be one of {', '.join(CLIENT_AUTH_TYPES)}, not "
                 f"{describe(auth)}{suggest(auth, CLIENT_AUTH_TYPES)}"
                 + ("; certwatch does not offer Go's RequestClientCert or "
                    "RequireAnyClientCert: a client certificate is either verified or "
                    "not asked for" if go_only else ""))
    return "NoClientCert"


def _read_users(read: Reader | None) -> tuple[tuple[str, bytes], ...]:
    if read is None:
        return ()
    users = []
    for user, hashed in read.mapping.items():
        if not isinstance(user, str) or not user or ":" in user or not user.isprintable():
            # A user name with ':' cannot be sent in a Basic header. The value is not shown.
            read.problem(user, f"user name {describe(user)} must be non-empty printable text "
                               "without ':'")
            continue
        # Never echo the value: it is a hash, or worse, a password written by mistake.
        if not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed):
            read.problem(user,
                         f"the password of '{user}' is not a bcrypt hash (expected 60 "
                         "characters starting with $2a$, $2b$ or $2y$ and a cost from 04 to "
                         "31; make one with `htpasswd -nBC 12 \"\" | tr -d ':\\n'` or "
                         "`python -c 'import bcrypt,getpass; print(bcrypt.hashpw("
                         "getpass.getpass().encode(), bcrypt.gensalt(12)).decode())'`); "
                         "quote it in YAML")
            continue
        users.append((user, hashed.encode("ascii")))
    return tuple(users)


def _read_http(read: Reader | None) -> HTTPServerConfig:
    if read is None:
        return HTTPServerConfig()
    read.unknown_keys(_HTTP_KEYS)
    mapping = read.mapping
    if "http2" in mapping and not isinstance(mapping["http2"], bool):
        read.problem("http2", "'http2' must be true or false (certwatch serves HTTP/1.1 "
                              "either way)")
    return HTTPServerConfig(headers=_read_headers(read), open_paths=_read_open_paths(read))


def _read_headers(read: Reader) -> tuple[tuple[str, str], ...]:
    raw = read.mapping.get("headers")
    if raw is None:
        return ()
    where = f"{read.where}.headers"
    if not isinstance(raw, dict):
        read.problems.add(read.line("headers"), where, f"must be a mapping, not {describe(raw)}")
        return ()
    headers: list[tuple[str, str]] = []
    for name, value in raw.items():
        line = line_of(raw, name)
        if not isinstance(name, str) or name not in HEADERS:
            read.problems.add(line, where, f"unknown header {describe(name)}"
                                           f"{suggest(name, HEADERS)}; known: {', '.join(HEADERS)}")
        elif value is None or value == "":
            continue  # exporter-toolkit: blank means unset
        elif not isinstance(value, str) or not _HEADER_VALUE.match(value):
            read.problems.add(line, where, f"'{name}' must be one line of printable ASCII, "
                                           f"not {describe(value)}")
        elif name == "X-Frame-Options" and value.lower() not in ("deny", "sameorigin"):
            read.problems.add(line, where, f"'X-Frame-Options' must be deny or sameorigin, "
                                           f"not {describe(value)}")
        elif name == "X-Content-Type-Options" and value.lower() != "nosniff":
            read.problems.add(line, where, f"'X-Content-Type-Options' must be nosniff, "
                                           f"not {describe(value)}")
        else:
            headers.append((name, value))
    return tuple(headers)


def _read_open_paths(read: Reader) -> frozenset[str]:
    raw = read.mapping.get("open_paths") or []
    if not isinstance(raw, list):
        read.problem("open_paths", f"'open_paths' must be a list of paths, not {describe(raw)}")
        return frozenset()
    open_paths: set[str] = set()
    for item in raw:
        if not isinstance(item, str) or item not in ROUTES:
            read.problem("open_paths", f"'open_paths' entry {describe(item)} is not one of "
                                       f"certwatch's paths{suggest(item, ROUTES)}; known: "
                                       f"{', '.join(ROUTES)}")
        else:
            open_paths.add(item)
    return frozenset(open_paths)
