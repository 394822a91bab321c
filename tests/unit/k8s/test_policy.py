"""The admin's policy: a FaceScan gets no more than the admin allows (tables of specs)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from facescan_operator.k8s.policy import AdminPolicy, PolicyViolation, enforce, repository_of
from facescan_operator.k8s.spec import FaceScanSpec

GPU = {
    "name": "gpu",
    "gpuResourceName": "nvidia.com/gpu",
    "gpuCount": 1,
    "maxMemoryMiB": 8192,
    "nodeSelector": {"pool": "gpu"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}
POLICY = AdminPolicy(
    detector_images=("ghcr.io/facescan/facescan-detector", "registry.example/team/"),
    pools=({"name": "cpu", "nodeSelector": {"pool": "cpu"}}, GPU),  # type: ignore[arg-type]
)


def spec(**change: Any) -> FaceScanSpec:
    body: dict[str, Any] = {
        "database": {"secretName": "db"},
        "library": {"volume": {"persistentVolumeClaim": {"claimName": "photos"}}},
        "detector": {"image": "ghcr.io/facescan/facescan-detector:0.1.0"},
        "cascade": [{"model": "cnn"}, {"model": "hog"}],
    }
    body.update(change)
    return FaceScanSpec.model_validate(body)


REFUSED = {
    "host path library": (
        {"library": {"volume": {"hostPath": {"path": "/"}}}},
        "spec.library.volume: hostPath is not an allowed volume source",
    ),
    "host path models": (
        {
            "detector": {
                "image": "ghcr.io/facescan/facescan-detector:0.1.0",
                "modelVolume": {"hostPath": {"path": "/etc"}},
            }
        },
        "spec.detector.modelVolume: hostPath is not an allowed volume source",
    ),
    "two volume sources": (
        {"library": {"volume": {"nfs": {}, "persistentVolumeClaim": {}}}},
        "spec.library.volume: needs exactly one volume source",
    ),
    "foreign image": (
        {"detector": {"image": "docker.io/attacker/miner:1"}},
        "spec.detector.image: 'docker.io/attacker/miner:1' is not an allowed detector image",
    ),
    "repository that only starts like an allowed one": (
        {"detector": {"image": "ghcr.io/facescan/facescan-detector-evil:1"}},
        "is not an allowed detector image",
    ),
    "foreign GPU image": (
        {
            "detector": {
                "image": "ghcr.io/facescan/facescan-detector:1",
                "gpuImage": "evil.example/cuda:1",
            }
        },
        "spec.detector.gpuImage: 'evil.example/cuda:1' is not an allowed detector image",
    ),
    "library of another namespace": (
        {"library": {"name": "other/photos", "volume": {"nfs": {}}}},
        "spec.library.name: 'other/photos' is outside this FaceScan's namespace",
    ),
    "library named like a prefix of the namespace": (
        {"library": {"name": "photos-team/x", "volume": {"nfs": {}}}},
        "outside this FaceScan's namespace",
    ),
    "unknown pool": (
        {"nodePools": [{"name": "huge", "models": ["cnn", "hog"]}]},
        "spec.nodePools: there is no pool 'huge' (the admin's pools: cpu, gpu)",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_spec_outside_the_policy_is_refused_with_the_field_and_the_reason(case: str) -> None:
    change, message = REFUSED[case]
    with pytest.raises(PolicyViolation) as refused:
        enforce(POLICY, spec(**change), "photos")
    assert message in str(refused.value)


def test_every_problem_is_named_at_once() -> None:
    bad = spec(
        detector={"image": "evil:1"},
        library={"name": "x/y", "volume": {"hostPath": {"path": "/"}}},
    )
    with pytest.raises(PolicyViolation) as refused:
        enforce(POLICY, bad, "photos")
    assert [p.split(":")[0] for p in refused.value.problems] == [
        "spec.library.name",
        "spec.detector.image",
        "spec.library.volume",
    ]


ALLOWED_IMAGES = [
    "ghcr.io/facescan/facescan-detector",
    "ghcr.io/facescan/facescan-detector:0.1.0-cuda",
    "ghcr.io/facescan/facescan-detector@sha256:" + "a" * 64,
    "ghcr.io/facescan/facescan-detector:1@sha256:" + "b" * 64,
    "registry.example/team/detector:2",
    "registry.example/team/sub/detector",
]


@pytest.mark.parametrize("image", ALLOWED_IMAGES)
def test_an_allowed_repository_allows_its_tags_and_digests(image: str) -> None:
    assert enforce(POLICY, spec(detector={"image": image}), "photos").detector.image == image


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("registry:5000/team/detector:1.2", "registry:5000/team/detector"),
        ("registry:5000/team/detector", "registry:5000/team/detector"),
        ("detector@sha256:00", "detector"),
    ],
)
def test_the_repository_of_an_image_keeps_a_registry_port(image: str, repository: str) -> None:
    assert repository_of(image) == repository


def test_pools_get_the_admins_placement_and_keep_the_authors_models_and_limit() -> None:
    placed = enforce(
        POLICY,
        spec(
            nodePools=[
                {"name": "gpu", "models": ["cnn"], "maxConcurrentJobs": 2},
                {"name": "cpu", "models": ["hog"]},
            ]
        ),
        "photos",
    )
    gpu, cpu = placed.pool_for("cnn"), placed.pool_for("hog")
    assert (gpu.name, gpu.models, gpu.max_concurrent_jobs) == ("gpu", ("cnn",), 2)
    assert gpu.is_gpu
    assert gpu.node_selector == {"pool": "gpu"}
    assert gpu.tolerations[0]["key"] == "nvidia.com/gpu"
    assert gpu.max_memory_mib == 8192
    assert (cpu.node_selector, cpu.tolerations, cpu.is_gpu) == ({"pool": "cpu"}, (), False)


def test_placement_a_spec_brings_is_replaced_by_the_admins() -> None:
    """The CRD has no placement fields (the API server prunes, kubectl refuses them); a
    body that still carries some gets the admin's."""
    sneaky = spec(
        nodePools=[
            {
                "name": "cpu",
                "models": ["cnn", "hog"],
                "tolerations": [{"operator": "Exists"}],
                "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
                "gpuResourceName": "nvidia.com/gpu",
                "gpuCount": 8,
            }
        ]
    )
    cpu = enforce(POLICY, sneaky, "photos").pool_for("cnn")
    assert (cpu.node_selector, cpu.tolerations, cpu.is_gpu) == ({"pool": "cpu"}, (), False)


