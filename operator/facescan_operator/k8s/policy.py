"""The cluster admin's policy: what a FaceScan author may ask of the operator's Jobs.

Creating a FaceScan makes the operator create pods with its own account, so a FaceScan
must not get more than the admin allows: detector images from allowed repositories,
library and model volumes of allowed types only (no hostPath unless the admin says so),
pools the admin defined, with their placement (node selector, tolerations, GPUs) fixed by
the admin, and a library name under the FaceScan's own namespace. Read once at the
operator's start from FACESCAN_POLICY_* (the chart's `policy` values); the handlers call
`enforce` before every reconcile, and a spec outside the policy is `Invalid`, with no Job.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from facescan_operator.k8s.spec import CPU_POOL, FaceScanSpec, NodePool

VolumeType = Literal["persistentVolumeClaim", "nfs", "csi", "hostPath"]
"""The volume sources the CRD's schema knows for a library or model volume."""

DEFAULT_POOL = CPU_POOL.name
"""The pool every model runs on when a FaceScan names none."""


class PolicyViolation(ValueError):
    """A FaceScan asks for more than the admin's policy allows (one line per problem)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class AdminPool(BaseModel):
    """A node pool as the admin defines it: where its pods go and what they get."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40)
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: tuple[dict[str, Any], ...] = ()
    gpu_resource_name: str | None = Field(default=None, alias="gpuResourceName")
    gpu_count: int = Field(default=0, alias="gpuCount", ge=0)
    gpu_memory_mib: int | None = Field(default=None, alias="gpuMemoryMiB", ge=0)
    max_memory_mib: int | None = Field(default=None, alias="maxMemoryMiB", ge=64)

    @model_validator(mode="after")
    def _gpu_needs_count(self) -> AdminPool:
        if self.gpu_resource_name and self.gpu_count < 1:
            raise ValueError(f"pool {self.name!r}: a GPU pool needs gpuCount of at least 1")
        return self


class AdminPolicy(BaseSettings):
    """FACESCAN_POLICY_DETECTOR_IMAGES, _VOLUME_TYPES and _POOLS, each JSON."""

    model_config = SettingsConfigDict(env_prefix="FACESCAN_POLICY_", extra="ignore")

    detector_images: tuple[str, ...] = ("ghcr.io/facescan/facescan-detector",)
    """Allowed detector images, by repository: an entry allows every tag and digest of
    that repository; an entry ending in "/" allows every repository under it (a whole
    registry or project); "*" allows any image. Compared as written (no docker.io
    normalisation)."""

    volume_types: tuple[VolumeType, ...] = ("persistentVolumeClaim", "nfs", "csi")
    """Volume sources a FaceScan may mount as its library or model volume."""

    pools: tuple[AdminPool, ...] = (
        AdminPool(
            name="gpu",
            gpuResourceName="nvidia.com/gpu",
            gpuCount=1,
            gpuMemoryMiB=4096,
            tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
        ),
        AdminPool(name=DEFAULT_POOL),
    )
    """The node pools FaceScans may name, with their placement (default: the chart's,
    a GPU pool of one nvidia.com/gpu per pod, tolerating its taint, and a CPU pool)."""

    @field_validator("pools")
    @classmethod
    def _unique_names(cls, pools: tuple[AdminPool, ...]) -> tuple[AdminPool, ...]:
        names = [pool.name for pool in pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique: {names}")
        return pools

    def image_allowed(self, image: str) -> bool:
        repository = repository_of(image)
        return any(
            entry == "*"
            or (entry.endswith("/") and repository.startswith(entry))
            or repository == entry
            for entry in self.detector_images
        )

    def pool(self, name: str) -> AdminPool | None:
        return next((pool for pool in self.pools if pool.name == name), None)


def repository_of(image: str) -> str:
    """`registry:5000/team/detector:1.2@sha256:...` -> `registry:5000/team/detector`."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def enforce(policy: AdminPolicy, spec: FaceScanSpec, namespace: str) -> FaceScanSpec:
    """The spec with its pools placed as the admin defined them, or PolicyViolation
    naming every field outside the policy."""
    problems: list[str] = []
    name = spec.library.name
    if name is not None and (not name.startswith(f"{namespace}/") or name == f"{namespace}/"):
        problems.append(
            f"spec.library.name: {name!r} is outside this FaceScan's namespace; "
            f"use a name under {namespace + '/'!r}"
        )
    images = {"spec.detector.image": spec.detector.image}
    if spec.detector.gpu_image:
        images["spec.detector.gpuImage"] = spec.detector.gpu_image
    for where, image in images.items():
        if not policy.image_allowed(image):
            problems.append(
                f"{where}: {image!r} is not an allowed detector image "
                f"(allowed: {', '.join(policy.detector_images)})"
            )
    volumes = {"spec.library.volume": spec.library.volume}
    if spec.detector.model_volume is not None:
        volumes["spec.detector.modelVolume"] = spec.detector.model_volume
    for where, volume in volumes.items():
        kinds = sorted(volume)
        if len(kinds) != 1:
            problems.append(f"{where}: needs exactly one volume source, not {kinds}")
        elif kinds[0] not in policy.volume_types:
            problems.append(
                f"{where}: {kinds[0]} is not an allowed volume source "
                f"(allowed: {', '.join(policy.volume_types)})"
            )
    placed: list[NodePool] = []
    asked = spec.node_pools or (CPU_POOL,)
    for wanted in asked:
        pool = policy.pool(wanted.name)
        if pool is None:
            where = "spec.nodePools" if spec.node_pools else "spec (no nodePools)"
            problems.append(
                f"{where}: there is no pool {wanted.name!r} "
                f"(the admin's pools: {', '.join(p.name for p in policy.pools)})"
            )
            continue
        placed.append(
            NodePool.model_validate(
                {
                    **pool.model_dump(by_alias=True, exclude={"name"}),
                    "name": wanted.name,
                    "models": wanted.models,
                    "maxConcurrentJobs": wanted.max_concurrent_jobs,
                }
            )
        )
    if problems:
        raise PolicyViolation(problems)
    return spec.model_copy(update={"node_pools": tuple(placed)})
