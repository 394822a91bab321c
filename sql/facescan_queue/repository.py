"""A thin async client of the queue: one method per state-machine function in SQL.

Used by the operator (register, claim, release, reclaim, status) and by the detector
(start, step down, complete, fail, heartbeat). It adds no logic of its own beyond typing
results, translating driver errors into ``facescan_queue.errors`` and retrying a call
that PostgreSQL aborted for a deadlock or a serialization conflict.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Self

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from facescan_queue import errors
from facescan_queue.models import (
    AttemptClock,
    CascadeStep,
    ClaimedImage,
    DetectionResult,
    FailureOutcome,
    FailureRow,
    GroupCount,
    LeaseInfo,
    Library,
    LibraryPolicy,
    MatchDistances,
    NewImage,
    PeopleCounts,
    QueueStatus,
    RecentOutcomes,
    Registered,
    Released,
    StartedImage,
)
from facescan_queue.queries import latest_version, query
from facescan_queue.settings import DatabaseSettings
from facescan_queue.types import ErrorType, ImageState

_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_RETRIES = 5
_REGISTER_CHUNK = 10_000
_CLOSE_S = 10.0
"""How long close() waits for connections still in use before terminating them."""


class Queue:
    """The queue of one database, over a small connection pool."""

    def __init__(
        self, pool: asyncpg.Pool, settings: DatabaseSettings, *, pin: bool = False
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._target = settings.target()
        self._user = settings.user()
        # With ``pin``, one connection is kept out of the pool for calls that come one
        # after another (a detector's start/commit loop): acquiring and releasing a
        # pooled connection costs more client CPU than the call itself. Concurrent calls
        # use the pool. (Not for the operator and the CLI, whose calls overlap and whose
        # pool may be closed while a call is in flight.)
        self._pinned: PoolConnectionProxy[Any] | None = None
        self._pinned_busy = asyncio.Lock()
        self._pin = pin and pool.get_max_size() >= 2  # else a concurrent call never runs

    @classmethod
    async def connect(
        cls,
        settings: DatabaseSettings | None = None,
        *,
        min_size: int = 1,
        max_size: int = 4,
        check_schema: bool = True,
        pin: bool = False,
        async_commit: bool = False,
    ) -> Self:
        """Opens the pool; with check_schema, refuses a missing or mismatched schema and
        names any missing privilege with the GRANT to run; with pin, calls made one after
        another share one connection kept out of the pool (a detector's loop).

        With async_commit, the server acknowledges this pool's commits before their WAL
        reaches disk (synchronous_commit = off). A commit stays atomic; a crash of the
        database server may forget the last fraction of a second of them, as if they had
        not happened: an image whose result is forgotten is leased again, never done
        without its faces, and its expired lease sends it back to be detected again. For
        the detector, whose transitions all have that property; not for the control plane.
        """
        settings = settings or DatabaseSettings()
        target, user = settings.target(), settings.user()
        with errors.translated(target=target, user=user):
            pool = await asyncpg.create_pool(
                settings.dsn_value(),
                min_size=min_size,
                max_size=max_size,
                timeout=settings.connect_timeout_s,
                command_timeout=settings.command_timeout_s,
                reset=_keep_session,
                server_settings={"synchronous_commit": "off"} if async_commit else None,
            )
        queue = cls(pool, settings, pin=pin)
        if check_schema:
            try:
                await queue.check_schema()
            except BaseException:
                await queue.close()
                raise
        return queue

    async def close(self) -> None:
        """Closes the pool once its connections are released; one still in use after
        _CLOSE_S (a call left in flight, a connection broken mid-call) is terminated,
        so that a process never hangs on its way out."""
        pinned, self._pinned = self._pinned, None
        if pinned is not None and _attached(pinned):
            await self._pool.release(pinned)
        try:
            await asyncio.wait_for(self._pool.close(), _CLOSE_S)
        except TimeoutError:
            self._pool.terminate()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def target(self) -> str:
        """host:port/database, for messages."""
        return self._target

    @property
    def user(self) -> str:
        """The database user, for messages."""
        return self._user

    @property
    def pool(self) -> asyncpg.Pool:
        """The connection pool, for the steps after detection that run their own named
        SQL on this database (facescan_people), translating errors with
        facescan_queue.errors.translated."""
        return self._pool

    # -- plumbing -------------------------------------------------------------------

    async def _fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        sql = query(name)
        for attempt in range(_RETRIES):
            try:
                with errors.translated(target=self._target, user=self._user):
                    if not self._pin or self._pinned_busy.locked():
                        return await self._pool.fetch(sql, *args)
                    async with self._pinned_busy:
                        return await self._fetch_pinned(sql, args)
            except _RETRYABLE:
                if attempt == _RETRIES - 1:
                    raise
                await asyncio.sleep(0.01 * 2**attempt)
        raise AssertionError("unreachable")

    async def _fetch_pinned(self, sql: str, args: tuple[Any, ...]) -> list[asyncpg.Record]:
        if self._pinned is not None and not _attached(self._pinned):
            self._pinned = None  # the server closed it; the pool has it back already
        connection = self._pinned
        if connection is None:
            connection = self._pinned = await self._pool.acquire()
        try:
            return await connection.fetch(sql, *args)
        except asyncpg.PostgresError as exc:
            if isinstance(exc, asyncpg.PostgresConnectionError):
                self._unpin()
            raise  # else the server refused the call and the connection is fine
        except BaseException:  # broken, timed out or cancelled mid-call
            self._unpin()
            raise

    def _unpin(self) -> None:
        """Closes the pinned connection; the pool opens a fresh one when next asked."""
        pinned, self._pinned = self._pinned, None
        if pinned is not None and _attached(pinned):
            pinned.terminate()  # asyncpg hands a terminated connection back to its pool

    async def _value(self, name: str, *args: Any) -> Any:
        rows = await self._fetch(name, *args)
        return rows[0][0] if rows else None

    # -- schema ---------------------------------------------------------------------

    async def check_schema(self) -> int:
        """The schema version, after checking it is this facescan's and usable: the role
        may use every library (every privilege on the tables), or is granted at least one
        (`facescan db grant`), whose functions then need no table privilege."""
        if not await self._value("facescan_schema_exists"):
            raise errors.SchemaError(
                f"no facescan schema on {self._target}: run `facescan db migrate`"
            )
        if not await self._value("schema_usage"):
            raise errors.PermissionDenied(errors.grant_advice(self._user, "schema facescan"))
        refused = [r["table_name"] for r in await self._fetch("table_privileges") if not r[1]]
        if refused and not await self._granted_libraries():
            raise errors.PermissionDenied(
                errors.grant_advice(self._user, "table(s) " + ", ".join(refused))
            )
        found = await self._value("schema_version")
        expected = latest_version()
        if found is None or found < expected:
            raise errors.SchemaError(
                f"the facescan schema on {self._target} is at version {found}, this facescan "
                f"needs {expected}: run `facescan db migrate`"
            )
        if found > expected:
            raise errors.SchemaError(
                f"the facescan schema on {self._target} is at version {found}, newer than "
                f"this facescan understands ({expected}): upgrade facescan"
            )
        return int(found)

    async def _granted_libraries(self) -> bool:
        """Whether the role is granted a library (False on a schema older than roles)."""
        if not await self._value("library_roles_exist"):
            return False
        row = (await self._fetch("access"))[0]
        return bool(row["unrestricted"] or row["libraries"])

    # -- libraries and registration -------------------------------------------------------

    async def ensure_library(self, name: str, policy: LibraryPolicy | None = None) -> Library:
        """Creates the library, or updates the policy fields given."""
        p = policy or LibraryPolicy()
        row = (
            await self._fetch(
                "ensure_library",
                name,
                list(p.cascade_models) if p.cascade_models is not None else None,
                list(p.cascade_scales) if p.cascade_scales is not None else None,
                p.backoff_base_s,
                p.backoff_multiplier,
                p.backoff_cap_s,
                p.max_attempts,
                p.max_dimension,
                p.frames_per_video,
                p.min_frame_spacing_s,
            )
        )[0]
        return Library(
            name=row["name"],
            cascade=tuple(zip(row["cascade_models"], row["cascade_scales"], strict=True)),
            backoff_base_s=row["backoff_base_s"],
            backoff_multiplier=row["backoff_multiplier"],
            backoff_cap_s=row["backoff_cap_s"],
            max_attempts=row["max_attempts"],
            max_dimension=row["max_dimension"],
            frames_per_video=row["frames_per_video"],
            min_frame_spacing_s=row["min_frame_spacing_s"],
        )

    async def register(self, library: str, images: Sequence[NewImage], *, priority: int = 0) -> int:
        """Registers images (register_files, marking nothing missing); returns how many
        were new."""
        return (await self.register_files(library, images, priority=priority)).added

    async def register_files(
        self,
        library: str,
        images: Sequence[NewImage],
        *,
        priority: int = 0,
        gone: Callable[[list[str]], list[str]] | None = None,
    ) -> Registered:
        """Registers images, in one transaction (a refused path registers nothing of the
        call): new paths added; a registered file that changed (size or modification time)
        queued again from the first cascade step, its old result deleted (one being
        detected now is left for the next registration); a missing one found again
        unmarked. With ``gone``, ``images`` are every file of a complete walk of the
        library root: the registered images they lack, which ``gone`` (given their paths,
        it returns those really gone) confirms, are marked missing."""
        done = Registered()
        sql = query("register_images")
        with errors.translated(target=self._target, user=self._user):
            async with self._pool.acquire() as conn, conn.transaction():
                for start in range(0, len(images), _REGISTER_CHUNK):
                    chunk = images[start : start + _REGISTER_CHUNK]
                    row = await conn.fetchrow(
                        sql,
                        library,
                        [i.path for i in chunk],
                        [i.width for i in chunk],
                        [i.height for i in chunk],
                        [i.file_bytes for i in chunk],
                        priority,
                        [i.mtime for i in chunk],
                        [i.kind for i in chunk],
                        [i.duration_ms for i in chunk],
                    )
                    assert row is not None
                    done += Registered(
                        row["added"], row["changed"], row["deferred"], row["returned"]
                    )
                if gone is not None:
                    seen = [i.path for i in images]
                    unseen = [r[0] for r in await conn.fetch(query("unseen_images"), library, seen)]
                    vanished = gone(unseen) if unseen else []
                    if vanished:
                        marked = await conn.fetchval(query("mark_missing"), library, vanished)
                        done += Registered(missing=marked)
        return done

    # -- the lease holder's calls -------------------------------------------------------

    async def claim(
        self,
        library: str,
        owner: str,
        *,
        step: int,
        size_class: int,
        limit: int,
        lease_seconds: int,
    ) -> list[ClaimedImage]:
        """Leases up to ``limit`` runnable images of one group to ``owner``."""
        rows = await self._fetch(
            "claim_batch", library, owner, step, size_class, limit, lease_seconds
        )
        return [ClaimedImage(*r) for r in rows]

    async def heartbeat(self, owner: str, lease_seconds: int) -> bool:
        """Extends the lease; False when it was reclaimed (stop working)."""
        return bool(await self._value("heartbeat", owner, lease_seconds))

    async def start_next(self, owner: str) -> StartedImage | None:
        """Opens an attempt on the next unstarted image of the lease."""
        rows = await self._fetch("start_next", owner)
        return StartedImage(*rows[0]) if rows else None

    async def peek_next(self, owner: str) -> str | None:
        """The path start_next would start next, without starting it (for prefetching)."""
        return await self._value("peek_next", owner)  # type: ignore[no-any-return]

    async def step_down(self, image_id: int, owner: str, error: str) -> CascadeStep | None:
        """In-process cascade after a GPU OOM; None when no step is left."""
        rows = await self._fetch("step_down", image_id, owner, error)
        return CascadeStep(*rows[0]) if rows else None

    async def complete(self, image_id: int, owner: str, result: DetectionResult) -> None:
        """Commits the faces of a started image (refused with LeaseLost if not ours)."""
        await self._fetch("complete_image", image_id, owner, *_result_args(result))

    async def complete_and_start_next(
        self, image_id: int, owner: str, result: DetectionResult
    ) -> StartedImage | None:
        """complete(), then start_next(), in one transaction (the detector's hot path)."""
        rows = await self._fetch("complete_and_start_next", image_id, owner, *_result_args(result))
        return StartedImage(*rows[0]) if rows else None

    async def fail(
        self,
        image_id: int,
        owner: str,
        error_type: ErrorType,
        error: str,
        *,
        original_width: int | None = None,
        original_height: int | None = None,
        file_bytes: int | None = None,
    ) -> FailureOutcome:
        """Records a typed failure of a started image; says where it went."""
        row = (
            await self._fetch(
                "fail_image",
                image_id,
                owner,
                str(error_type),
                error,
                original_width,
                original_height,
                file_bytes,
            )
        )[0]
        return FailureOutcome(ImageState(row["state"]), row["step"], row["next_attempt_at"])

    async def release(
        self, owner: str, *, charge: ErrorType | None = None, error: str | None = None
    ) -> Released:
        """Ends a lease: charges its started image (or not), returns the rest."""
        row = (await self._fetch("release_lease", owner, str(charge) if charge else None, error))[0]
        return Released(owner, row["charged_image"], row["released"])

    # -- the control plane's calls -------------------------------------------------------

    async def reclaim_expired(self, library: str | None = None) -> list[Released]:
        """Ends every expired lease (charging crash to its started image)."""
        rows = await self._fetch("reclaim_expired", library)
        return [Released(*r) for r in rows]

    async def requeue(
        self,
        library: str,
        *,
        only_dead: bool = False,
        error_type: ErrorType | None = None,
        paths: Sequence[str] | None = None,
    ) -> int:
        """Makes failing images runnable now with a fresh attempt budget."""
        return int(
            await self._value(
                "requeue",
                library,
                only_dead,
                str(error_type) if error_type else None,
                list(paths) if paths is not None else None,
            )
        )

    async def rescan(
        self, library: str, *, only_degraded: bool = True, paths: Sequence[str] | None = None
    ) -> int:
        """Queues done images again from the first cascade step."""
        return int(
            await self._value(
                "rescan", library, only_degraded, list(paths) if paths is not None else None
            )
        )

    async def status(self, library: str) -> QueueStatus:
        """Counts by state, from the counters (fast at any size)."""
        counts = {state: 0 for state in ImageState}
        degraded = retrying = faces = missing = 0
        by_type: dict[str, int] = {}
        for row in await self._fetch("status_counts", library):
            state, error_type, n = ImageState(row["state"]), row["error_type"], row["images"]
            faces += row["faces"]
            if row["missing"]:
                missing += n
                continue
            counts[state] += n
            if state is ImageState.DONE and row["degraded"]:
                degraded += n
            if error_type is not None and state in (ImageState.PENDING, ImageState.DEAD):
                by_type[error_type] = by_type.get(error_type, 0) + n
                if state is ImageState.PENDING:
                    retrying += n
        videos = videos_done = video_faces = 0
        for row in await self._fetch("video_counts", library):
            videos += row["videos"]
            video_faces += row["faces"]
            if row["state"] == ImageState.DONE and not row["missing"]:
                videos_done += row["videos"]
        return QueueStatus(
            images=sum(counts.values()) + missing,
            pending=counts[ImageState.PENDING],
            leased=counts[ImageState.LEASED],
            done=counts[ImageState.DONE],
            degraded=degraded,
            retrying=retrying,
            dead=counts[ImageState.DEAD],
            faces=faces,
            by_error_type={k: v for k, v in by_type.items() if v},
            missing=missing,
            videos=videos,
            videos_done=videos_done,
            video_faces=video_faces,
        )

    async def runnable_groups(self, library: str, *, cap: int) -> list[GroupCount]:
        """Images runnable now per (step, size class), each counted up to ``cap``."""
        return [GroupCount(*r) for r in await self._fetch("runnable_groups", library, cap)]

    async def recent_outcomes(
        self, library: str, *, window: int, after_id: int = 0
    ) -> RecentOutcomes:
        """Outcomes of the last ``window`` finished attempts after attempt ``after_id``."""
        rows = await self._fetch("recent_outcomes", library, window, after_id)
        return RecentOutcomes(*rows[0])

    async def attempt_clock(self, library: str) -> AttemptClock:
        """The database clock and the lowest attempt id that may still finish."""
        return AttemptClock(*(await self._fetch("attempt_clock", library))[0])

    async def attempt_outcomes(
        self, library: str, since: AttemptClock, until: AttemptClock
    ) -> dict[tuple[str, str | None], int]:
        """Attempts finished between two clocks, by (outcome, failure type)."""
        rows = await self._fetch("attempt_outcomes", library, since.now, until.now, since.from_id)
        return {(r["outcome"], r["error_type"]): r["attempts"] for r in rows}

    async def people_counts(self, library: str) -> PeopleCounts:
        """The library's people and its faces by assignment (one pass over its faces)."""
        row = (await self._fetch("people_counts", library))[0]
        return PeopleCounts(*(int(v) for v in row))

    async def set_people_settings(self, library: str, distances: MatchDistances) -> None:
        """Sets the library's matching distances (those given)."""
        d = distances
        await self._fetch(
            "set_people_settings",
            library,
            d.dlib_match,
            d.dlib_auto_tag,
            d.arcface_match,
            d.arcface_auto_tag,
        )

    async def libraries(self) -> list[str]:
        """Every library's name."""
        return [r["name"] for r in await self._fetch("libraries")]

    async def leases(self, library: str) -> list[LeaseInfo]:
        """Active leases of a library."""
        return [LeaseInfo(*r) for r in await self._fetch("leases", library)]

    async def failures(
        self,
        library: str,
        *,
        error_type: ErrorType | None = None,
        dead_only: bool = False,
        limit: int = 10_000,
    ) -> list[FailureRow]:
        """Failing images, one row each, by path."""
        rows = await self._fetch(
            "list_failures", library, str(error_type) if error_type else None, dead_only, limit
        )
        return [
            FailureRow(
                path=r["path"],
                error_type=ErrorType(r["error_type"]),
                attempts=r["attempts"],
                last_error=r["last_error"],
                next_retry_at=r["next_retry_at"],
                dead=r["dead"],
                last_model=r["last_model"],
                last_scale=r["last_scale"],
                last_failure_at=r["last_failure_at"],
            )
            for r in rows
        ]

    async def image(self, library: str, path: str) -> asyncpg.Record:
        """One registered image with its detection summary; UnknownImage otherwise."""
        rows = await self._fetch("image_by_path", library, path)
        if not rows:
            raise errors.UnknownImage(f"{path!r} is not a registered image of {library!r}")
        return rows[0]

    async def faces(self, image_id: int) -> list[asyncpg.Record]:
        """The committed faces of one image."""
        return await self._fetch("faces_of_image", image_id)

    async def faces_per_image(self, library: str) -> list[tuple[str, int]]:
        """(path, face count) of every done image of a library."""
        return [(r["path"], r["face_count"]) for r in await self._fetch("faces_per_image", library)]

    async def video_face_frames(self, library: str) -> dict[str, list[int]]:
        """The frame timestamps (ms) with faces of every done video of a library, by path."""
        rows = await self._fetch("video_face_frames", library)
        return {r["path"]: list(r["frames"]) for r in rows}

    async def legacy_images(self) -> list[tuple[str, bool]]:
        """(image_path, is_processed) of the older worker's ai_metadata table."""
        if not await self._value("legacy_table_exists"):
            raise errors.SchemaError(
                f"no table ai_metadata on {self._target}: nothing to import (the older "
                "worker's table must be reachable on the search_path of this database)"
            )
        return [(r[0], r[1]) for r in await self._fetch("legacy_ai_metadata")]

    async def compact_counts(self) -> int:
        """Folds counter shards (housekeeping; the reconcile loop calls it now and then)."""
        return int(await self._value("compact_counts"))

    async def recount(self, library: str) -> None:
        """Rebuilds a library's counters from its images (repair)."""
        await self._fetch("recount", library)

    async def done_with_other_settings(
        self, library: str, cascade: Sequence[tuple[str, float]], max_dimension: int
    ) -> list[tuple[str, float, int, int]]:
        """(model, scale, max dimension, images) of the done images whose result came from
        other settings than this cascade and max dimension."""
        rows = await self._fetch(
            "done_with_other_settings",
            library,
            [m for m, _ in cascade],
            [s for _, s in cascade],
            max_dimension,
        )
        return [(r["model"], r["scale"], r["max_dimension"], r["images"]) for r in rows]

    async def next_retry(self, library: str) -> datetime | None:
        """When the first image of the library waiting for its retry back-off is due."""
        due: datetime | None = await self._value("next_retry", library)
        return due

    async def rescan_other_settings(
        self, library: str, cascade: Sequence[tuple[str, float]], max_dimension: int
    ) -> int:
        """Queues again (rescan) the images done_with_other_settings counts."""
        return int(
            await self._value(
                "rescan_other_settings",
                library,
                [m for m, _ in cascade],
                [s for _, s in cascade],
                max_dimension,
            )
        )


def _attached(connection: Any) -> bool:
    """Whether a pooled connection is still ours and open (asyncpg detaches a pooled
    connection from its proxy, handing it back to the pool, when it closes)."""
    try:
        return not connection.is_closed()
    except asyncpg.InterfaceError:
        return False


async def _keep_session(_connection: asyncpg.Connection) -> None:
    """Connection reset on release to the pool: nothing to reset. The queue never changes
    session state (no SET, LISTEN or session advisory locks), and asyncpg still rolls
    back a transaction left open. The default reset costs a round trip per call."""


def _result_args(result: DetectionResult) -> tuple[Any, ...]:
    faces = json.dumps([f.as_json() for f in result.faces], allow_nan=False)
    return (
        result.max_dimension,
        result.original_width,
        result.original_height,
        result.duration_ms,
        faces,
        list(result.frames) if result.frames is not None else None,
    )
