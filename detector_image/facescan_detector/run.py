"""The detector's main loop: turns each image of its lease into committed faces or a
typed failure, one image at a time.

A Job's detector claims its own batch when it starts (its assignment: library, cascade
step, size class, batch size), so nothing is leased while a Job waits for Kueue, a node
or an image pull; a local worker works through a lease its runner claimed.

Called by ``facescan-detector run`` (cli.py) inside a Job pod or a local subprocess.
For each image: start it (an open attempt), load it (prefetched while the previous one
was being detected), detect with the model of its cascade step, then commit the faces
and start the next image in one transaction. A GPU out-of-memory steps down the
cascade in-process; a host MemoryError, a load or detection past the per-image timeout
(one budget for both) or a dead mount is recorded and ends the process, handing the
unstarted images back. The lease is heartbeated throughout; a database outage is
waited out and never charged to an image. SIGTERM (a pod evicted, preempted or deleted,
a Ctrl-C's sibling) stops at once and hands the image in progress and the rest of the
lease back uncharged: it was not the image's fault.

A video is one item like an image: its sampled frames (video.py) are decoded one at a
time in the load thread and detected one at a time in the detect thread, within one
budget (the per-image timeout) for the whole video; their faces, with their frames'
timestamps and tracks (tracks.py), are committed together in the one commit that
makes it done. A worker killed mid-video has committed nothing of it: the video is
detected again, whole.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from facescan_detector.backends import Face, FaceDetector, create_detector, scale_face
from facescan_detector.backends.base import Pixels
from facescan_detector.backends.hardware import usable_cpus
from facescan_detector.errors import (
    DetectionTimeout,
    DetectorError,
    DetectorOOM,
    StartupError,
)
from facescan_detector.loading import LoadedImage, load_image
from facescan_detector.settings import DetectorSettings
from facescan_detector.tracks import assign_tracks
from facescan_queue.errors import DatabaseUnavailable, IllegalTransition, LeaseLost
from facescan_queue.models import DetectionResult, FaceResult, StartedImage
from facescan_queue.outage import wait_out
from facescan_queue.repository import Queue
from facescan_queue.settings import DatabaseSettings
from facescan_queue.types import ErrorType

if TYPE_CHECKING:
    from facescan_detector.video import SampledFrame

log = logging.getLogger("facescan.detector")

T = TypeVar("T")

EXIT_OK = 0
EXIT_STARTUP = 2
EXIT_TIMEOUT = 3
EXIT_OOM = 4
EXIT_UNAVAILABLE = 75
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports it


@dataclass
class RunSummary:
    """What one run did; ``exit_code`` is a hint for the runner, the database is the truth."""

    done: int = 0
    failed: int = 0
    faces: int = 0
    exit_code: int = EXIT_OK
    reason: str = "lease finished"
    abandoned_thread: bool = False


class _Stop(Exception):
    """Ends the loop after the current image was recorded."""

    def __init__(self, exit_code: int, reason: str) -> None:
        super().__init__(reason)
        self.exit_code = exit_code
        self.reason = reason


async def run(settings: DetectorSettings, database: DatabaseSettings) -> RunSummary:
    """Works through the lease ``settings.lease_owner`` until nothing is left, or until
    SIGTERM, which hands the whole lease back uncharged."""
    queue = await _connect(database, settings.database_retry_s)
    worker = _Worker(settings, queue)
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    terminated = asyncio.Event()

    def terminate() -> None:
        if not terminated.is_set():
            terminated.set()
            task.cancel()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await worker.run()
    except asyncio.CancelledError:
        if not terminated.is_set():
            raise
        task.uncancel()
        await worker.stop_tasks()  # no heartbeat or prefetch inside a queue call now
        await worker.terminated()
        return worker.summary
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        await worker.stop_tasks()
        worker.close()
        await queue.close()


async def _connect(database: DatabaseSettings, patience_s: float) -> Queue:
    return await wait_out(
        lambda: Queue.connect(database, min_size=1, max_size=3, pin=True, async_commit=True),
        patience_s=patience_s,
        on_wait=lambda delay, exc: log.warning(
            "database unavailable, retrying in %.0f s: %s", delay, exc
        ),
    )


class _Worker:
    def __init__(self, settings: DetectorSettings, queue: Queue) -> None:
        self.settings = settings
        self.queue = queue
        self.owner = settings.lease_owner
        self.summary = RunSummary()
        self.detectors: dict[str, FaceDetector] = {}
        self.threads = settings.threads or usable_cpus()
        self.detect_pool = ThreadPoolExecutor(1, thread_name_prefix="detect")
        self.load_pool = ThreadPoolExecutor(1, thread_name_prefix="load")
        self.prefetched: tuple[str, float, int, asyncio.Future[LoadedImage]] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        """The heartbeat and the prefetches' queue calls, stopped before the queue closes."""
        self.lease_lost = False
        self.unavailable_in_a_row = 0

    def close(self) -> None:
        for detector in self.detectors.values():
            detector.close()
        # a hung detection cannot be joined; the CLI exits the process hard then
        self.detect_pool.shutdown(wait=not self.summary.abandoned_thread, cancel_futures=True)
        self.load_pool.shutdown(wait=False, cancel_futures=True)

    async def stop_tasks(self) -> None:
        """Cancels the heartbeat and any prefetch and waits for them: none may be inside
        a queue call when the queue closes."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _claim(self) -> None:
        """Leases this process's own batch, if it was given an assignment (a Job is): a
        pod that starts late finds what is left, or nothing and ends at once."""
        s = self.settings
        if s.library is None:
            return
        try:
            claimed = await self._db(
                self.queue.claim,
                s.library,
                self.owner,
                step=s.step,
                size_class=s.size_class,
                limit=s.batch_size,
                lease_seconds=s.lease_seconds,
            )
        except IllegalTransition:
            # the lease is held already: a pod of this Job that was lost with its node left
            # it; this one works through what is left of it
            log.info("lease %s is held already: continuing it", self.owner)
            return
        log.info(
            "claimed %d images of %s (cascade step %d, size class %d)",
            len(claimed),
            s.library,
            s.step,
            s.size_class,
        )

    async def run(self) -> RunSummary:
        preload: asyncio.Future[FaceDetector] | None = None
        if self.settings.model is not None:  # load it while the batch is claimed and read
            preload = asyncio.get_running_loop().run_in_executor(
                self.detect_pool, self._detector, self.settings.model
            )
            preload.add_done_callback(_consume_exception)  # else raised at its first use
        beat: asyncio.Task[None] | None = None
        try:
            await self._claim()
            beat = asyncio.create_task(self._heartbeat())
            self.tasks.add(beat)
            if preload is not None:
                await _startable(preload)
            image = await self._db(self.queue.start_next, self.owner)
            while image is not None and not self.lease_lost:
                image = await self._one(image)
            if not self.lease_lost:
                await self._hand_back()  # ends the lease now it is empty, not at its expiry
        except _Stop as stop:
            self.summary.exit_code, self.summary.reason = stop.exit_code, stop.reason
            await self._hand_back()
        except LeaseLost as exc:
            message = str(exc)  # the queue's own message starts "lease lost: ..."
            lost = message.startswith("lease lost")
            self.summary.reason = message if lost else f"lease lost: {message}"
        except IllegalTransition as exc:
            # The database does not hold the lease as this run left it (as after a restart
            # that forgot its last asynchronous commits, Queue.connect(async_commit)). Stop;
            # the lease expires and its images are detected again, none done without faces.
            self.summary.reason = f"lease lost: the database does not hold it as left: {exc}"
        finally:
            if beat is not None:
                beat.cancel()
        if self.lease_lost and self.summary.reason == "lease finished":
            self.summary.reason = "lease lost (reclaimed by the control plane)"
        log.info(
            "run ended: %s; %d done (%d faces), %d failed",
            self.summary.reason,
            self.summary.done,
            self.summary.faces,
            self.summary.failed,
        )
        return self.summary

    async def _one(self, image: StartedImage) -> StartedImage | None:
        """Processes one started image; returns the next started one."""
        room = self._prefetch_next(image)
        try:
            if image.kind == "video":
                result = await self._process_video(image, room)
            else:
                result = await self._process(image, room)
        except DetectorOOM as exc:
            if exc.gpu:
                step = await self._db(self.queue.step_down, image.image_id, self.owner, str(exc))
                if step is not None:
                    log.warning("%s: GPU out of memory, stepping down to %s", image.path, step)
                    moved = replace(
                        image,
                        step=step.step,
                        model=step.model,
                        scale=step.scale,
                        attempt_id=step.attempt_id,
                    )
                    return await self._one(moved)
            await self._fail(image, exc)
            if not exc.gpu:
                raise _Stop(EXIT_OOM, f"host memory exhausted on {image.path}") from exc
            return await self._db(self.queue.start_next, self.owner)
        except DetectionTimeout as exc:
            self.summary.abandoned_thread = True
            await self._fail(image, exc)
            raise _Stop(EXIT_TIMEOUT, str(exc)) from exc
        except StartupError as exc:
            await self._fail(image, exc, ErrorType.UNAVAILABLE)
            raise _Stop(EXIT_STARTUP, f"detector cannot start: {exc}") from exc
        except DetectorError as exc:
            await self._fail(image, exc)
            if exc.error_type is ErrorType.UNAVAILABLE:
                self.unavailable_in_a_row += 1
                if self.unavailable_in_a_row >= self.settings.max_unavailable:
                    raise _Stop(EXIT_UNAVAILABLE, f"library unavailable: {exc}") from exc
            else:
                self.unavailable_in_a_row = 0
            return await self._db(self.queue.start_next, self.owner)
        self.unavailable_in_a_row = 0
        # a commit retried after a lost reply is a no-op and resumes the next image
        following = await self._db(
            self.queue.complete_and_start_next, image.image_id, self.owner, result
        )
        self.summary.done += 1
        self.summary.faces += len(result.faces)
        log.info(
            "%s: %d faces (%s@%g, %d ms)",
            image.path,
            len(result.faces),
            image.model,
            image.scale,
            result.duration_ms,
        )
        return following

    async def _process(self, image: StartedImage, room: asyncio.Event) -> DetectionResult:
        loop = asyncio.get_running_loop()
        started = time.monotonic()

        def signal() -> None:  # in a thread of the detector
            loop.call_soon_threadsafe(room.set)

        # one budget for loading and detecting: a decoder that never returns is cut too
        # (its thread is left behind and the process exits, as for a hung detection)
        timeout = self.settings.image_timeout_s
        deadline = loop.time() + timeout
        try:
            try:
                loaded = await asyncio.wait_for(self._load(image), timeout=timeout)
            except TimeoutError:
                raise DetectionTimeout(
                    f"{image.path}: loading took longer than {timeout:g} s"
                ) from None
            try:
                faces = await asyncio.wait_for(
                    loop.run_in_executor(
                        self.detect_pool, self._detect, image.model, loaded.pixels, signal
                    ),
                    timeout=max(0.0, deadline - loop.time()),
                )
            except TimeoutError:
                raise DetectionTimeout(
                    f"{image.path}: loading and detection with {image.model}@{image.scale:g} "
                    f"took longer than {timeout:g} s"
                ) from None
        finally:
            room.set()  # a failed load or detection lets the next image's prefetch go on
        width, height = loaded.original_width, loaded.original_height
        results = [_face_result(scale_face(face, loaded.scale, width, height)) for face in faces]
        return DetectionResult(
            faces=tuple(results),
            max_dimension=image.max_dimension,
            duration_ms=round((time.monotonic() - started) * 1000),
            original_width=width,
            original_height=height,
        )

    async def _process_video(self, image: StartedImage, room: asyncio.Event) -> DetectionResult:
        """Samples the video's frames and detects each; all faces, with their frames'
        timestamps and tracks, in one result (committed at once, or not at all)."""
        # PyAV (~50 ms, ~15 MB) only in a process that meets a video
        from facescan_detector.video import load_video_frames

        loop = asyncio.get_running_loop()
        started = time.monotonic()
        timeout = self.settings.image_timeout_s
        deadline = loop.time() + timeout
        frames = load_video_frames(
            self.settings.library_root,
            image.path,
            image.frames_per_video,
            min_spacing_s=image.min_frame_spacing_s,
            max_dimension=image.max_dimension,
            scale=image.scale,
            deadline=started + timeout,  # checked between packets: the thread stops
        )
        stamps: list[int] = []
        found: list[list[Face]] = []
        size = (image.width or 0, image.height or 0)
        hung = False
        try:
            while True:
                step = "decoding"
                try:
                    frame = await asyncio.wait_for(
                        loop.run_in_executor(self.load_pool, _next_frame, frames),
                        timeout=max(0.0, deadline - loop.time()),
                    )
                    if frame is None:
                        break
                    step = f"detection with {image.model}@{image.scale:g}"
                    faces = await asyncio.wait_for(
                        loop.run_in_executor(
                            self.detect_pool, self._detect, image.model, frame.pixels, _no_room
                        ),
                        timeout=max(0.0, deadline - loop.time()),
                    )
                except TimeoutError:
                    hung = True
                    raise DetectionTimeout(
                        f"{image.path}: video {step} took longer than {timeout:g} s "
                        f"({len(stamps)} frames done)"
                    ) from None
                size = (frame.original_width, frame.original_height)
                log.info(
                    "%s: frame at %d ms: %d faces (not committed before the last frame)",
                    image.path,
                    frame.timestamp_ms,
                    len(faces),
                )
                stamps.append(frame.timestamp_ms)
                found.append([scale_face(f, frame.scale, *size) for f in faces])
                del frame  # one frame alive at a time
        finally:
            if not hung:  # a hung thread cannot be joined; the process exits
                frames.close()
            room.set()
        tracks = assign_tracks([[f.embedding for f in faces] for faces in found])
        results = [
            _face_result(face, frame_ms=stamp, track=track)
            for stamp, faces, numbers in zip(stamps, found, tracks, strict=True)
            for face, track in zip(faces, numbers, strict=True)
        ]
        return DetectionResult(
            faces=tuple(results),
            max_dimension=image.max_dimension,
            duration_ms=round((time.monotonic() - started) * 1000),
            original_width=size[0] or None,
            original_height=size[1] or None,
            frames=tuple(stamps),
        )

    def _detect(self, model: str, pixels: Pixels, room: Callable[[], None]) -> list[Face]:
        """In the detect thread, as every use of the detectors (loading included)."""
        return self._detector(model).detect(pixels, room)

    def _detector(self, model: str) -> FaceDetector:
        detector = self.detectors.get(model)
        if detector is None:
            # model_dir holds the InsightFace models; dlib keeps its own files
            model_dir = self.settings.model_dir if model == "insightface" else None
            detector = create_detector(
                model,
                upsample=self.settings.hog_upsample,
                threads=self.threads,
                model_dir=model_dir,
            )
            detector.load()
            self.detectors[model] = detector
        return detector

    async def _load(self, image: StartedImage) -> LoadedImage:
        prefetched, self.prefetched = self.prefetched, None
        wanted = (image.path, image.scale, image.max_dimension)
        if prefetched and prefetched[:3] == wanted:
            return await prefetched[3]
        if prefetched:
            prefetched[3].cancel()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.load_pool, self._read, *wanted)

    def _read(self, path: str, scale: float, max_dimension: int) -> LoadedImage:
        """Decodes an image at min(long side, max_dimension) x scale (the library's max
        dimension, which start_next returns with the image)."""
        return load_image(
            self.settings.library_root, path, max_dimension=max_dimension, scale=scale
        )

    def _prefetch_next(self, image: StartedImage) -> asyncio.Event:
        """Starts decoding the next image of the lease while ``image`` is detected, once
        the returned event is set: when the detector makes room for it (see
        FaceDetector.detect), at once with prefetch on, never with it off. The
        detection ending, failed or not, sets it too."""
        room = asyncio.Event()
        if self.settings.prefetch is False:
            return room
        if self.settings.prefetch:
            room.set()

        async def start() -> None:
            path = await self.queue.peek_next(self.owner)
            if path is None:
                return
            await room.wait()
            loop = asyncio.get_running_loop()
            # the next image of the lease: of the same library, at the same step
            wanted = (path, image.scale, image.max_dimension)
            future = loop.run_in_executor(self.load_pool, self._read, *wanted)
            future.add_done_callback(_consume_exception)
            self.prefetched = (*wanted, future)

        # a failed peek only costs the prefetch
        task = asyncio.ensure_future(start())
        task.add_done_callback(_consume_exception)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return room

    async def _fail(
        self,
        image: StartedImage,
        exc: DetectorError | StartupError,
        as_type: ErrorType | None = None,
    ) -> None:
        error_type = as_type or getattr(exc, "error_type", ErrorType.INTERNAL)
        message = f"{type(exc).__name__}: {exc}"
        if exc.__cause__ is not None:
            message += f" (caused by {type(exc.__cause__).__name__}: {exc.__cause__})"
        outcome = await self._db(
            self.queue.fail,
            image.image_id,
            self.owner,
            error_type,
            message,
            file_bytes=image.file_bytes,
        )
        self.summary.failed += 1
        log.warning("%s: %s -> %s (step %d)", image.path, message, outcome.state, outcome.step)

    async def terminated(self) -> None:
        """SIGTERM: the lease back to the queue, the image in progress uncharged; a
        detection still running in its thread is left behind (the process exits)."""
        self.summary.exit_code = EXIT_TERMINATED
        self.summary.reason = "terminated (SIGTERM): the lease handed back uncharged"
        self.summary.abandoned_thread = True
        await self._hand_back()

    async def _hand_back(self) -> None:
        """Ends the lease, returning its unstarted images (if any) to the queue untouched."""
        try:
            released = await self.queue.release(self.owner)
            log.info("handed %d unstarted images back", released.released)
        except DatabaseUnavailable as exc:
            log.warning("could not hand images back (the lease will expire): %s", exc)

    async def _heartbeat(self) -> None:
        interval = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.queue.heartbeat(self.owner, self.settings.lease_seconds):
                    self.lease_lost = True
                    return
            except DatabaseUnavailable as exc:
                log.warning("heartbeat failed: %s", exc)

    async def _db(self, call: Callable[..., Awaitable[T]], *args: object, **kwargs: object) -> T:
        """A queue call, retried with backoff through a database outage."""
        try:
            return await wait_out(
                lambda: call(*args, **kwargs),
                patience_s=self.settings.database_retry_s,
                first_s=0.5,
                on_wait=lambda delay, exc: log.warning(
                    "database unavailable, retrying in %.1f s: %s", delay, exc
                ),
            )
        except DatabaseUnavailable as exc:
            raise _Stop(EXIT_UNAVAILABLE, f"database unavailable: {exc}") from exc


def _face_result(
    face: Face, *, frame_ms: int | None = None, track: int | None = None
) -> FaceResult:
    """A face in original pixels as the queue stores it."""
    return FaceResult(
        top=round(face.top),
        right=round(face.right),
        bottom=round(face.bottom),
        left=round(face.left),
        score=float(face.score),
        landmarks=tuple(float(v) for point in face.landmarks for v in point),
        embedding=tuple(float(v) for v in face.embedding),
        frame_ms=frame_ms,
        track=track,
    )


def _next_frame(frames: Generator[SampledFrame]) -> SampledFrame | None:
    """The next frame of a video, in the load thread; None after the last."""
    return next(frames, None)


def _no_room() -> None:
    """A video's frame detection makes no room for a prefetch: the video's own next
    frame is decoded after it."""


async def _startable(preload: asyncio.Future[FaceDetector]) -> None:
    """Waits for the model: one that cannot load (model files missing) stops the run
    before any image is started (exit 2, the batch handed back untouched); any other
    error is met again, and charged, at the first image that needs the model."""
    try:
        await preload
    except StartupError as exc:
        log.error("%s", exc)  # the last line of its log: why, for the runner to quote
        raise _Stop(EXIT_STARTUP, f"detector cannot start: {exc}") from exc
    except Exception:  # raised again where an image uses the model, and charged there
        return


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
