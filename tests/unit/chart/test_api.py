"""The chart's HTTP API (values `api`): off by default; on, a Deployment + Service that
validate against the Kubernetes schema, run `facescan-detector serve` with the keys
from the admin's Secret under the restricted pod security, probed on /health/*."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from helm_python import HelmRenderError, HelmValuesError, lint

from facescan_api.serve import add_arguments
from facescan_api.settings import ServeSettings
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


PROCESS = {
    "api": {
        **API["api"],
        "process": {
            "enabled": True,
            "workers": 2,
            "allowHosts": ["immich.photos.svc", "10.0.0.7"],
            "callbackHosts": ["*.hooks.example.com", "immich-server.photos.svc", "*"],
            "callbackSecret": {"existingSecret": "facescan-callback"},
            "caBundle": {"configMap": "photos-ca", "key": "ca.pem"},
            "pathVolumes": [
                {"claimName": "family-photos", "mountPath": "/photos"},
                {"claimName": "archive", "mountPath": "/archive"},
            ],
            "callbackGiveUpAfterHours": 12,
        },
    }
}


def process_pod(values: dict[str, Any] = PROCESS) -> dict[str, Any]:
    (deployment,) = [d for d in api_objects(render(values)) if d["kind"] == "Deployment"]
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


@pytest.mark.parametrize("kube", [OLDEST, NEWEST])
def test_the_api_with_process_renders_lints_and_validates(kube: str) -> None:
    for doc in api_objects(render(PROCESS)):
        kubernetes_validate.validate(doc, kube, strict=True)
    result = lint(str(CHART), PROCESS, strict=True, kube_version=f"{kube}.0")
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] > 1] == []


def test_the_process_arguments_are_the_servers_own_options() -> None:
    (container,) = process_pod()["containers"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = vars(parser.parse_args(container["args"][1:]))
    settings = ServeSettings(
        **{k: v for k, v in options.items() if v is not None and k not in ("verbose", "dsn")}
    )
    assert settings.media_dir == Path("/var/lib/facescan/media")
    assert settings.process_workers == 2
    assert settings.allow_hosts == ("immich.photos.svc", "10.0.0.7")
    assert settings.callback_hosts == ("*.hooks.example.com", "immich-server.photos.svc", "*")
    assert settings.path_roots == (Path("/photos"), Path("/archive"))
    assert settings.callback_give_up_after_h == 12
    assert settings.callback_max_attempts == 50
    assert settings.ca_file == Path("/etc/facescan/ca/ca.pem")


def test_process_trusts_the_ca_bundle_of_its_config_map_read_only() -> None:
    pod = process_pod()
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "ca-bundle"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "ca-bundle"]
    assert mount == {"name": "ca-bundle", "mountPath": "/etc/facescan/ca", "readOnly": True}
    assert volume["configMap"] == {
        "name": "photos-ca",
        "items": [{"key": "ca.pem", "path": "ca.pem"}],
    }
    public_only = {"api": {**PROCESS["api"]}}
    public_only["api"]["process"] = {
        k: v for k, v in PROCESS["api"]["process"].items() if k != "caBundle"
    }
    (bare,) = process_pod(public_only)["containers"]
    assert not any(arg.startswith("--ca-file") for arg in bare["args"])
    assert "ca-bundle" not in {m["name"] for m in bare["volumeMounts"]}


def test_process_reads_its_path_volumes_read_only_and_writes_media_to_its_own() -> None:
    pod = process_pod()
    (container,) = pod["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["path-0"] == {"name": "path-0", "mountPath": "/photos", "readOnly": True}
    assert mounts["path-1"]["mountPath"] == "/archive"
    assert volumes["path-0"]["persistentVolumeClaim"] == {
        "claimName": "family-photos",
        "readOnly": True,
    }
    assert mounts["media"] == {"name": "media", "mountPath": "/var/lib/facescan/media"}
    assert volumes["media"] == {"name": "media", "emptyDir": {"sizeLimit": "10Gi"}}
    assert not any("hostPath" in v for v in pod["volumes"])
    pod_context, container_context = detector_security()
    assert pod["securityContext"] == pod_context
    assert container["securityContext"] == container_context
    shared = {"api": {**PROCESS["api"], "replicas": 3}}
    shared["api"]["process"] = {**PROCESS["api"]["process"], "mediaVolume": {"claimName": "m"}}
    (media,) = [v for v in process_pod(shared)["volumes"] if v["name"] == "media"]
    assert media["persistentVolumeClaim"] == {"claimName": "m"}


def test_process_on_several_replicas_needs_a_shared_media_claim() -> None:
    with pytest.raises(HelmRenderError, match="ReadWriteMany"):
        render({"api": {**PROCESS["api"], "replicas": 2}})


def test_every_secret_of_process_comes_from_a_secret_and_none_is_rendered() -> None:
    docs = render(PROCESS)
    assert of_kind(docs, "Secret") == []
    (container,) = process_pod()["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["FACESCAN_CALLBACK_SECRET"] == {
        "name": "FACESCAN_CALLBACK_SECRET",
        "valueFrom": {"secretKeyRef": {"name": "facescan-callback", "key": "callback-secret"}},
    }
    for name in ("FACESCAN_API_KEYS", "FACESCAN_DSN", "FACESCAN_CALLBACK_SECRET"):
        assert "value" not in env[name]
    assert not any(arg.startswith(("--dsn", "--callback-secret")) for arg in container["args"])
    without = {"api": {**PROCESS["api"]}}
    without["api"]["process"] = {**PROCESS["api"]["process"], "callbackSecret": {}}
    (bare,) = process_pod(without)["containers"]
    assert "FACESCAN_CALLBACK_SECRET" not in {e["name"] for e in bare["env"]}


def test_process_is_off_by_default() -> None:
    (container,) = api_pod()["containers"]
    assert not any(arg.startswith("--media-dir") for arg in container["args"])
    assert [m["name"] for m in container["volumeMounts"]] == ["tmp"]


@pytest.mark.parametrize(
    "process",
    [
        {"callbackSecret": {"existingSecret": "s", "value": "hunter2"}},  # never a value
        {"callbackSecret": {"existingSecret": "s", "key": ""}},
        {"callbackHosts": ["a.example,b.example"]},  # one host per item
        {"callbackHosts": ["hooks.*.example"]},
        {"allowHosts": ["*.example.com"]},  # media hosts are exact
        {"pathVolumes": [{"claimName": "p", "mountPath": "photos"}]},
        {"pathVolumes": [{"claimName": "p", "mountPath": "/tmp"}]},
        {"pathVolumes": [{"hostPath": "/srv/photos", "mountPath": "/photos"}]},
        {"mediaVolume": {"hostPath": {"path": "/srv/media"}}},
        {"mediaVolume": {"sizeLimit": "lots"}},
        {"workers": 0},
        {"callbackGiveUpAfterHours": 0},
        {"caBundle": {"configMap": "photos-ca", "key": "../etc/passwd"}},
        {"caBundle": {"configMap": "Photos CA"}},
        {"caBundle": {"secret": "photos-ca"}},
        {"dsn": "postgresql://u:p@db/facescan"},
    ],
)
def test_the_values_schema_refuses_wrong_process_values(process: dict[str, Any]) -> None:
    with pytest.raises(HelmValuesError):
        render({"api": {**PROCESS["api"], "process": {**PROCESS["api"]["process"], **process}}})


def test_process_needs_a_database_secret() -> None:
    api = {k: v for k, v in PROCESS["api"].items() if k != "database"}
    with pytest.raises(HelmValuesError):
        render({"api": api})
