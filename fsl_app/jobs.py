"""Background jobs: a FIFO queue with one worker thread, live progress, cooperative cancel, readable errors.

The studio keeps one :class:`JobQueue` per process (in ``st.cache_resource``), so a job survives a page reload and
every browser tab sees the same jobs. A job is a function ``work(context) -> result``; it reports through
``context.progress(phase, done, total)`` and ``context.step(step_log)``, and both raise :class:`Cancelled` once a
cancel was requested, so training stops at its next report. Readers never touch a running job: they get
:class:`JobView` snapshots, copied under the job's lock.

This module is UI-free and does not import torch.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


class Cancelled(Exception):
    """Raised inside a job's progress callbacks after :meth:`JobQueue.cancel`; the job then ends as cancelled."""


@dataclass(frozen=True)
class JobView:
    """A consistent copy of a job's state, safe to render while the job goes on."""

    id: str
    title: str
    owner: str | None
    meta: dict
    status: str
    phase: str
    done: int
    total: int
    steps: list[dict]
    fit_number: int
    result: Any
    error: str | None
    error_detail: str | None
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def fraction(self) -> float:
        """Progress of the current phase in [0, 1]."""
        if self.status == DONE:
            return 1.0
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0

    @property
    def elapsed_s(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.time()) - self.started_at


class Job:
    """Mutable state of one job, written by the worker thread under ``_lock``."""

    def __init__(self, job_id: str, title: str, work: Callable[["JobContext"], Any], owner: str | None,
                 meta: dict | None):
        self.id = job_id
        self.title = title
        self.work = work
        self.owner = owner
        self.meta = dict(meta or {})
        self.status = QUEUED
        self.phase = "waiting in the queue"
        self.done = 0
        self.total = 0
        self.steps: list[dict] = []
        self.fit_number = 0
        self.result: Any = None
        self.error: str | None = None
        self.error_detail: str | None = None
        self.created_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.cancel_event = threading.Event()
        self._lock = threading.Lock()

    def view(self) -> JobView:
        with self._lock:
            return JobView(id=self.id, title=self.title, owner=self.owner, meta=dict(self.meta), status=self.status,
                           phase=self.phase, done=self.done, total=self.total, steps=list(self.steps),
                           fit_number=self.fit_number, result=self.result, error=self.error,
                           error_detail=self.error_detail, cancel_requested=self.cancel_event.is_set(),
                           created_at=self.created_at, started_at=self.started_at, finished_at=self.finished_at)

    def update(self, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self, key, value)


class JobContext:
    """What a running job reports through; every report is also a cancellation point."""

    def __init__(self, job: Job):
        self._job = job

    @property
    def cancel_requested(self) -> bool:
        return self._job.cancel_event.is_set()

    def check_cancelled(self) -> None:
        if self._job.cancel_event.is_set():
            raise Cancelled(f"job {self._job.title!r} was cancelled")

    def progress(self, phase: str, done: int, total: int) -> None:
        """Report ``done`` of ``total`` units of ``phase`` (e.g. evaluation splits)."""
        self.check_cancelled()
        self._job.update(phase=phase, done=int(done), total=int(total))

    def step(self, step: Any) -> None:
        """Record one training step (a StepLog or its dict); a step number that goes back starts a new fit."""
        self.check_cancelled()
        record = step.to_dict() if hasattr(step, "to_dict") else dict(step)
        job = self._job
        with job._lock:
            if not job.steps or record.get("step", 0) <= job.steps[-1].get("step", 0):
                job.steps = []
                job.fit_number += 1
            job.steps.append(record)


def describe_error(error: BaseException) -> str:
    """One or two sentences a domain expert can act on; the traceback is kept separately for bug reports."""
    message = str(error).strip()
    if isinstance(error, MemoryError) or "out of memory" in message.lower():
        return ("The computer ran out of memory. Lower the batch size, pick a smaller backbone or train on fewer "
                "images at a time.")
    if isinstance(error, (ValueError, FileNotFoundError, FileExistsError, PermissionError, KeyError)) and message:
        return message[:1].upper() + message[1:]
    if isinstance(error, OSError):
        return f"A file could not be read or written ({error.strerror or message}). Check the disk space and access."
    name = type(error).__name__
    return (f"An unexpected problem stopped this ({name}: {message or 'no message'}). "
            "Try again; if it repeats, report it with the steps that led here.")


