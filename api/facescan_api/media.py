"""A job's media into the API library's root: a URL fetched, or a path copied.

Called by ``facescan_api.jobs`` for each new job, before it is registered. What the
request itself breaks (a scheme other than http(s), a host not allowed, a path beneath
no root, media over the size limit, a redirect to another host) raises
:class:`MediaRefused` (a 4xx; no job is made); a download that fails (connection,
timeout, an HTTP error status) raises :class:`DownloadFailed` (the job settles failed).
Media land under a temporary name and are renamed into place by the caller.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx

from facescan_api.models import ErrorType
from facescan_detector.beneath import open_beneath

MAX_REDIRECTS = 5
_CHUNK = 1 << 16


class MediaRefused(Exception):
    """The request's media breaks a rule: answered with ``status`` and ``error``."""

    def __init__(self, status: int, error: ErrorType, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


class DownloadFailed(Exception):
    """The URL could not be fetched; the job settles failed with this message."""


@dataclass(frozen=True)
class MediaRules:
    hosts: frozenset[str]
    roots: tuple[Path, ...]
    max_bytes: int
    timeout_s: float
    tls: ssl.SSLContext | None = None
    """What https downloads verify with (facescan_api.trust); None: httpx's default."""


def check_url(url: str, rules: MediaRules) -> httpx.URL:
    """The media_url, if http(s) on an allowed host."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise MediaRefused(422, "url_not_allowed", f"media_url is not a URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise MediaRefused(422, "url_not_allowed", "media_url must be an http(s) URL with a host")
    if parsed.host.lower() not in rules.hosts:
        allowed = ", ".join(sorted(rules.hosts)) or "none: --allow-host is not set"
        raise MediaRefused(
            403, "url_not_allowed", f"media_url host {parsed.host!r} is not allowed ({allowed})"
        )
    return parsed


async def fetch(url: str, rules: MediaRules, out: BinaryIO) -> int:
    """Downloads ``url`` into ``out`` within the rules; the bytes written."""
    current = check_url(url, rules)
    host = current.host.lower()
    try:
        async with (
            asyncio.timeout(rules.timeout_s),
            httpx.AsyncClient(
                follow_redirects=False,
                timeout=rules.timeout_s,
                trust_env=False,
                verify=rules.tls or True,
            ) as client,
        ):
            for _ in range(MAX_REDIRECTS + 1):
                async with client.stream("GET", current) as response:
                    if response.is_redirect:
                        target = current.join(response.headers.get("location", ""))
                        if target.scheme not in ("http", "https") or target.host.lower() != host:
                            raise MediaRefused(
                                422,
                                "redirect_refused",
                                f"media_url redirects to another host or scheme ({target})",
                            )
                        current = target
                        continue
                    if response.status_code != 200:
                        raise DownloadFailed(f"GET {current} answered HTTP {response.status_code}")
                    return await _write(response, rules.max_bytes, out)
            raise DownloadFailed(f"more than {MAX_REDIRECTS} redirects from {url}")
    except TimeoutError as exc:
        raise DownloadFailed(f"downloading {url} took over {rules.timeout_s:g} s") from exc
    except httpx.HTTPError as exc:
        raise DownloadFailed(f"downloading {url} failed: {type(exc).__name__}: {exc}") from exc


async def _write(response: httpx.Response, max_bytes: int, out: BinaryIO) -> int:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    written = 0
    async for chunk in response.aiter_bytes(_CHUNK):
        written += len(chunk)
        if written > max_bytes:
            raise _too_large(written, max_bytes)
        out.write(chunk)
    return written


def copy(path: str, rules: MediaRules, out: BinaryIO) -> int:
    """Copies the file at ``path`` (absolute, beneath a root, symlinks staying beneath
    it) into ``out``; the bytes written. Blocking: run it in a thread."""
    given = Path(path)
    if not given.is_absolute() or ".." in given.parts:
        raise MediaRefused(422, "path_not_allowed", "path must be absolute, without '..'")
    for root in rules.roots:
        if given.is_relative_to(root):
            return _copy_beneath(root, str(given.relative_to(root)), rules.max_bytes, out)
    roots = ", ".join(str(r) for r in rules.roots) or "none: --path-root is not set"
    raise MediaRefused(403, "path_not_allowed", f"path is beneath no allowed root ({roots})")


def _copy_beneath(root: Path, relative: str, max_bytes: int, out: BinaryIO) -> int:
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = open_beneath(root_fd, relative, os.O_RDONLY)
        finally:
            os.close(root_fd)
    except OSError as exc:
        if exc.errno == errno.EXDEV:  # a symlink leading out of the root
            raise MediaRefused(403, "path_not_allowed", "path leads out of its root") from exc
        raise MediaRefused(
            422, "media_not_found", f"path cannot be read: {exc.strerror or exc}"
        ) from exc
    with os.fdopen(fd, "rb") as source:
        facts = os.fstat(source.fileno())
        if not stat.S_ISREG(facts.st_mode):
            raise MediaRefused(422, "media_not_found", "path is not a regular file")
        size = facts.st_size
        if size > max_bytes:
            raise _too_large(size, max_bytes)
        shutil.copyfileobj(source, out, _CHUNK)
    return size


def _too_large(size: int, limit: int) -> MediaRefused:
    return MediaRefused(
        413, "media_too_large", f"the media ({size} bytes or more) exceeds {limit} bytes"
    )
