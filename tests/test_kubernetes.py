"""deploy/kubernetes/: every manifest checked offline.

* Built-in kinds against the Kubernetes OpenAPI schemas that `kubernetes-validate` ships
  (strict: an unknown or misspelt field is an error), at the oldest and the newest
  Kubernetes version it carries.
* prometheus-operator's ServiceMonitor and PrometheusRule are CRDs, absent from those
  schemas: checked structurally here, and the PrometheusRule's rules with `promtool`.
* The PrometheusRule embeds deploy/prometheus/rules.yml verbatim; when that file changes,
  regenerate it with
      CERTWATCH_UPDATE_PROMETHEUSRULE=1 .venv/bin/python -m pytest tests/test_kubernetes.py
* The pieces agree with each other, with the image and with certwatch itself: names,
  ports, labels, paths, the user, the inventory (loaded by certwatch's own loader).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

import certwatch
from certwatch.config import load_inventory

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
PROMETHEUSRULE = K8S / "prometheusrule.yaml"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The oldest and newest schemas kubernetes-validate carries (1.25 and 1.37 in its 1.37.0).
K8S_VERSIONS = sorted({all_versions()[0], all_versions()[-1]})
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
SELECTOR = {"app.kubernetes.io/name": "certwatch", "app.kubernetes.io/component": "monitor"}

Doc = dict[str, Any]


def _documents(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _manifests() -> dict[str, list[Doc]]:
    return {p.name: _documents(p) for p in sorted(K8S.glob("*.yaml"))}


def _by_kind() -> dict[str, Doc]:
    found: dict[str, Doc] = {}
    for name, docs in _manifests().items():
        for doc in docs:
            assert doc["kind"] not in found, f"two {doc['kind']} manifests ({name})"
            found[doc["kind"]] = doc
    return found


def pod_spec(kinds: dict[str, Doc]) -> Doc:
    spec: Doc = kinds["StatefulSet"]["spec"]["template"]["spec"]
    return spec


def _container(kinds: dict[str, Doc]) -> Doc:
    container: Doc
    (container,) = pod_spec(kinds)["containers"]
    return container


# --- schemas ------------------------------------------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_kinds_match_the_kubernetes_schemas(version: str) -> None:
    checked = []
    for name, docs in _manifests().items():
        for doc in docs:
            if doc["kind"] in CRD_KINDS or doc["apiVersion"].startswith("kustomize.config.k8s.io/"):
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = "/".join(str(p) for p in exc.path)
                pytest.fail(f"{name}: {doc['kind']} at {path or '/'}: {exc.message} (Kubernetes {version})")
            checked.append(doc["kind"])
    assert sorted(checked) == ["ClusterRole", "ClusterRoleBinding", "ConfigMap",
                               "PodDisruptionBudget", "Secret", "Service", "ServiceAccount",
                               "StatefulSet"]


def test_the_validator_rejects_a_broken_manifest() -> None:
    """The check above is not vacuous: a misspelt field and a wrong type both fail."""
    statefulset = _by_kind()["StatefulSet"]
    typo = yaml.safe_load(yaml.safe_dump(statefulset))
    typo["spec"]["template"]["spec"]["securityContext"]["runAsNonroot"] = True
    wrong_type = yaml.safe_load(yaml.safe_dump(statefulset))
    wrong_type["spec"]["replicas"] = "one"
    for doc in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = _documents(K8S / "kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == on_disk
    (image,) = kustomization["images"]
    assert image["name"] == _container(_by_kind())["image"]
    assert image["newTag"] == certwatch.__version__


def test_kustomize_renders_it() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (its kustomize renders the manifests)")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = {d["kind"]: d for d in yaml.safe_load_all(result.stdout) if d}
    assert set(rendered) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap",
                             "StatefulSet", "Service", "ServiceMonitor", "PrometheusRule",
                             "PodDisruptionBudget"}
    assert _container(rendered)["image"] == f"certwatch:{certwatch.__version__}"


# --- the pod: hardening, probes, volumes ----------------------------------------------

def test_pod_is_hardened() -> None:
    kinds = _by_kind()
    pod = pod_spec(kinds)
    container = _container(kinds)
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert uid, "the Dockerfile's USER is numeric"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid.group(1))
    assert pod["securityContext"]["runAsGroup"] == int(uid.group(2))
    assert pod["securityContext"]["fsGroup"] == int(uid.group(2))
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]) == {"requests", "limits"}


def test_probes_ports_and_service_agree() -> None:
    kinds = _by_kind()
    statefulset, service = kinds["StatefulSet"], kinds["Service"]
    container = _container(kinds)
    (port,) = container["ports"]
    assert port == {"name": "http-metrics", "containerPort": 9795, "protocol": "TCP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert statefulset["spec"]["selector"]["matchLabels"] == SELECTOR
    assert SELECTOR.items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["selector"] == SELECTOR
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"  # the StatefulSet's governing service
    (service_port,) = service["spec"]["ports"]
    assert service_port["name"] == "http-metrics" and service_port["port"] == 9795
    assert service_port["targetPort"] == port["name"]
    assert pod_spec(kinds)["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]
    # prometheus-operator names the scrape job after the Service; the rules expect it.
    if RULES.exists():
        assert f'job="{service["metadata"]["name"]}"' in RULES.read_text()


def test_volumes_are_where_certwatch_expects_them() -> None:
    kinds = _by_kind()
    pod = pod_spec(kinds)
    container = _container(kinds)
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {c["metadata"]["name"]: c for c in kinds["StatefulSet"]["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for mount in mounts.values():
        assert mount["name"] in volumes or mount["name"] in claims, mount
        assert "subPath" not in mount, "a subPath mount never sees ConfigMap/Secret updates"
    # The inventory: the whole ConfigMap as a directory, at the path the image's CMD reads.
    inventory = mounts["/etc/certwatch"]
    assert volumes[inventory["name"]]["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    assert "certwatch.yaml" in kinds["ConfigMap"]["data"]
    assert container["args"][:3] == ["run", "-c", "/etc/certwatch/certwatch.yaml"]
    # State: a volume claim per pod, where the image's VOLUME and state_dir are.
    state = mounts["/var/lib/certwatch"]
    assert state["name"] in claims and claims[state["name"]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert 'VOLUME ["/var/lib/certwatch"]' in (ROOT / "Dockerfile").read_text()
    # The sink credentials, optional both ways.
    secret = _documents(K8S / "secret.example.yaml")[0]
    (env_from,) = container["envFrom"]
    assert env_from["secretRef"] == {"name": secret["metadata"]["name"], "optional": True}
    files = volumes[mounts["/run/secrets/certwatch"]["name"]]["secret"]
    assert files["secretName"] == secret["metadata"]["name"] and files["optional"] is True


def test_inventory_loads_and_fits_the_pod(tmp_path: Path) -> None:
    kinds = _by_kind()
    path = tmp_path / "certwatch.yaml"
    path.write_text(kinds["ConfigMap"]["data"]["certwatch.yaml"])
    inventory = load_inventory(path)  # raises ConfigError, with lines, if invalid
    assert inventory.listen == ":9795" and inventory.demo is False
    assert inventory.endpoints
    alerts = getattr(inventory, "alerts", None)
    if alerts is not None:  # where the StatefulSet's volume is mounted
        assert str(alerts.state_dir) == "/var/lib/certwatch"


def test_secret_template_covers_the_credentials_the_inventory_names() -> None:
    secret = _documents(K8S / "secret.example.yaml")[0]
    keys = set(secret["stringData"])
    assert all(re.fullmatch(r"[A-Z_][A-Z0-9_]*", k) for k in keys), "keys become variable names"
    text = _by_kind()["ConfigMap"]["data"]["certwatch.yaml"]
    named = set(re.findall(r"_env: *([A-Z_][A-Z0-9_]*)", text))
    named |= set(re.findall(r"_file: */run/secrets/certwatch/([A-Za-z0-9_]+)", text))
    assert named and named <= keys


def test_rbac_grants_exactly_what_the_kubernetes_source_reads() -> None:
    from certwatch.sources.kubernetes import _PATHS

    kinds = _by_kind()
    role, binding = kinds["ClusterRole"], kinds["ClusterRoleBinding"]
    granted = {(group, resource): sorted(rule["verbs"]) for rule in role["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]}
    used = {("" if path == "/api/v1" else path.split("/")[2], resource)
            for resource, path in _PATHS.items()}
    assert set(granted) == used
    assert all(verbs == ["get", "list", "watch"] for verbs in granted.values())
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    (subject,) = binding["subjects"]
    assert (subject["kind"], subject["name"]) == ("ServiceAccount",
                                                  kinds["ServiceAccount"]["metadata"]["name"])
    # The token reaches the certwatch container alone, projected where the source reads it.
    pod = pod_spec(kinds)
    mounts = {m["mountPath"]: m for m in _container(kinds)["volumeMounts"]}
    volume = {v["name"]: v for v in pod["volumes"]}[
        mounts["/var/run/secrets/kubernetes.io/serviceaccount"]["name"]]
    sources = volume["projected"]["sources"]
    assert sources[0]["serviceAccountToken"]["path"] == "token"
    assert sources[1]["configMap"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]


# --- prometheus-operator CRDs ---------------------------------------------------------

def test_servicemonitor_selects_the_service() -> None:
    kinds = _by_kind()
    monitor, service = kinds["ServiceMonitor"], kinds["Service"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel",
                                    "targetLabels", "podTargetLabels", "sampleLimit"}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    for key in ("interval", "scrapeTimeout"):
        assert re.fullmatch(r"(\d+(ms|s|m|h))+", endpoint[key]), key
    assert "jobLabel" not in monitor["spec"], "the job must stay the Service's name"


_GROUP_KEYS = {"name", "interval", "rules", "limit", "partial_response_strategy", "query_offset",
               "labels"}
_RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


def test_prometheusrule_is_well_formed() -> None:
    rule = _by_kind()["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert SELECTOR.items() <= rule["metadata"]["labels"].items()
    assert set(rule["spec"]) == {"groups"}
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert names and len(names) == len(set(names))
    for group in rule["spec"]["groups"]:
        assert set(group) <= _GROUP_KEYS, group["name"]
        for entry in group["rules"]:
            assert set(entry) <= _RULE_KEYS and "expr" in entry, entry
            assert ("alert" in entry) != ("record" in entry), entry
            for key in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in entry.get(key, {}).values()), entry


def render_prometheusrule(rules_text: str) -> str:
    """The PrometheusRule: a header, then rules.yml from its `groups:` line on, indented
    under `spec:` (comments and formatting kept, so the two files read alike)."""
    start = re.search(r"^groups:", rules_text, re.MULTILINE)
    assert start, "rules.yml has no top-level groups:"
    body = textwrap.indent(rules_text[start.start():], "  ", lambda line: line.strip() != "")
    return _HEADER + "spec:\n" + body


_HEADER = """\
# prometheus-operator's form of deploy/prometheus/rules.yml: the same rules, verbatim.
# GENERATED from that file; do not edit here. After changing rules.yml, run
#   CERTWATCH_UPDATE_PROMETHEUSRULE=1 .venv/bin/python -m pytest tests/test_kubernetes.py
# (tests/test_kubernetes.py fails while the two differ).
#
# The operator's Prometheus loads only rules its ruleSelector matches; kube-prometheus-stack,
# for one, wants the label release: <its Helm release name> added here. The scrape job is
# named after the Service ("certwatch"), as CertwatchDown expects.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: certwatch
  labels:
    app.kubernetes.io/name: certwatch
    app.kubernetes.io/component: monitor
