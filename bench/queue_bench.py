"""Queue benchmark: 1,000,000 registered images, 4 concurrent workers.

Prints, measured in this one run on this machine:
  - registration rate;
  - claim + start + complete throughput of 4 worker processes connected as the detector
    connects (asynchronous commits; target >= 2,000 images/s), beside the same with every
    commit flushed to disk (alternating, ABAB), and with realistic results (0-2 faces per
    image, each with a 128-d embedding);
  - the plan PostgreSQL really uses for the runnable-pending lookup inside claim_batch
    and runnable_groups (captured with auto_explain: no sequential scan of images);
  - status counting time from the counters (target <= 200 ms) beside a plain
    GROUP BY over the images table, as a ratio.

Usage: python bench/queue_bench.py [--images 1000000] [--process 40000] [--dsn DSN]
Without --dsn it starts an embedded PostgreSQL in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from facescan_queue.migrate import migrate
from facescan_queue.models import DetectionResult, FaceResult, NewImage
from facescan_queue.repository import Queue
from facescan_queue.settings import DatabaseSettings

LIBRARY = "bench"
BATCH = 50
# (width, height, share): phone photos, HD frames, thumbnails
SIZES = ((4032, 3024, 0.7), (1920, 1080, 0.2), (640, 480, 0.1))


def _images(n: int, seed: int = 7) -> list[NewImage]:
    rng = random.Random(seed)
    widths, heights = [], []
    for w, h, share in SIZES:
        k = int(n * share)
        widths += [w] * k
        heights += [h] * k
    while len(widths) < n:
        widths.append(SIZES[0][0])
        heights.append(SIZES[0][1])
    order = list(range(n))
    rng.shuffle(order)
    return [
        NewImage(
            f"{2000 + i % 25}/{i % 12 + 1:02d}/IMG_{i:07d}.jpg", widths[j], heights[j], 2_500_000
        )
        for i, j in enumerate(order)
    ]


def _faces(rng: random.Random) -> tuple[FaceResult, ...]:
    faces = []
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        top, left = rng.randrange(0, 2000), rng.randrange(0, 3000)
        faces.append(
            FaceResult(
                top,
                left + 200,
                top + 200,
                left,
                0.99,
                tuple(float(rng.randrange(0, 3000)) for _ in range(10)),
                tuple(rng.uniform(-0.3, 0.3) for _ in range(128)),
            )
        )
    return tuple(faces)


async def _worker(
    dsn: str, index: int, quota: int, size_class: int, with_faces: bool, async_commit: bool
) -> tuple[float, float, int]:
    rng = random.Random(index)
    # as a detector connects: its calls one after another on one connection, with room
    # for a concurrent heartbeat, and (unless told otherwise) asynchronous commits
    queue = await Queue.connect(
        DatabaseSettings(dsn=dsn), min_size=1, max_size=3, pin=True, async_commit=async_commit
    )
    done, batch_no = 0, 0
    start = time.perf_counter()
    while done < quota:
        owner = f"bench-w{index}-b{batch_no}"
        batch_no += 1
        claimed = await queue.claim(
            LIBRARY,
            owner,
            step=0,
            size_class=size_class,
            limit=min(BATCH, quota - done),
            lease_seconds=600,
        )
        if not claimed:
            break
        image = await queue.start_next(owner)
        while image is not None:
            faces = _faces(rng) if with_faces else ()
            result = DetectionResult(faces, 1280, 100, 4032, 3024)
            image = await queue.complete_and_start_next(image.image_id, owner, result)
            done += 1
        await queue.release(owner)
    end = time.perf_counter()
    await queue.close()
    return start, end, done


def _run_worker(args: tuple[str, int, int, int, bool, bool]) -> tuple[float, float, int]:
    return asyncio.run(_worker(*args))


async def _median_ms(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


async def _plans(dsn: str) -> list[str]:
    """The plans of the statements inside claim_batch and runnable_groups, as executed."""
    conn = await asyncpg.connect(dsn)
    plans: list[str] = []
    conn.add_log_listener(lambda _c, msg: plans.append(str(msg)))
    try:
        await conn.execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; "
            "SET auto_explain.log_nested_statements = on; SET auto_explain.log_level = notice; "
            "SET client_min_messages = notice"
        )
        async with conn.transaction():
            await conn.fetch(
                "SELECT * FROM facescan.claim_batch($1, 'explain', 0::smallint, "
                "1::smallint, 50, 60)",
                LIBRARY,
            )
            raise _Rollback
    except _Rollback:
        pass
    try:
        await conn.fetch("SELECT * FROM facescan.runnable_groups($1, 1000)", LIBRARY)
    finally:
        await conn.close()
    return plans


class _Rollback(Exception):
    pass


async def main_async(args: argparse.Namespace, dsn: str) -> int:
    settings = DatabaseSettings(dsn=dsn)
    await migrate(settings)
    queue = await Queue.connect(settings, max_size=2)
    await queue.ensure_library(LIBRARY)
    status = await queue.status(LIBRARY)
    if status.images < args.images:
        images = _images(args.images)
        t = time.perf_counter()
        added = await queue.register(LIBRARY, images)
        elapsed = time.perf_counter() - t
        print(f"register: {added:,} images in {elapsed:.1f} s = {added / elapsed:,.0f} images/s")
        conn = await asyncpg.connect(dsn)
        await conn.execute("VACUUM ANALYZE facescan.images")
        await conn.close()
    print(f"queue holds {(await queue.status(LIBRARY)).images:,} images")

    ctx = mp.get_context("spawn")
    quota = args.process // args.workers
    runs: dict[str, list[tuple[float, int]]] = {}  # label: (wall s, images) per phase
    async_label = "queue transitions only (0 faces), as the detector commits"
    flushed_label = "queue transitions only (0 faces), every commit flushed to disk"
    faces_label = "with 0-2 faces + embeddings (HNSW), as the detector commits"
    # The two commit modes alternate (ABAB) on one size class, so that the machine's
    # swings hit both alike; the faces run takes images of another class.
    half = max(1, quota // 2)
    phases = (
        (async_label, False, 2, True, half),
        (flushed_label, False, 2, False, half),
        (async_label, False, 2, True, half),
        (flushed_label, False, 2, False, half),
        (faces_label, True, 0, True, quota),
    )
    for label, with_faces, size_class, async_commit, share in phases:
        with ctx.Pool(args.workers) as pool:
            results = pool.map(
                _run_worker,
                [
                    (dsn, i, share, size_class, with_faces, async_commit)
                    for i in range(args.workers)
                ],
            )
        wall = max(r[1] for r in results) - min(r[0] for r in results)
        runs.setdefault(label, []).append((wall, sum(r[2] for r in results)))
    rate = {}
    for label, parts in runs.items():
        wall, processed = sum(w for w, _ in parts), sum(n for _, n in parts)
        rate[label] = processed / wall
        print(
            f"claim+start+complete, {label}: {processed:,} images by {args.workers} worker "
            f"processes in {wall:.1f} s = {processed / wall:,.0f} images/s"
        )
    print(
        f"  asynchronous / flushed commits: {rate[async_label] / rate[flushed_label]:.2f}x; "
        f"target >= 2,000 images/s for the queue's own transitions as the detector makes "
        f"them: {'PASS' if rate[async_label] >= 2000 else 'FAIL'}"
    )

    conn = await asyncpg.connect(dsn)
    scan_ms = await _median_ms(
        lambda: conn.fetch(
            "SELECT state, error_type, degraded, count(*), sum(face_count) "
            "FROM facescan.images WHERE library = $1 GROUP BY 1, 2, 3",
            LIBRARY,
        ),
        5,
    )
    await conn.close()
    status_ms = await _median_ms(lambda: queue.status(LIBRARY), 30)
    groups_ms = await _median_ms(lambda: queue.runnable_groups(LIBRARY, cap=1000), 30)
    st = await queue.status(LIBRARY)
    print(
        f"status: {status_ms:.2f} ms median from counters (target <= 200 ms); "
        f"GROUP BY over images: {scan_ms:.0f} ms; ratio {scan_ms / status_ms:,.0f}x"
    )
    print(f"runnable_groups: {groups_ms:.2f} ms median")
    print(f"status now: {st.as_json()}")

    plans = await _plans(dsn)
    seq = [p for p in plans if "Seq Scan on images" in p]
    uses_index = any("images_runnable" in p for p in plans)
    print(
        f"claim/runnable plans: index images_runnable used: {uses_index}; "
        f"sequential scans of images: {len(seq)}"
    )
    if args.verbose or seq or not uses_index:
        print("\n".join(plans))
    await queue.close()
    ok = rate[async_label] >= 2000 and status_ms <= 200 and uses_index and not seq
    print("RESULT:", "all targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--process", type=int, default=40_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--dsn", help="use this PostgreSQL instead of an embedded one")
    parser.add_argument("--verbose", action="store_true", help="print the plans")
    args = parser.parse_args()
    if args.dsn:
        return asyncio.run(main_async(args, args.dsn))
    from facescan_operator.embedded_db import EmbeddedDatabase

    with tempfile.TemporaryDirectory(prefix="facescan-bench-") as tmp:
        db = EmbeddedDatabase(Path(tmp) / "pg", database="bench")
        try:
            return asyncio.run(main_async(args, db.dsn))
        finally:
            db.stop()


if __name__ == "__main__":
    raise SystemExit(main())
