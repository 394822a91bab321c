"""Typed rows the queue returns: what a claim, a start, a failure or a status gives back.

Plain frozen dataclasses (they are built on hot paths); created by the repository only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from facescan_queue.types import ErrorType, ImageState

MediaKind = Literal["image", "video"]
"""What a registered file is (facescan.media_kind)."""


@dataclass(frozen=True, slots=True)
class LibraryPolicy:
    """A library's cascade and retry policy; None keeps the stored (or default) value."""

    cascade_models: tuple[str, ...] | None = None
    cascade_scales: tuple[float, ...] | None = None
    backoff_base_s: int | None = None
    backoff_multiplier: float | None = None
    backoff_cap_s: int | None = None
    max_attempts: int | None = None
    max_dimension: int | None = None
    """The long side images are capped at before detection (0: no cap)."""
    frames_per_video: int | None = None
    """Frames sampled per video, evenly over its duration (1-100)."""
    min_frame_spacing_s: float | None = None
    """Fewer frames of a short video where they would be closer than this (0: none)."""


@dataclass(frozen=True, slots=True)
class PeopleCounts:
    """A library's people and its faces by assignment (facescan.people_counts)."""

    people: int = 0
    assigned: int = 0
    pending: int = 0
    unassigned: int = 0


@dataclass(frozen=True, slots=True)
class MatchDistances:
    """A library's matching distances per embedding model; None keeps the stored one."""

    dlib_match: float | None = None
    dlib_auto_tag: float | None = None
    arcface_match: float | None = None
    arcface_auto_tag: float | None = None


@dataclass(frozen=True, slots=True)
class Library:
    """A library as stored."""

    name: str
    cascade: tuple[tuple[str, float], ...]
    backoff_base_s: int
    backoff_multiplier: float
    backoff_cap_s: int
    max_attempts: int
    max_dimension: int
    frames_per_video: int = 5
    min_frame_spacing_s: float = 0.0


@dataclass(frozen=True, slots=True)
class NewImage:
    """An image to register: a path relative to the library root, header facts if known,
    and the file's modification time (with its size, how a registration tells a changed
    file)."""

    path: str
    width: int | None = None
    height: int | None = None
    file_bytes: int | None = None
    mtime: datetime | None = None
    kind: MediaKind = "image"
    """A photo, or a video (its width and height its frames', from its header)."""
    duration_ms: int | None = None
    """A video's duration from its container header (None: a photo, or unknown)."""


@dataclass(frozen=True, slots=True)
class Registered:
    """What a registration did. ``changed``: registered files found changed, queued again
    from the first cascade step with their old result deleted; ``deferred``: changed
    files being detected right now, left for the next registration; ``returned``: images
    marked missing found again; ``missing``: images newly marked missing."""

    added: int = 0
    changed: int = 0
    deferred: int = 0
    returned: int = 0
    missing: int = 0

    def __add__(self, other: Registered) -> Registered:
        return Registered(
            self.added + other.added,
            self.changed + other.changed,
            self.deferred + other.deferred,
            self.returned + other.returned,
            self.missing + other.missing,
        )


@dataclass(frozen=True, slots=True)
class ClaimedImage:
    """An image leased to a worker by claim_batch."""

    image_id: int
    path: str
    width: int | None
    height: int | None
    file_bytes: int | None
    attempts: int


@dataclass(frozen=True, slots=True)
class StartedImage:
    """The image a worker is about to process, with its cascade step."""

    image_id: int
    path: str
    width: int | None
    height: int | None
    file_bytes: int | None
    step: int
    model: str
    scale: float
    attempt_id: int
    max_dimension: int
    """The library's cap on the long side (0: none): the image is detected at
    min(long side, max_dimension) x scale."""
    kind: MediaKind = "image"
    duration_ms: int | None = None
    frames_per_video: int = 5
    """For a video: how many frames to sample (the library's setting)."""
    min_frame_spacing_s: float = 0.0


@dataclass(frozen=True, slots=True)
class CascadeStep:
    """Where an in-process step-down goes next."""

    step: int
    model: str
    scale: float
    attempt_id: int


