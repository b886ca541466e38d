"""The Helm chart and the deploy/ assets against real engines.

- `helm lint` with the real Helm engine (PyPI helm-sdkpy) for the default
  values and for the DPDK/SR-IOV values (charts/fulva/values-dpdk.yaml).
- Rendering: helm-sdkpy has no template-only action, so the chart is
  installed with the real Helm engine into kmock's Kubernetes API emulator
  on loopback, and the objects it created are read back. Every built-in
  kind is validated against the Kubernetes 1.33 schemas with
  kubernetes-validate; FulvaClusters against the generated CRD schema.
- deploy/examples/*.yaml validate against the CRD schemas (FulvaCluster, FulvaRebalance).
- The chart's copies (CRDs, rules, dashboards) equal their sources.
"""

import asyncio
import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import aiohttp.web
import helm_sdkpy
import jsonschema
import kmock
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts/fulva"
CRDS = {kind: yaml.safe_load((ROOT / f"crds/{kind.lower()}.yaml").read_text())
        for kind in ("FulvaCluster", "FulvaRebalance")}
K8S_VERSION = "1.33"
# Kinds whose schemas kubernetes-validate does not carry (CRDs of other projects).
FOREIGN = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
RESOURCES = [
    ("v1", "namespaces", "Namespace", False), ("v1", "secrets", "Secret", True),
    ("v1", "serviceaccounts", "ServiceAccount", True), ("v1", "services", "Service", True),
    ("v1", "configmaps", "ConfigMap", True), ("apps/v1", "deployments", "Deployment", True),
    ("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", False),
    ("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding", False),
    ("rbac.authorization.k8s.io/v1", "roles", "Role", True),
    ("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding", True),
    ("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", True),
    ("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget", True),
    ("apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition", False),
    ("monitoring.coreos.com/v1", "servicemonitors", "ServiceMonitor", True),
    ("monitoring.coreos.com/v1", "podmonitors", "PodMonitor", True),
    ("monitoring.coreos.com/v1", "prometheusrules", "PrometheusRule", True),
    ("fulva.io/v1alpha1", "fulvaclusters", "FulvaCluster", True),
]


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


DEFAULT_VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
DPDK_VALUES = yaml.safe_load((CHART / "values-dpdk.yaml").read_text())


def lint(chart: Path) -> dict:
    return asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration(namespace="fulva-system")).run(str(chart)))


def lint_errors(result: dict) -> list:
    # Helm's severities: 1 info, 2 warning, 3 error.
    return [m for m in result.get("Messages") or [] if m.get("Severity", 0) >= 2] + (result.get("Errors") or [])


def test_lint_passes_with_default_values():
    result = lint(CHART)
    assert result["TotalChartsLinted"] == 1
    assert not lint_errors(result), result


def test_lint_passes_with_dpdk_sriov_values():
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "fulva"
        shutil.copytree(CHART, chart)
        (chart / "values.yaml").write_text(yaml.safe_dump(deep_merge(DEFAULT_VALUES, DPDK_VALUES)))
        result = lint(chart)
    assert not lint_errors(result), result


def test_lint_catches_a_broken_template():
    # The lint really renders templates: a reference to a missing value fails it.
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "fulva"
        shutil.copytree(CHART, chart)
        (chart / "templates/broken.yaml").write_text("{{ .Values.no.such.value }}\n")
        assert lint_errors(lint(chart))


class Emulator(kmock.KubernetesEmulator):
    """kmock, plus acceptance of Helm's release record: Helm writes it as a
    protobuf Secret, which kmock cannot parse (the record is not under test)."""

    async def __call__(self, raw_request):
        if raw_request.content_type == "application/vnd.kubernetes.protobuf":
            await raw_request.read()
            return aiohttp.web.json_response({"apiVersion": "v1", "kind": "Secret", "metadata": {
                "name": "sh.helm.release.v1.fulva.v1", "namespace": "fulva-system", "resourceVersion": "1"}}, status=201)
        return await super().__call__(raw_request)


