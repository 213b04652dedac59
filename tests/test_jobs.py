"""The background job queue: FIFO on one worker, live progress, cooperative cancel, readable errors."""

from __future__ import annotations

import threading
import time

import pytest

from fsl_app import jobs


@pytest.fixture
def queue():
    queue = jobs.JobQueue()
    yield queue
    queue.shutdown()


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_progress_and_steps_are_visible_while_the_job_runs(queue):
    release = threading.Event()

    def work(context):
        context.progress("evaluate", 2, 5)
        context.step({"step": 1, "epoch": 1, "loss": 0.9, "train_acc": 0.5, "val_acc": None})
        context.step({"step": 2, "epoch": 2, "loss": 0.7, "train_acc": 0.6, "val_acc": 0.5})
        release.wait(5)
        return {"answer": 42}

    job_id = queue.submit(work, title="demo", owner="p")
    wait_until(lambda: len(queue.get(job_id).steps) == 2)
    view = queue.get(job_id)
    assert (view.status, view.phase, view.done, view.total) == (jobs.RUNNING, "evaluate", 2, 5)
    assert view.fraction == pytest.approx(0.4)
    assert [step["loss"] for step in view.steps] == [0.9, 0.7]
    release.set()
    done = queue.wait(job_id, timeout=5)
    assert done.status == jobs.DONE and done.result == {"answer": 42} and done.fraction == 1.0
    assert done.finished and done.elapsed_s >= 0


def test_a_step_number_that_goes_back_starts_a_new_fit(queue):
    def work(context):
        for step in (1, 2, 1, 2, 3):
            context.step({"step": step, "epoch": step, "loss": 1.0})

    view = queue.wait(queue.submit(work, title="fits"), timeout=5)
    assert view.fit_number == 2
    assert [step["step"] for step in view.steps] == [1, 2, 3]


def test_jobs_run_one_at_a_time_first_in_first_out(queue):
    order, running = [], []

    def make(number):
        def work(context):
            running.append(number)
            assert len(running) == 1, "two jobs ran at the same time"
            time.sleep(0.02)
            order.append(number)
            running.remove(number)
        return work

    ids = [queue.submit(make(number), title=f"job {number}") for number in range(5)]
    for job_id in ids:
        assert queue.wait(job_id, timeout=10).status == jobs.DONE
    assert order == [0, 1, 2, 3, 4]


def test_cancel_stops_a_running_job_at_its_next_report(queue):
    started, reports = threading.Event(), []

    def work(context):
        started.set()
        for index in range(10_000):
            context.progress("fit", index, 10_000)
            reports.append(index)
            time.sleep(0.005)
        return "finished"

    job_id = queue.submit(work, title="long")
    assert started.wait(5)
    assert queue.cancel(job_id)
    assert queue.get(job_id).cancel_requested
    view = queue.wait(job_id, timeout=5)
    assert view.status == jobs.CANCELLED and view.result is None
    assert len(reports) < 10_000
    assert not queue.cancel(job_id), "a finished job cannot be cancelled again"


def test_cancel_drops_a_queued_job_before_it_starts(queue):
    release, ran = threading.Event(), []
    first = queue.submit(lambda context: release.wait(5), title="blocker")
    second = queue.submit(lambda context: ran.append("second"), title="queued")
    third = queue.submit(lambda context: ran.append("third"), title="after")
    wait_until(lambda: queue.get(first).status == jobs.RUNNING)
    assert queue.get(second).status == jobs.QUEUED
    assert queue.cancel(second)
    assert queue.get(second).status == jobs.CANCELLED
    release.set()
    assert queue.wait(third, timeout=5).status == jobs.DONE
    assert ran == ["third"]


def test_an_error_is_reported_in_words_and_the_worker_goes_on(queue):
    def failing(context):
        raise ValueError("classes ['cat'] have fewer than 2 images. Add images to them or remove them.")

    failed = queue.wait(queue.submit(failing, title="bad data"), timeout=5)
    assert failed.status == jobs.FAILED
    assert failed.error.startswith("Classes ['cat'] have fewer than 2 images")
    assert "Traceback" in failed.error_detail and "ValueError" in failed.error_detail
    assert queue.wait(queue.submit(lambda context: "ok", title="next"), timeout=5).result == "ok"


def test_unexpected_errors_and_memory_errors_get_plain_explanations():
    assert "unexpected problem stopped this (ZeroDivisionError" in jobs.describe_error(ZeroDivisionError("x"))
    assert "ran out of memory" in jobs.describe_error(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert "could not be read or written" in jobs.describe_error(OSError(28, "No space left on device"))


def test_jobs_are_listed_per_owner_and_active_ones_separately(queue):
    release = threading.Event()
    mine = queue.submit(lambda context: release.wait(5), title="mine", owner="project a")
    queue.submit(lambda context: None, title="theirs", owner="project b")
    assert [view.id for view in queue.jobs("project a")] == [mine]
    assert [view.title for view in queue.active("project a")] == ["mine"]
    release.set()
    queue.wait(mine, timeout=5)
    assert queue.active("project a") == []
    assert queue.get("job-does-not-exist") is None


def test_wait_times_out_with_the_phase_in_the_message(queue):
    release = threading.Event()

    def work(context):
        context.progress("evaluate", 1, 3)
        release.wait(5)

    job_id = queue.submit(work, title="slow")
    with pytest.raises(TimeoutError, match="evaluate"):
        wait_until(lambda: queue.get(job_id).phase == "evaluate")
        queue.wait(job_id, timeout=0.05)
    release.set()


def test_old_finished_jobs_are_forgotten_and_the_newest_kept():
    queue = jobs.JobQueue(keep_finished=2)
    release = threading.Event()
    try:
        ids = [queue.submit(lambda context: None, title=str(n)) for n in range(4)]
        queue.wait(ids[-1], timeout=5)
        queue.submit(lambda context: release.wait(5), title="running")
        assert [job.title for job in queue.jobs()] == ["2", "3", "running"]  # the two newest finished, oldest first
        assert queue.get(ids[0]) is None and queue.get(ids[1]) is None
        queue.submit(lambda context: None, title="queued")  # unfinished jobs are never forgotten
        assert [job.title for job in queue.jobs()] == ["2", "3", "running", "queued"]
    finally:
        release.set()
        queue.shutdown()