@dataclass(frozen=True, slots=True)
class FaceResult:
    """One face, box in original pixels (as a person sees the image)."""

    top: int
    right: int
    bottom: int
    left: int
    score: float | None = None
    landmarks: tuple[float, ...] = ()
    embedding: tuple[float, ...] | None = None
    frame_ms: int | None = None
    """A video's face: the timestamp of its frame."""
    track: int | None = None
    """A video's face: its track (one person across the video's frames), from 0."""

    def as_json(self) -> dict[str, Any]:
        face = {
            "top": self.top,
            "right": self.right,
            "bottom": self.bottom,
            "left": self.left,
            "score": self.score,
            "landmarks": list(self.landmarks),
            "embedding": None if self.embedding is None else list(self.embedding),
        }
        if self.frame_ms is not None:
            face["frame_ms"] = self.frame_ms
            face["track"] = self.track
        return face


@dataclass(frozen=True, slots=True)
class DetectionResult:
    """What complete_image commits for one image."""

    faces: tuple[FaceResult, ...]
    max_dimension: int
    duration_ms: int
    original_width: int | None = None
    original_height: int | None = None
    frames: tuple[int, ...] | None = None
    """A video's sampled frames (timestamps in ms), with or without faces."""


@dataclass(frozen=True, slots=True)
class FailureOutcome:
    """Where a failed image went: retry later, next cascade step, or dead."""

    state: ImageState
    step: int
    next_attempt_at: datetime


@dataclass(frozen=True, slots=True)
class Released:
    """A lease ended: the image charged (if any) and how many went back to the queue."""

    owner: str
    charged_image: int | None
    released: int


@dataclass(frozen=True, slots=True)
class GroupCount:
    """Runnable images of one (cascade step, size class) group, counted up to a cap."""

    step: int
    size_class: int
    runnable: int


@dataclass(frozen=True, slots=True)
class RecentOutcomes:
    """The last finished attempts of a library, for the circuit breaker."""

    finished: int
    unavailable: int
    failed: int
    last_id: int


@dataclass(frozen=True, slots=True)
class AttemptClock:
    """Where counting finished attempts stands: the database clock and the lowest attempt
    id that may still finish."""

    now: datetime
    from_id: int


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """A library's counts. ``retrying`` are pending images with a failure behind them.
    ``missing`` images (their file gone from the library root) are counted there only,
    not in their state (nor in degraded, retrying or by_error_type); ``images`` and
    ``faces`` include them (their faces are kept)."""

    images: int = 0
    pending: int = 0
    leased: int = 0
    done: int = 0
    degraded: int = 0
    retrying: int = 0
    dead: int = 0
    faces: int = 0
    by_error_type: dict[str, int] = field(default_factory=dict)
    missing: int = 0
    videos: int = 0
    """Of ``images``, the videos (each one item, its faces those of its frames)."""
    videos_done: int = 0
    video_faces: int = 0
    """Of ``faces``, those found in videos' frames."""

    def as_json(self) -> dict[str, Any]:
        counts: dict[str, Any] = {
            "images": self.images,
            "pending": self.pending,
            "leased": self.leased,
            "done": self.done,
            "degraded": self.degraded,
            "retrying": self.retrying,
            "dead": self.dead,
            "faces": self.faces,
            "by_error_type": dict(sorted(self.by_error_type.items())),
        }
        if self.missing:  # present when any image is missing
            counts["missing"] = self.missing
        if self.videos:  # present when any image is a video
            counts["videos"] = self.videos
            counts["videos_done"] = self.videos_done
            counts["video_faces"] = self.video_faces
        return counts


@dataclass(frozen=True, slots=True)
class FailureRow:
    """One failing image, as `facescan failures` lists it."""

    path: str
    error_type: ErrorType
    attempts: int
    last_error: str
    next_retry_at: datetime | None
    dead: bool
    last_model: str | None
    last_scale: float | None
    last_failure_at: datetime


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """An active lease."""

    owner: str
    step: int
    size_class: int
    claimed_at: datetime
    expires_at: datetime
    images: int
