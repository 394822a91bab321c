"""The FaceScan spec as typed data, with the same defaults as the CRD's schema.

Parsed from the resource body by the kopf handlers; a test keeps these defaults equal to
crds/facescan.yaml. The API server already refused what the schema forbids; what it
cannot check (a cascade that ends with a model no pool serves) is checked here.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from facescan_queue import defaults
from facescan_queue.models import MatchDistances

ModelName = Literal["hog", "cnn", "insightface"]

GROUP = "facescan.io"
VERSION = "v1alpha1"
PLURAL = "facescans"
KIND = "FaceScan"


class _Spec(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class Database(_Spec):
    secret_name: str = Field(alias="secretName", min_length=1)
    key: str = "dsn"
    detector_secret_name: str | None = Field(default=None, alias="detectorSecretName")
    """The detector pods' Secret (same key), for a role granted the detector's calls only;
    default: secret_name."""


CPU_PATTERN = r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$"
"""A Kubernetes CPU quantity: cores ("2", "1.5") or millicores ("500m")."""


class Library(_Spec):
    name: str | None = None
    volume: dict[str, Any]
    mount_path: str = Field(default="/library", alias="mountPath")
    rescan_interval_seconds: int = Field(default=3600, alias="rescanIntervalSeconds", ge=0)
    """The operator registers the library's files when the FaceScan is created and this
    often after (a register Job); 0: never (register them with `facescan register`)."""


class Detector(_Spec):
    image: str = Field(min_length=1)
    gpu_image: str | None = Field(default=None, alias="gpuImage")
    image_pull_policy: str = Field(default="IfNotPresent", alias="imagePullPolicy")
    model_volume: dict[str, Any] | None = Field(default=None, alias="modelVolume")
    model_mount_path: str = Field(default="/models", alias="modelMountPath")
    cpu: str = Field(default="1", pattern=CPU_PATTERN)

    @property
    def threads(self) -> int:
        """The detector's CPU threads (FACESCAN_THREADS): its CPU request, rounded up."""
        cpus = float(self.cpu[:-1]) / 1000 if self.cpu.endswith("m") else float(self.cpu)
        return max(1, math.ceil(cpus))


class Step(_Spec):
    model: ModelName
    scale: float = Field(default=1.0, gt=0, le=1)


class RetryPolicy(_Spec):
    backoff_base_seconds: int = Field(default=60, alias="backoffBaseSeconds", ge=1)
    backoff_multiplier: float = Field(default=2.0, alias="backoffMultiplier", ge=1)
    backoff_cap_seconds: int = Field(default=3600, alias="backoffCapSeconds", ge=1)
    max_attempts: int = Field(default=5, alias="maxAttempts", ge=1, le=100)

    @model_validator(mode="after")
    def _base_within_cap(self) -> RetryPolicy:
        if self.backoff_base_seconds > self.backoff_cap_seconds:
            raise ValueError(
                f"backoffBaseSeconds ({self.backoff_base_seconds}) must not exceed "
                f"backoffCapSeconds ({self.backoff_cap_seconds})"
            )
        return self


class NodePool(_Spec):
    name: str
    models: tuple[ModelName, ...]
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: tuple[dict[str, Any], ...] = ()
    gpu_resource_name: str | None = Field(default=None, alias="gpuResourceName")
    gpu_count: int = Field(default=0, alias="gpuCount", ge=0)
    gpu_memory_mib: int | None = Field(default=None, alias="gpuMemoryMiB")
    max_memory_mib: int | None = Field(default=None, alias="maxMemoryMiB")
    max_concurrent_jobs: int | None = Field(default=None, alias="maxConcurrentJobs")

    @property
    def is_gpu(self) -> bool:
        return bool(self.gpu_resource_name) and self.gpu_count > 0


DEFAULT_CASCADE = tuple(
    Step.model_validate({"model": model, "scale": scale})
    for model, scale in defaults.DEFAULT_CASCADE
)
CPU_POOL = NodePool(name="cpu", models=("hog", "cnn", "insightface"))


class MatchBand(_Spec):
    """Matching distances of one embedding model (None: the library's, by default
    face_recognition's 0.6 and 0.5 for dlib, 0.5 and 0.4 in 1 - cosine for ArcFace)."""

    match_distance: float | None = Field(default=None, alias="matchDistance", gt=0, le=2)
    auto_tag_distance: float | None = Field(default=None, alias="autoTagDistance", gt=0, le=2)


class People(_Spec):
    enabled: bool = False
    cluster: bool = True
    """Each people Job also groups the faces nobody has into unnamed people."""
    sync_interval_seconds: int = Field(default=600, alias="syncIntervalSeconds", ge=60)
    dlib: MatchBand = Field(default_factory=MatchBand)
    arcface: MatchBand = Field(default_factory=MatchBand)

    def distances(self) -> MatchDistances:
        return MatchDistances(
            self.dlib.match_distance,
            self.dlib.auto_tag_distance,
            self.arcface.match_distance,
            self.arcface.auto_tag_distance,
        )


class FaceScanSpec(_Spec):
    suspend: bool = False
    database: Database
    library: Library
    detector: Detector
    cascade: tuple[Step, ...] = DEFAULT_CASCADE
    max_dimension: int = Field(default=defaults.DEFAULT_MAX_DIMENSION, alias="maxDimension", ge=0)
    frames_per_video: int = Field(
        default=defaults.DEFAULT_FRAMES_PER_VIDEO, alias="framesPerVideo", ge=1, le=100
    )
    """Frames sampled per video, evenly over its duration."""
    min_frame_spacing_seconds: float = Field(default=0.0, alias="minFrameSpacingSeconds", ge=0)
    """Fewer frames of a short video where they would be closer than this (0: none)."""
    image_timeout_seconds: int = Field(default=300, alias="imageTimeoutSeconds", ge=1)
    batch_size: int = Field(default=25, alias="batchSize", ge=1, le=10000)
    parallelism: int = Field(default=4, ge=1, le=1000)
    lease_seconds: int = Field(default=300, alias="leaseSeconds", ge=30)
    ttl_seconds_after_finished: int = Field(default=600, alias="ttlSecondsAfterFinished", ge=0)
    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy, alias="retryPolicy")
    node_pools: tuple[NodePool, ...] = Field(default=(), alias="nodePools")
    kueue_queue_name: str | None = Field(default=None, alias="kueueQueueName")
    people: People = Field(default_factory=People)

    @model_validator(mode="after")
    def _every_step_has_a_pool(self) -> FaceScanSpec:
        for step in self.cascade:
            if not any(step.model in pool.models for pool in self.pools):
                raise ValueError(
                    f"cascade step {step.model}@{step.scale:g} has no node pool serving "
                    f"{step.model!r}: add it to a pool's models"
                )
        return self

    @property
    def pools(self) -> tuple[NodePool, ...]:
        return self.node_pools or (CPU_POOL,)

    def pool_for(self, model: str) -> NodePool:
        """The first pool serving the model (validated to exist)."""
        return next(pool for pool in self.pools if model in pool.models)

    def library_name(self, namespace: str, name: str) -> str:
        return self.library.name or f"{namespace}/{name}"
