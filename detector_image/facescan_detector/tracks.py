"""Tracks: the faces of one video that are one person across its sampled frames.

Called by the run loop once a video's frames are detected, before the video's faces are
committed; People counts a track once (a person once per video, not once per frame).

Greedy linking, frame by frame in time order: each face of a frame joins the track
nearest to it (the smallest distance to any face of the track, so a face turning
slowly stays in its track) if that is under the model's match distance, nearest pairs
first; each track takes at most one face of a frame (two faces of one frame are two
people); a face that joins none starts a track. Distances are those People matches
with: Euclidean for dlib's 128-d embeddings, cosine distance (1 - cos) for ArcFace's
512-d ones, against People's default match distances. Faces without an embedding each
get a track of their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MATCH_DISTANCE = {128: 0.6, 512: 0.5}
"""Embedding length -> the largest distance at which two faces are one person (People's
default match distances: dlib_match_distance, arcface_match_distance)."""


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """People's distance between two embeddings of one model."""
    if a.shape[0] == 512:
        norms = float(np.linalg.norm(a) * np.linalg.norm(b))
        return 1.0 - float(np.dot(a, b)) / norms if norms else 2.0
    return float(np.linalg.norm(a - b))


def assign_tracks(frames: Sequence[Sequence[np.ndarray | None]]) -> list[list[int]]:
    """For each frame (in time order) its faces' embeddings; returns each face's track
    number, tracks numbered from 0 in the order they start."""
    tracks: list[list[np.ndarray]] = []
    result: list[list[int]] = []
    for faces in frames:
        numbers: list[int | None] = [None] * len(faces)
        pairs = []
        for i, embedding in enumerate(faces):
            if embedding is None:
                continue
            limit = MATCH_DISTANCE.get(embedding.shape[0], 0.0)
            for t, members in enumerate(tracks):
                if members and members[0].shape == embedding.shape:
                    d = min(distance(embedding, m) for m in members)
                    if d <= limit:
                        pairs.append((d, i, t))
        taken: set[int] = set()
        for _, i, t in sorted(pairs):
            if numbers[i] is None and t not in taken:
                numbers[i] = t
                taken.add(t)
        for i, embedding in enumerate(faces):
            if numbers[i] is None:
                numbers[i] = len(tracks)
                tracks.append([])
            number = numbers[i]
            assert number is not None
            if embedding is not None:
                tracks[number].append(embedding)
        result.append([n for n in numbers if n is not None])
    return result