async def install(values: dict) -> list:
    """Installs the chart with the real Helm engine into an emulated API
    server; returns the objects it created."""
    async with Emulator() as k, kmock.Server(k) as server:
        k["get /version"] << {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"}
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        core = []
        for gv, plural, kind, namespaced in RESOURCES:
            group, _, version = gv.rpartition("/")
            k.resources[kmock.resource(group, version, plural)] = kmock.ResourceInfo(
                kind=kind, namespaced=namespaced, verbs=verbs)
            if not group:
                core.append({"name": plural, "kind": kind, "namespaced": namespaced, "verbs": verbs,
                             "singularName": kind.lower()})
        # kmock names the core group version "/v1"; client-go wants "v1".
        k["get /api/v1"] << {"apiVersion": "v1", "kind": "APIResourceList", "groupVersion": "v1", "resources": core}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(json.dumps({
                "apiVersion": "v1", "kind": "Config", "current-context": "k",
                "clusters": [{"name": "k", "cluster": {"server": str(server.url).rstrip("/")}}],
                "users": [{"name": "k", "user": {}}],
                "contexts": [{"name": "k", "context": {"cluster": "k", "user": "k", "namespace": "fulva-system"}}],
            }))
        try:
            config = helm_sdkpy.Configuration(namespace="fulva-system", kubeconfig=f.name)
            release = await helm_sdkpy.Install(config).run("fulva", str(CHART), values=values, wait=False, timeout=60)
            assert release["info"]["status"] == "deployed", release
        finally:
            os.unlink(f.name)
        return [obj.raw for obj in k.objects.values() if not obj.deleted]


def by_kind(objects: list) -> dict:
    out: dict = {}
    for obj in objects:
        out.setdefault(obj["kind"], []).append(obj)
    return out


def crd_schema(kind: str = "FulvaCluster") -> dict:
    return CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def validate_against_crd(obj: dict, kind: str = "FulvaCluster"):
    # The API server prunes and defaults; here every given field must fit the schema.
    jsonschema.validate({k: v for k, v in obj.items() if k in ("spec", "status")}, crd_schema(kind))


@pytest.mark.parametrize("name,values", [("default", {}), ("dpdk", DPDK_VALUES)])
def test_rendered_manifests_are_valid(name, values):
    objects = asyncio.run(install(values))
    kinds = by_kind(objects)
    expected = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment",
                "Service", "NetworkPolicy", "PodDisruptionBudget", "ConfigMap", "CustomResourceDefinition"}
    assert expected <= set(kinds), sorted(kinds)
    dashboards = [c for c in kinds["ConfigMap"] if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert len(dashboards) == 3, [c["metadata"]["name"] for c in kinds["ConfigMap"]]
    for obj in objects:
        if obj["kind"] in FOREIGN:
            continue
        if obj["kind"] == "FulvaCluster":
            validate_against_crd(obj)
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    if name == "dpdk":
        assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= set(kinds)
        cluster = kinds["FulvaCluster"][0]["spec"]
        assert cluster["dataPath"] == {"mode": "dpdk", "sriovResourceName": "intel.com/sriov_netdevice",
                                       "hugepages": "2Gi", "networkAttachment": "sriov-fulva"}
        rules = kinds["PrometheusRule"][0]["spec"]["groups"][0]["rules"]
        assert {r["alert"] for r in rules} >= {"FulvaMoveStuck", "FulvaNodeDown"}
    else:
        assert "FulvaCluster" not in kinds and "ServiceMonitor" not in kinds
    operator = kinds["Deployment"][0]["spec"]["template"]["spec"]
    security = operator["containers"][0]["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and operator["securityContext"]["runAsNonRoot"] is True


def test_rbac_is_least_privilege():
    kinds = by_kind(asyncio.run(install({})))
    rules = kinds["ClusterRole"][0]["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        # Everything else goes through owner references; pods are deleted by the
        # operator itself, and only once their ranges have moved away.
        if "delete" in rule["verbs"]:
            assert rule["apiGroups"] == [""] and rule["resources"] == ["pods"], rule
    nodes = [r for r in rules if "nodes" in r["resources"]]
    assert nodes == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}], nodes
    granted = {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert ("coordination.k8s.io", "leases") not in granted, "leases only in the operator's namespace (a Role)"
    # Certificates: Secrets are read and written one by one, never listed,
    # watched or deleted (a deleted cluster's go with it, by owner).
    secrets = [r for r in rules if "secrets" in r["resources"]]
    assert secrets == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]}], secrets
    leader = kinds["Role"][0]["rules"]
    assert leader[0] == {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                         "verbs": ["get", "create", "patch"]}
    assert leader[1] == {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["fulva-operator-ca"],
                         "verbs": ["get", "patch"]}, "in its own namespace, only its authority's Secret"
    env = {e["name"]: e.get("value") for e in kinds["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FULVA_OPERATOR_CA_SECRET"] == "fulva-operator-ca" and "FULVA_INSECURE" not in env, env


def test_an_install_without_tls_grants_no_secrets_and_says_insecure():
    kinds = by_kind(asyncio.run(install({"tls": {"enabled": False}})))
    for role in kinds["ClusterRole"] + kinds["Role"]:
        assert all("secrets" not in rule["resources"] for rule in role["rules"]), role
    env = {e["name"]: e.get("value") for e in kinds["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FULVA_INSECURE"] == "true" and "FULVA_OPERATOR_CA_SECRET" not in env, env


def test_a_namespace_scoped_install_grants_nothing_cluster_wide():
    objects = asyncio.run(install({"rbac": {"scope": "namespace"}}))
    kinds = by_kind(objects)
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds, sorted(kinds)
    for obj in objects:
        if obj["kind"] not in FOREIGN and obj["kind"] != "FulvaCluster":
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    operator_role = next(r for r in kinds["Role"] if not r["metadata"]["name"].endswith("-leader"))
    assert operator_role["metadata"]["namespace"] == "fulva-system"
    granted = {(g, r) for rule in operator_role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert ("fulva.io", "fulvaclusters") in granted and ("apps", "statefulsets") in granted, granted
    assert ("", "nodes") not in granted, "Nodes are cluster-wide"
    binding = next(b for b in kinds["RoleBinding"] if b["roleRef"]["name"] == operator_role["metadata"]["name"])
    assert binding["roleRef"]["kind"] == "Role" and binding["metadata"]["namespace"] == "fulva-system"
    env = {e["name"]: e.get("value") for e in kinds["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FULVA_WATCH_NAMESPACE"] == "fulva-system", env
    # Another namespace to watch: the Role goes there.
    kinds = by_kind(asyncio.run(install({"rbac": {"scope": "namespace", "watchNamespace": "shop"}})))
    operator_role = next(r for r in kinds["Role"] if not r["metadata"]["name"].endswith("-leader"))
    assert operator_role["metadata"]["namespace"] == "shop"
    # The default install watches every namespace and sets no namespace.
    kinds = by_kind(asyncio.run(install({})))
    assert "ClusterRole" in kinds
    env = {e["name"] for e in kinds["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "FULVA_WATCH_NAMESPACE" not in env


@pytest.mark.parametrize("path", sorted((ROOT / "deploy/examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate_against_the_crd(path):
    for doc in yaml.safe_load_all(path.read_text()):
        assert doc["apiVersion"] == "fulva.io/v1alpha1" and doc["kind"] in CRDS, doc["kind"]
        validate_against_crd(doc, doc["kind"])


def test_a_bad_example_is_refused_by_the_crd_schema():
    bad = {"spec": {"nodes": 0, "rebalance": {"mode": "sometimes"}}}
    with pytest.raises(jsonschema.ValidationError):
        validate_against_crd(bad)
    for bad in ({"spec": {"cluster": "demo", "goal": "everything"}},
                {"spec": {"cluster": "demo", "moves": [{"range": "0x0..=0xff"}]}},
                {"spec": {"goal": "full"}}):
        with pytest.raises(jsonschema.ValidationError):
            validate_against_crd(bad, "FulvaRebalance")


def test_chart_copies_match_their_sources():
    pairs = [(CHART / "crds" / p.name, p) for p in (ROOT / "crds").glob("*.yaml")]
    pairs += [(CHART / "files/prometheus-rules.yaml", ROOT / "deploy/prometheus/fulva-rules.yaml")]
    assert len(pairs) == 3, "both CRDs are in crds/"
    pairs += [(CHART / "files/dashboards" / p.name, p) for p in (ROOT / "deploy/grafana").glob("*.json")]
    for copy_path, source in pairs:
        assert copy_path.read_text() == source.read_text(), f"{copy_path} differs from {source}: run scripts/sync-chart"


def test_values_schema_covers_every_value():
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(values: dict, node: dict, path: str):
        for key, value in values.items():
            assert key in node.get("properties", {}), f"{path}{key} is not in values.schema.json"
            child = node["properties"][key]
            if isinstance(value, dict) and child.get("additionalProperties") is False:
                walk(value, child, f"{path}{key}.")

    walk(DEFAULT_VALUES, schema, "")
    jsonschema.validate(DEFAULT_VALUES, schema)
    jsonschema.validate(deep_merge(DEFAULT_VALUES, DPDK_VALUES), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(deep_merge(DEFAULT_VALUES, {"cluster": {"dataPath": {"mode": "rdma"}}}), schema)


def test_the_control_endpoint_admits_only_the_release_namespace_unless_told_otherwise():
    policy = by_kind(asyncio.run(install({})))["NetworkPolicy"][0]
    control = policy["spec"]["ingress"][0]
    namespaces = control["from"][0]["namespaceSelector"]
    assert namespaces == {"matchLabels": {"kubernetes.io/metadata.name": policy["metadata"]["namespace"]}}, namespaces
    chosen = {"matchLabels": {"fulva-client": "true"}}
    policy = by_kind(asyncio.run(install({"networkPolicy": {"clientNamespaceSelector": chosen}})))["NetworkPolicy"][0]
    assert policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"] == chosen
