"""Background jobs: searches and clusterings of uploaded media, with progress.

An upload returns at once with a job; the work runs in a small thread pool through the
caller's own service handle (so every rule and audit event applies as on the command line),
and the job reports files done, and per video the seconds of footage done and the real-time
factor. Uploaded files live in a folder of the job's own and are deleted when it ends: what
a search keeps (the probe images with matched faces, the best shots) is in the store by then.
Jobs are kept in memory: after a restart the stored searches remain, the job records do not.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from facetrail.errors import FacetrailError, NotFoundError
from facetrail.service.app import Facetrail
from facetrail.store.models import utcnow
from facetrail.web.uploads import relabel

_KEEP = 1000  # finished jobs remembered, newest first


@dataclass
class VideoProgress:
    frames: int = 0
    seconds: float = 0.0
    duration: float | None = None
    speed: float | None = None  # seconds of footage per second of work


@dataclass
class Job:
    id: str
    kind: str  # "search" or "cluster"
    owner: int  # user id
    case: str
    files: int
    status: str = "queued"  # queued, running, done, failed
    created_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None
    files_done: int = 0
    videos: dict[str, VideoProgress] = field(default_factory=dict)
    search_id: int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JobManager:
    def __init__(self, workers: int = 1) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="facetrail-job")
        self._jobs: dict[str, Job] = {}
        self._folders: dict[str, Path] = {}  # upload folders of the jobs not yet finished
        self._lock = threading.Lock()

    def submit(
        self, handle: Facetrail, kind: str, folder: Path, files: list[Path], **options: Any
    ) -> Job:
        caller = handle.caller
        assert caller is not None
        job = Job(uuid.uuid4().hex, kind, caller.user_id, str(options["case"]), len(files))
        with self._lock:
            self._jobs[job.id] = job
            self._folders[job.id] = folder
            self._forget_old()
        self._pool.submit(self._run, job, handle, kind, folder, files, options)
        return job

    def _run(
        self,
        job: Job,
        handle: Facetrail,
        kind: str,
        folder: Path,
        files: list[Path],
        options: dict[str, Any],
    ) -> None:
        job.status = "running"

        def on_file(_: object) -> None:
            job.files_done += 1

        def on_video(
            name: str, frames: int, seconds: float, duration: float | None, wall: float
        ) -> None:
            speed = round(seconds / wall, 2) if wall > 0 else None
            job.videos[Path(name).name] = VideoProgress(frames, round(seconds, 2), duration, speed)

        try:
            if kind == "cluster":
                report = handle.cluster(files, progress=on_file, video_progress=on_video, **options)
                job.result = relabel(asdict(report), files)
            else:
                names = {str(f): f.name for f in files}  # as uploaded, not where they were kept
                found = handle.search(
                    files, progress=on_file, video_progress=on_video, names=names, **options
                )
                job.search_id = found.search_id
                job.result = found.to_dict()
            job.status = "done"
        except FacetrailError as exc:
            job.error = {"type": type(exc).__name__, "detail": str(exc)}
            job.status = "failed"
        except Exception:
            job.error = {"type": "InternalError", "detail": "the job failed unexpectedly"}
            job.status = "failed"
        finally:
            job.finished_at = utcnow()
            shutil.rmtree(folder, ignore_errors=True)
            with self._lock:
                self._folders.pop(job.id, None)

    def get(self, job_id: str, user_id: int) -> Job:
        """A job of this user's (others are told it does not exist)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.owner != user_id:
            raise NotFoundError(f"no job {job_id}")
        return job

    def of(self, user_id: int) -> list[Job]:
        with self._lock:
            mine = [j for j in self._jobs.values() if j.owner == user_id]
        return sorted(mine, key=lambda j: j.created_at, reverse=True)

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.finished_at is not None]
        for job in sorted(finished, key=lambda j: j.created_at)[: max(0, len(finished) - _KEEP)]:
            del self._jobs[job.id]

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        # Jobs cancelled before they ran still hold their uploads: delete them too.
        with self._lock:
            left, self._folders = self._folders, {}
        for folder in left.values():
            shutil.rmtree(folder, ignore_errors=True)
