"""Detector benchmark: facescan's HOG detector process beside the older worker's loop.

Measures, in this one run, on the same generated phone photos:
  (a) ``facescan-detector run`` as a subprocess, started as the local runner starts it
      (FACESCAN_* environment, embedded PostgreSQL, library cascade hog@1.0 only, max
      dimension 1280, all images claimed in one batch for one owner), timed from
      process start to exit: start-up and every database commit included;
  (b) the older worker's plain loop in a fresh subprocess, timed the same way: per
      image ``Image.open(path).convert('RGB')`` (full decode), LANCZOS to a long side
      of 1280, ``face_recognition.face_locations(img, 1, 'hog')`` and
      ``face_encodings(img, locations)``. Its database write is skipped, which favours
      the baseline;
  (c) peak RSS of each process (``ru_maxrss`` from ``os.wait4`` on that very child);
  (d) start-up to the first committed image (from facescan.attempts/detections); ours'
      first run with an empty cache directory (dlib's frontal detector decoded, as on a
      fresh pod), the others with it cached;
  (e) whether both find the same faces (IoU >= 0.5), upright and EXIF-rotated apart.
(a) and (b) run on the same chunks of the photos in ABBA order (ours, baseline,
baseline, ours, ...), so that the machine's speed drifting during the run weighs on both
alike; the ratio is over all the photos.

The baseline needs face_recognition 1.3.0 (bench/requirements.txt; install it with
``pip install --no-deps face_recognition==1.3.0``).

Usage: python bench/detector_bench.py [--images 200] [--chunks 4] [--quick] [--threads N]
       [--workdir DIR]
With ``--threads 1`` ours runs HOG on one thread like the baseline; by default it uses
the CPUs it may (two threads at most for HOG).
Photos are generated once, deterministically, under WORKDIR (default bench/out/detector).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SAMPLES = BENCH.parent / "samples"
MAX_DIMENSION = 1280
PHOTOS_VERSION = 1
UPRIGHT, ROTATED = "upright", "EXIF-rotated"

# Source photographs and their faces (left, top, right, bottom, as dlib HOG finds them):
# a generated photo keeps as many of them in frame as its crop allows.
SOURCES: tuple[tuple[str, tuple[tuple[int, int, int, int], ...]], ...] = (
    ("obama.jpg", ((349, 142, 617, 409),)),
    ("group_t1.jpg", ((67, 283, 175, 390), (275, 176, 364, 265), (450, 295, 557, 402))),
    ("obama2.jpg", ((171, 290, 438, 558),)),
    ("astronaut.png", ((175, 76, 265, 166),)),
    ("biden.jpg", ((419, 241, 740, 562),)),
)
Box = tuple[float, float, float, float]  # top, right, bottom, left (face_recognition order)


# -- the photos ------------------------------------------------------------------------


def _photo(index: int, path: Path) -> None:
    """One phone-like photo: a zoomed, cropped, maybe mirrored real photograph at
    4032x3024, 3000x4000 or 3024x4032, with sensor grain, JPEG q90-92; every fourth is
    stored as the sensor wrote it (landscape pixels) with EXIF orientation 6."""
    import random

    import numpy as np
    from PIL import Image

    rng = random.Random(f"facescan-detector-bench-{index}")
    name, faces = SOURCES[index % len(SOURCES)]
    source = Image.open(SAMPLES / name).convert("RGB")
    sw, sh = source.size
    if name == "group_t1.jpg":  # every face of the group, not only the ones listed
        faces = ((67, 283, 1226, 474),)
    if rng.random() < 0.5:
        source = source.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        faces = tuple((sw - r, t, sw - left, b) for left, t, r, b in faces)
    rotated = index % 4 == 3
    if rotated:
        size = (3024, 4032)
    elif sw > sh * 1.1:
        size = (4032, 3024)
    elif sh > sw * 1.1:
        size = rng.choice(((3000, 4000), (3024, 4032)))
    else:
        size = rng.choice(((4032, 3024), (3000, 4000)))
    width, height = size
    zoom = rng.uniform(1.0, 1.25)
    factor = max(width / sw, height / sh) * zoom
    crop_w, crop_h = width / factor, height / factor
    keep = (
        min(f[0] for f in faces),
        min(f[1] for f in faces),
        max(f[2] for f in faces),
        max(f[3] for f in faces),
    )

    def offset(lo_keep: float, hi_keep: float, crop: float, limit: int) -> float:
        low, high = max(0.0, hi_keep - crop), min(lo_keep, limit - crop)
        if low > high:  # the faces do not all fit: centre on them
            return min(max((lo_keep + hi_keep - crop) / 2, 0.0), limit - crop)
        return rng.uniform(low, high)

    x0 = offset(keep[0], keep[2], crop_w, sw)
    y0 = offset(keep[1], keep[3], crop_h, sh)
    image = source.resize(size, Image.Resampling.LANCZOS, box=(x0, y0, x0 + crop_w, y0 + crop_h))
    noise = np.random.default_rng(index).normal(0.0, 3.0, (512, 512, 3)).astype(np.float32)
    reps = (height // 512 + 1, width // 512 + 1, 1)
    grain = np.tile(noise, reps)[:height, :width]
    gain = rng.uniform(0.9, 1.1)
    pixels = np.clip(np.asarray(image, dtype=np.float32) * gain + grain, 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    exif = Image.Exif()
    exif[0x010F] = "facescan"  # Make
    exif[0x0110] = "bench phone"  # Model
    exif[0x0112] = 1
    if rotated:  # the sensor's landscape pixels; viewers turn them 90 degrees clockwise
        image = image.transpose(Image.Transpose.ROTATE_90)
        exif[0x0112] = 6
    tmp = path.with_suffix(".tmp")
    image.save(tmp, "JPEG", quality=rng.choice((90, 91, 92)), exif=exif.tobytes())
    tmp.rename(path)


@dataclass(frozen=True)
class Photo:
    path: str  # relative to the photo directory
    width: int  # as stored (header)
    height: int
    orientation: int
    file_bytes: int


def _photos(directory: Path, count: int) -> list[Photo]:
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    made = 0
    photos = []
    for index in range(count):
        path = directory / f"IMG_{index:04d}.jpg"
        if not path.exists():
            _photo(index, path)
            made += 1
        with Image.open(path) as image:
            width, height = image.size
            orientation = int(image.getexif().get(0x0112, 1))
        photos.append(Photo(path.name, width, height, orientation, path.stat().st_size))
    if made:
        print(f"generated {made} photos in {directory}")
    return photos


# -- the older worker (runs in its own process) ------------------------------------------


def _baseline_worker(root: str, listing: str, out: str) -> int:
    """The older worker's loop, as it was (minus its database write)."""
    perf = time.perf_counter
    try:
        import face_recognition
    except ImportError:
        print("face_recognition is not installed", file=sys.stderr)
        return 3
    import numpy as np
    from PIL import Image

    results = []
    for name in json.loads(Path(listing).read_text()):
        t0 = perf()
        img = Image.open(os.path.join(root, name)).convert("RGB")
        w, h = img.size
        ratio = MAX_DIMENSION / max(w, h)
        if ratio < 1:
            img = img.resize((int(w * ratio), int(h * ratio)), Image.LANCZOS)
        array = np.array(img)
        t1 = perf()
        locations = face_recognition.face_locations(
            array, number_of_times_to_upsample=1, model="hog"
        )
        t2 = perf()
        encodings = face_recognition.face_encodings(array, locations)
        t3 = perf()
        results.append(
            {
                "path": name,
                "size": [w, h],
                "resized": [array.shape[1], array.shape[0]],
                "boxes": [list(b) for b in locations],
                "encodings": len(encodings),
                "s": [t1 - t0, t2 - t1, t3 - t2],
            }
        )
    Path(out).write_text(json.dumps(results))
    return 0


