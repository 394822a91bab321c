"""What ``facescan serve`` serves and how: its settings, from the environment (FACESCAN_*)
and the command line (which wins).

Read by the serve command (``facescan_api.serve``); the app, the worker pool and the
workers get the parts they need. Nothing here imports FastAPI, so the detector's command
line can build its ``serve`` options without the ``api`` extra installed.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from facescan_queue.defaults import DEFAULT_MAX_DIMENSION

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
"""Hosts ``--no-auth`` may serve on: this machine only."""


class ServeSettings(BaseSettings):
    """One API server: where it listens, its detector pool and its API keys."""

    model_config = SettingsConfigDict(env_prefix="FACESCAN_", extra="ignore")

    host: str = "127.0.0.1"
    """Address to bind; 0.0.0.0 (every interface, e.g. in a pod) needs API keys."""

    port: int = Field(default=8080, ge=1, le=65535)

    workers: int = Field(default=1, ge=1, le=256)
    """Detector processes; each loads its model once, at start."""

    queue: int | None = Field(default=None, ge=0)
    """Requests that may wait for a busy worker (default 2 x workers); beyond that,
    /detect answers 503 with Retry-After at once."""

    model: Literal["hog", "cnn", "insightface"] = "hog"
    """The model each worker loads; cnn and insightface step down their cascade (smaller
    scales, then hog) when memory runs out."""

    model_dir: Path | None = None
    """InsightFace ONNX models directory (det_*.onnx + w600k_*.onnx)."""

    max_dimension: int = Field(default=DEFAULT_MAX_DIMENSION, ge=0)
    """Long side images are capped at before detection; 0 for no cap."""

    hog_upsample: int = Field(default=1, ge=0, le=3)
    """dlib upsamplings for hog and cnn (1 finds faces down to ~40 px)."""

    threads: int = Field(default=0, ge=0)
    """CPU threads of each worker for hog; 0: the usable CPUs shared among the workers."""

    image_timeout_s: float = Field(default=300.0, gt=0)
    """Loading and detecting one upload are cut after this (its worker is replaced)."""

    max_upload_mb: float = Field(default=50.0, gt=0)
    """Largest request body /detect reads (413 beyond it, before reading it)."""

    api_keys: SecretStr | None = None
    """Bearer API keys, comma-separated (FACESCAN_API_KEYS, from a Secret); no default."""

    no_auth: bool = False
    """Serve without keys: allowed on a loopback host only."""

    immich: bool = False
    """Serve Immich's machine-learning contract (POST /predict, GET /ping) for its
    facial-recognition task, without a key (Immich's server sends none): needs
    --model insightface, since Immich keeps 512-d ArcFace face vectors."""

    # -- POST /process: jobs through the queue (with a database and a media directory) --

    api_library: str = Field(default="api", min_length=1)
    """The library /process registers its images in (FACESCAN_API_LIBRARY, --library)."""

    media_dir: Path | None = None
    """The API library's root: fetched and copied media are kept here, where the queue's
    workers read them. /process is off without it (or without a database)."""

    path_roots: Annotated[tuple[Path, ...], NoDecode] = ()
    """Directories a job's `path` may name a file beneath (FACESCAN_PATH_ROOTS,
    comma-separated; --path-root, repeatable); none: paths are refused."""

    allow_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    """Hosts a job's `media_url` may name (FACESCAN_ALLOW_HOSTS, comma-separated;
    --allow-host, repeatable); none: URLs are refused."""

    max_media_mb: float = Field(default=50.0, gt=0)
    """Largest media a job may fetch or copy (413 media_too_large beyond it)."""

    fetch_timeout_s: float = Field(default=30.0, gt=0)
    """Time limit of one media download, redirects included."""

    process_workers: int = Field(default=1, ge=1, le=64)
    """`facescan-detector run` processes working the API library at most at once."""

    callback_secret: SecretStr | None = None
    """HMAC key of callback signatures (FACESCAN_CALLBACK_SECRET, from a Secret); no
    default: without it a job with a callback_url is refused."""

    callback_timeout_s: float = Field(default=10.0, gt=0)
    """How long one callback delivery waits for its answer."""

    callback_backoff_s: float = Field(default=5.0, gt=0)
    """Wait after a delivery's first failure; doubled after each, up to the cap."""

    callback_backoff_cap_s: float = Field(default=3600.0, gt=0)
    """The longest wait between two deliveries (--callback-backoff-cap)."""

    callback_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    """Hosts a job's `callback_url` may name (FACESCAN_CALLBACK_HOSTS, comma-separated;
    --callback-host, repeatable): a name or address, `*.example.com` or `*`. None by
    default (not the media hosts: where results go is a decision of its own): callback
    URLs are then refused. Internal addresses (loopback, private, link-local, metadata)
    are reached only through a host listed exactly."""

    callback_max_attempts: int = Field(default=50, ge=1)
    """Deliveries tried at most before a callback is given up."""

    callback_give_up_after_h: float = Field(default=24.0, gt=0)
    """Hours after the job settled past which a callback is given up (the last attempt
    falls then); with the default backoff this comes first (about 33 attempts)."""

    ca_file: Path | None = None
    """CA certificates (PEM) trusted beside the public ones when media_url downloads and
    callbacks go over https: for hosts an organisation's own CA signed (FACESCAN_CA_FILE,
    --ca-file)."""

    poll_s: float = Field(default=1.0, gt=0)
    """How often the dispatcher and the deliverer look at the database."""

    @field_validator("path_roots", "allow_hosts", "callback_hosts", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("allow_hosts", "callback_hosts")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(host.lower() for host in value)

    @field_validator("callback_hosts")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        hosts = tuple(host.removeprefix("[").removesuffix("]") for host in value)
        for host in hosts:
            if "*" in host and host != "*" and not (host.startswith("*.") and "*" not in host[1:]):
                raise ValueError(f"{host!r}: a wildcard is `*` or `*.domain` only")
        return hosts

    def max_media_bytes(self) -> int:
        return int(self.max_media_mb * 1024 * 1024)

    def secret(self) -> bytes | None:
        """The callback key, or None when none is configured (or it is empty)."""
        if self.callback_secret is None or not self.callback_secret.get_secret_value():
            return None
        return self.callback_secret.get_secret_value().encode()

    def queue_size(self) -> int:
        """How many requests may wait for a worker."""
        return 2 * self.workers if self.queue is None else self.queue

    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def keys(self) -> tuple[bytes, ...]:
        """The API keys (empty ones dropped), as bytes for constant-time comparison."""
        if self.api_keys is None:
            return ()
        raw = self.api_keys.get_secret_value().split(",")
        return tuple(key.strip().encode() for key in raw if key.strip())

    def refusal(self) -> str | None:
        """Why this server must not start (keys missing, --no-auth off loopback, --immich
        without insightface), or None."""
        if self.immich and self.model != "insightface":
            return (
                f"--immich needs --model insightface: Immich stores 512-d ArcFace face "
                f"vectors, and {self.model} gives dlib's 128-d ones"
            )
        if self.no_auth:
            if self.host not in LOOPBACK:
                return (
                    f"--no-auth serves this machine only (--host 127.0.0.1 or ::1), "
                    f"not {self.host}: set FACESCAN_API_KEYS instead"
                )
            return None
        if not self.keys():
            return (
                "no API keys: set FACESCAN_API_KEYS (comma-separated; from a Secret), or "
                "pass --no-auth on 127.0.0.1"
            )
        return None


def key_matches(given: bytes, keys: tuple[bytes, ...]) -> bool:
    """Whether ``given`` is one of ``keys``, in time independent of where they differ
    (every key is compared, with hmac.compare_digest)."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key)
    return found
