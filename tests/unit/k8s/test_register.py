"""A FaceScan registers its own files: when register Jobs start and how they are read
(tables of observations, no cluster), and the Job itself (valid, restricted, read-only)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes_validate
import pytest

from facescan_operator.k8s.jobs import ScanRef
from facescan_operator.k8s.policy import AdminPolicy, enforce
from facescan_operator.k8s.register import (
    RegisterJob,
    Registration,
    build_register_job,
    decide,
    view,
)
from facescan_operator.k8s.spec import FaceScanSpec

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SCAN = ScanRef("photos", "family", "uid-1")
HOUR = timedelta(hours=1)


def spec(interval: int = 3600) -> FaceScanSpec:
    return FaceScanSpec.model_validate(
        {
            "database": {"secretName": "facescan-db"},
            "library": {
                "volume": {"persistentVolumeClaim": {"claimName": "photos", "readOnly": True}},
                "rescanIntervalSeconds": interval,
            },
            "detector": {"image": "ghcr.io/facescan/facescan-detector:0.1.0"},
        }
    )


def ended(name: str, ok: bool, ago: timedelta = timedelta(0)) -> RegisterJob:
    return RegisterJob(name, NOW - ago - timedelta(minutes=1), NOW - ago, ok)


RUNNING = RegisterJob("family-register-aaaaaa", NOW - timedelta(minutes=1))
CASES: dict[str, tuple[Any, ...]] = {
    # case: (interval, jobs, previous, create, deleted, events, registered_at)
    "new FaceScan": (3600, [], Registration(), True, [], [], None),
    "running": (3600, [RUNNING], Registration(), False, [], [], None),
    "first one done": (
        3600,
        [ended("r1", True)],
        Registration(),
        False,
        ["r1"],
        ["LibraryRegistered"],
        NOW,
    ),
    "read once": (
        3600,
        [ended("r1", True)],
        Registration(NOW, "r1"),
        False,
        ["r1"],
        [],
        NOW,
    ),
    "interval not over": (
        3600,
        [],
        Registration(NOW - HOUR / 2, "r1"),
        False,
        [],
        [],
        NOW - HOUR / 2,
    ),
    "interval over": (3600, [], Registration(NOW - HOUR, "r1"), True, [], [], NOW - HOUR),
    "failed: retried after 5 minutes": (
        3600,
        [ended("r2", False)],
        Registration(NOW - 2 * HOUR, "r1"),
        False,
        ["r2"],
        ["RegisterFailed"],
        NOW - 2 * HOUR,
    ),
    "failed 5 minutes ago": (
        3600,
        [],
        Registration(NOW - 2 * HOUR, "r2", NOW - timedelta(minutes=5)),
        True,
        [],
        [],
        NOW - 2 * HOUR,
    ),
    "never: interval 0": (
        0,
        [ended("r1", True)],
        Registration(),
        False,
        ["r1"],
        ["LibraryRegistered"],
        NOW,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_register_jobs_start_when_new_and_every_interval_and_are_read_once(case: str) -> None:
    interval, jobs, previous, create, deleted, events, registered_at = CASES[case]
    plan = decide(spec(interval), jobs, previous, NOW)
    assert plan.create is create
    assert plan.delete == deleted
    assert [reason for _, reason, _ in plan.events] == events
    assert plan.state.registered_at == registered_at


def test_the_registration_survives_the_status_round_trip() -> None:
    kept = Registration(NOW, "r1", NOW - HOUR)
    assert Registration.of({"registration": kept.as_json()}) == kept
    assert Registration.of({}) == Registration()


def test_register_jobs_are_read_from_their_conditions() -> None:
    stamp = "2026-12-03T12:00:00Z"
    jobs = [
        {
            "metadata": {"name": "b", "creationTimestamp": stamp},
            "status": {
                "conditions": [{"type": "Failed", "status": "True", "lastTransitionTime": stamp}]
            },
        },
        {"metadata": {"name": "a", "creationTimestamp": "2026-12-03T11:00:00Z"}, "status": {}},
    ]
    assert view(jobs) == [
        RegisterJob("a", NOW - HOUR, None, None),
        RegisterJob("b", NOW, NOW, False),
    ]


@pytest.mark.parametrize("version", ["1.30", "1.37"])
def test_the_register_job_is_valid_read_only_and_runs_on_a_pool_without_gpus(version: str) -> None:
    placed = enforce(
        AdminPolicy(
            pools=(
                {"name": "gpu", "gpuResourceName": "nvidia.com/gpu", "gpuCount": 1},
                {"name": "cpu", "nodeSelector": {"pool": "cpu"}},
            )
        ),  # type: ignore[arg-type]
        spec(),
        "photos",
    )
    job = build_register_job(SCAN, placed, "family-register-abcdef")
    kubernetes_validate.validate(job, version, strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["facescan"]
    assert container["args"] == ["register", "/library", "--library", "photos/family", "--json"]
    assert container["volumeMounts"][0] == {
        "name": "library",
        "mountPath": "/library",
        "readOnly": True,
    }
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert pod["nodeSelector"] == {"pool": "cpu"}
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "register"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "FaceScan"
