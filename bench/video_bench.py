"""Video benchmark: sampling 5 frames of a video and detecting them, per video, beside
decoding the same 5 frames with the ``ffmpeg`` command line.

Measures, in this one run, on H.264 clips generated once with PyAV into WORKDIR
(default bench/out/video) from the sample photographs (Obama, Biden, black, in turn):
1080p and 4K, 10 s and 10 min. Generating 10 min of 4K is slow on a small machine, so
every clip is 1 frame per second with a key frame every 2 s (a phone records 30 fps
with a key frame every 1-2 s: the seek-and-decode work per sampled frame is then up to
60 frames instead of 2; the clips' length, and so their index size, is real).
For each clip, each measurement in a fresh process:
  (a) facescan: ``facescan_detector.video.sample_frames`` (seek to the key frame before
      each point, decode forward, convert at the 1280 cap) + HOG detection of each
      frame, one frame alive at a time: seconds per video, peak RSS;
  (b) facescan's sampling alone (no detection): seconds, peak RSS;
  (c) ``ffmpeg -ss T -i CLIP -frames:v 1 -vf scale=1280:-2 -f rawvideo`` once per point
      (input seeking, as fast as the CLI decodes one frame), one after another: seconds
      for the 5, the largest peak RSS of the 5 processes.
Peak RSS is the process's own VmHWM; an ffmpeg process's is GNU time's maximum resident
size. (``ru_maxrss`` of a child would include its parent's RSS at the fork: Linux
carries it across exec.) Goal: (a)'s RSS flat in the video's length.
Needs ``ffmpeg`` and GNU ``time`` for (c) (``apt-get install -y ffmpeg time``); says so
if absent.

Usage: python bench/video_bench.py [--workdir DIR] [--repeat 3] [--quick]
``--quick``: the 10-s clips and a 2-min clip of each size only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {"1080p": (1920, 1080), "4K": (3840, 2160)}
FRAMES = 5
FPS = 1
GOP = 2
CAP = 1280
TIME = "/usr/bin/time"


def _clip(workdir: Path, size: str, seconds: int) -> Path:
    """The clip, generated once (in a subprocess: this process stays small)."""
    path = workdir / f"{size}_{seconds}s.mp4"
    if not path.exists():
        command = [sys.executable, __file__, "--generate", size, str(seconds), str(path)]
        subprocess.run(command, check=True)
    return path


def _generate(size: str, seconds: int, path: Path) -> None:
    from tests.videos import Scene, make_video

    photos = ("obama.jpg", "biden.jpg", None)
    scenes = [Scene(t, t + 10, photos[(t // 10) % 3]) for t in range(0, seconds, 10)]
    started = time.monotonic()
    partial = path.with_suffix(".partial.mp4")
    make_video(partial, scenes, size=SIZES[size], fps=FPS, gop=GOP)
    partial.rename(path)
    took = time.monotonic() - started
    print(f"  generated {path.name} ({path.stat().st_size >> 20} MB) in {took:.0f} s")


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _ffmpeg(clip: str, point: float) -> float:
    """Decodes the frame at ``point`` with the ffmpeg CLI; its peak RSS in MB."""
    command = [TIME, "-f", "%M", "ffmpeg", "-v", "error", "-ss", f"{point:.3f}", "-i", clip]
    command += ["-frames:v", "1", "-vf", f"scale={CAP}:-2", "-pix_fmt", "rgb24"]
    command += ["-f", "rawvideo", "-"]
    done = subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    return int(done.stderr.strip().splitlines()[-1]) / 1024


def _child(mode: str, clip: str) -> None:
    """One measurement, in this fresh process; prints JSON."""
    from facescan_detector.memory import tune_malloc
    from facescan_detector.video import probe, sample_frames, sample_times

    tune_malloc()  # as facescan-detector run does
    if mode == "ffmpeg":
        points = sample_times(probe(Path(clip)).duration_s, FRAMES)
        started = time.monotonic()
        rss = max(_ffmpeg(clip, point) for point in points)
        print(json.dumps({"seconds": time.monotonic() - started, "rss_mb": rss}))
        return
    detector = None
    if mode == "detect":
        from facescan_detector.backends import create_detector

        detector = create_detector("hog", upsample=1, threads=1)
        detector.load()
    base = _peak_mb()
    started = time.monotonic()
    faces = 0
    for frame in sample_frames(Path(clip), FRAMES, max_dimension=CAP):
        if detector is not None:
            faces += len(detector.detect(frame.pixels))
    seconds = time.monotonic() - started
    print(json.dumps({"seconds": seconds, "rss_mb": _peak_mb(), "base_mb": base, "faces": faces}))


def _measure(mode: str, clip: Path, repeat: int) -> dict[str, float]:
    runs = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, str(clip)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "MALLOC_ARENA_MAX": "2"},
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "video")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "CLIP"), help=argparse.SUPPRESS)
    parser.add_argument("--generate", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    if args.generate:
        _generate(args.generate[0], int(args.generate[1]), Path(args.generate[2]))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    lengths = (10, 120) if args.quick else (10, 600)
    have_ffmpeg = shutil.which("ffmpeg") is not None and Path(TIME).exists()
    if not have_ffmpeg:
        print("ffmpeg or GNU time absent: column (c) left out (apt-get install ffmpeg time)")
    print(
        f"H.264 clips at {FPS} fps, key frame every {GOP} s; {FRAMES} frames per video, long "
        f"side capped at {CAP}; HOG upsample 1 on one thread; medians of {args.repeat} "
        "runs, each in a fresh process"
    )
    print(
        f"{'clip':<14}{'(a) sample+HOG':>16}{'RSS':>9}{'(b) sample':>12}{'RSS':>9}"
        f"{'(c) ffmpeg CLI':>16}{'RSS':>9}{'(b)/(c)':>9}"
    )
    for size in SIZES:
        for seconds in lengths:
            clip = _clip(args.workdir, size, seconds)
            a = _measure("detect", clip, args.repeat)
            b = _measure("sample", clip, args.repeat)
            name = f"{size} {seconds // 60} min" if seconds >= 60 else f"{size} {seconds} s"
            line = (
                f"{name:<14}{a['seconds']:>14.2f} s{a['rss_mb']:>6.0f} MB"
                f"{b['seconds']:>10.2f} s{b['rss_mb']:>6.0f} MB"
            )
            if have_ffmpeg:
                c = _measure("ffmpeg", clip, args.repeat)
                line += (
                    f"{c['seconds']:>14.2f} s{c['rss_mb']:>6.0f} MB"
                    f"{b['seconds'] / c['seconds']:>8.2f}x"
                )
            print(line, flush=True)
            print(
                f"  ({int(a['faces'])} faces; peak RSS before the first frame: "
                f"{a['base_mb']:.0f} MB with HOG loaded, {b['base_mb']:.0f} MB without)",
                flush=True,
            )


if __name__ == "__main__":
    main()
