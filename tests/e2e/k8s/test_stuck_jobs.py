"""Detector Jobs whose pods cannot be created or cannot run, on the real control plane: the
FaceScan says so within a tick (Degraded with the API's reason and message, one Warning
Event), the images go back uncharged, no Job is created over and over, and a batch too
large for every node moves down the cascade."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from facescan_operator.k8s import handlers, stuck
from facescan_operator.sizing import CalibrationTable
from facescan_queue.repository import Queue
from tests.e2e.local.support import HOG_FACES

from .cluster import Kube
from .operator_support import (
    Obj,
    Operator,
    apply,
    attempts,
    created_jobs,
    events,
    facescan,
    jobs,
    phase,
    poll,
    register,
    status,
)

ALL = sorted(HOG_FACES)


def degraded(kube: Kube, name: str = "photos") -> Obj | None:
    for condition in status(kube, name).get("conditions") or ():
        if condition["type"] == "Degraded" and condition["status"] == "True":
            return dict(condition)
    return None


async def assert_nothing_charged(queue: Queue, dsn: str, library: str) -> None:
    """Nothing ran: no attempt, no lease, every image still pending at its first step."""
    assert await attempts(dsn) == []
    assert await queue.leases(library) == []
    counts = await queue.status(library)
    assert (counts.pending, counts.leased, counts.retrying, counts.dead) == (6, 0, 0, 0)


async def test_jobs_refused_by_pod_security_degrade_the_facescan_and_charge_nothing(
    cluster: Kube, operator: Operator, queue: Queue, photos: Path, dsn: str, library: str
) -> None:
    """A library on a hostPath volume, which the admin's policy allows, in a namespace that
    enforces `restricted`: the Job exists, its pod never does (FailedCreate)."""
    await register(queue, library, photos, ALL)
    operator.env["FACESCAN_POLICY_VOLUME_TYPES"] = '["persistentVolumeClaim", "hostPath"]'
    await operator.start()
    scan = facescan("photos", parallelism=2, batchSize=3)
    scan["spec"]["library"] = {
        "volume": {"hostPath": {"path": str(photos), "type": "Directory"}},
        "mountPath": "/library",
        "rescanIntervalSeconds": 0,
    }
    await apply(cluster, scan)

    condition = await poll(lambda: degraded(cluster), 60, "Degraded")
    assert condition["reason"] == "FailedCreate"
    assert 'violates PodSecurity "restricted:latest"' in condition["message"]
    assert "hostPath" in condition["message"]
    assert phase(cluster, "photos") == "Degraded"
    warned = await poll(lambda: events(cluster, "PodsCannotStart"), 30, "PodsCannotStart")
    assert warned[0]["type"] == "Warning"
    assert warned[0]["involvedObject"]["name"] == "photos"
    assert "FailedCreate" in warned[0]["message"]
    await poll(lambda: not jobs(cluster, "photos"), 30, "the refused Jobs to be deleted")
    await assert_nothing_charged(queue, dsn, library)
    # a few ticks later: held back, not one refused Job after another, one Event per Job
    made = len(created_jobs(cluster))
    await asyncio.sleep(5)
    assert len(created_jobs(cluster)) == made <= 2
    assert len(events(cluster, "PodsCannotStart")) == made
    await assert_nothing_charged(queue, dsn, library)


async def test_an_image_no_node_can_pull_is_reported_and_its_images_handed_back(
    cluster: Kube, operator: Operator, queue: Queue, photos: Path, dsn: str, library: str
) -> None:
    await register(queue, library, photos, ALL)
    operator.env["FACESCAN_POLICY_DETECTOR_IMAGES"] = '["facescan-detector", "registry.example/"]'
    await operator.start()
    scan = facescan("photos", parallelism=1, batchSize=6)
    scan["spec"]["detector"] = {"image": "registry.example/detector:missing"}
    await apply(cluster, scan)

    condition = await poll(lambda: degraded(cluster), 90, "Degraded")
    assert condition["reason"] == "ImagePullBackOff"
    assert "registry.example/detector:missing" in condition["message"]
    warned = await poll(lambda: events(cluster, "PodsCannotStart"), 30, "PodsCannotStart")
    assert len(warned) == 1
    await poll(lambda: not jobs(cluster, "photos"), 30, "the Job to be deleted")
    await assert_nothing_charged(queue, dsn, library)


async def test_a_detector_that_cannot_start_holds_its_pool_instead_of_a_job_a_tick(
    cluster: Kube, operator: Operator, queue: Queue, photos: Path, dsn: str, library: str
) -> None:
    """InsightFace on an image without its model files: the detector exits 2 (cannot
    start); its pod's status keeps its last log lines (FallbackToLogsOnError)."""
    await register(queue, library, photos, ALL)
    await operator.start()
    scan = facescan("photos", parallelism=2, batchSize=3)
    scan["spec"]["cascade"] = [{"model": "insightface", "scale": 1.0}]
    await apply(cluster, scan)

    condition = await poll(lambda: degraded(cluster), 90, "Degraded")
    assert condition["reason"] == "DetectorCannotStart"
    assert "InsightFace model directory" in condition["message"], condition
    warned = await poll(lambda: events(cluster, "PodsCannotStart"), 30, "PodsCannotStart")
    assert "DetectorCannotStart" in warned[0]["message"]
    assert "nothing ran" in warned[0]["message"]
    await poll(lambda: not jobs(cluster, "photos"), 30, "the failed Jobs to be deleted")
    await assert_nothing_charged(queue, dsn, library)
    # held back for a minute: not one failing Job after another (the older worker's loop)
    made = len(created_jobs(cluster))
    await asyncio.sleep(6)
    assert len(created_jobs(cluster)) == made <= 2
    assert phase(cluster, "photos") == "Degraded"
    await assert_nothing_charged(queue, dsn, library)


@pytest.mark.slow
async def test_a_batch_too_large_for_every_node_moves_down_the_cascade(
    cluster: Kube,
    operator: Operator,
    queue: Queue,
    photos: Path,
    dsn: str,
    library: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CNN sized at 100 GB per megapixel: no node (32 GiB) fits its pods, the scheduler
    says Insufficient memory, and the images go on with HOG, no attempt burnt."""
    calibration = tmp_path / "calibration.json"
    table = {"models": {"cnn": {"base_mb": 180, "mb_per_megapixel": 100_000}}}
    calibration.write_text(json.dumps(table))
    monkeypatch.setattr(handlers, "CALIBRATION", CalibrationTable.load(calibration))
    monkeypatch.setattr(stuck, "GRACE", timedelta(seconds=3))  # a cluster autoscaler's wait
    await register(queue, library, photos, ALL)
    await operator.start()
    cascade = [{"model": "cnn", "scale": 1.0}, {"model": "hog", "scale": 1.0}]
    await apply(cluster, facescan("photos", cascade=cascade, parallelism=2, batchSize=3))

    await poll(lambda: phase(cluster, "photos") == "Completed", 180, "the scan to complete")
    warned = events(cluster, "BatchTooLargeForNodes")
    assert warned
    assert "Insufficient memory" in warned[0]["message"]
    assert dict(await queue.faces_per_image(library)) == HOG_FACES
    rows: list[Any] = await attempts(dsn)
    done = [r for r in rows if r["outcome"] == "done"]
    assert {(r["step"], r["model"]) for r in done} == {(1, "hog")}
    for path in ALL:
        image = await queue.image(library, path)
        assert (image["state"], image["step"], image["attempts"]) == ("done", 1, 0)
