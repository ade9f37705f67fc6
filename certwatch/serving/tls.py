"""The HTTP server's TLS: a context built from the web configuration's files, and rotation.

:class:`ServerTLS` owns the HTTP server's SSLContext and follows the certificate files,
so a renewed certificate is served without a restart.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certwatch.config.files import PEM_FILE, check_file, read_bounded
from certwatch.config.web import TLSServerConfig

__all__ = ["ServerTLS", "TLSLoadError", "build_server_context", "log_serving", "tls_problem"]

log = logging.getLogger(__name__)

CLIENT_AUTH_MODES: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}


class TLSLoadError(ValueError):
    """The certificate, key or client CA files cannot be used; the message names them."""


def tls_problem(config: TLSServerConfig) -> str | None:
    """Why the files cannot serve TLS, or None (the configuration kit's `check_tls`)."""
    try:
        build_server_context(config)
    except TLSLoadError as exc:
        return str(exc)
    return None


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
    for name, path in (("key_file", config.key_file), ("client_ca_file", config.client_ca_file)):
        try:  # OpenSSL reads these by name: a FIFO would hang it, /dev/zero fill memory
            if path is not None:
                check_file(path, PEM_FILE)
        except OSError as exc:
            raise TLSLoadError(f"cannot read '{name}' {path}: {exc.strerror or exc}") from None
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
    context.verify_mode = CLIENT_AUTH_MODES[config.client_auth_type]
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
        data = read_bounded(cert_file, PEM_FILE)
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
    result: list[tuple[int, int, int, int, int] | None] = []
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
