"""`facescan scan` and `facescan register`: find a library's images and detect their
faces on this machine (registered in cli.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
import typer.core

from facescan_operator import commands, scanning
from facescan_operator.cli_common import (
    EXIT_REFUSED,
    DataDirOption,
    DsnOption,
    JsonOption,
    emit,
    fail,
    run,
)
from facescan_operator.registration import RegistrationRefused
from facescan_queue.defaults import DEFAULT_FRAMES_PER_VIDEO, DEFAULT_MAX_DIMENSION


def scan(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Directories (or image files) to scan.", exists=True, metavar="PATH"),
    ],
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    model: Annotated[
        commands.Model,
        typer.Option(
            help="Detection model; cnn and insightface "
            "step down a cascade (smaller scales, then hog) when memory runs out."
        ),
    ] = commands.Model.HOG,
    workers: Annotated[
        int,
        typer.Option(min=1, max=1024, help="Detector processes at once (default: number of CPUs)."),
    ] = os.cpu_count() or 1,
    memory_limit: Annotated[
        str | None,
        typer.Option(
            help="Most memory one detector may use, e.g. 2G or 512M; enforced like a "
            f"container limit; at least {commands.min_memory_limit(commands.Model.HOG) >> 20}M, "
            "what a detector needs to load its model and start an image.",
        ),
    ] = None,
    max_dimension: Annotated[
        int,
        typer.Option(
            min=0,
            help=f"Cap on the long side before detection: 0 (none) or at least "
            f"{commands.MIN_MAX_DIMENSION}.",
        ),
    ] = DEFAULT_MAX_DIMENSION,
    batch_size: Annotated[
        int, typer.Option(min=1, max=10000, help="Images per detector process.")
    ] = 25,
    image_timeout: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="Seconds per image (per video: all its frames) before it fails as timeout.",
        ),
    ] = 300.0,
    model_dir: Annotated[
        Path | None, typer.Option(help="InsightFace ONNX models (det_*.onnx, w600k_*.onnx).")
    ] = None,
    frames_per_video: Annotated[
        int,
        typer.Option(min=1, max=100, help="Frames sampled per video, evenly over its duration."),
    ] = DEFAULT_FRAMES_PER_VIDEO,
    rescan: Annotated[
        bool,
        typer.Option(
            "--rescan",
            help="Redo the images done with another model or max dimension (otherwise they "
            "are kept, and counted in the summary).",
        ),
    ] = False,
    progress_every: Annotated[
        float,
        typer.Option(
            min=0,
            help="When stderr is not a terminal: a progress line every this many seconds "
            "(0: none). On a terminal a progress bar with rate and time left.",
        ),
    ] = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Register every image under PATH and detect faces until none is runnable now.

    Images are regular files ending in .jpg, .jpeg, .png, .heic, .heif, .webp, .gif, .bmp,
    .tif or .tiff, and video files ending in .mp4, .mov, .m4v, .mkv, .webm or .avi (any
    case; a video's faces are those of --frames-per-video frames sampled evenly over
    it, each with its timestamp), under PATH, recursively; symbolic links (an image linked
    from within PATH is registered once, by its own path), FIFOs, devices, hidden
    directories (names starting with a dot) and other files are skipped. Images already
    done are not redone: running it
    again resumes; done with another --model or --max-dimension, they are kept unless
    --rescan. Images that fail are retried with backoff and listed by `facescan
    failures`. The summary lists each image's faces for 30 images or fewer, then the
    counts.

    Exit codes: 0 done (failed images are data), 2 usage, 3 database, 4 the detectors
    cannot run (model files missing, a memory limit too small for them to start).
    """
    try:
        commands.check_max_dimension(max_dimension)
        limit = commands.check_memory_limit(memory_limit, model) if memory_limit else None
    except ValueError as exc:
        fail(str(exc))
        return
    terminal = sys.stderr.isatty() and not as_json
    options = scanning.ScanOptions(
        model=model,
        workers=workers,
        memory_limit=limit,
        max_dimension=max_dimension,
        batch_size=batch_size,
        image_timeout_s=image_timeout,
        model_dir=model_dir,
        progress=terminal,
        progress_every_s=None if terminal or progress_every == 0 else progress_every,
        rescan=rescan,
        frames_per_video=frames_per_video,
    )
    summary = run(lambda q, url: scanning.scan(q, url, paths, options), dsn, data_dir, create=True)
    emit(summary.as_json(), as_json, summary.text())


def register(
    root: Annotated[
        Path,
        typer.Argument(
            help="The library root: every image under it is registered, by its path relative "
            "to it.",
            exists=True,
            file_okay=False,
        ),
    ],
    library: Annotated[
        str | None,
        typer.Option(
            "--library",
            help="Library name, e.g. the <namespace>/<name> of a FaceScan whose pods mount ROOT "
            "(default: ROOT's absolute path, as `facescan scan` names it).",
        ),
    ] = None,
    allow_empty: Annotated[
        bool,
        typer.Option(
            "--allow-empty",
            help="A ROOT without any image marks every image of the library missing "
            "(otherwise refused, exit 5: an unmounted volume looks empty).",
        ),
    ] = False,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register the images under ROOT without detecting: reads only their headers.

    For a cluster: run it where the photos are, against the FaceScan's database, and the
    operator's Jobs detect them. Running it again registers new files, queues changed
    ones (another size or modification time) again with their old faces deleted, and,
    when every directory under ROOT could be read, marks the registered images whose file
    is gone missing (not detected, faces kept, counted by `status`) until it is back.

    Exit codes: 0 registered, 2 usage, 3 database, 5 refused, nothing registered or marked
    missing: ROOT cannot be read, or has no image while the library has (--allow-empty).
    """
    try:
        result = run(
            lambda q, _: commands.register(q, root, library, allow_empty=allow_empty),
            dsn,
            data_dir,
            create=True,
        )
    except RegistrationRefused as exc:
        print(f"facescan: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_REFUSED) from None
    emit(result, as_json, commands.register_text(result))
