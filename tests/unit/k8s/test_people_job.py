"""A FaceScan matches its new faces to its known people: when people Jobs start and how
they are read (tables of observations, no cluster), and the Job itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes_validate

from facescan_operator.k8s.jobs import ScanRef
from facescan_operator.k8s.people import (
    RETRY_AFTER,
    PeopleSync,
    build_people_job,
    decide,
)
from facescan_operator.k8s.spec import FaceScanSpec
from facescan_operator.k8s.utility_jobs import UtilityJob
from facescan_queue.models import PeopleCounts

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SCAN = ScanRef("photos", "family", "uid-1")


def spec(enabled: bool = True, **people: Any) -> FaceScanSpec:
    return FaceScanSpec.model_validate(
        {
            "database": {"secretName": "facescan-db"},
            "library": {"volume": {"persistentVolumeClaim": {"claimName": "photos"}}},
            "detector": {"image": "ghcr.io/facescan/facescan-detector:0.1.0"},
            "people": {"enabled": enabled, **people},
        }
    )


SYNCED = PeopleSync(synced_faces=40, synced_at=NOW - timedelta(minutes=2), last_job="old")


def test_nothing_runs_while_disabled_or_without_new_faces() -> None:
    assert not decide(spec(enabled=False), [], PeopleSync(), 40, True, NOW).create
    assert not decide(spec(), [], PeopleSync(), 0, True, NOW).create  # no face yet
    assert not decide(spec(), [], SYNCED, 40, True, NOW).create  # nothing new


def test_new_faces_are_synced_once_detection_settles_or_every_interval_while_it_runs() -> None:
    settled = decide(spec(), [], SYNCED, 45, True, NOW)
    assert settled.create
    assert settled.state.started_faces == 45
    # detection still running: not before the interval
    assert not decide(spec(), [], SYNCED, 45, False, NOW).create
    later = decide(spec(), [], SYNCED, 45, False, NOW + timedelta(minutes=9))
    assert later.create
    # the first sync of a library does not wait for its scan to finish
    assert decide(spec(), [], PeopleSync(), 3, False, NOW).create


def test_a_running_job_gets_no_twin() -> None:
    running = UtilityJob("family-people-aaaaaa", NOW - timedelta(seconds=30))
    assert not decide(spec(), [running], SYNCED, 45, True, NOW).create


def test_a_job_that_succeeded_is_read_once_with_the_counts_and_deleted() -> None:
    started = PeopleSync(synced_faces=40, started_faces=45, last_job="old")
    done = UtilityJob("family-people-bbbbbb", NOW - timedelta(minutes=1), NOW, True)
    counts = PeopleCounts(people=2, assigned=30, pending=3, unassigned=12)
    plan = decide(spec(), [done], started, 45, True, NOW, counts)
    assert plan.delete == [done.name]
    assert plan.state.synced_faces == 45
    assert plan.state.counts == counts
    assert plan.state.last_job == done.name
    assert not plan.create  # everything synced
    assert [e[1] for e in plan.events] == ["PeopleSynced"]
    assert "2 people; faces 30 assigned, 3 pending, 12 unassigned" in plan.events[0][2]
    # the next tick finds it still listed (its deletion in flight): not read again
    again = decide(spec(), [done], plan.state, 45, True, NOW)
    assert again.events == []
    assert PeopleSync.of({"people": plan.state.as_json()}) == plan.state


def test_a_failed_job_is_retried_after_a_pause() -> None:
    failed = UtilityJob("family-people-cccccc", NOW - timedelta(minutes=1), NOW, False)
    plan = decide(spec(), [failed], SYNCED, 45, True, NOW)
    assert [e[1] for e in plan.events] == ["PeopleSyncFailed"]
    assert not plan.create
    assert decide(spec(), [], plan.state, 45, True, NOW + RETRY_AFTER).create


def test_the_job_runs_people_sync_in_the_detector_image_restricted_and_valid() -> None:
    job = build_people_job(SCAN, spec(), "family-people-abcdef")
    kubernetes_validate.validate(job, "1.30", strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/facescan/facescan-detector:0.1.0"
    assert container["args"] == [
        "people",
        "sync",
        "--library",
        "photos/family",
        "--cluster",
        "--json",
    ]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]  # no library volume: no file read
    secret = container["env"][0]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "facescan-db", "key": "dsn"}


def test_with_cluster_off_the_job_only_matches() -> None:
    job = build_people_job(SCAN, spec(cluster=False), "family-people-abcdef")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert "--cluster" not in container["args"]
