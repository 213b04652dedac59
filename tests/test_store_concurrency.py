"""Two processes writing one project at once, threads sharing a Project, and a SIGKILL in the middle of an import."""

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest

from fsl_app.images import sha256_file
from fsl_app.store import create_project, open_project
from fsl_app.store.project import Project

try:
    from tests.conftest_store import digit_files, digit_png, home, project  # noqa: F401
except ModuleNotFoundError:
    from conftest_store import digit_files, digit_png, home, project  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]


def _writer(home, worker, own_files, shared_files, barrier, results):
    """Child process: import own + shared images one transaction at a time, label them, record a run."""
    try:
        project = open_project("shared", home=home)
        barrier.wait(timeout=60)
        duplicates = 0
        for index, item in enumerate(own_files):
            project.import_files([item], label=f"worker {worker}")
            report = project.import_files([shared_files[index % len(shared_files)]])
            duplicates += len(report.duplicates)
        shared_ids = [project.find_by_sha256(image.sha256).id for image in project.images(labeled=False)
                      if image.source_name.startswith("shared")]
        project.set_labels(shared_ids, "both", create_missing_class=True, actor=f"worker {worker}")
        project.record_run(f"runs/{worker}", {"worker": worker})
        results.put((worker, duplicates, None))
    except BaseException:  # report everything, including 'database is locked', to the parent
        results.put((worker, 0, traceback.format_exc()))


def test_two_processes_write_the_same_project_without_lost_updates(home):
    create_project("shared", home=home).close()
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    shared = [(f"shared_{i}.png", digit_png(500 + i)) for i in range(10)]
    workers = [context.Process(target=_writer, args=(str(home), worker, digit_files(25, start=worker * 25),
                                                     shared, barrier, results)) for worker in (0, 1)]
    for process in workers:
        process.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for process in workers:
        process.join(timeout=30)
    errors = [error for _, _, error in outcomes if error]
    assert errors == []
    with open_project("shared", home=home) as project:
        stats = project.stats()
        assert stats.n_images == 25 + 25 + 10
        assert stats.class_counts["worker 0"] == 25 and stats.class_counts["worker 1"] == 25
        assert project.classes().count("both") == 1
        # every duplicate a worker was told about was counted exactly once by the atomic counter
        assert stats.duplicates_skipped == sum(count for _, count, _ in outcomes) == 50 - 10
        assert len(project.list_runs()) == 2
        assert project.fsck().ok


def test_threads_share_one_project(project):
    ids = project.import_files(digit_files(40)).added_ids
    errors = []

    def label(part, name):
        try:
            for image_id in part:
                project.set_labels([image_id], name, create_missing_class=True)
        except Exception as error:  # pragma: no cover - surfaced by the assert below
            errors.append(error)

    threads = [threading.Thread(target=label, args=(ids[i::4], f"c{i}")) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and project.class_counts() == {"c0": 10, "c1": 10, "c2": 10, "c3": 10}


_SLOW_IMPORT = """
import sys, time
from fsl_app.store import open_project, importing
importing.BATCH_FILES = 16  # many small transactions
project = open_project("victim", home=sys.argv[1])
def progress(done):
    print(done, flush=True)
    time.sleep(0.004)
project.import_imagefolder(sys.argv[2], on_progress=progress)
print("finished", flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkill_during_import_leaves_a_consistent_project(home, tmp_path):
    folder = tmp_path / "incoming"
    for name, data in digit_files(240):
        target = folder / ("odd" if int(name[6:10]) % 2 else "even") / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    create_project("victim", home=home).close()
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen([sys.executable, "-c", _SLOW_IMPORT, str(home), str(folder)],
                             stdout=subprocess.PIPE, text=True, env=env)
    _wait_for_progress(child, at_least=100)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    with open_project("victim", home=home) as project:
        conn = sqlite3.connect(project.db_path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = project.images()
        assert 16 <= len(rows) < 240
        for image in rows:  # no row without its intact file
            assert image.path.is_file() and sha256_file(image.path) == image.sha256
        report = project.fsck(temp_age_s=0)
        assert report.ok and report.missing_files == []
        objects = [p for p in (project.path / "objects").rglob("*") if p.is_file()]
        assert len(objects) == len(rows)  # orphans written before the kill are gone
        assert len(report.orphans_removed) + len(rows) >= 100
        # the import can simply be run again: it finishes the job without storing anything twice
        again = project.import_imagefolder(folder)
        assert len(again.duplicates) == len(rows) and len(project.images()) == 240
        assert project.class_counts() == {"even": 120, "odd": 120}
    assert Project(project.path).fsck().ok


def _wait_for_progress(child: subprocess.Popen, at_least: int) -> None:
    deadline = time.monotonic() + 120
    for line in child.stdout:
        if line.strip() == "finished" or time.monotonic() > deadline:
            child.kill()
            pytest.fail("the import finished (or stalled) before it could be killed; slow it down")
        if int(line) >= at_least:
            return
    pytest.fail(f"child exited early with code {child.wait()}")


def test_delete_interrupted_before_commit_is_repaired_on_open(project):
    """Simulate a kill between moving the file aside and committing the row deletion."""
    image = project.get_image(project.import_files(digit_files(1)).added_ids[0])
    tomb = project.objects.tombstone(image.sha256, image.ext)
    assert tomb.is_file() and not image.path.exists()
    project.close()
    reopened = Project(project.path)
    assert image.path.is_file() and not tomb.exists()
    assert reopened.fsck().ok