def _baseline_available() -> bool:
    probe = "import importlib.util as u, sys; sys.exit(u.find_spec('face_recognition') is None)"
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


# -- running a process and measuring it -------------------------------------------------


@dataclass
class Measured:
    wall_s: float
    cpu_s: float
    maxrss_mb: float
    exit_code: int
    started_at: float  # time.time() just before the process was started
    faces: dict[str, list[Box]] = field(default_factory=dict)
    first_started_s: float = 0.0  # ours only: process start -> first attempt opened
    first_done_s: float = 0.0  # ours only: process start -> first detection committed
    stage_s: tuple[float, float, float] = (0.0, 0.0, 0.0)  # baseline: decode, detect, encode
    steady_s: float = 0.0  # ours: first commit -> last commit
    detect_ms: float = 0.0  # ours: sum of duration_ms (waiting for the pixels + detection)


def _measure_child(result: str, log: str, *cmd: str) -> int:
    """Runs in a small wrapper process: starts ``cmd`` and waits for it with wait4,
    which returns that child's own rusage. Its ru_maxrss is the kernel's high-water mark
    of the child's resident set (VmHWM at exit), folded with the RSS of the process it
    was forked from; this wrapper is small (~15 MB), unlike the benchmark itself, so
    the figure is the command's own peak. Times are taken around the child alone."""
    with open(log, "wb") as out:
        started_at = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    figures = {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "maxrss_mb": usage.ru_maxrss / 1024,
        "exit_code": proc.returncode,
        "started_at": started_at,
    }
    Path(result).write_text(json.dumps(figures))
    return 0


