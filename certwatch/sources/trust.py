"""Trust stores from files: the operating system's roots and an endpoint's `ca_file`.

The shell part of verification: it reads the files once per configuration and hands
:class:`~certwatch.core.verify.TrustStore` values to the pure core.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Callable

from cryptography import x509

from certwatch.config.files import PEM_FILE, read_bounded
from certwatch.core.inventory import Endpoint
from certwatch.core.verify import TrustStore
from certwatch.core.x509 import pem_certificates, sha256_hex

__all__ = ["TrustStores", "load_trust_store", "read_pem_certificates", "system_roots"]

log = logging.getLogger(__name__)


def read_pem_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file of roots (a regular file within PEM_FILE's cap;
    OSError otherwise); one unreadable block does not spoil the rest."""
    certs, problems = pem_certificates(read_bounded(path, PEM_FILE), roots=True)
    for problem in problems:
        log.warning("skipping an unreadable certificate in %s: %s", path, problem)
    return certs


def system_roots() -> list[x509.Certificate]:
    """The operating system's trusted roots (certifi's bundle where there is none)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return read_pem_certificates(Path(candidate))
    try:
        import certifi  # a dependency of httpx, so always there
    except ImportError:  # pragma: no cover
        return []
    return read_pem_certificates(Path(certifi.where()))


def load_trust_store(*, system: bool, ca_file: Path | None) -> TrustStore:
    roots = system_roots() if system else []
    if ca_file is not None:
        roots.extend(read_pem_certificates(ca_file))
    return TrustStore.of(roots)


class TrustStores:
    """Trust stores by (system roots?, ca_file), each loaded once; the system's roots
    are read once for all of them (`system` is injectable, so tests can make a root
    "public")."""

    def __init__(self, system: Callable[[], list[x509.Certificate]] = system_roots) -> None:
        self._stores: dict[tuple[bool, Path | None], TrustStore] = {}
        self._load_system = system
        self._system: tuple[x509.Certificate, ...] | None = None
        self._public: frozenset[str] | None = None

    def _system_roots(self) -> tuple[x509.Certificate, ...]:
        if self._system is None:
            self._system = tuple(self._load_system())
        return self._system

    def for_endpoint(self, endpoint: Endpoint) -> TrustStore:
        key = (endpoint.system_trust, endpoint.ca_file)
        if key not in self._stores:
            roots = list(self._system_roots()) if endpoint.system_trust else []
            if endpoint.ca_file is not None:
                roots.extend(read_pem_certificates(endpoint.ca_file))
            self._stores[key] = TrustStore.of(roots)
        return self._stores[key]

    def public_roots(self, endpoint: Endpoint) -> frozenset[str]:
        """SHA-256 fingerprints of the publicly trusted roots (the system's) for an
        endpoint that trusts them; an endpoint with `system_trust: false` trusts only
        its own roots, so nothing it sees is public."""
        if not endpoint.system_trust:
            return frozenset()
        if self._public is None:
            self._public = frozenset(sha256_hex(root) for root in self._system_roots())
        return self._public
