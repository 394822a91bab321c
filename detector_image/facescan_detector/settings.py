"""The detector's work assignment, from its environment (the Job contract) and flags.

Read by ``facescan-detector run``. The operator (or the local runner) sets these in the
pod's / subprocess's environment; command-line flags override them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DetectorSettings(BaseSettings):
    """What one detector process works on and how."""

    model_config = SettingsConfigDict(env_prefix="FACESCAN_", extra="ignore")

    lease_owner: str = Field(min_length=1)
    """The lease this process works through (FACESCAN_LEASE_OWNER): a Job's name."""

    library: str | None = None
    """With it (FACESCAN_LIBRARY, as a Job of the operator has it), the process claims
    its own batch when it starts: up to ``batch_size`` runnable images of cascade step
    ``step`` and size class ``size_class``, leased to ``lease_owner``; nothing is leased
    while a Job waits to run. Without it, it works through a lease its runner claimed."""

    step: int = Field(default=0, ge=0)
    """The cascade step of the batch to claim (FACESCAN_STEP)."""

    size_class: int = Field(default=0, ge=0)
    """The size class of the batch to claim (FACESCAN_SIZE_CLASS)."""

    batch_size: int = Field(default=25, ge=1, le=10000)
    """Most images to claim (FACESCAN_BATCH_SIZE)."""

    library_root: Path
    """The directory image paths are relative to (FACESCAN_LIBRARY_ROOT). Files outside
    it, by path or by symlink, are refused."""

    image_timeout_s: float = Field(default=300.0, gt=0)
    """Loading and detecting one image are cut after this many seconds together (failure
    type timeout): a decoder that does not return is not waited for either. A video's
    sampled frames, decoded and detected, share one such budget."""

    lease_seconds: int = Field(default=120, ge=10)
    """How long the lease lasts without a heartbeat; heartbeats come every third of it."""

    hog_upsample: int = Field(default=1, ge=0, le=3)
    """dlib upsamplings for HOG and CNN (1 finds faces down to ~40 px, as face_recognition)."""

    threads: int = Field(default=0, ge=0)
    """CPU threads for HOG detection (FACESCAN_THREADS); 0: the CPUs this process may
    use (its affinity, capped by a container CPU limit). From 2 on, dlib's detector runs
    on two threads with exactly its one-thread result."""

    model: Literal["hog", "cnn", "insightface"] | None = None
    """The model of the lease's cascade step (FACESCAN_MODEL), loaded while the process
    connects and reads its first image; a hint only: each image's own step decides."""

    model_dir: Path | None = None
    """InsightFace models (det_*.onnx + w600k_*.onnx), e.g. a mounted volume."""

    database_retry_s: float = Field(default=600.0, ge=0)
    """How long a database outage is waited out (with backoff) before the process exits
    75; images are never charged for it."""

    max_unavailable: int = Field(default=3, ge=1)
    """Consecutive images failing as unavailable (dead mount) before the process stops
    and hands its remaining images back."""

    prefetch: bool | None = None
    """Decode the next image of the lease while the current one is detected: from the
    start of detection (true), never (false; FACESCAN_PREFETCH). Default: when the
    detector makes room for it, which one-thread models do at once and two-thread HOG
    once the largest pyramid level is scanned (~20 MB lower peak, as fast)."""
