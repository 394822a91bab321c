"""``facescan-detector serve`` (and ``facescan serve``, which execs it): the options, the
refusals before anything starts, then the worker pool and uvicorn.

``add_arguments`` builds the subcommand's options on the detector's parser, without
importing FastAPI; ``main`` runs it. Exit codes: 0 stopped (SIGTERM, Ctrl-C), 2 cannot
start (no API keys, --no-auth off loopback, a malformed database URL, a model that
cannot load, the port taken).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from facescan_api.settings import ServeSettings
from facescan_queue.defaults import DEFAULT_MAX_DIMENSION
from facescan_queue.settings import DatabaseSettings, DsnError

EXIT_STARTUP = 2

DESCRIPTION = (
    "Serve facescan's HTTP API: POST /detect (multipart `image` -> faces), POST /process "
    "and GET /process/JOB (jobs through the queue, signed callbacks; with a database and "
    "--media-dir), /people and POST /cluster (with a database), GET /health, "
    "/health/live, /health/ready, /metrics, /openapi.json; with --immich, Immich's GET "
    "/ping and POST /predict (no key). Every other route but health needs "
    "`Authorization: Bearer KEY`, KEY one of FACESCAN_API_KEYS (comma-separated; there "
    "is no default: without keys it refuses to start, unless --no-auth on 127.0.0.1). "
    "`facescan serve` runs this with the same options. Each option can also come from "
    "the environment variable named in its help."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve options (all default None: unset ones come from FACESCAN_* or defaults)."""
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; FACESCAN_HOST)")
    parser.add_argument("--port", type=int, help="port (default 8080; FACESCAN_PORT)")
    parser.add_argument(
        "--dsn",
        help="PostgreSQL URL, reported in /health and part of readiness (visible in `ps`: "
        "prefer FACESCAN_DSN or FACESCAN_DSN_FILE); /process keeps its jobs there (with "
        "--media-dir), /detect does not use it",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="embedded PostgreSQL directory: only with `facescan serve`, which starts it",
    )
    parser.add_argument(
        "--workers", type=int, help="detector processes (default 1; FACESCAN_WORKERS)"
    )
    parser.add_argument(
        "--queue",
        type=int,
        help="uploads that may wait for a busy worker; more get 503 with Retry-After "
        "(default 2 x workers; FACESCAN_QUEUE)",
    )
    parser.add_argument(
        "--model",
        choices=("hog", "cnn", "insightface"),
        help="model each worker loads once (default hog; FACESCAN_MODEL); cnn and "
        "insightface step down their cascade when memory runs out",
    )
    parser.add_argument(
        "--model-dir", type=Path, help="InsightFace ONNX models directory (FACESCAN_MODEL_DIR)"
    )
    parser.add_argument(
        "--max-dimension",
        type=int,
        help=f"cap on the long side (default {DEFAULT_MAX_DIMENSION}, 0: none; "
        "FACESCAN_MAX_DIMENSION)",
    )
    parser.add_argument(
        "--upsample",
        dest="hog_upsample",
        type=int,
        help="dlib upsamplings for hog/cnn (default 1; FACESCAN_HOG_UPSAMPLE)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="hog threads per worker (default 0: the usable CPUs shared among the "
        "workers; FACESCAN_THREADS)",
    )
    parser.add_argument(
        "--timeout",
        dest="image_timeout_s",
        type=float,
        help="seconds to load and detect one upload; past it 422 image_timeout and the "
        "worker is replaced (default 300; FACESCAN_IMAGE_TIMEOUT_S)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        help="largest request body, refused with 413 before it is read (default 50; "
        "FACESCAN_MAX_UPLOAD_MB)",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        default=None,
        help="serve without API keys: only on 127.0.0.1 or ::1",
    )
    parser.add_argument(
        "--immich",
        action="store_true",
        default=None,
        help="also serve Immich's machine-learning API for facial recognition (POST "
        "/predict, GET /ping; without a key, as Immich sends none: keep it on a private "
        "network); needs --model insightface (FACESCAN_IMMICH)",
    )
    parser.add_argument(
        "--library",
        dest="api_library",
        help="library /process registers its images in (default api; FACESCAN_API_LIBRARY)",
    )
    parser.add_argument(
        "--media-dir",
        type=Path,
        help="the API library's root, where fetched media are kept; /process needs it and a "
        "database (FACESCAN_MEDIA_DIR)",
    )
    parser.add_argument(
        "--path-root",
        dest="path_roots",
        type=Path,
        action="append",
        help="a directory a job's path may be beneath, repeatable (FACESCAN_PATH_ROOTS, "
        "comma-separated); none: paths refused",
    )
    parser.add_argument(
        "--allow-host",
        dest="allow_hosts",
        action="append",
        help="a host a job's media_url may name, repeatable (FACESCAN_ALLOW_HOSTS, "
        "comma-separated); none: URLs refused",
    )
    parser.add_argument(
        "--max-media-mb",
        type=float,
        help="largest media a job fetches or copies (default 50; FACESCAN_MAX_MEDIA_MB)",
    )
    parser.add_argument(
        "--fetch-timeout",
        dest="fetch_timeout_s",
        type=float,
        help="seconds one media download may take (default 30; FACESCAN_FETCH_TIMEOUT_S)",
    )
    parser.add_argument(
        "--process-workers",
        type=int,
        help="detector processes working /process jobs at once (default 1; "
        "FACESCAN_PROCESS_WORKERS)",
    )
    parser.add_argument(
        "--callback-host",
        dest="callback_hosts",
        action="append",
        help="a host a job's callback_url may name: a name or address, *.domain or *, "
        "repeatable (FACESCAN_CALLBACK_HOSTS, comma-separated); none (the default): "
        "callbacks refused. Loopback, private and link-local (metadata) addresses are "
        "reached only through a host listed exactly",
    )
    parser.add_argument(
        "--callback-max-attempts",
        type=int,
        help="deliveries of one callback tried at most, then it is given up (default 50; "
        "FACESCAN_CALLBACK_MAX_ATTEMPTS)",
    )
    parser.add_argument(
        "--callback-give-up-after",
        dest="callback_give_up_after_h",
        type=float,
        metavar="HOURS",
        help="hours after the job settled when its callback is given up (default 24; "
        "FACESCAN_CALLBACK_GIVE_UP_AFTER_H)",
    )
    parser.add_argument(
        "--callback-backoff-cap",
        dest="callback_backoff_cap_s",
        type=float,
        metavar="SECONDS",
        help="longest wait between two deliveries of a callback; the first wait is 5 s "
        "(FACESCAN_CALLBACK_BACKOFF_S), doubled after each failure (default 3600; "
        "FACESCAN_CALLBACK_BACKOFF_CAP_S)",
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        help="CA certificates (PEM) trusted beside the public ones for https media_url "
        "downloads and callbacks, e.g. an organisation's own CA (FACESCAN_CA_FILE)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")


def main(args: argparse.Namespace) -> int:
    """Runs the server until SIGTERM or Ctrl-C."""
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.data_dir is not None:
        return _refuse(
            "--data-dir needs `facescan serve`, which starts the embedded PostgreSQL and "
            "passes its URL here (FACESCAN_DSN)"
        )
    skip = ("command", "verbose", "dsn", "data_dir")
    overrides: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k not in skip and v is not None
    }
    try:
        settings = ServeSettings(**overrides)
    except ValidationError as exc:
        return _refuse(f"invalid settings:\n{exc}")
    refusal = settings.refusal()
    if refusal is not None:
        return _refuse(refusal)
    database = DatabaseSettings(**({"dsn": args.dsn} if args.dsn else {}))
    try:
        dsn = database.dsn_value()
        target = database.target() if dsn else None
    except DsnError as exc:
        return _refuse(str(exc))
    from facescan_api.run import serve

    return asyncio.run(serve(settings, dsn, target, verbose=args.verbose))


def _refuse(message: str) -> int:
    print(f"facescan serve: {message}", file=sys.stderr)
    return EXIT_STARTUP
