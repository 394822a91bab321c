"""Seeded synthetic face embeddings shaped like dlib's and ArcFace's, for tests and the bench.

Used by ``tests/unit/people`` and ``bench/people_bench.py``; nothing in production imports it.

A face embedding is modelled as ``common + identity offset + face noise``:

- ``common``: one direction every face shares. Real dlib vectors are far from centred:
  two different people are ~0.8 apart while each vector has a norm of ~1.4, so most of the
  norm is common to everyone (cosine between different people ~0.85).
- ``identity offset``: drawn from an anisotropic Gaussian (per-axis scales decaying as
  ``k ** -0.5``, randomly rotated), so distances between people vary as in real data
  (dlib: 0.63 to 0.97 among the bundled photos) instead of concentrating on one value as
  an isotropic Gaussian in 128-d would.
- ``face noise``: half isotropic, half along a few (8) nuisance directions shared by
  everyone (pose, light, expression: two people photographed in the same pose move the
  same way), scaled per face by a log-normal "quality" so that some faces are far from
  their person (profile, blur).
- look-alike pairs (siblings): the second identity's offset is correlated with the
  first's, so their centres are closer than any two unrelated people but further apart
  than two faces of one person. Siblings are also photographed together: a group photo
  with one of them holds the other half of the time, so the same-photo constraint bites.
- noise faces: people seen once (bystanders), each its own identity.
- photos: 55 % hold one face, the rest 2 to 6 faces of different identities.
- identity sizes: log-normal (a few people with hundreds of faces, many with a handful),
  at least ``min_faces_per_identity``.

What was measured (dlib 20 via dlib-bin, face_recognition_models' 5-point predictor and
ResNet encoder, 1 jitter, HOG upsample 1) on the bundled samples: obama.jpg, obama2.jpg,
biden.jpg, the 6 faces of group_t1.jpg and the 2 of astronaut.png: norms 1.27 to 1.59
(mean 1.43; not unit-norm), components mean ~0, sd 0.11 to 0.14; obama-obama2 0.346;
the 9 different people 0.63 to 0.97 apart (mean ~0.80); jittering a face (10 jitters)
moves it 0.10 to 0.23. ``DLIB`` gives (20,000 faces, 200,000 random pairs): norms 1.30
to 1.53 (5th-95th percentile), same person 0.29 / 0.40 / 0.56 (5th / median / 95th; 98 %
under 0.6), different people 0.68 / 0.83 / 1.07, look-alikes' faces 0.49 / 0.60 / 0.72.

ArcFace (InsightFace buffalo_l's w600k_r50) cannot be run here (no weights ship in any
package), so ``ARCFACE`` follows its published behaviour: unit-norm 512-d, compared by
cosine; the same person ~0.5 to 0.8, different people ~0 to 0.2 (Immich's default
threshold, cosine distance 0.5, sits between). Raw vectors are built with squared norms
common 0.10 + identity 0.55 + noise 0.35 and then normalised. Cosine similarity, 5th /
median / 95th: same person 0.44 / 0.65 / 0.79, different people -0.09 / 0.10 / 0.29,
look-alikes 0.20 / 0.40 / 0.52.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# photo sizes (faces per photo) and their shares
PHOTO_SIZES = (1, 2, 3, 4, 5, 6)
PHOTO_SHARES = (0.55, 0.2, 0.1, 0.07, 0.04, 0.04)
NUISANCE_RANK = 8
SIBLING_TOGETHER = 0.5


@dataclass(frozen=True)
class ModelShape:
    """How one recognition model's embeddings are spread (see the module docstring)."""

    name: str
    dim: int
    unit_norm: bool
    common: float
    """Norm of the component every face shares."""
    identity: float
    """Root mean square norm of an identity's offset from the common point."""
    face: float
    """Median norm of a face's offset from its identity's centre."""
    face_quality_sigma: float
    """Sigma of the log-normal factor on ``face``, per face."""
    lookalike_correlation: float
    """Correlation of a look-alike's identity offset with its pair's."""


DLIB = ModelShape(
    "dlib",
    dim=128,
    unit_norm=False,
    common=1.27,
    identity=0.53,
    face=0.28,
    face_quality_sigma=0.2,
    lookalike_correlation=0.68,
)
ARCFACE = ModelShape(
    "arcface",
    dim=512,
    unit_norm=True,
    common=0.10**0.5,
    identity=0.55**0.5,
    face=0.35**0.5,
    face_quality_sigma=0.2,
    lookalike_correlation=0.45,
)
MODELS = {shape.name: shape for shape in (DLIB, ARCFACE)}


