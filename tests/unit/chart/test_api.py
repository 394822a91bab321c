"""The chart's HTTP API (values `api`): off by default; on, a Deployment + Service that
validate against the Kubernetes schema, run `facescan-detector serve` with the keys
from the admin's Secret under the restricted pod security, probed on /health/*."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from helm_python import HelmValuesError, lint

from facescan_operator.k8s.jobs import detector_security
from tests.unit.chart.test_chart import CHART, NEWEST, OLDEST, of_kind, render

API = {
    "api": {
        "enabled": True,
        "apiKeys": {"existingSecret": "facescan-api-keys"},
        "database": {"existingSecret": "facescan-db", "key": "url"},
        "workers": 2,
        "queue": 6,
        "model": "cnn",
        "service": {"port": 80},
    }
}


def api_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        d
        for d in docs
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "api"
    ]


def test_the_default_renders_no_api_objects() -> None:
    docs = render({})
    assert api_objects(docs) == []
    assert [d["metadata"]["name"] for d in of_kind(docs, "Deployment")] == ["facescan"]


@pytest.mark.parametrize("kube", [OLDEST, NEWEST])
def test_the_api_renders_lints_and_validates(kube: str) -> None:
    docs = render(API)
    objects = api_objects(docs)
    assert sorted(d["kind"] for d in objects) == ["Deployment", "Service"]
    for doc in objects:
        kubernetes_validate.validate(doc, kube, strict=True)
    result = lint(str(CHART), API, strict=True, kube_version=f"{kube}.0")
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] > 1] == []


def api_pod() -> dict[str, Any]:
    (deployment,) = [d for d in api_objects(render(API)) if d["kind"] == "Deployment"]
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def test_the_api_runs_the_detectors_server_with_the_keys_of_the_secret() -> None:
    (container,) = api_pod()["containers"]
    assert container["command"] == ["facescan-detector"]
    args = container["args"]
    assert args[0] == "serve"
    assert {"--host=0.0.0.0", "--port=8080", "--workers=2", "--queue=6", "--model=cnn"} <= set(args)
    env = {e["name"]: e for e in container["env"]}
    assert env["FACESCAN_API_KEYS"]["valueFrom"]["secretKeyRef"] == {
        "name": "facescan-api-keys",
        "key": "api-keys",
    }
    assert env["FACESCAN_DSN"]["valueFrom"]["secretKeyRef"] == {"name": "facescan-db", "key": "url"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["image"].endswith(":0.1.0")


def test_the_api_pod_has_the_detector_jobs_restricted_security() -> None:
    pod = api_pod()
    pod_context, container_context = detector_security()
    assert pod["securityContext"] == pod_context
    assert pod["containers"][0]["securityContext"] == container_context
    assert pod["automountServiceAccountToken"] is False
    assert not any("hostPath" in v for v in pod["volumes"])


def test_the_service_selects_only_the_api_pods() -> None:
    docs = render(API)
    (service,) = [d for d in api_objects(docs) if d["kind"] == "Service"]
    (operator,) = [d for d in of_kind(docs, "Deployment") if d not in api_objects(docs)]
    selector = service["spec"]["selector"]
    assert selector["app.kubernetes.io/name"] == "facescan-api"
    operator_labels = operator["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= operator_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]


def test_no_secret_and_no_key_is_rendered() -> None:
    docs = render(API)
    assert of_kind(docs, "Secret") == []


@pytest.mark.parametrize(
    "api",
    [
        {"enabled": True},  # no keys Secret: never defaulted
        {"enabled": True, "apiKeys": {"existingSecret": ""}},
        {"enabled": True, "apiKeys": {"existingSecret": "k"}, "workers": 0},
        {"enabled": True, "apiKeys": {"existingSecret": "k"}, "model": "yolo"},
        {"apiKeys": {"existingSecret": "k", "value": "secret"}},  # no inline keys
        {"port": 8080},
    ],
)
def test_the_values_schema_refuses_wrong_api_values(api: dict[str, Any]) -> None:
    with pytest.raises(HelmValuesError):
        render({"api": api})
