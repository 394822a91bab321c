"""Builds the detector Job of one batch: a pure function of the FaceScan and the batch.

Called by the operator's apply step. The Job runs `facescan-detector run` with the Job
contract in its environment: its assignment (library, cascade step, size class, batch
size), which its detector claims when it starts, leased to the Job's name; a memory
request and limit from right-sizing, on the node pool that serves the batch's model,
non-root with a read-only root filesystem. Retries are the operator's business:
backoffLimit 0, but a disruption (DisruptionTarget) is ignored by the Job's
podFailurePolicy.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from facescan_operator.k8s.spec import GROUP, KIND, VERSION, FaceScanSpec, NodePool
from facescan_operator.sizing import MIB

DETECTOR_UID = 10001
LABEL_SCAN = f"{GROUP}/scan"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_STEP = f"{GROUP}/step"
LABEL_SIZE_CLASS = f"{GROUP}/size-class"
LABEL_POOL = f"{GROUP}/pool"
ANNOTATION_IMAGES = f"{GROUP}/images"
"""The most images a Job's detector claims (its batch size)."""
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
TTL_BACKSTOP_S = 3600
"""Added to a Job's ttlSecondsAfterFinished (see build_detector_job)."""


@dataclass(frozen=True)
class ScanRef:
    """The FaceScan a Job belongs to."""

    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class JobBatch:
    """One batch to run: the detector claims up to ``images`` runnable images of (step,
    size class) when it starts, leased to ``owner``, the Job's name."""

    owner: str
    step: int
    size_class: int
    model: str
    scale: float
    memory_bytes: int
    images: int


def scan_labels(scan: ScanRef) -> dict[str, str]:
    """The labels every object of this FaceScan carries (also its Jobs' selector)."""
    return {
        "app.kubernetes.io/name": "facescan-detector",
        "app.kubernetes.io/instance": scan.name,
        LABEL_COMPONENT: "detector",
        "app.kubernetes.io/part-of": "facescan",
        "app.kubernetes.io/managed-by": "facescan-operator",
        LABEL_SCAN: scan.name,
    }


def owner_reference(scan: ScanRef) -> dict[str, Any]:
    """The FaceScan as the controller of an object it created (deleted with it)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": scan.name,
        "uid": scan.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def job_name(scan_name: str, token: str) -> str:
    """<scan>-<token>, at most 63 characters (it becomes a label value of the pods)."""
    return f"{scan_name[: 62 - len(token)]}-{token}".strip("-")


_BATCH_TOKEN = re.compile(r"s[0-9]+c[0-9]+-[0-9a-f]{6}")


def batch_job_name(scan_name: str, step: int, size_class: int) -> str:
    """A new detector Job's name, also its lease owner: <scan>-s<step>c<class>-<random>."""
    return job_name(scan_name, f"s{step}c{size_class}-{secrets.token_hex(3)}")


def owned_by(scan_name: str, owner: str) -> bool:
    """Whether a lease owner is the name of one of this FaceScan's detector Jobs (another
    FaceScan of the same library has its own; their leases are not this one's to end)."""
    token = owner.rsplit("-", 2)[-2:]
    return (
        len(token) == 2
        and _BATCH_TOKEN.fullmatch("-".join(token)) is not None
        and job_name(scan_name, "-".join(token)) == owner
    )


def _quantity(memory_bytes: int) -> str:
    return f"{-(-memory_bytes // MIB)}Mi"


