"""What an inventory entry of a source other than the wire selects: values, no I/O.

A `files:` entry names paths, directories and globs (:class:`FileSelection`); a
`kubernetes:` entry names namespaces, a label selector and the kinds of object to read
(:class:`KubernetesSelection`); the top-level `kubernetes:` section says how to reach
the API (:class:`KubernetesAccess`). The sources in :mod:`certwatch.sources` read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CERTIFICATE_SUFFIXES", "FileSelection", "KubernetesAccess", "KubernetesSelection",
           "SERVICE_ACCOUNT", "Selection"]

# The files of a directory that are read: the usual names of certificate files. (A glob
# or a plain path is read whatever its name.)
CERTIFICATE_SUFFIXES = (".pem", ".crt", ".cer", ".der", ".p12", ".pfx")
# Where the kubelet puts the pod's service account (token, CA, namespace).
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True, slots=True)
class FileSelection:
    """The files of one entry: each pattern is an absolute path, a directory (its files
    with a certificate suffix) or a glob (`*`, `?`, `[...]` within a path segment)."""

    patterns: tuple[str, ...]
    password: str | None = field(default=None, repr=False)  # PKCS#12; never shown
    key_file: Path | None = None  # the private key of the (single) certificate file


@dataclass(frozen=True, slots=True)
class KubernetesSelection:
    """The objects of one entry. Every certificate in them is a target; Ingresses and
    Gateways with the opt-in annotation become TLS endpoints of their own."""

    namespaces: tuple[str, ...] = ()  # empty: every namespace
    label_selector: str | None = None
    tls_secrets: bool = True  # Secrets of type kubernetes.io/tls: tls.crt, checked with tls.key
    secret_keys: tuple[str, ...] = ()  # keys of Opaque Secrets (CA bundles, say)
    configmap_keys: tuple[str, ...] = ()  # keys of ConfigMaps
    ingresses: bool = False
    gateways: bool = False

    @property
    def reads_certificates(self) -> bool:
        return self.tls_secrets or bool(self.secret_keys) or bool(self.configmap_keys)


@dataclass(frozen=True, slots=True)
class KubernetesAccess:
    """How to reach the API server: by default as the pod's service account."""

    api_server: str | None = None  # None: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
    token_file: Path = SERVICE_ACCOUNT / "token"  # re-read often: the kubelet rotates it
    ca_file: Path | None = SERVICE_ACCOUNT / "ca.crt"
    timeout: float = 10.0  # seconds for each request (a watch: for each event to start)
    watch_timeout: float = 300.0  # the server ends each watch after this; then it resumes
    resync: float = 3600.0  # a full list at least this often, whatever the watches said
    backoff_initial: float = 1.0  # after a failure, first wait this long, doubling ...
    backoff_max: float = 60.0  # ... up to this
    annotation: str = "certwatch.io/probe"  # Ingresses/Gateways opt in with "true"


Selection = FileSelection | KubernetesSelection
