"""The inventory's keys for the sources other than the wire: `files:`, `kubernetes:`.

An entry with `files:` is read by the files source, one with `kubernetes:` by the
Kubernetes source; any other entry is a TLS endpoint. The top-level `kubernetes:`
section says how to reach the API. Every problem has its line, as everywhere.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from certwatch.config.kit import Problems, Reader, describe
from certwatch.config.yamlfile import Mapping as LineMapping
from certwatch.core.selections import FileSelection, KubernetesAccess, KubernetesSelection
from certwatch.core.vocabulary import SourceKind

__all__ = ["AT_REST_KEYS", "FILE_KEYS", "KUBERNETES_KEYS", "read_file_selection",
           "read_kubernetes_access", "read_kubernetes_selection", "source_of"]

# Keys every entry at rest takes (the rest of an endpoint's keys are the wire's).
AT_REST_KEYS = ("name", "warn_days", "critical_days", "verify", "system_trust", "ca_file",
                "labels", "interval", "retry_interval", "timeout")
FILE_KEYS = ("files", "pkcs12_password_env", "pkcs12_password_file", "key_file")
KUBERNETES_KEYS = ("kubernetes",)
_SELECTION_KEYS = ("namespaces", "label_selector", "tls_secrets", "secret_keys",
                   "configmap_keys", "ingresses", "gateways")
_ACCESS_KEYS = ("api_server", "token_file", "ca_file", "timeout", "watch_timeout", "resync",
                "backoff", "annotation")
# RFC 1123 labels (namespaces), and the keys of a Secret or ConfigMap.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_SELECTOR = re.compile(r"^[-A-Za-z0-9_./!=,() ]{1,1000}$")


def source_of(raw: Mapping[Any, Any]) -> str:
    """The source an entry names by its keys."""
    if "files" in raw:
        return SourceKind.FILE
    if "kubernetes" in raw:
        return SourceKind.KUBERNETES
    return SourceKind.TLS


def _strings(read: Reader, key: str, *, single: bool = False) -> list[str]:
    value = read.mapping.get(key)
    if value is None:
        return []
    items = [value] if isinstance(value, str) or (single and not isinstance(value, list)) else value
    if not isinstance(items, list) or not items or not all(
            isinstance(i, str) and i.strip() for i in items):
        read.problem(key, f"'{key}' must be a string or a list of strings, not {describe(value)}")
        return []
    return [i.strip() for i in items]


def read_file_selection(read: Reader) -> FileSelection | None:
    patterns = []
    for pattern in _strings(read, "files"):
        if "**" in pattern:
            read.problem("files", f"'files': '**' is not supported (one level per '*'): "
                                  f"{describe(pattern)}")
            continue
        patterns.append(str(read.resolve(pattern)))
    if not patterns and not read.failed:
        read.problem("files", "'files' names no file")
    password = read.secret("pkcs12_password", required=False, what="the PKCS#12 password")
    key_file = read.path("key_file", None)
    if key_file is not None and (len(patterns) != 1 or any(c in patterns[0] for c in "*?[")):
        read.problem("key_file", "'key_file' goes with a single certificate file in 'files'")
    return FileSelection(tuple(patterns), password, key_file) if patterns else None


def read_kubernetes_selection(read: Reader) -> KubernetesSelection | None:
    raw = read.mapping.get("kubernetes")
    if raw is None:
        raw = LineMapping()
    if not isinstance(raw, dict):
        read.problem("kubernetes", f"'kubernetes' must be a mapping, not {describe(raw)}")
        return None
    inner = Reader(raw, f"{read.where} kubernetes", read.problems, read.base)
    inner.unknown_keys(_SELECTION_KEYS)
    namespaces = _strings(inner, "namespaces")
    for namespace in namespaces:
        if not _DNS_LABEL.match(namespace):
            inner.problem("namespaces", f"{describe(namespace)} is not a namespace name")
    selector = inner.string("label_selector")
    if selector is not None and not _SELECTOR.match(selector):
        inner.problem("label_selector", f"'label_selector' is not a label selector: "
                                        f"{describe(selector)}")
    keys = {}
    for key in ("secret_keys", "configmap_keys"):
        keys[key] = _strings(inner, key)
        for name in keys[key]:
            if not _DATA_KEY.match(name):
                inner.problem(key, f"{describe(name)} is not a key of a Secret or ConfigMap")
    selection = KubernetesSelection(
        namespaces=tuple(dict.fromkeys(namespaces)), label_selector=selector,
        tls_secrets=inner.boolean("tls_secrets", True),
        secret_keys=tuple(keys["secret_keys"]), configmap_keys=tuple(keys["configmap_keys"]),
        ingresses=inner.boolean("ingresses", False), gateways=inner.boolean("gateways", False))
    if not (selection.reads_certificates or selection.ingresses or selection.gateways):
        inner.problem(None, "reads nothing: turn on tls_secrets, secret_keys, configmap_keys, "
                            "ingresses or gateways")
    return selection


def read_kubernetes_access(raw: Any, problems: Problems, base: Path) -> KubernetesAccess:
    fallback = KubernetesAccess()
    if raw is None:
        return fallback
    if not isinstance(raw, dict):
        problems.add(getattr(raw, "line", 0), "kubernetes", f"must be a mapping, not {describe(raw)}")
        return fallback
    read = Reader(raw, "kubernetes", problems, base)
    read.unknown_keys(_ACCESS_KEYS)
    server = read.string("api_server")
    if server is not None and not server.startswith(("https://", "http://")):
        read.problem("api_server", f"'api_server' must be an https URL, not {describe(server)}")
        server = None
    backoff = raw.get("backoff") or LineMapping()
    if not isinstance(backoff, dict):
        read.problem("backoff", "'backoff' must be a mapping of initial and maximum")
        backoff = LineMapping()
    wait = Reader(backoff, "kubernetes.backoff", problems, base)
    wait.unknown_keys(("initial", "maximum"))
    # Paths are not required to exist here: they are the pod's, and may be mounted later.
    token = read.string("token_file")
    ca = read.string("ca_file")
    return KubernetesAccess(
        api_server=server.rstrip("/") if server else None,
        token_file=read.resolve(token) if token else fallback.token_file,
        ca_file=read.resolve(ca) if ca else fallback.ca_file,
        timeout=read.duration("timeout", fallback.timeout, minimum=0.1, maximum=600),
        watch_timeout=read.duration("watch_timeout", fallback.watch_timeout, minimum=1,
                                    maximum=3600),
        resync=read.duration("resync", fallback.resync, minimum=10),
        backoff_initial=wait.duration("initial", fallback.backoff_initial, minimum=0.01,
                                      maximum=3600),
        backoff_max=wait.duration("maximum", fallback.backoff_max, minimum=0.01, maximum=3600),
        annotation=read.string("annotation") or fallback.annotation,
    )
