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


# -- kill -9 mid-training: the project, the run list and the feature cache survive ------------------------------------

def _labeled_project(home, name: str) -> Project:
    project = create_project(name, home=home)
    for label, start in (("zero", 0), ("one", 6), ("two", 12)):
        project.import_files(digit_files(6, start=start), label=label)
    return project


def _child_env(cache: Path) -> dict:
    return {**os.environ, "FSL_APP_CACHE": str(cache), "FSL_APP_ENGINE": "torch",
            "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _kill_when(child: subprocess.Popen, stream, marker: str, *, count: int = 1) -> None:
    """SIGKILL ``child`` once ``marker`` appeared in ``count`` lines of ``stream``."""
    deadline, seen = time.monotonic() + 300, 0
    for line in stream:
        seen += marker in line
        if seen >= count:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
            assert child.returncode == -signal.SIGKILL
            return
        if time.monotonic() > deadline:
            break
    child.kill()
    pytest.fail(f"the training ended (code {child.wait()}) or stalled before {marker!r} appeared {count} time(s)")


def _cached_features(cache: Path) -> dict[str, "np.ndarray"]:
    import numpy as np

    return {path.stem: np.load(path, allow_pickle=False) for path in (cache / "features").rglob("*.npy")}


def _assert_survived(project_path: Path, runs_root: Path, n_images: int) -> None:
    from fsl_app.runs import PARTIAL_SUFFIX, list_runs

    leftovers = [path for path in runs_root.iterdir() if path.name.endswith(PARTIAL_SUFFIX)]
    assert leftovers, "the kill came after the run was finished; kill it earlier"
    assert list_runs(runs_root) == []  # the half-written run is never listed as a finished run ...
    assert list(runs_root.iterdir()) == []  # ... and is cleaned up by the listing, as its writer is dead
    with Project(project_path) as project:
        assert project.fsck(temp_age_s=0).ok
        assert len(project.images()) == n_images and project.list_runs() == []


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkill_during_cli_finetuning_leaves_project_runs_and_cache_intact(home, tmp_path, tiny_backbone):
    from fsl_app.features import FeatureCache, FeatureExtractor

    cache = tmp_path / "cache"
    with _labeled_project(home, "trainee") as project:
        project_path, images = project.path, project.image_set(labeled_only=True)
    before = FeatureExtractor(tiny_backbone, engine="torch", cache=FeatureCache(cache / "features")).extract(images)
    runs_root = tmp_path / "runs"
    runs_root.mkdir()
    command = ["train", "trainee", "--home", str(home), "--strategy", "finetune", "--backbone", "test_efficientnet",
               "--weights", "random", "--param", "epochs=400", "--out", str(runs_root / "killed")]
    child = subprocess.Popen([sys.executable, "-c", "import sys; from fsl_app.cli import main; "
                              "sys.exit(main(sys.argv[1:]))", *command],
                             stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=_child_env(cache))
    _kill_when(child, child.stderr, "epoch", count=2)  # mid-way through the evaluation split's fine-tuning
    assert not (runs_root / "killed").exists()
    _assert_survived(project_path, runs_root, len(images))
    cached = _cached_features(cache)
    assert len(cached) == len(images)
    for row, record in zip(before.numpy(), images.records, strict=True):
        assert (cached[record.sha256] == row).all()  # the cache written before the kill still loads, unchanged


_STUDIO_WORKER = """
import sys, time
from pathlib import Path
from fsl_app import features
from fsl_app.backbones import load_backbone
from fsl_app.runs import new_run_name, train_run
from fsl_app.store import Project
from fsl_app.strategies import create_strategy

real_put = features.FeatureCache.put
def slow_put(self, namespace, sha, value):  # slow the cache writes down so the kill lands among them
    real_put(self, namespace, sha, value)
    print("cached", flush=True)
    time.sleep(0.1)
features.FeatureCache.put = slow_put

project = Project(sys.argv[1])  # what the studio's training job does, in a process that can be killed
images = project.image_set(labeled_only=True)
out_dir = Path(sys.argv[2]) / new_run_name("linear")
result = train_run(images, create_strategy("linear"), load_backbone("test_efficientnet", "random"), out_dir,
                   on_progress=lambda phase, done, total: print(phase, flush=True))
project.record_run(result.run_dir, {})
print("finished", flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkill_of_a_studio_training_worker_leaves_project_runs_and_cache_intact(home, tmp_path, tiny_backbone):
    from fsl_app.features import FeatureCache, FeatureExtractor

    cache = tmp_path / "cache"
    with _labeled_project(home, "studio") as project:
        project_path, images = project.path, project.image_set(labeled_only=True)
    runs_root = project_path / "runs"
    runs_root.mkdir()
    child = subprocess.Popen([sys.executable, "-c", _STUDIO_WORKER, str(project_path), str(runs_root)],
                             stdout=subprocess.PIPE, text=True, env=_child_env(cache))
    _kill_when(child, child.stdout, "cached", count=5)  # during feature extraction, the run half-written
    _assert_survived(project_path, runs_root, len(images))
    cached = _cached_features(cache)
    assert 5 <= len(cached) < len(images)
    fresh = FeatureExtractor(tiny_backbone, engine="torch", cache=FeatureCache(enabled=False)).extract(images)
    for row, record in zip(fresh.numpy(), images.records, strict=True):
        if record.sha256 in cached:  # every feature that reached the cache is complete and correct
            assert cached[record.sha256] == pytest.approx(row, abs=1e-5)
