"""What the operator reads off the cluster: its detector Jobs, how their pods ended, and
why a pod cannot start.

Pure functions from Job, Pod and Event manifests (plain dicts, as the API returns them)
to a small typed view; used by the reconcile loop (and stuck.py). A pod's end is only a
hint of what happened to the images: the database is the truth, and the lease release
that follows charges only an image that was really left in progress.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubernetes.utils import quantity

from facescan_operator.k8s.jobs import ANNOTATION_IMAGES, LABEL_POOL, LABEL_SIZE_CLASS, LABEL_STEP
from facescan_operator.settlement import DETECTOR_CANNOT_START, WorkerOutcome, WorkerView

WAITING_TROUBLE = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
"""Reasons of a waiting container that keep a pod from running (the kubelet's words)."""
FAILED_CREATE = "FailedCreate"
UNSCHEDULABLE = "Unschedulable"


@dataclass(frozen=True)
class PodTrouble:
    """Why a Job's pod cannot be created or cannot run, in the API's reason and message."""

    reason: str
    message: str


@dataclass(frozen=True)
class JobView(WorkerView):
    """A detector Job as a worker, with what its pods tell of starting it."""

    created_at: datetime | None = None
    suspended: bool = False
    """spec.suspend (Kueue has not admitted it): no pod is expected."""
    deleting: bool = False
    pods: int = 0
    scheduled: bool = False
    """A pod of the Job is bound to a node and has not ended (it holds node resources)."""
    started_at: datetime | None = None
    """When its container started running, if it did."""
    trouble: PodTrouble | None = None
    """Why its pod cannot run (Unschedulable, ImagePullBackOff...), from the pod."""
    exit_code: int | None = None
    """Its container's, once it ended."""
    message: str = ""
    """Its ended container's terminated.message: a failed detector's last log lines."""

    @property
    def cannot_start(self) -> bool:
        """Its detector ended saying it cannot start (settings, model files): no image
        was tried, and another Job of the same template fails the same way."""
        return self.outcome is WorkerOutcome.FAILED and self.exit_code == DETECTOR_CANNOT_START


def parse_quantity(text: str) -> int:
    """A Kubernetes memory quantity in bytes ('512Mi', '2G', '1048576'), as the API
    server reads it (the Kubernetes client's parser)."""
    return int(quantity.parse_quantity(text))


def stamp(when: datetime) -> str:
    """A time as the API server writes it (RFC 3339, seconds, UTC)."""
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class JobEnd:
    """How a Job ended, from its own Complete or Failed condition."""

    succeeded: bool
    at: datetime | None
    reason: str


def job_end(job: Mapping[str, Any]) -> JobEnd | None:
    """The Job's end as its controller recorded it; None while it has not ended."""
    status = job.get("status") or {}
    for condition in status.get("conditions") or ():
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            at = parse_time(status.get("completionTime")) or parse_time(
                condition.get("lastTransitionTime")
            )
            kind = condition["type"]
            return JobEnd(kind == "Complete", at, condition.get("reason") or kind)
    return None


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


@dataclass(frozen=True)
class _Ended:
    outcome: WorkerOutcome
    detail: str
    at: datetime | None = None
    exit_code: int | None = None
    message: str = ""


def _pod_outcome(pod: Mapping[str, Any]) -> _Ended | None:
    status = pod.get("status") or {}
    for condition in status.get("conditions") or ():
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            reason = condition.get("reason") or "DisruptionTarget"
            return _Ended(WorkerOutcome.DISRUPTED, f"pod disrupted ({reason})")
    for container in status.get("containerStatuses") or ():
        terminated = (container.get("state") or {}).get("terminated")
        if not terminated:
            continue
        code, reason = terminated.get("exitCode"), terminated.get("reason") or ""
        when, message = parse_time(terminated.get("finishedAt")), terminated.get("message") or ""
        if reason == "OOMKilled":
            return _Ended(WorkerOutcome.OOM_KILLED, f"OOMKilled (exit {code})", when, code)
        if code == 0:
            return _Ended(WorkerOutcome.SUCCEEDED, "exit 0", when, 0)
        detail = f"{reason or 'Error'} (exit {code})"
        return _Ended(WorkerOutcome.FAILED, detail, when, code, str(message))
    if status.get("phase") == "Failed":
        return _Ended(WorkerOutcome.FAILED, status.get("reason") or "pod failed")
    return None


def _pod_start(pod: Mapping[str, Any]) -> tuple[bool, datetime | None, PodTrouble | None]:
    """(holds a node, when its container started, why it cannot run) of one pod."""
    status = pod.get("status") or {}
    ended = status.get("phase") in ("Succeeded", "Failed")
    scheduled = bool((pod.get("spec") or {}).get("nodeName"))
    trouble = None
    for condition in status.get("conditions") or ():
        if condition.get("type") != "PodScheduled":
            continue
        if condition.get("status") == "True":
            scheduled = True
        elif condition.get("reason") == UNSCHEDULABLE:
            trouble = PodTrouble(UNSCHEDULABLE, condition.get("message") or "")
    started = None
    for container in status.get("containerStatuses") or ():
        state = container.get("state") or {}
        ran = state.get("running") or state.get("terminated")
        if ran:
            started = parse_time(ran.get("startedAt")) or started
        waiting = state.get("waiting") or {}
        if trouble is None and waiting.get("reason") in WAITING_TROUBLE:
            trouble = PodTrouble(waiting["reason"], waiting.get("message") or "")
    return scheduled and not ended, started, trouble


def creation_refusal(events: Iterable[Mapping[str, Any]], job: str) -> PodTrouble | None:
    """The latest Warning FailedCreate Event of Job ``job``: its pod cannot be created."""
    latest, when = None, ""
    for event in events:
        involved = event.get("involvedObject") or {}
        if (
            event.get("type") != "Warning"
            or event.get("reason") != FAILED_CREATE
            or involved.get("kind") != "Job"
            or involved.get("name") != job
        ):
            continue
        stamp = str(
            event.get("lastTimestamp")
            or event.get("eventTime")
            or (event.get("metadata") or {}).get("creationTimestamp")
            or ""
        )
        if latest is None or stamp >= when:
            latest, when = PodTrouble(FAILED_CREATE, event.get("message") or ""), stamp
    return latest


def _starts(
    pods: Sequence[Mapping[str, Any]],
) -> tuple[bool, datetime | None, PodTrouble | None]:
    """The pods of one Job together: (one holds a node, latest start, first trouble)."""
    scheduled, started, trouble = False, None, None
    for pod in pods:
        on_node, began, why = _pod_start(pod)
        scheduled = scheduled or on_node
        if began is not None and (started is None or began > started):
            started = began
        trouble = trouble or why
    return scheduled, started, trouble


def pod_owner(pod: Mapping[str, Any]) -> str | None:
    """The name of the Job a pod belongs to (its Job controller's label)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    owner = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
    return str(owner) if owner else None


def pod_owners(pods: Iterable[Mapping[str, Any]]) -> set[str]:
    """The Jobs that still have a pod (running, or terminating after a delete)."""
    return {owner for pod in pods if (owner := pod_owner(pod)) is not None}


def view_jobs(
    jobs: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]
) -> list[JobView]:
    """One JobView per Job, its outcome from its pod (or its own conditions)."""
    pods_by_job: dict[str, list[Mapping[str, Any]]] = {}
    for pod in pods:
        owner = pod_owner(pod)
        if owner:
            pods_by_job.setdefault(owner, []).append(pod)
    views = []
    for job in jobs:
        meta = job.get("metadata") or {}
        labels = meta.get("labels") or {}
        name = meta["name"]
        outcome, detail, finished = WorkerOutcome.RUNNING, "", None
        own_pods = pods_by_job.get(name, [])
        scheduled, started, trouble = _starts(own_pods)
        seen = next(filter(None, map(_pod_outcome, own_pods)), None)
        if seen is not None:
            outcome, detail, finished = seen.outcome, seen.detail, seen.at
        end = job_end(job)
        if end is not None:
            finished = finished or end.at
            if outcome is WorkerOutcome.RUNNING:
                outcome = WorkerOutcome.SUCCEEDED if end.succeeded else WorkerOutcome.FAILED
                detail = end.reason
        container = job["spec"]["template"]["spec"]["containers"][0]
        memory = ((container.get("resources") or {}).get("limits") or {}).get("memory", "0")
        views.append(
            JobView(
                name=name,
                step=int(labels.get(LABEL_STEP, 0)),
                size_class=int(labels.get(LABEL_SIZE_CLASS, 0)),
                pool=labels.get(LABEL_POOL, ""),
                memory_bytes=parse_quantity(str(memory)),
                outcome=outcome,
                detail=detail,
                finished_at=finished,
                created_at=parse_time(meta.get("creationTimestamp")),
                suspended=bool(job["spec"].get("suspend")),
                deleting=bool(meta.get("deletionTimestamp")),
                pods=len(own_pods),
                scheduled=scheduled,
                started_at=started,
                trouble=trouble,
                exit_code=seen.exit_code if seen else None,
                message=seen.message if seen else "",
                images=int((meta.get("annotations") or {}).get(ANNOTATION_IMAGES, 0)),
            )
        )
    return views
