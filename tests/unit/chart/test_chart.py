"""The Helm chart, rendered and linted by the real Helm engine (helm-python-sdk), every
manifest validated against the Kubernetes schema, and its security promises checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_python import Chart, HelmValuesError, lint

from facescan_operator.k8s.policy import AdminPolicy, enforce
from facescan_operator.k8s.spec import FaceScanSpec

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "facescan"
OLDEST, NEWEST = "1.30", "1.37"

GPU_AND_CPU = {
    "watchNamespaces": ["photos", "archive"],
    "database": {"existingSecret": "photos-db", "key": "url"},
    "policy": {
        "detectorImages": ["registry.example/facescan/"],
        "volumeTypes": ["persistentVolumeClaim", "nfs"],
        "pools": [
            {
                "name": "gpu",
                "gpuResourceName": "nvidia.com/gpu",
                "gpuCount": 1,
                "gpuMemoryMiB": 4096,
                "nodeSelector": {"node.kubernetes.io/instance-type": "g4dn.xlarge"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
            },
            {"name": "cpu", "nodeSelector": {"pool": "cpu"}},
        ],
    },
    "detector": {
        "image": {"repository": "registry.example/facescan/detector"},
        "gpuImage": {"repository": "registry.example/facescan/detector"},
    },
    "kueue": {"queueName": "photos-queue"},
    "metrics": {"serviceMonitor": {"enabled": True}},
    "exampleScan": {
        "enabled": True,
        "claimName": "family-photos",
        "nodePools": [
            {"name": "gpu", "models": ["cnn", "insightface"], "maxConcurrentJobs": 2},
            {"name": "cpu", "models": ["hog"]},
        ],
    },
    "peering": {"enabled": True},
    "operator": {"replicas": 1},
}
VALUES = {"defaults": {}, "gpu-and-cpu-pools": GPU_AND_CPU}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    out = Chart.load(str(CHART)).render(values=values, name="facescan", namespace="facescan-system")
    docs = []
    for path, text in out.items():
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
@pytest.mark.parametrize("kube", [OLDEST, NEWEST])
def test_chart_lints_strictly(values: dict[str, Any], kube: str) -> None:
    result = lint(str(CHART), values, strict=True, kube_version=f"{kube}.0")
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] > 1] == []


@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
@pytest.mark.parametrize("kube", [OLDEST, NEWEST])
def test_every_rendered_manifest_validates(values: dict[str, Any], kube: str) -> None:
    docs = render(values)
    assert of_kind(docs, "Deployment")
    for doc in docs:
        if doc["apiVersion"].startswith(("facescan.io/", "monitoring.coreos.com/", "kopf.dev/")):
            continue  # custom resources: checked by their own CRD's schema
        kubernetes_validate.validate(doc, kube, strict=True)


def test_chart_crds_are_the_repository_crds() -> None:
    assert (CHART / "crds" / "facescan.yaml").read_text() == (
        ROOT / "crds" / "facescan.yaml"
    ).read_text()
    for path in (CHART / "crds").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, OLDEST, strict=True)


@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
def test_rbac_has_no_wildcards_and_no_secret_listing(values: dict[str, Any]) -> None:
    docs = render(values)
    rules = [r for d in of_kind(docs, "ClusterRole") + of_kind(docs, "Role") for r in d["rules"]]
    assert rules
    for rule in rules:
        assert "*" not in rule["verbs"]
        assert "*" not in rule["resources"]
        assert "*" not in rule.get("apiGroups", [])
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get"]
            assert rule["resourceNames"]  # only the database Secret(s)


def test_jobs_pods_and_secrets_only_where_facescans_live() -> None:
    docs = render(GPU_AND_CPU)
    cluster_rules = [r for d in of_kind(docs, "ClusterRole") for r in d["rules"]]
    assert not any({"jobs", "pods", "secrets"} & set(r["resources"]) for r in cluster_rules)
    roles = of_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["archive", "photos"]
    secrets = next(r for r in roles[0]["rules"] if "secrets" in r["resources"])
    assert secrets["resourceNames"] == ["photos-db"]
    args = of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=photos" in args
    assert "--namespace=archive" in args


def _grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    return {
        (g, r): rule["verbs"]
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }


# What the operator and kopf call where FaceScans live (facescan_operator/k8s/kube.py;
# kopf: list+watch, PATCH, POST events); OwnerReferencesPermissionEnforcement asks for
# facescans/finalizers because the Jobs' ownerReference blocks the FaceScan's deletion
WHERE_FACESCANS_LIVE = {
    ("facescan.io", "facescans"): ["list", "watch", "patch"],
    ("facescan.io", "facescans/status"): ["patch"],
    ("facescan.io", "facescans/finalizers"): ["update"],
    ("batch", "jobs"): ["list", "create", "delete"],
    ("", "pods"): ["list"],
    ("", "events"): ["create", "list"],
    ("", "secrets"): ["get"],
}
CRDS = {("apiextensions.k8s.io", "customresourcedefinitions"): ["list", "watch"]}


@pytest.mark.parametrize("peering", [False, True])
def test_cluster_wide_rbac_is_exactly_what_the_operator_calls(peering: bool) -> None:
    docs = render({"peering": {"enabled": peering}})
    assert of_kind(docs, "Role") == []
    (cluster_role,) = of_kind(docs, "ClusterRole")
    peerings = {("kopf.dev", "clusterkopfpeerings"): ["list", "watch", "patch"]}
    assert _grants(cluster_role["rules"]) == CRDS | WHERE_FACESCANS_LIVE | (
        peerings if peering else {}
    )


def test_per_namespace_rbac_is_exactly_what_the_operator_calls() -> None:
    docs = render(GPU_AND_CPU)  # peering enabled
    (cluster_role,) = of_kind(docs, "ClusterRole")
    # kopf lists and watches namespaces to resolve --namespace (without: 403s, a minute late)
    assert _grants(cluster_role["rules"]) == CRDS | {("", "namespaces"): ["list", "watch"]}
    peerings = {("kopf.dev", "kopfpeerings"): ["list", "watch", "patch"]}
    for role in of_kind(docs, "Role"):
        assert _grants(role["rules"]) == peerings | WHERE_FACESCANS_LIVE


@pytest.mark.parametrize("watch", [[], ["photos"], ["photos", "archive"]])
def test_namespaces_are_listed_exactly_when_the_operator_serves_some(watch: list[str]) -> None:
    docs = render({"watchNamespaces": watch})
    rules = [r for d in of_kind(docs, "ClusterRole") + of_kind(docs, "Role") for r in d["rules"]]
    namespaces = [r for r in rules if "namespaces" in r["resources"]]
    assert namespaces == (
        [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}]
        if watch
        else []
    )
    finalizers = [r for r in rules if "facescans/finalizers" in r["resources"]]
    assert len(finalizers) == max(len(watch), 1)
    assert all(r["verbs"] == ["update"] for r in finalizers)


def _operator_container(values: dict[str, Any]) -> dict[str, Any]:
    (deployment,) = of_kind(render(values), "Deployment")
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def test_health_and_metrics_bind_every_interface_of_the_pod_by_default() -> None:
    container = _operator_container({})
    assert "--health-address=0.0.0.0" in container["args"]
    assert "--health-port=8081" in container["args"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert (env["FACESCAN_METRICS_ADDRESS"], env["FACESCAN_METRICS_PORT"]) == ("0.0.0.0", "8080")
    # kopf's identity is the pod's name, not a passwd lookup of the uid
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_the_bind_addresses_and_ports_reach_the_operator() -> None:
    container = _operator_container(
        {
            "operator": {"health": {"address": "::", "port": 9102}},
            "metrics": {"address": "10.0.0.7", "port": 9103},
        }
    )
    assert "--health-address=::" in container["args"]
    assert "--health-port=9102" in container["args"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert (env["FACESCAN_METRICS_ADDRESS"], env["FACESCAN_METRICS_PORT"]) == ("10.0.0.7", "9103")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 9102, "metrics": 9103}
    assert container["livenessProbe"]["httpGet"]["port"] == "health"


@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
def test_operator_pod_meets_the_restricted_pod_security_profile(values: dict[str, Any]) -> None:
    (deployment,) = of_kind(render(values), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert "privileged" not in context
    assert not any("hostPath" in v for v in pod.get("volumes", []))


@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
def test_no_secret_and_no_password_is_rendered(values: dict[str, Any]) -> None:
    docs = render(values)
    assert of_kind(docs, "Secret") == []
    text = yaml.safe_dump_all(docs).lower()
    assert "password" not in text
    assert "postgresql://" not in text


def operator_policy(docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> AdminPolicy:
    """The admin policy the chart's operator reads from its Deployment's environment."""
    (deployment,) = of_kind(docs, "Deployment")
    for var in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if var["name"].startswith("FACESCAN_POLICY_"):
            monkeypatch.setenv(var["name"], var["value"])
    return AdminPolicy()


def test_the_default_policy_allows_the_charts_detector_and_no_host_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = operator_policy(render({}), monkeypatch)
    assert policy.detector_images == ("ghcr.io/facescan/facescan-detector",)
    assert policy.image_allowed("ghcr.io/facescan/facescan-detector:0.1.0-cuda")
    assert not policy.image_allowed("docker.io/attacker/miner:latest")
    assert "hostPath" not in policy.volume_types
    assert {pool.name for pool in policy.pools} == {"gpu", "cpu"}


def test_the_example_facescan_uses_the_pools_the_queue_and_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = render(GPU_AND_CPU)
    (scan,) = of_kind(docs, "FaceScan")
    # helm uninstall keeps it rather than leave it Terminating without its operator
    assert scan["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    spec = scan["spec"]
    assert spec["database"] == {"secretName": "photos-db", "key": "url"}
    assert [p["name"] for p in spec["nodePools"]] == ["gpu", "cpu"]
    assert spec["kueueQueueName"] == "photos-queue"
    assert spec["detector"]["gpuImage"].endswith(":0.1.0-cuda")
    placed = enforce(
        operator_policy(docs, monkeypatch), FaceScanSpec.model_validate(spec), "facescan-system"
    )
    gpu = placed.pool_for("cnn")
    assert gpu.is_gpu
    assert gpu.max_concurrent_jobs == 2
    assert gpu.node_selector == {"node.kubernetes.io/instance-type": "g4dn.xlarge"}
    assert placed.pool_for("hog").node_selector == {"pool": "cpu"}


def test_image_tags_follow_the_app_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{chart["appVersion"]}"' in pyproject
    (deployment,) = of_kind(render({}), "Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(f":{chart['appVersion']}")


@pytest.mark.parametrize(
    "values",
    [
        {"unknown": 1},
        {"operator": {"replicas": "two"}},
        {"operator": {"replicas": 2}},  # one replica: README "One operator replica"
        {"nodePools": [{"name": "x", "models": ["hog"]}]},  # pools are policy.pools
        {"policy": {"volumeTypes": ["emptyDir"]}},
        {"policy": {"pools": [{"name": "gpu", "models": ["cnn"]}]}},
        {"exampleScan": {"nodePools": [{"name": "gpu", "models": ["cnn"], "tolerations": []}]}},
        {"metrics": {"port": 80}},
        {"metrics": {"address": "everywhere"}},
        {"operator": {"health": {"address": ""}}},
        {"operator": {"health": {"port": 70000}}},
        {"database": {"existingSecret": ""}},
        {"exampleScan": {"cascade": [{"model": "yolo"}]}},
    ],
)
def test_the_values_schema_refuses_wrong_values(values: dict[str, Any]) -> None:
    with pytest.raises(HelmValuesError):
        render(values)