def test_without_node_pools_every_model_runs_on_the_admins_cpu_pool() -> None:
    placed = enforce(POLICY, spec(), "photos")
    assert [(p.name, p.models, p.node_selector) for p in placed.pools] == [
        ("cpu", ("hog", "cnn", "insightface"), {"pool": "cpu"})
    ]
    no_cpu = AdminPolicy(pools=(GPU,))  # type: ignore[arg-type]
    with pytest.raises(PolicyViolation, match="spec \\(no nodePools\\): there is no pool 'cpu'"):
        enforce(no_cpu, spec(), "photos")


def test_a_library_under_its_own_namespace_is_allowed() -> None:
    named = spec(library={"name": "photos/family", "volume": {"csi": {"driver": "x"}}})
    assert enforce(POLICY, named, "photos").library_name("photos", "scan") == "photos/family"


def test_the_policy_is_read_from_the_environment_as_the_chart_sets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FACESCAN_POLICY_DETECTOR_IMAGES", '["*"]')
    monkeypatch.setenv("FACESCAN_POLICY_VOLUME_TYPES", '["hostPath"]')
    monkeypatch.setenv("FACESCAN_POLICY_POOLS", '[{"name": "cpu"}]')
    policy = AdminPolicy()
    host = spec(library={"volume": {"hostPath": {"path": "/srv"}}}, detector={"image": "any:1"})
    assert enforce(policy, host, "photos").library.volume == {"hostPath": {"path": "/srv"}}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FACESCAN_POLICY_VOLUME_TYPES", '["emptyDir"]'),
        ("FACESCAN_POLICY_POOLS", '[{"name": "gpu", "gpuResourceName": "nvidia.com/gpu"}]'),
        ("FACESCAN_POLICY_POOLS", '[{"name": "cpu"}, {"name": "cpu"}]'),
        ("FACESCAN_POLICY_POOLS", '[{"name": "cpu", "models": ["hog"]}]'),
        ("FACESCAN_POLICY_DETECTOR_IMAGES", "ghcr.io/x"),
    ],
)
def test_a_wrong_policy_stops_the_operator_at_its_start(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises((ValidationError, SettingsError)):
        AdminPolicy()