@dataclass(frozen=True)
class Dataset:
    """Faces in a stable order (shuffled once, like photos arriving over time)."""

    embeddings: FloatArray
    """One row per face."""
    identities: IntArray
    """The true identity per face; each noise face has an identity of its own."""
    images: IntArray
    """The photo each face is in."""
    noise: npt.NDArray[np.bool_]
    """Faces of people seen once."""
    lookalikes: tuple[tuple[int, int], ...]
    """Pairs of identities built close to each other."""


def _sizes(rng: np.random.Generator, n: int, identities: int, minimum: int) -> IntArray:
    """Faces per identity: log-normal, at least ``minimum``, summing to ``n``."""
    if identities * minimum > n:
        raise ValueError(f"{n} faces cannot give {identities} identities {minimum} faces each")
    weights = rng.lognormal(0.0, 1.0, identities)
    extra = np.floor(weights / weights.sum() * (n - identities * minimum)).astype(np.int64)
    extra[np.argsort(-weights)[: n - identities * minimum - int(extra.sum())]] += 1
    return np.asarray(extra + minimum, dtype=np.int64)


def _photos(rng: np.random.Generator, owners: IntArray, twin: dict[int, int]) -> IntArray:
    """An image id per face: group photos hold faces of distinct identities."""
    remaining: dict[int, list[int]] = {}
    for face in rng.permutation(len(owners)):
        remaining.setdefault(int(owners[face]), []).append(int(face))
    images = np.full(len(owners), -1, np.int64)
    image = 0
    while remaining:
        people = list(remaining)
        want = min(int(rng.choice(PHOTO_SIZES, p=PHOTO_SHARES)), len(people))
        counts = np.array([len(remaining[p]) for p in people], np.float64)
        chosen = [people[i] for i in rng.choice(len(people), want, False, counts / counts.sum())]
        if want > 1:
            for person in list(chosen):
                sibling = twin.get(person)
                if (
                    sibling in remaining
                    and sibling not in chosen
                    and rng.random() < SIBLING_TOGETHER
                ):
                    chosen.append(sibling)
        for person in chosen:
            faces = remaining[person]
            images[faces.pop()] = image
            if not faces:
                del remaining[person]
        image += 1
    return np.asarray(
        rng.permutation(image)[images], dtype=np.int64
    )  # photos arrive in no particular order


def generate(
    faces: int = 20_000,
    identities: int = 500,
    shape: ModelShape = DLIB,
    *,
    noise_share: float = 0.05,
    lookalike_pairs: int = 50,
    min_faces_per_identity: int = 4,
    seed: int = 0,
) -> Dataset:
    """``faces`` faces: ``noise_share`` of them noise, the rest of ``identities`` people."""
    rng = np.random.default_rng(seed)
    n_noise = round(faces * noise_share)
    sizes = _sizes(rng, faces - n_noise, identities, min_faces_per_identity)
    total = identities + n_noise
    dim = shape.dim
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scales = np.arange(1, dim + 1, dtype=np.float64) ** -0.5
    scales *= shape.identity / np.sqrt((scales**2).sum())
    offsets = (rng.standard_normal((total, dim)) * scales) @ rotation.T
    pairs = min(lookalike_pairs, identities // 2)
    twin: dict[int, int] = {}
    rho = shape.lookalike_correlation
    for a in range(pairs):
        b = identities - 1 - a  # pair big identities with small ones: sizes are unrelated
        offsets[b] = rho * offsets[a] + np.sqrt(1 - rho**2) * offsets[b]
        twin[a], twin[b] = b, a
    common = rng.standard_normal(dim)
    centres = common / np.linalg.norm(common) * shape.common + offsets

    owners = np.concatenate(
        [np.repeat(np.arange(identities), sizes), identities + np.arange(n_noise)]
    )
    nuisance = np.linalg.qr(rng.standard_normal((dim, NUISANCE_RANK)))[0].T
    quality = rng.lognormal(0.0, shape.face_quality_sigma, len(owners))
    iso = rng.standard_normal((len(owners), dim)) / np.sqrt(dim)
    low = rng.standard_normal((len(owners), NUISANCE_RANK)) @ nuisance / np.sqrt(NUISANCE_RANK)
    noise = (iso + low) / np.sqrt(2.0) * (shape.face * quality)[:, None]
    vectors = centres[owners] + noise
    if shape.unit_norm:
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    images = _photos(rng, owners, twin)
    order = np.argsort(images, kind="stable")  # photos in order, as a library grows
    return Dataset(
        embeddings=vectors[order].astype(np.float32),
        identities=owners[order].astype(np.int64),
        images=images[order],
        noise=(owners >= identities)[order],
        lookalikes=tuple(sorted((a, b) for a, b in twin.items() if a < b)),
    )
