"""People benchmark: clustering quality and cost on a seeded synthetic face set.

Prints, measured in this one run on this machine, per recognition model (dlib 128-d,
ArcFace 512-d; embeddings shaped as ``facescan_people.synthetic`` documents):
  - pairwise and BCubed precision/recall/F of the incremental path and of the full
    re-cluster against the true identities (noise faces count as singletons; goal >= 0.95);
  - same-photo merges (pairs of faces of one image in one cluster; goal 0);
  - agreement of the incremental path with the full re-cluster (pairwise F of one
    against the other; goal >= 0.98);
  - look-alike (sibling) pairs that share a cluster;
  - a re-run of the full path with users' names and corrections as constraints: every
    confirmed assignment and every named person must survive;
  - the time of a full clustering of 1,000 faces (goal < 5 s) and of the whole set, the
    incremental path's time and its index queries per face (mean and most).

Usage: python bench/people_bench.py [--faces 20000] [--identities 500] [--model both]
       [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np

from facescan_people import cluster, incremental, quality, synthetic

NAMED_IDENTITIES = 200  # identities a user named (3 faces confirmed each)
CORRECTIONS = 100  # faces a user moved to their true person after the first run
GOAL_F, GOAL_AGREEMENT, GOAL_SECONDS_1000 = 0.95, 0.98, 5.0


def _full(
    ds: synthetic.Dataset, params: cluster.FullParams, confirmed: dict[int, int]
) -> tuple[cluster.Clustering, float]:
    start = time.perf_counter()
    result = cluster.full(ds.embeddings, ds.images, confirmed, params)
    return result, time.perf_counter() - start


def _incremental(
    ds: synthetic.Dataset, shape: synthetic.ModelShape, params: incremental.IncrementalParams
) -> tuple[list[int | None], float, incremental.Incremental]:
    """Faces arrive photo by photo; each is stored, then assigned (deferred ones at the end)."""
    metric: cluster.Metric = "cosine" if shape.unit_norm else "euclidean"
    index = incremental.MemoryIndex(shape.dim, metric, capacity=len(ds.embeddings))
    path = incremental.Incremental(index, params)
    start = time.perf_counter()
    for embedding, image in zip(ds.embeddings, ds.images, strict=True):
        path.add(index.insert(embedding, int(image)), embedding, int(image))
    path.finish()
    return list(index.labels), time.perf_counter() - start, path


def _lookalikes_merged(ds: synthetic.Dataset, labels: Sequence[object]) -> int:
    merged = 0
    for a, b in ds.lookalikes:
        in_a = {labels[int(f)] for f in np.flatnonzero(ds.identities == a)} - {None}
        in_b = {labels[int(f)] for f in np.flatnonzero(ds.identities == b)} - {None}
        merged += bool(in_a & in_b)
    return merged


def _confirmations(
    ds: synthetic.Dataset, first: cluster.Clustering, seed: int
) -> tuple[dict[int, int], int]:
    """Names (3 faces of each of some identities) and corrections of the first run's errors.

    The person id a user gives is the true identity. Corrections: faces the first run put
    in a cluster whose majority is someone else, or left as noise, moved to their identity.
    """
    rng = np.random.default_rng(seed)
    people = sorted({int(i) for i in ds.identities[~ds.noise]})
    named = rng.choice(people, min(NAMED_IDENTITIES, len(people)), replace=False)
    confirmed: dict[int, int] = {}
    for person in named:
        faces = np.flatnonzero(ds.identities == person)
        for face in rng.choice(faces, min(3, len(faces)), replace=False):
            confirmed[int(face)] = int(person)
    majority = {
        c: Counter(int(ds.identities[f]) for f in cl.members).most_common(1)[0][0]
        for c, cl in enumerate(first.clusters)
    }
    wrong = [
        f
        for f, c in enumerate(first.labels)
        if not ds.noise[f] and (c is None or majority[c] != ds.identities[f])
    ]
    for face in rng.permutation(wrong)[:CORRECTIONS]:
        confirmed[int(face)] = int(ds.identities[face])
    return confirmed, len(named)


def _row(name: str, labels: Sequence[object], ds: synthetic.Dataset, extra: str) -> bool:
    truth = list(ds.identities)
    pw, b3 = quality.pairwise(labels, truth), quality.bcubed(labels, truth)
    merges = quality.same_photo_merges(labels, list(ds.images))
    noise = sum(label is None for label in labels)
    print(
        f"  {name:<12} {pw.precision:6.4f} {pw.recall:6.4f} {pw.f:6.4f}   "
        f"{b3.precision:6.4f} {b3.recall:6.4f} {b3.f:6.4f}   {merges:>6} {noise:>6} "
        f"{_lookalikes_merged(ds, labels):>5}/{len(ds.lookalikes):<3} {extra}"
    )
    return pw.f >= GOAL_F and b3.f >= GOAL_F and merges == 0


def _time_1000(shape: synthetic.ModelShape, params: cluster.FullParams, seed: int) -> float:
    ds = synthetic.generate(1000, 25, shape, lookalike_pairs=3, seed=seed + 1)
    return statistics.median(_full(ds, params, {})[1] for _ in range(3))


def bench_model(shape: synthetic.ModelShape, args: argparse.Namespace) -> bool:
    defaults = incremental.DEFAULTS[shape.name]
    ds = synthetic.generate(
        args.faces,
        args.identities,
        shape,
        lookalike_pairs=args.identities // 10,
        seed=args.seed,
    )
    print(
        f"\n{shape.name}: {len(ds.embeddings):,} faces of {args.identities} identities "
        f"+ {int(ds.noise.sum())} noise faces, {len(set(ds.images.tolist())):,} photos, "
        f"{len(ds.lookalikes)} look-alike pairs; {defaults.full}; {defaults.incremental}"
    )
    seconds_1000 = _time_1000(shape, defaults.full, args.seed)
    first, seconds_full = _full(ds, defaults.full, {})
    inc_labels, seconds_inc, inc = _incremental(ds, shape, defaults.incremental)
    print(
        f"  {'path':<12} {'pairwise P / R / F':<22}   {'BCubed P / R / F':<20}   "
        f"{'merges':>6} {'noise':>6} {'sibs':>9} time"
    )
    ok = _row("full", list(first.labels), ds, f"{seconds_full:.1f} s")
    ok &= _row(
        "incremental",
        inc_labels,
        ds,
        f"{seconds_inc:.1f} s, {inc.queries_per_face:.2f} queries/face "
        f"(most {inc.max_queries_per_face})",
    )
    agree = quality.agreement(inc_labels, list(first.labels))
    print(f"  incremental vs full agreement (pairwise F of one against the other): {agree:.4f}")
    confirmed, named = _confirmations(ds, first, args.seed)
    second, seconds_second = _full(ds, defaults.full, confirmed)
    persons = second.person_labels()
    kept = sum(persons[f] == p for f, p in confirmed.items())
    names = {c.person for c in second.clusters if c.person is not None}
    print(
        f"  re-run with {len(confirmed)} confirmed faces ({named} named people + "
        f"corrections): {kept}/{len(confirmed)} kept, "
        f"{len(names & set(confirmed.values()))}/{len(set(confirmed.values()))} names kept, "
        f"{seconds_second:.1f} s"
    )
    ok &= _row("re-run", list(second.labels), ds, "")
    print(f"  full clustering of 1,000 faces: {seconds_1000:.2f} s (median of 3)")
    ok &= agree >= GOAL_AGREEMENT and kept == len(confirmed) and seconds_1000 < GOAL_SECONDS_1000
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=20_000)
    parser.add_argument("--identities", type=int, default=500)
    parser.add_argument("--model", choices=("dlib", "arcface", "both"), default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2,000 faces of 50 people")
    args = parser.parse_args()
    if args.quick:
        args.faces, args.identities = 2000, 50
    shapes = (
        list(synthetic.MODELS.values()) if args.model == "both" else [synthetic.MODELS[args.model]]
    )
    ok = True
    for shape in shapes:
        ok &= bench_model(shape, args)
    goals = (
        f"F >= {GOAL_F} (pairwise and BCubed, both paths), 0 same-photo merges, agreement >= "
        f"{GOAL_AGREEMENT}, every confirmation kept, 1,000 faces < {GOAL_SECONDS_1000:.0f} s"
    )
    print("\nRESULT:", "all goals met" if ok else "GOAL MISSED", f"({goals})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