def _measure(cmd: list[str], env: dict[str, str], log: Path) -> Measured:
    """``cmd``'s wall time, CPU time, peak RSS and exit status, via a fresh wrapper
    process (the benchmark's own RSS would otherwise count as the child's peak: the
    kernel folds the RSS a process had before exec into ru_maxrss)."""
    result = log.with_suffix(".rusage.json")
    wrapper = [sys.executable, __file__, "--measure", str(result), str(log), *cmd]
    subprocess.run(wrapper, env=env, check=True)
    return Measured(**json.loads(result.read_text()))


async def _setup_db(dsn: str) -> None:
    from facescan_queue.migrate import migrate
    from facescan_queue.settings import DatabaseSettings

    await migrate(DatabaseSettings(dsn=dsn))


async def _claim(dsn: str, library: str, owner: str, photos: list[Photo]) -> None:
    """A fresh hog-only library with every photo registered and leased to ``owner``."""
    from facescan_queue.models import LibraryPolicy, NewImage
    from facescan_queue.repository import Queue
    from facescan_queue.settings import DatabaseSettings

    queue = await Queue.connect(DatabaseSettings(dsn=dsn), max_size=1)
    try:
        policy = LibraryPolicy(
            cascade_models=("hog",), cascade_scales=(1.0,), max_dimension=MAX_DIMENSION
        )
        await queue.ensure_library(library, policy)
        await queue.register(
            library, [NewImage(p.path, p.width, p.height, p.file_bytes) for p in photos]
        )
        groups = await queue.runnable_groups(library, cap=len(photos) + 1)
        if len(groups) != 1:
            raise SystemExit(f"expected one size class, got {groups}")
        claimed = await queue.claim(
            library,
            owner,
            step=groups[0].step,
            size_class=groups[0].size_class,
            limit=len(photos),
            lease_seconds=120,
        )
        if len(claimed) != len(photos):
            raise SystemExit(f"claimed {len(claimed)} of {len(photos)} images")
    finally:
        await queue.close()


