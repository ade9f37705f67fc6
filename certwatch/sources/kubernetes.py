"""The Kubernetes source: certificates in Secrets and ConfigMaps, and the TLS endpoints
that Ingresses and Gateways name.

A `kubernetes:` entry is read through one list+watch per (resource, namespace, label
selector) it needs (a :class:`Reflector`): a list, then watches from its
resourceVersion, a fresh list after `410 Gone` and at least every `resync`; a failure
(refused, timeout, garbage) waits with a capped, doubling backoff and keeps the last
good view. Nothing here stops the daemon: the health says how the API fares.

Each certificate found is a target at "secret/<namespace>/<name>/<key>#<position>" (or
"configmap/..."); a Secret of type kubernetes.io/tls has its tls.key compared with its
certificate. An Ingress (or Gateway) with the annotation `certwatch.io/probe: "true"`
names TLS endpoints (its TLS hosts on 443, the Gateway's HTTPS and TLS listeners), which
the wire probes as endpoints of their own.

Only what is needed of each object is kept (the chosen keys, the TLS hosts), never the
whole Secret.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

from certwatch.core.atrest import issuer_path, key_check
from certwatch.core.inventory import Endpoint
from certwatch.core.observation import KeyCheck, Observation, ProbeError, Target
from certwatch.core.selections import KubernetesAccess, KubernetesSelection
from certwatch.core.vocabulary import ErrorKind, Phase, Reason, SourceKind
from certwatch.sources import Listener, SourceHealth
from certwatch.sources.files import DecodeError, decode
from certwatch.sources.kubeapi import ApiError, KubeAPI

__all__ = ["KubernetesSource", "Spec", "specs_of"]

log = logging.getLogger(__name__)

TLS_SECRET = "kubernetes.io/tls"
_KIND = {"secrets": "secret", "configmaps": "configmap", "ingresses": "ingress",
         "gateways": "gateway"}
_PATHS = {"secrets": "/api/v1", "configmaps": "/api/v1",
          "ingresses": "/apis/networking.k8s.io/v1",
          "gateways": "/apis/gateway.networking.k8s.io/v1"}


@dataclass(frozen=True, slots=True)
class Spec:
    """One list+watch: a resource, in one namespace or all, with selectors."""

    resource: str
    namespace: str | None
    label_selector: str | None
    field_selector: str | None = None

    @property
    def path(self) -> str:
        where = f"/namespaces/{self.namespace}" if self.namespace else ""
        return f"{_PATHS[self.resource]}{where}/{self.resource}"

    @property
    def params(self) -> dict[str, str]:
        params = {}
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        return params


def specs_of(selection: KubernetesSelection) -> list[Spec]:
    specs = []
    for namespace in selection.namespaces or (None,):
        for wanted, resource, field in (
                (selection.tls_secrets, "secrets", f"type={TLS_SECRET}"),
                (bool(selection.secret_keys), "secrets", "type=Opaque"),
                (bool(selection.configmap_keys), "configmaps", None),
                (selection.ingresses, "ingresses", None),
                (selection.gateways, "gateways", None)):
            if wanted:
                specs.append(Spec(resource, namespace, selection.label_selector, field))
    return specs


# --- what is kept of an object ----------------------------------------------------------

Kept = dict[str, Any]  # "data": {key: bytes} | "hosts": [(host, port)], plus "type"


def _decoded(value: Any) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True) if isinstance(value, str) else None
    except (binascii.Error, ValueError):
        return None


def _opted_in(obj: Mapping[str, Any], annotation: str) -> bool:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return isinstance(annotations, dict) and str(annotations.get(annotation, "")).lower() == "true"


def keep(resource: str, obj: Mapping[str, Any], access: KubernetesAccess) -> Kept | None:
    """The part of an object certwatch uses (None: nothing of it)."""
    if resource == "secrets":
        data = obj.get("data") or {}
        if not isinstance(data, dict):
            return None
        return {"type": obj.get("type"), "data": {k: _decoded(v) for k, v in data.items()}}
    if resource == "configmaps":
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items() if isinstance(v, str)}
        data.update({k: _decoded(v) for k, v in (obj.get("binaryData") or {}).items()})
        return {"data": data}
    if not _opted_in(obj, access.annotation):
        return None
    spec = obj.get("spec") or {}
    hosts: list[tuple[str, int]] = []
    if resource == "ingresses":
        for tls in spec.get("tls") or []:
            hosts += [(h, 443) for h in (tls or {}).get("hosts") or [] if isinstance(h, str)]
    else:
        for listener in spec.get("listeners") or []:
            listener = listener or {}
            if listener.get("protocol") in ("HTTPS", "TLS") and isinstance(listener.get("hostname"), str) \
                    and isinstance(listener.get("port"), int):
                hosts.append((listener["hostname"], listener["port"]))
    return {"hosts": [(h, p) for h, p in hosts if "*" not in h]}


def _object_key(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return f"{metadata.get('namespace') or '-'}/{metadata.get('name') or '?'}"


# --- one list+watch ---------------------------------------------------------------------


class Reflector:
    """Keeps one Spec's objects current: list, watch, relist on 410 and every resync."""

    def __init__(self, spec: Spec, api: KubeAPI, on_change: Any) -> None:
        self.spec, self._api, self._on_change = spec, api, on_change
        self.view: dict[str, Kept] | None = None  # None until the first list
        self.error: str = ""  # why the latest attempt failed; "" while healthy
        self.last_success: datetime | None = None
        self.version = ""
        self.task: asyncio.Task[None] | None = None

    async def list_once(self) -> None:
        items, version = await self._api.list(self.spec.path, self.spec.params)
        access = self._api.access
        view = {}
        for obj in items:
            kept = keep(self.spec.resource, obj, access)
            if kept is not None:
                view[_object_key(obj)] = kept
        self._ok()
        changed = view != self.view
        self.view = view
        self.version = version
        if changed:
            self._on_change(self)

    def _ok(self) -> None:
        self.error = ""
        self.last_success = datetime.now(timezone.utc)

    async def run(self) -> None:
        access, backoff = self._api.access, self._api.access.backoff_initial
        while True:
            try:
                await self.list_once()
                backoff = access.backoff_initial
                resync_at = time.monotonic() + access.resync
                while time.monotonic() < resync_at:
                    await self._watch()
            except ApiError as exc:
                if exc.kind == "gone":
                    log.info("kubernetes watch expired (410 Gone); listing again",
                             extra={"path": self.spec.path})
                    continue
                if exc.kind == "not_found" and self.spec.resource == "gateways":
                    self._absent()  # the Gateway API is not installed: nothing to watch
                else:
                    self._failed(str(exc))
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, access.backoff_max)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never stop: report and try again
                log.exception("kubernetes reflector failed")
                self._failed(f"internal: {type(exc).__name__}: {exc}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, access.backoff_max)

    def _absent(self) -> None:
        self._ok()
        if self.view != {}:
            self.view = {}
            self._on_change(self)

    def _failed(self, why: str) -> None:
        if why != self.error:
            log.warning("kubernetes API failed; keeping the last view",
                        extra={"path": self.spec.path, "error": why})
        self.error = why

    async def _watch(self) -> None:
        access = self._api.access
        async for event in self._api.watch(self.spec.path, self.spec.params, self.version):
            obj = event["object"]
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if version:
                self.version = str(version)
            self._ok()
            kind = event.get("type")
            if kind == "BOOKMARK" or self.view is None:
                continue
            key = _object_key(obj)
            kept = None if kind == "DELETED" else keep(self.spec.resource, obj, access)
            if self.view.get(key) != kept:
                if kept is None:
                    self.view.pop(key, None)
                else:
                    self.view[key] = kept
                self._on_change(self)


# --- the source -------------------------------------------------------------------------


class KubernetesSource:
    """Observes `kubernetes:` entries from the reflectors' views; in the daemon it keeps
    one reflector per Spec the entries need, and lists on demand otherwise (`check`)."""

    def __init__(self, access: KubernetesAccess | None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.access = access or KubernetesAccess()
        self._api = KubeAPI(self.access, environ)
        self._reflectors: dict[Spec, Reflector] = {}
        self._entries: dict[str, Endpoint] = {}
        self._listener: Listener | None = None
        self._once: dict[Spec, asyncio.Task[Reflector]] = {}  # lists for `check`

    # --- observing ---------------------------------------------------------------------

    async def _reflector(self, spec: Spec) -> Reflector:
        if spec in self._reflectors:
            return self._reflectors[spec]
        if spec not in self._once:
            self._once[spec] = asyncio.ensure_future(self._list_once(spec))
        return await asyncio.shield(self._once[spec])

    async def _list_once(self, spec: Spec) -> Reflector:
        reflector = Reflector(spec, self._api, lambda _: None)
        try:
            await reflector.list_once()
        except ApiError as exc:
            if exc.kind == "not_found" and spec.resource == "gateways":
                reflector._absent()
            else:
                reflector.error = str(exc)
        return reflector

    async def observe(self, endpoint: Endpoint) -> tuple[Observation, ...]:
        started_at, start = datetime.now(timezone.utc), time.monotonic()
        selection = endpoint.selection
        assert isinstance(selection, KubernetesSelection)
        observations: list[Observation] = []
        unready = []
        for spec in specs_of(selection):
            if spec.resource not in ("secrets", "configmaps"):
                continue
            reflector = await self._reflector(spec)
            if reflector.view is None:
                unready.append(reflector.error or "not listed yet")
                continue
            for name, kept in sorted(reflector.view.items()):
                observations += _object_observations(endpoint, spec, name, kept, started_at)
        if unready:  # nothing is known of some objects: say why, once
            error = ProbeError(ErrorKind.SOURCE, Phase.READ, "the Kubernetes API has not "
                               f"listed the objects yet: {unready[0]}")
            observations.append(Observation(Target(endpoint, None), started_at,
                                            time.monotonic() - start, error=error))
        return tuple(observations)

    async def discover(self, endpoints: Sequence[Endpoint]) -> tuple[Endpoint, ...]:
        """The TLS endpoints the entries' Ingresses and Gateways name, listed now."""
        for entry in endpoints:
            assert isinstance(entry.selection, KubernetesSelection)
            for spec in specs_of(entry.selection):
                await self._reflector(spec)
        return self._discovered(endpoints, {**{s: t.result() for s, t in self._once.items()
                                               if t.done()}, **self._reflectors})

    # --- following, in the daemon --------------------------------------------------------

    def follow(self, endpoints: Sequence[Endpoint], listener: Listener) -> None:
        self._entries = {e.name: e for e in endpoints}
        self._listener = listener
        wanted = {spec for e in endpoints if isinstance(e.selection, KubernetesSelection)
                  for spec in specs_of(e.selection)}
        for spec in list(self._reflectors):
            if spec not in wanted:
                task = self._reflectors.pop(spec).task
                if task is not None:
                    task.cancel()
        for spec in wanted - set(self._reflectors):
            reflector = Reflector(spec, self._api, self._changed)
            reflector.task = asyncio.get_running_loop().create_task(reflector.run())
            self._reflectors[spec] = reflector

    def _changed(self, reflector: Reflector) -> None:
        if self._listener is None:
            return
        if reflector.spec.resource in ("ingresses", "gateways"):
            self._listener.discovered()
            return
        for name, entry in self._entries.items():
            if isinstance(entry.selection, KubernetesSelection) \
                    and reflector.spec in specs_of(entry.selection):
                self._listener.changed(name)

    def discovered(self) -> tuple[Endpoint, ...]:
        return self._discovered(list(self._entries.values()), self._reflectors)

    def _discovered(self, entries: Sequence[Endpoint],
                    reflectors: Mapping[Spec, Reflector]) -> tuple[Endpoint, ...]:
        found: dict[str, Endpoint] = {}
        for entry in entries:
            assert isinstance(entry.selection, KubernetesSelection)
            for spec in specs_of(entry.selection):
                reflector = reflectors.get(spec)
                if spec.resource in ("secrets", "configmaps") or reflector is None:
                    continue
                kind = _KIND[spec.resource]
                for name, kept in sorted((reflector.view or {}).items()):
                    for host, port in kept["hosts"]:
                        endpoint = _discovered_endpoint(entry, host, port, f"{kind} {name}")
                        found.setdefault(endpoint.name, endpoint)
        return tuple(found.values())

    def health(self) -> SourceHealth:
        reflectors = list(self._reflectors.values())
        failing = [r for r in reflectors if r.error]
        times = [r.last_success for r in reflectors if r.last_success is not None]
        last = min(times) if times and len(times) == len(reflectors) else None
        return SourceHealth(not failing, last, failing[0].error if failing else "")

    async def close(self) -> None:
        tasks = [r.task for r in self._reflectors.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._reflectors.clear()
        await self._api.close()


def _discovered_endpoint(entry: Endpoint, host: str, port: int, origin: str) -> Endpoint:
    """A TLS endpoint named by an Ingress or a Gateway: the entry's settings, its own
    host (checked against the certificate) and the namespace as a label."""
    namespace = origin.split(" ", 1)[1].split("/", 1)[0]
    labels = dict(entry.labels)
    labels.setdefault("namespace", namespace)
    return dataclasses.replace(
        entry, name=f"{entry.name}:{host}:{port}", host=host, port=port, protocol="tls",
        server_name=host, source=SourceKind.TLS, selection=None, origin=origin,
        labels=tuple(sorted(labels.items())))


def _object_observations(endpoint: Endpoint, spec: Spec, name: str, kept: Kept,
                         started_at: datetime) -> list[Observation]:
    selection = endpoint.selection
    assert isinstance(selection, KubernetesSelection)
    kind = _KIND[spec.resource]
    if spec.resource == "configmaps":
        keys = selection.configmap_keys
    elif kept.get("type") == TLS_SECRET:
        keys = ("tls.crt",)
    else:
        keys = selection.secret_keys
    observations = []
    for key in keys:
        if key not in kept["data"]:
            continue
        where = f"{kind}/{name}/{key}"
        data = kept["data"][key]
        try:
            if data is None:
                raise DecodeError(ErrorKind.NOT_A_CERTIFICATE, "not base64")
            decoded = decode(data, key, None)
        except DecodeError as exc:
            error = ProbeError(exc.kind, Phase.DECODE, f"{where}: {exc}")
            observations.append(Observation(Target(endpoint, None, where), started_at, 0.0,
                                            error=error))
            continue
        certs = decoded.certs
        ders = [c.public_bytes(Encoding.DER) for c in certs]
        checked = None
        if key == "tls.crt" and kept["data"].get("tls.key"):
            checked = _tls_key_check(certs[0], kept["data"]["tls.key"], f"{kind}/{name}/tls.key")
        observations += [Observation(Target(endpoint, None, f"{where}#{i}"), started_at, 0.0,
                                     chain=tuple(ders[j] for j in issuer_path(i, certs)),
                                     key_check=checked if i == 0 else None)
                         for i in range(len(certs))]
    return observations


def _tls_key_check(cert: x509.Certificate, data: bytes, where: str) -> KeyCheck:
    try:
        key = load_pem_private_key(data, None)
    except (ValueError, TypeError) as exc:
        return KeyCheck(where, Reason.KEY_UNREADABLE, f"{where} cannot be decoded: {exc}")
    return key_check(cert, key, where)
