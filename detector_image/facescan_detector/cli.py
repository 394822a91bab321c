"""``facescan-detector``: the command a detector Job pod (or the local runner) executes.

  facescan-detector run        work through one lease (the Job contract: FACESCAN_* env)
  facescan-detector calibrate  measure memory and time per megapixel of each model (JSON)
  facescan-detector serve      the HTTP API (facescan_api: POST /detect, /health, /metrics)

Exit codes of ``run`` (hints only; the database is the truth): 0 the lease is finished
(or was taken over), 2 the detector cannot start (usage, model files), 3 an image hung
past the timeout, 4 host memory ran out, 75 the database or the library is unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from facescan_detector.backends import MODELS
from facescan_detector.memory import tune_malloc
from facescan_detector.run import EXIT_STARTUP, EXIT_UNAVAILABLE
from facescan_detector.settings import DetectorSettings
from facescan_queue.errors import DatabaseUnavailable, QueueError
from facescan_queue.settings import DatabaseSettings, DsnError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facescan-detector",
        description="facescan's detector: turns leased images into committed faces.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="process the images of one lease, then exit",
        description="Process the images leased to OWNER one by one: commit each image's "
        "faces, or record a typed failure. Every option can also come from the "
        "environment variable named in its help (the Job contract); the database is "
        "FACESCAN_DSN, else the file FACESCAN_DSN_FILE names, else the standard PG* "
        "variables (never a command-line option: `ps` shows those).",
        epilog="exit codes: 0 lease finished, 2 cannot start (a malformed database URL "
        "included), 3 image timed out, "
        "4 host out of memory, 75 database or library unavailable",
    )
    run.add_argument(
        "--owner", dest="lease_owner", help="lease owner, required (FACESCAN_LEASE_OWNER)"
    )
    run.add_argument(
        "--root",
        dest="library_root",
        type=Path,
        help="library root the image paths are relative to, required (FACESCAN_LIBRARY_ROOT)",
    )
    run.add_argument(
        "--timeout",
        dest="image_timeout_s",
        type=float,
        help="seconds per image before it fails as timeout (default 300; FACESCAN_IMAGE_TIMEOUT_S)",
    )
    run.add_argument(
        "--lease-seconds", type=int, help="lease duration (default 120; FACESCAN_LEASE_SECONDS)"
    )
    run.add_argument(
        "--model",
        choices=MODELS,
        help="model of the lease's cascade step, loaded while connecting; a hint, each "
        "image's own step decides (FACESCAN_MODEL)",
    )
    run.add_argument(
        "--model-dir", type=Path, help="InsightFace ONNX models directory (FACESCAN_MODEL_DIR)"
    )
    run.add_argument(
        "--upsample",
        dest="hog_upsample",
        type=int,
        help="dlib upsamplings for hog/cnn (default 1; FACESCAN_HOG_UPSAMPLE)",
    )
    run.add_argument(
        "--threads",
        type=int,
        help="CPU threads for hog; 2 or more runs dlib's detector on two threads with "
        "the same result (default 0: the CPUs this process may use; FACESCAN_THREADS)",
    )
    run.add_argument(
        "--no-prefetch",
        dest="prefetch",
        action="store_false",
        default=None,
        help="do not decode the next image during detection (FACESCAN_PREFETCH=false; "
        "default: once the detector makes room for it)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="log every image")

    cal = sub.add_parser(
        "calibrate",
        help="measure memory and seconds per megapixel of each model (JSON)",
        description="Measure, on this machine, peak memory and time per megapixel of each "
        "detection model; prints the JSON table the operator sizes detector Jobs with.",
    )
    cal.add_argument(
        "--models",
        default="hog,cnn",
        help=f"comma-separated, from {','.join(MODELS)} (default hog,cnn)",
    )
    cal.add_argument("--sizes", default="640,1280", help="long sides to measure at")
    cal.add_argument("--image", type=Path, help="photo to measure with (default: built in)")
    cal.add_argument("--model-dir", type=Path, help="InsightFace ONNX models directory")

    from facescan_api import serve  # no FastAPI import until the server starts

    srv = sub.add_parser("serve", help="serve the HTTP API", description=serve.DESCRIPTION)
    serve.add_arguments(srv)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "calibrate":
        return _calibrate(args)
    if args.command == "serve":
        from facescan_api.serve import main as serve

        return serve(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    tune_malloc()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.verbose:
        logging.getLogger("facescan").setLevel(logging.INFO)
    overrides: dict[str, Any] = {
        key: value
        for key, value in vars(args).items()
        if key not in ("command", "verbose") and value is not None
    }
    try:
        settings = DetectorSettings(**overrides)
    except ValidationError as exc:
        print(f"facescan-detector: invalid settings:\n{exc}", file=sys.stderr)
        return EXIT_STARTUP
    database = DatabaseSettings()
    try:
        database.parts()  # a malformed URL cannot start, and no retry mends it
    except DsnError as exc:
        print(f"facescan-detector: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    from facescan_detector.run import run

    try:
        summary = asyncio.run(run(settings, database))
    except QueueError as exc:
        print(f"facescan-detector: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE if isinstance(exc, DatabaseUnavailable) else EXIT_STARTUP
    print(
        json.dumps(
            {
                "owner": settings.lease_owner,
                "done": summary.done,
                "failed": summary.failed,
                "faces": summary.faces,
                "reason": summary.reason,
                "exit_code": summary.exit_code,
            }
        )
    )
    sys.stdout.flush()
    if summary.abandoned_thread:
        # a hung detection thread cannot be stopped: leave without joining it
        sys.stderr.flush()
        os._exit(summary.exit_code)
    return summary.exit_code


def _calibrate(args: argparse.Namespace) -> int:
    from facescan_detector.calibrate import calibrate

    table = calibrate(
        [m.strip() for m in args.models.split(",") if m.strip()],
        sizes=tuple(int(s) for s in args.sizes.split(",")),
        image=args.image,
        model_dir=args.model_dir,
    )
    print(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