async def _results(dsn: str, library: str, measured: Measured) -> None:
    """Faces (original pixels, display orientation) and the first image's timestamps."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT i.path, f.box_top, f.box_right, f.box_bottom, f.box_left "
            "FROM facescan.images i JOIN facescan.detections d ON d.image_id = i.id "
            "LEFT JOIN facescan.faces f ON f.image_id = i.id WHERE i.library = $1",
            library,
        )
        first = await conn.fetchrow(
            "SELECT extract(epoch FROM min(a.started_at))::float8 AS started, "
            "extract(epoch FROM min(d.detected_at))::float8 AS done, "
            "extract(epoch FROM max(d.detected_at))::float8 AS last, "
            "sum(d.duration_ms)::float8 AS detect_ms "
            "FROM facescan.images i JOIN facescan.attempts a ON a.image_id = i.id "
            "JOIN facescan.detections d ON d.image_id = i.id WHERE i.library = $1",
            library,
        )
    finally:
        await conn.close()
    for row in rows:
        boxes = measured.faces.setdefault(row["path"], [])
        if row["box_top"] is not None:
            boxes.append((row["box_top"], row["box_right"], row["box_bottom"], row["box_left"]))
    if first["started"] is not None:
        measured.first_started_s = first["started"] - measured.started_at
        measured.first_done_s = first["done"] - measured.started_at
        measured.steady_s = first["last"] - first["done"]
        measured.detect_ms = first["detect_ms"]


def _run_ours(
    dsn: str, photo_dir: Path, photos: list[Photo], run: int, logs: Path, threads: int
) -> Measured:
    import asyncio

    library, owner = f"bench-run{run}", f"bench-detector-run{run}"
    asyncio.run(_claim(dsn, library, owner, photos))
    # as the local runner (facescan_operator.local) starts a worker, minus its memory limit
    command = [
        str(Path(sys.executable).with_name("facescan-detector")),
        "run",
        "--owner",
        owner,
        "--root",
        str(photo_dir),
        "--timeout",
        "300",
        "--lease-seconds",
        "120",
        "--model",
        "hog",
        "--threads",
        str(threads),
    ]
    env = {**os.environ, "FACESCAN_DSN": dsn, "MALLOC_ARENA_MAX": "2"}
    measured = _measure(command, env, logs / f"ours-run{run}.log")
    asyncio.run(_results(dsn, library, measured))
    return measured


def _run_baseline(photo_dir: Path, photos: list[Photo], run: int, logs: Path) -> Measured:
    listing = logs / "baseline-images.json"
    listing.write_text(json.dumps([p.path for p in photos]))
    out = logs / f"baseline-run{run}.json"
    cmd = [sys.executable, __file__, "--baseline-worker", str(photo_dir), str(listing), str(out)]
    measured = _measure(cmd, dict(os.environ), logs / f"baseline-run{run}.log")
    if measured.exit_code == 0:
        stages = [0.0, 0.0, 0.0]
        for item in json.loads(out.read_text()):
            (w, h), (rw, rh) = item["size"], item["resized"]
            sx, sy = rw / w, rh / h  # back to the original (stored) pixels
            measured.faces[item["path"]] = [
                (t / sy, r / sx, b / sy, left / sx) for t, r, b, left in item["boxes"]
            ]
            stages = [a + b for a, b in zip(stages, item["s"], strict=True)]
        measured.stage_s = (stages[0], stages[1], stages[2])
    return measured


# -- comparing faces ----------------------------------------------------------------------


def _iou(a: Box, b: Box) -> float:
    top, right = max(a[0], b[0]), min(a[1], b[1])
    bottom, left = min(a[2], b[2]), max(a[3], b[3])
    inter = max(0.0, right - left) * max(0.0, bottom - top)
    area_a = (a[1] - a[3]) * (a[2] - a[0])
    area_b = (b[1] - b[3]) * (b[2] - b[0])
    return inter / (area_a + area_b - inter) if inter > 0 else 0.0


def _to_display(box: Box, photo: Photo) -> Box:
    """A box in stored pixels -> display pixels (orientation 6: turned 90 degrees
    clockwise), so boxes the older worker found in the sideways image count if right."""
    if photo.orientation != 6:
        return box
    top, right, bottom, left = box
    stored_h = photo.height
    return (left, stored_h - top, right, stored_h - bottom)


def _matches(ours: list[Box], theirs: list[Box]) -> int:
    pairs = sorted(
        ((_iou(a, b), i, j) for i, a in enumerate(ours) for j, b in enumerate(theirs)),
        reverse=True,
    )
    used_a: set[int] = set()
    used_b: set[int] = set()
    for iou, i, j in pairs:
        if iou < 0.5:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
    return len(used_a)


@dataclass
class FaceTally:
    images: int = 0
    ours: int = 0
    baseline: int = 0
    matched: int = 0

    def line(self, label: str) -> str:
        return (
            f"faces {label} ({self.images} images): ours {self.ours}, baseline "
            f"{self.baseline}, matched {self.matched}, ours-only {self.ours - self.matched}, "
            f"baseline-only {self.baseline - self.matched}"
        )


def _compare(
    photos: list[Photo], ours: dict[str, list[Box]], theirs: dict[str, list[Box]]
) -> dict[str, FaceTally]:
    tallies = {UPRIGHT: FaceTally(), ROTATED: FaceTally()}
    for photo in photos:
        tally = tallies[ROTATED if photo.orientation != 1 else UPRIGHT]
        a = ours.get(photo.path, [])
        b = [_to_display(box, photo) for box in theirs.get(photo.path, [])]
        tally.images += 1
        tally.ours += len(a)
        tally.baseline += len(b)
        tally.matched += _matches(a, b)
    return tallies


# -- the benchmark --------------------------------------------------------------------------


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _bench(args: argparse.Namespace, dsn: str, photos: list[Photo], photo_dir: Path) -> int:
    import asyncio

    logs = args.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    asyncio.run(_setup_db(dsn))
    n = len(photos)
    size = -(-n // args.chunks)
    chunks = [photos[i : i + size] for i in range(0, n, size)]
    ours: list[Measured] = []
    base: list[Measured] = []
    # ABBA: ours, baseline | baseline, ours | ... so that a machine getting slower or
    # faster during the run (shared cores) weighs on both sides alike
    for run, chunk in enumerate(chunks, start=1):
        order = ("ours", "baseline") if run % 2 else ("baseline", "ours")
        for label in order:
            before = _load()
            if label == "ours":
                m = _run_ours(dsn, photo_dir, chunk, run, logs, args.threads)
                ours.append(m)
            else:
                m = _run_baseline(photo_dir, chunk, run, logs)
                base.append(m)
            faces = sum(len(v) for v in m.faces.values())
            print(
                f"chunk {run} {label:8s}: {len(chunk)} images in {m.wall_s:6.1f} s = "
                f"{len(chunk) / m.wall_s:5.2f} images/s, CPU {m.cpu_s:6.1f} s, peak RSS "
                f"{m.maxrss_mb:4.0f} MB, {len(m.faces)} images with results, {faces} faces, "
                f"exit {m.exit_code}, load avg before {before}",
                flush=True,
            )
            if m.exit_code != 0 or len(m.faces) != len(chunk):
                print(f"RESULT: {label} chunk {run} failed; see {logs}")
                return 1
    ratios = [b.wall_s / o.wall_s for o, b in zip(ours, base, strict=True)]
    ours_wall, base_wall = sum(m.wall_s for m in ours), sum(m.wall_s for m in base)
    ratio = base_wall / ours_wall
    ok_ratio = ratio >= 1.3
    print(
        f"throughput ours: {n / ours_wall:.2f} images/s, baseline {n / base_wall:.2f} "
        f"images/s: ratio {ratio:.2f}x over all {n} images (per chunk "
        f"{', '.join(f'{r:.2f}' for r in ratios)}) (target >= 1.3x) "
        f"{'PASS' if ok_ratio else 'FAIL'}"
    )
    cpu = sum(m.cpu_s for m in base) / sum(m.cpu_s for m in ours)
    print(f"CPU-time ratio baseline/ours (detector process only, not PostgreSQL): {cpu:.2f}x")
    stages = [sum(m.stage_s[i] for m in base) for i in range(3)]
    print(
        f"baseline per image: decode+resize {stages[0] / n * 1000:.0f} ms, face_locations "
        f"{stages[1] / n * 1000:.0f} ms, face_encodings {stages[2] / n * 1000:.0f} ms"
    )
    steady = sum(m.steady_s for m in ours) / sum(len(c) - 1 for c in chunks)
    detect_ms = sum(m.detect_ms for m in ours) / n
    print(
        f"ours per image after the first of a run: {steady * 1000:.0f} ms between commits, "
        f"of which {detect_ms:.0f} ms (mean) waiting for pixels + detection + encodings"
    )
    rss = max(m.maxrss_mb for m in ours)
    ok_rss = rss <= 200
    print(
        f"peak RSS ours: {rss:.0f} MB (runs {', '.join(f'{m.maxrss_mb:.0f}' for m in ours)}; "
        f"baseline {', '.join(f'{m.maxrss_mb:.0f}' for m in base)}) (target <= 200 MB) "
        f"{'PASS' if ok_rss else 'FAIL'}"
    )
    startup = statistics.median(m.first_done_s for m in ours)
    ok_startup = startup <= 2.0
    print(
        f"start-up to first committed image: median {startup:.2f} s (runs "
        f"{', '.join(f'{m.first_done_s:.2f}' for m in ours)}, the first with a cold "
        "cache; first attempt opened after "
        f"{', '.join(f'{m.first_started_s:.2f}' for m in ours)} s) (target <= 2 s) "
        f"{'PASS' if ok_startup else 'FAIL'}"
    )
    ours_faces = {k: v for m in ours for k, v in m.faces.items()}
    base_faces = {k: v for m in base for k, v in m.faces.items()}
    tallies = _compare(photos, ours_faces, base_faces)
    for label, tally in tallies.items():
        print(tally.line(label))
    upright = tallies[UPRIGHT]
    ok_faces = upright.matched == upright.baseline
    print(
        f"same faces on upright images: {upright.matched} of {upright.baseline} baseline faces "
        f"matched (target: all) {'PASS' if ok_faces else 'FAIL'}"
    )
    ok = ok_ratio and ok_rss and ok_startup and ok_faces
    print("RESULT:", "all targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--baseline-worker":
        return _baseline_worker(*sys.argv[2:])
    if len(sys.argv) > 4 and sys.argv[1] == "--measure":
        return _measure_child(*sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=4, help="ABBA-ordered runs per side")
    parser.add_argument("--quick", action="store_true", help="20 images, a smoke check")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="facescan-detector run --threads (default 0: the CPUs it may use; the "
        "baseline loop uses one)",
    )
    parser.add_argument("--workdir", type=Path, default=BENCH / "out" / "detector")
    args = parser.parse_args()
    if args.quick:
        args.images = 20
    if not _baseline_available():
        print(
            "the baseline needs face_recognition: "
            f"{Path(sys.executable).parent / 'pip'} install --no-deps face_recognition==1.3.0 "
            "(see bench/requirements.txt)",
            file=sys.stderr,
        )
        return 2
    photo_dir = args.workdir / f"photos-v{PHOTOS_VERSION}"
    photos = _photos(photo_dir, args.images)
    rotated = sum(p.orientation != 1 for p in photos)
    sizes = sorted({f"{p.width}x{p.height}" for p in photos})
    mean_mb = statistics.mean(p.file_bytes for p in photos) / 1e6
    print(
        f"photos: {len(photos)} ({len(photos) - rotated} upright, {rotated} with EXIF "
        f"orientation 6), stored as {', '.join(sizes)}, mean {mean_mb:.1f} MB, in {photo_dir}"
    )
    print(f"machine: {os.cpu_count()} CPUs, load average {_load()}")
    print(
        f"ours: facescan-detector run --threads {args.threads}"
        f"{' (the CPUs it may use)' if args.threads == 0 else ''}; baseline: one thread"
    )
    from facescan_operator.embedded_db import EmbeddedDatabase

    with tempfile.TemporaryDirectory(prefix="facescan-detector-bench-") as tmp:
        # a cache of its own: ours' first run starts as on a fresh machine or pod
        # (dlib's frontal detector decoded, 0.3-0.5 s), the others as a warm one
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        db = EmbeddedDatabase(Path(tmp) / "pg", database="bench")
        try:
            return _bench(args, db.dsn, photos, photo_dir)
        finally:
            db.stop()


if __name__ == "__main__":
    raise SystemExit(main())