"""


def test_prometheusrule_embeds_the_rules_file() -> None:
    if not RULES.exists():
        pytest.skip("deploy/prometheus/rules.yml is not written yet")
    expected = render_prometheusrule(RULES.read_text())
    if os.environ.get("CERTWATCH_UPDATE_PROMETHEUSRULE") == "1":
        PROMETHEUSRULE.write_text(expected)
    assert yaml.safe_load(expected)["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    assert PROMETHEUSRULE.read_text() == expected, (
        "deploy/kubernetes/prometheusrule.yaml is out of date with deploy/prometheus/rules.yml; "
        "regenerate it: CERTWATCH_UPDATE_PROMETHEUSRULE=1 .venv/bin/python -m pytest "
        "tests/test_kubernetes.py")


def test_promtool_accepts_the_prometheusrule(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if IN_CI:
            pytest.fail("promtool is missing (Debian's prometheus package; .ci/run installs it)")
        pytest.skip("promtool is not installed")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": _by_kind()["PrometheusRule"]["spec"]["groups"]}))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"SUCCESS: \d+ rules found", result.stdout + result.stderr)


# --- shards and the HA variant ----------------------------------------------------------

HA = K8S / "ha"


def test_the_statefulset_is_sharded_by_the_pod_index() -> None:
    kinds = _by_kind()
    statefulset, container = kinds["StatefulSet"], _container(kinds)
    args = container["args"]
    count = int(args[args.index("--shard-count") + 1])
    assert statefulset["spec"]["replicas"] == count >= 2  # one pod per shard
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    (index,) = [e for e in container["env"] if e["name"] == "CERTWATCH_SHARD_INDEX"]
    assert index["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['apps.kubernetes.io/pod-index']"
    budget = kinds["PodDisruptionBudget"]
    assert budget["spec"]["selector"]["matchLabels"] == SELECTOR
    assert budget["spec"]["maxUnavailable"] == 1
    # Every pod is scraped: the ServiceMonitor's Service is headless, not-ready pods too.
    assert kinds["Service"]["spec"]["clusterIP"] == "None"
    assert kinds["Service"]["spec"]["publishNotReadyAddresses"] is True


def _merge(base: Any, patch: Any) -> Any:
    """A strategic merge patch as kustomize applies ours: mappings merge, null deletes,
    lists of named items merge by name, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = _merge(base.get(key), value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and all(
            isinstance(i, dict) and "name" in i for i in [*base, *patch]):
        by_name = {i["name"]: i for i in base}
        for item in patch:
            by_name[item["name"]] = _merge(by_name.get(item["name"], {}), item)
        return list(by_name.values())
    return patch


def _ha_kinds() -> dict[str, Doc]:
    kinds = _by_kind()
    component = _documents(HA / "kustomization.yaml")[0]
    assert component["kind"] == "Component"
    for entry in component["patches"]:
        (patch,) = _documents(HA / entry["path"])
        kind = patch["kind"]
        assert patch["metadata"]["name"] == kinds[kind]["metadata"]["name"]
        kinds[kind] = _merge(kinds[kind], patch)
    return kinds


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_ha_variant_matches_the_schemas(version: str) -> None:
    kinds = _ha_kinds()
    for kind in ("StatefulSet", "ConfigMap"):
        kubernetes_validate.validate(kinds[kind], version, strict=True)
    statefulset = kinds["StatefulSet"]
    assert statefulset["spec"]["replicas"] >= 2
    assert "--shard-count" not in _container(kinds)["args"]  # both watch everything
    assert "volumeClaimTemplates" not in statefulset["spec"]  # the state is in PostgreSQL
    mounts = {m["name"] for m in _container(kinds)["volumeMounts"]}
    assert mounts <= {v["name"] for v in pod_spec(kinds)["volumes"]}


def test_the_ha_inventory_names_a_shared_database(tmp_path: Path) -> None:
    kinds = _ha_kinds()
    path = tmp_path / "certwatch.yaml"
    path.write_text(kinds["ConfigMap"]["data"]["certwatch.yaml"])
    secret = _documents(K8S / "secret.example.yaml")[0]
    inventory = load_inventory(path, environ=dict(secret["stringData"]))
    assert inventory.state is not None and inventory.state.url.startswith("postgresql://")
    assert inventory.state.password == secret["stringData"]["CERTWATCH_DB_PASSWORD"]


def test_kustomize_renders_the_ha_variant(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (its kustomize renders the manifests)")
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    (tmp_path / "ha").mkdir()
    (tmp_path / "ha" / "kustomization.yaml").write_text(  # as kustomization.yaml says
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../deploy/kubernetes]\ncomponents: [../deploy/kubernetes/ha]\n")
    result = subprocess.run([kubectl, "kustomize", str(tmp_path / "ha")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = {d["kind"]: d for d in yaml.safe_load_all(result.stdout) if d}
    expected = _ha_kinds()
    assert rendered["StatefulSet"]["spec"]["replicas"] == expected["StatefulSet"]["spec"]["replicas"]
    assert "volumeClaimTemplates" not in rendered["StatefulSet"]["spec"]
    assert _container(rendered)["args"] == _container(expected)["args"]
    assert rendered["ConfigMap"]["data"] == expected["ConfigMap"]["data"]