def detector_security() -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's and the container's securityContext of the detector image's pods: what
    the `restricted` Pod Security level admits, as uid 10001 with a read-only root."""
    pod = {
        "runAsNonRoot": True,
        "runAsUser": DETECTOR_UID,
        "runAsGroup": DETECTOR_UID,
        "fsGroup": DETECTOR_UID,
        # a library of millions of files: chown them only if the volume's root is not
        # the group's already, not at every pod's start
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    return pod, container


def placement(pool: NodePool) -> dict[str, Any]:
    """The pod spec fields that put a pod on the pool (as the admin's policy placed it)."""
    fields: dict[str, Any] = {}
    if pool.node_selector:
        fields["nodeSelector"] = dict(pool.node_selector)
    if pool.tolerations:
        fields["tolerations"] = [dict(t) for t in pool.tolerations]
    return fields


def build_detector_job(scan: ScanRef, spec: FaceScanSpec, batch: JobBatch) -> dict[str, Any]:
    """The Job manifest for one batch."""
    pool: NodePool = spec.pool_for(batch.model)
    labels = {
        **scan_labels(scan),
        LABEL_STEP: str(batch.step),
        LABEL_SIZE_CLASS: str(batch.size_class),
        LABEL_POOL: pool.name,
    }
    job_labels = dict(labels)
    if spec.kueue_queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = spec.kueue_queue_name
    memory = _quantity(batch.memory_bytes)
    resources: dict[str, Any] = {
        "requests": {"memory": memory, "cpu": spec.detector.cpu},
        "limits": {"memory": memory},
    }
    if pool.is_gpu:
        assert pool.gpu_resource_name is not None
        resources["limits"][pool.gpu_resource_name] = str(pool.gpu_count)
    env: list[dict[str, Any]] = [
        {"name": "FACESCAN_LEASE_OWNER", "value": batch.owner},
        {"name": "FACESCAN_LIBRARY", "value": spec.library_name(scan.namespace, scan.name)},
        {"name": "FACESCAN_STEP", "value": str(batch.step)},
        {"name": "FACESCAN_SIZE_CLASS", "value": str(batch.size_class)},
        {"name": "FACESCAN_BATCH_SIZE", "value": str(batch.images)},
        {"name": "FACESCAN_LIBRARY_ROOT", "value": spec.library.mount_path},
        {"name": "FACESCAN_IMAGE_TIMEOUT_S", "value": str(spec.image_timeout_seconds)},
        {"name": "FACESCAN_LEASE_SECONDS", "value": str(spec.lease_seconds)},
        {"name": "FACESCAN_MODEL", "value": batch.model},  # loaded while connecting
        {"name": "FACESCAN_THREADS", "value": str(spec.detector.threads)},
        {
            "name": "FACESCAN_DSN",
            "valueFrom": {
                "secretKeyRef": {
                    "name": spec.database.detector_secret_name or spec.database.secret_name,
                    "key": spec.database.key,
                }
            },
        },
        {"name": "HOME", "value": "/tmp"},
        {"name": "MALLOC_ARENA_MAX", "value": "2"},
    ]
    mounts = [
        {"name": "library", "mountPath": spec.library.mount_path, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "library", **spec.library.volume},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    if spec.detector.model_volume is not None:
        env.append({"name": "FACESCAN_MODEL_DIR", "value": spec.detector.model_mount_path})
        mounts.append(
            {"name": "models", "mountPath": spec.detector.model_mount_path, "readOnly": True}
        )
        volumes.append({"name": "models", **spec.detector.model_volume})
    image = (
        spec.detector.gpu_image
        if pool.is_gpu and spec.detector.gpu_image
        else (spec.detector.image)
    )
    pod_security, container_security = detector_security()
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security,
        "containers": [
            {
                "name": "detector",
                "image": image,
                "imagePullPolicy": spec.detector.image_pull_policy,
                "command": ["facescan-detector"],
                "args": ["run"],
                # a failed detector's last log lines in its pod's status, for the
                # operator's Events (the detector logs no secret)
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "env": env,
                "resources": resources,
                "volumeMounts": mounts,
                "securityContext": container_security,
            }
        ],
        "volumes": volumes,
    }
    pod_spec.update(placement(pool))
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        # A pod preempted, evicted or lost with its node is not a failure: its detector
        # hands the lease back on SIGTERM, and the Job gets a new pod, which finds what
        # is left (nothing, then it ends at once) without using up the backoff limit.
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                }
            ]
        },
        # The operator deletes a finished Job ttlSecondsAfterFinished after it has read how
        # its pod ended; Kubernetes' own TTL is only a backstop for an operator that is
        # gone, late enough never to delete a Job before the operator has settled it (an
        # OOMKilled pod deleted unread would be charged crash instead of oom).
        "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished + TTL_BACKSTOP_S,
        # a hung pod cannot hold its images forever
        "activeDeadlineSeconds": batch.images * spec.image_timeout_seconds + 900,
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if spec.kueue_queue_name:
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": batch.owner,
            "namespace": scan.namespace,
            "labels": job_labels,
            "annotations": {
                f"{GROUP}/model": batch.model,
                f"{GROUP}/scale": f"{batch.scale:g}",
                ANNOTATION_IMAGES: str(batch.images),
            },
            "ownerReferences": [owner_reference(scan)],
        },
        "spec": job_spec,
    }