class JobQueue:
    """Jobs run one at a time, first in first out, on a daemon worker thread started on demand."""

    def __init__(self, *, keep_finished: int = 50):
        self._jobs: dict[str, Job] = {}
        self._pending: collections.deque[Job] = collections.deque()
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self._ids = itertools.count(1)
        self._keep_finished = keep_finished
        self._closed = False

    # --- submitting and cancelling ---------------------------------------------------------------------------

    def submit(self, work: Callable[[JobContext], Any], *, title: str, owner: str | None = None,
               meta: dict | None = None) -> str:
        """Queue ``work``; returns the job id. ``owner`` (e.g. the project name) lets a page list only its jobs."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the job queue is shut down; restart the app.")
            job = Job(f"job-{next(self._ids)}", title, work, owner, meta)
            self._jobs[job.id] = job
            self._pending.append(job)
            self._forget_old_jobs()
            self._ensure_worker()
            self._wakeup.notify()
        return job.id

    def cancel(self, job_id: str) -> bool:
        """Ask a job to stop: a queued job is dropped now, a running one at its next progress report."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.view().finished:
                return False
            job.cancel_event.set()
            if job in self._pending:
                self._pending.remove(job)
                job.update(status=CANCELLED, phase="cancelled before it started", finished_at=time.time())
        return True

    # --- reading --------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobView | None:
        with self._lock:
            job = self._jobs.get(job_id)
        return job.view() if job is not None else None

    def jobs(self, owner: str | None = None) -> list[JobView]:
        """Every known job (optionally of one owner), oldest first."""
        with self._lock:
            selected = [job for job in self._jobs.values() if owner is None or job.owner == owner]
        return [job.view() for job in selected]

    def active(self, owner: str | None = None) -> list[JobView]:
        return [job for job in self.jobs(owner) if not job.finished]

    def wait(self, job_id: str, timeout: float = 60.0, poll_s: float = 0.05) -> JobView:
        """Block until the job finishes (for scripts and tests); raises TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.get(job_id)
            if view is None:
                raise KeyError(f"no job {job_id!r}")
            if view.finished:
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {view.status} after {timeout:.0f} s ({view.phase})")
            time.sleep(poll_s)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Cancel everything and stop the worker (tests; the app never needs it)."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
            self._wakeup.notify_all()
        for job in jobs:
            self.cancel(job.id)
        if self._worker is not None:
            self._worker.join(timeout)

    # --- the worker -----------------------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work_forever, name="fsl_app-jobs", daemon=True)
            self._worker.start()

    def _next_job(self) -> Job | None:
        with self._lock:
            while not self._pending and not self._closed:
                self._wakeup.wait()
            return self._pending.popleft() if self._pending else None

    def _work_forever(self) -> None:
        while (job := self._next_job()) is not None:
            self._run(job)

    @staticmethod
    def _run(job: Job) -> None:
        job.update(status=RUNNING, phase="starting", started_at=time.time())
        try:
            context = JobContext(job)
            context.check_cancelled()
            result = job.work(context)
        except Cancelled:
            job.update(status=CANCELLED, phase="cancelled", finished_at=time.time())
        except BaseException as error:  # noqa: BLE001 - any failure must end the job, never the worker
            job.update(status=FAILED, phase="failed", error=describe_error(error),
                       error_detail="".join(traceback.format_exception(error)), finished_at=time.time())
        else:  # a job that finished before noticing a late cancel is done: its result exists
            job.update(status=DONE, phase="done", result=result, done=1, total=1, finished_at=time.time())
        finally:
            job.work = None  # release what the closure holds (images, models)

    def _forget_old_jobs(self) -> None:
        finished = [job for job in self._jobs.values() if job.view().finished]
        for job in finished[:max(0, len(finished) - self._keep_finished)]:
            del self._jobs[job.id]
