"""The people's values: thresholds, a face's match to a person, and what sync and
`people add` report. Plain frozen data; built by the repository from rows, decided on by
facescan_people.matching, printed by the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class Source(StrEnum):
    """Who put a face in a person (facescan.person_source)."""

    AUTOMATIC = "automatic"
    USER = "user"
    IMPORT = "import"


class Status(StrEnum):
    """How sure the match is (facescan.person_status): matched faces are the person's
    reference faces; pending ones are suggestions to confirm."""

    MATCHED = "matched"
    PENDING = "pending"


class Kind(StrEnum):
    """Which embedding a face has; two kinds are never compared."""

    DLIB = "dlib"
    """128-d, Euclidean distance (pgvector <->)."""
    ARCFACE = "arcface"
    """512-d, cosine distance 1 - cos (pgvector <=>)."""


@dataclass(frozen=True)
class Band:
    """The distances of one embedding model: tagged up to ``auto_tag``, pending up to
    ``match``, nobody's beyond."""

    match: float
    auto_tag: float

    def status(self, distance: float) -> Status | None:
        """The band a distance falls in (None: too far to be the person)."""
        if distance <= self.auto_tag:
            return Status.MATCHED
        if distance <= self.match:
            return Status.PENDING
        return None


@dataclass(frozen=True)
class Thresholds:
    """A library's row of facescan.people_settings."""

    dlib: Band
    arcface: Band
    min_faces: int
    min_cluster_size: int
    min_samples: int

    def band(self, kind: Kind) -> Band:
        return self.dlib if kind is Kind.DLIB else self.arcface

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Thresholds:
        return cls(
            dlib=Band(row["dlib_match_distance"], row["dlib_auto_tag_distance"]),
            arcface=Band(row["arcface_match_distance"], row["arcface_auto_tag_distance"]),
            min_faces=row["min_faces"],
            min_cluster_size=row["min_cluster_size"],
            min_samples=row["min_samples"],
        )


@dataclass(frozen=True)
class Candidate:
    """A face that could go to a person, at this distance from its nearest reference face."""

    face_id: int
    image_id: int
    person_id: int
    kind: Kind
    distance: float


@dataclass(frozen=True)
class Holder:
    """A face a person already has in an image (the one face of that photo it may have)."""

    face_id: int
    image_id: int
    person_id: int
    source: Source
    distance: float | None


@dataclass(frozen=True)
class Assignment:
    """An automatic match to write: the face goes to the person, in this band."""

    face_id: int
    image_id: int
    person_id: int
    status: Status
    distance: float


@dataclass(frozen=True)
class Decision:
    """What matching does with a set of candidates: the assignments to write and the
    automatic ones they displace (faces of the same photo in the same person, farther)."""

    assign: tuple[Assignment, ...]
    unassign: tuple[int, ...]


@dataclass
class SyncReport:
    """What `people sync` did, summed over its batches."""

    people: int = 0
    """Known people of the libraries synced."""
    considered: int = 0
    """Faces new to matching that it considered."""
    matched: int = 0
    pending: int = 0
    displaced: int = 0
    """Automatic matches taken back because a nearer face of the same photo won."""
    batches: int = 0

    def __iadd__(self, other: SyncReport) -> SyncReport:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)
        return self

    def as_json(self) -> dict[str, int]:
        return asdict(self)

    def text(self) -> str:
        unassigned = self.considered - self.matched - self.pending
        return (
            f"people: {self.people} known; {self.considered} new faces matched: "
            f"{self.matched} tagged, {self.pending} pending, {unassigned} nobody's"
        )


def display_name(name: str | None, person_id: int) -> str:
    """How a person is shown: their name, or "unnamed #<id>" for one made by clustering."""
    return name if name is not None else f"unnamed #{person_id}"


@dataclass(frozen=True)
class Person:
    """A known person, with how many faces are theirs; ``name`` None: unnamed (a cluster)."""

    id: int
    library: str
    name: str | None
    hidden: bool
    matched: int
    pending: int
    created_at: datetime

    @property
    def display(self) -> str:
        return display_name(self.name, self.id)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "display": self.display,
            "library": self.library,
            "hidden": self.hidden,
            "matched": self.matched,
            "pending": self.pending,
            "created_at": self.created_at.isoformat(),
        }
