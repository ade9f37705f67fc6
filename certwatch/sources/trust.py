"""Trust stores from files: the operating system's roots and an endpoint's `ca_file`.

The shell part of verification: it reads the files once per configuration and hands
:class:`~certwatch.core.verify.TrustStore` values to the pure core.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from cryptography import x509

from certwatch.config.files import PEM_FILE, read_bounded
from certwatch.core.inventory import Endpoint
from certwatch.core.verify import TrustStore
from certwatch.core.x509 import pem_certificates

__all__ = ["TrustStores", "load_trust_store", "read_pem_certificates", "system_roots"]

log = logging.getLogger(__name__)


def read_pem_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file (a regular file within PEM_FILE's cap; OSError
    otherwise); one unreadable block does not spoil the rest."""
    certs, problems = pem_certificates(read_bounded(path, PEM_FILE))
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
    """Trust stores by (system roots?, ca_file), each loaded once."""

    def __init__(self) -> None:
        self._stores: dict[tuple[bool, Path | None], TrustStore] = {}

    def for_endpoint(self, endpoint: Endpoint) -> TrustStore:
        key = (endpoint.system_trust, endpoint.ca_file)
        if key not in self._stores:
            self._stores[key] = load_trust_store(system=key[0], ca_file=key[1])
        return self._stores[key]
