"""The detector Job builder: valid manifests, right-sized, placed, secure, deterministic."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from facescan_operator.k8s.jobs import (
    JobBatch,
    ScanRef,
    batch_job_name,
    build_detector_job,
    job_name,
    owned_by,
)
from facescan_operator.k8s.spec import FaceScanSpec

SCAN = ScanRef("photos", "family", "0b3e6a3c-5d7e-4f7a-9a55-0c1f2b3d4e5f")
KUBE_VERSIONS = ("1.30", "1.37")


def spec(**extra: Any) -> FaceScanSpec:
    body: dict[str, Any] = {
        "database": {"secretName": "facescan-db"},
        "library": {"volume": {"persistentVolumeClaim": {"claimName": "photos"}}},
        "detector": {
            "image": "ghcr.io/example/facescan-detector:0.1.0",
            "gpuImage": "ghcr.io/example/facescan-detector:0.1.0-cuda",
        },
        **extra,
    }
    return FaceScanSpec.model_validate(body)


def batch(model: str = "cnn", memory: int = 1536 * 2**20) -> JobBatch:
    return JobBatch("family-s0c1-a1b2c3", 0, 1, model, 1.0, memory, 25)


GPU_POOLS = {
    "nodePools": [
        {
            "name": "gpu",
            "models": ["cnn", "insightface"],
            "gpuResourceName": "nvidia.com/gpu",
            "gpuCount": 1,
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
        {"name": "cpu", "models": ["hog"], "nodeSelector": {"pool": "cpu"}},
    ]
}


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("extra", [{}, GPU_POOLS, {"kueueQueueName": "batch"}])
def test_every_job_validates_against_the_kubernetes_schema(
    version: str, extra: dict[str, Any]
) -> None:
    job = build_detector_job(SCAN, spec(**extra), batch())
    kubernetes_validate.validate(job, version, strict=True)


def test_job_carries_the_job_contract_and_retries_nothing_itself() -> None:
    job = build_detector_job(SCAN, spec(), batch())
    assert job["metadata"]["name"] == "family-s0c1-a1b2c3"
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["command"] == ["facescan-detector"]
    env = {e["name"]: e for e in container["env"]}
    assert env["FACESCAN_LEASE_OWNER"]["value"] == "family-s0c1-a1b2c3"
    assert env["FACESCAN_LIBRARY_ROOT"]["value"] == "/library"
    assert env["FACESCAN_DSN"]["valueFrom"]["secretKeyRef"] == {"name": "facescan-db", "key": "dsn"}
    assert "value" not in env["FACESCAN_DSN"]  # the URL never appears in the manifest
    # the assignment its detector claims when it starts
    assignment = ("FACESCAN_LIBRARY", "FACESCAN_STEP", "FACESCAN_SIZE_CLASS", "FACESCAN_BATCH_SIZE")
    assert [env[name]["value"] for name in assignment] == ["photos/family", "0", "1", "25"]


def test_detector_pods_may_get_a_role_of_their_own() -> None:
    """A Secret holding a role granted only the detector's calls, apart from the
    operator's (`facescan db grant` without --operator)."""
    separate = spec(database={"secretName": "facescan-db", "detectorSecretName": "detector-db"})
    env = {
        e["name"]: e
        for e in build_detector_job(SCAN, separate, batch())["spec"]["template"]["spec"][
            "containers"
        ][0]["env"]
    }
    assert env["FACESCAN_DSN"]["valueFrom"]["secretKeyRef"] == {"name": "detector-db", "key": "dsn"}


def test_a_large_library_is_not_chowned_at_every_start() -> None:
    pod = build_detector_job(SCAN, spec(), batch())["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"


def test_a_disrupted_pod_does_not_fail_its_job() -> None:
    """Preemption, eviction, a lost node (DisruptionTarget): ignored, not a failure."""
    job = build_detector_job(SCAN, spec(), batch())
    (rule,) = job["spec"]["podFailurePolicy"]["rules"]
    assert rule == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }


def test_memory_request_and_limit_come_from_right_sizing() -> None:
    container = build_detector_job(SCAN, spec(), batch(memory=1536 * 2**20))["spec"]["template"][
        "spec"
    ]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "1536Mi"
    assert container["resources"]["requests"]["memory"] == "1536Mi"


@pytest.mark.parametrize(("cpu", "threads"), [("1", "1"), ("500m", "1"), ("1.5", "2"), ("2", "2")])
def test_the_detector_uses_as_many_threads_as_cpus_it_requests(cpu: str, threads: str) -> None:
    body = spec().model_dump(by_alias=True)
    body["detector"]["cpu"] = cpu
    container = build_detector_job(SCAN, FaceScanSpec.model_validate(body), batch("hog"))["spec"][
        "template"
    ]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == cpu
    assert {e["name"]: e.get("value") for e in container["env"]}["FACESCAN_THREADS"] == threads


def test_cnn_goes_to_the_gpu_pool_and_hog_to_the_cpu_pool() -> None:
    gpu = build_detector_job(SCAN, spec(**GPU_POOLS), batch("cnn"))
    pod = gpu["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["containers"][0]["image"].endswith("-cuda")
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    cpu = build_detector_job(SCAN, spec(**GPU_POOLS), batch("hog"))
    pod = cpu["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "cpu"}
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert not pod["containers"][0]["image"].endswith("-cuda")


def test_pods_run_non_root_with_a_read_only_root_filesystem() -> None:
    pod = build_detector_job(SCAN, spec(), batch())["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = pod["containers"][0]["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False


def test_job_is_owned_by_its_facescan_and_labelled() -> None:
    job = build_detector_job(SCAN, spec(), batch())
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("FaceScan", "family", SCAN.uid)
    labels = job["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "facescan-operator"
    assert labels["app.kubernetes.io/instance"] == "family"
    assert labels["facescan.io/step"] == "0"


def test_kueue_jobs_are_created_suspended_with_the_queue_label() -> None:
    job = build_detector_job(SCAN, spec(kueueQueueName="batch"), batch())
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "batch"
    assert "suspend" not in build_detector_job(SCAN, spec(), batch())["spec"]


def test_the_builder_is_deterministic() -> None:
    assert build_detector_job(SCAN, spec(), batch()) == build_detector_job(SCAN, spec(), batch())


def test_job_names_fit_a_label_value() -> None:
    name = job_name("a" * 80, "s5c4-abcdef")
    assert len(name) <= 63
    assert name.endswith("-s5c4-abcdef")


def test_a_facescan_settles_only_the_leases_of_its_own_jobs() -> None:
    """Lease owners are Job names; a FaceScan ends only its own Jobs' leases, not those of
    another FaceScan of the same library, however their names begin."""
    own = batch_job_name("photos", 0, 3)
    assert owned_by("photos", own)
    assert not owned_by("photos-s1c2", own)
    assert not owned_by("photos", batch_job_name("photos-s1c2", 0, 3))
    assert not owned_by("photos", batch_job_name("photos-old", 1, 2))
    assert not owned_by("photos", "local-vm-1")
    assert not owned_by("photos", "photos")
    long = "a" * 63
    assert owned_by(long, batch_job_name(long, 10, 12))
    assert len(batch_job_name(long, 10, 12)) <= 63
