"""The bodies of /people and /cluster (pydantic), as the OpenAPI document shows them.

Built by ``facescan_api.people_routes`` from facescan_people's results and by
``facescan_api.cluster_service`` from a clustering.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from facescan_api.models import Box

NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"
"""A library, a path, a media id or a person as a request names them: no control
characters (PostgreSQL's text holds no NUL, and names hold none)."""
MAX_SELECTED = 10_000
"""Media ids and paths one POST /cluster may name."""

Named = Annotated[str, Field(min_length=1, max_length=4096, pattern=NAME_PATTERN)]
Status = Literal["matched", "pending"]
Source = Literal["automatic", "user", "import"]
Kind = Literal["dlib", "arcface"]


class PersonBase(BaseModel):
    id: int
    name: str | None = Field(description="null: an unnamed person made by clustering.")
    display: str = Field(description='The name, or "unnamed #<id>".')
    library: str
    hidden: bool
    matched: int = Field(description="Faces that are theirs: reference faces and tagged ones.")
    pending: int = Field(description="Faces suggested for them, to confirm.")


class PersonSummary(PersonBase):
    """A person as GET /people lists them."""

    created_at: datetime


class PeoplePage(BaseModel):
    people: list[PersonSummary]
    next: str | None = Field(description="The cursor of the next page; null on the last.")


class PersonFace(BaseModel):
    face_id: int
    path: str = Field(
        description="The photo: relative to its library, or absolute under a library named "
        "by its root directory; an uploaded reference photo is .facescan/uploads/<hash>."
    )
    box: Box
    distance: float | None = Field(description="To their nearest reference face; null: given.")
    status: Status
    source: Source = Field(description="automatic (matching, clustering), user, import.")


class Person(PersonBase):
    """A person with a page of their faces (tagged and confirmed first, nearest first)."""

    featured_face: int | None = Field(description="The face shown for them.")
    faces: list[PersonFace]
    next: str | None = Field(description="The cursor of their next page of faces.")


class PersonAdded(Person):
    """POST /people: the person made, and what matching did right after."""

    references: int = Field(description="Reference faces, one per uploaded photo.")
    tagged: int = Field(description="Other faces of the library tagged as theirs.")


class PersonChange(BaseModel):
    """PATCH /people/{person}: a new name, hidden or shown again (either or both)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    name: str | None = Field(default=None, min_length=1, max_length=500)
    hidden: bool | None = None

    @model_validator(mode="after")
    def _something(self) -> Self:
        if self.name is None and self.hidden is None:
            raise ValueError("give name, hidden or both")
        return self


class MergeRequest(BaseModel):
    """POST /people/{person}/merge: who is merged into the person."""

    model_config = ConfigDict(extra="forbid")

    other: str = Field(
        min_length=1,
        max_length=500,
        pattern=NAME_PATTERN,
        description="The person merged in (and deleted): an id, or a name.",
    )


class Merged(BaseModel):
    id: int = Field(description="The person who stays.")
    into: str
    merged: str
    name: str | None = Field(description="Their name now (an unnamed one takes the other's).")
    library: str
    faces: int = Field(description="Faces moved to them.")


class Undone(BaseModel):
    library: str
    undone: str = Field(description="What was undone.")
    action: Literal["merge", "move", "remove"]
    restored: int = Field(description="Faces put back.")
    skipped: int = Field(description="Faces changed since, left as they are.")


class ClusterRequest(BaseModel):
    """POST /cluster: the faces to cluster (a library, or some of its media) and whether
    to write the result."""

    model_config = ConfigDict(extra="forbid")

    library: Named
    media_ids: list[Named] | None = Field(
        default=None,
        max_length=MAX_SELECTED,
        description="media_id of /process jobs of the library: their images' faces.",
    )
    paths: list[Named] | None = Field(
        default=None,
        max_length=MAX_SELECTED,
        description="Images by their path relative to the library: their faces.",
    )
    apply: bool = Field(
        default=False,
        description="false: cluster the faces (HDBSCAN) and write nothing. true (a whole "
        "library only: no media_ids or paths): cluster the faces nobody has into unnamed "
        "people, as `facescan people cluster` does.",
    )


class ClusterFace(BaseModel):
    face_id: int
    path: str = Field(description="Its photo, relative to the library.")
    media_id: str | None = Field(description="The /process media_id that named the photo.")
    box: Box


class Cluster(BaseModel):
    faces: list[int] = Field(description="Face ids, ascending.")
    count: int
    model: Kind = Field(description="The embedding clustered (two are never compared).")
    representative: ClusterFace = Field(description="The face nearest the cluster's mean.")
    person_id: int | None = Field(
        description="apply: the unnamed person (or the known one) that holds them."
    )


class ClusterResult(BaseModel):
    library: str
    applied: bool = Field(description="Whether the clusters were written as people.")
    faces: int = Field(description="Faces clustered.")
    clusters: list[Cluster] = Field(description="Largest first.")
    noise: list[ClusterFace] = Field(description="Faces in no cluster (nobody's with apply).")
