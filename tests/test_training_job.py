"""Studio training jobs (fsl_app.training_job) on the generic job queue: hyperparameters from the strategies' own
descriptions, a run written and recorded in the project, cancel, readable failures, progress, the sample run."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest

from fsl_app import augment, jobs, run_tables, sample_data, training_job
from fsl_app.backbones import TEST_BACKBONES_ENV
from fsl_app.strategies import get_strategy_class, list_strategies
from fsl_app.store import create_project

TINY = "test_efficientnet"


def new_project(labeled_per_class: int = 4, unlabeled_per_class: int = 1, classes: int = 3):
    project = create_project(f"job {uuid.uuid4().hex[:8]}")
    images = sample_data.sample_images(labeled_per_class, unlabeled_per_class)
    kept = list(sample_data.SAMPLE_CLASSES.values())[:classes]
    for label in [*kept, None]:
        project.import_files([(i.name, i.data) for i in images if i.label == label and i.true_label in kept],
                             label)
    return project


def tiny_request(project, strategy: str = "linear", **params) -> training_job.TrainRequest:
    values = {**training_job.default_params(strategy, seed=0, project_augment=None), **params}
    return training_job.TrainRequest(str(project.path), TINY, "random", strategy, values, "auto", 0)


@pytest.fixture(scope="module")
def queue():
    queue = jobs.JobQueue()
    yield queue
    queue.shutdown()


# --- hyperparameters ------------------------------------------------------------------------------------------------

def test_param_specs_come_from_the_strategies_with_their_choices():
    linear = {spec.name: spec for spec in get_strategy_class("linear").param_specs()}
    assert linear["classifier"].kind == "choice" and linear["classifier"].choices == ("logreg", "svm", "rbf")
    assert linear["normalize"].choices == ("cl2n", "l2", "none")
    assert linear["C"].kind == "float" and linear["calibrate"].kind == "bool"
    assert "seed" not in linear and all(spec.help for spec in linear.values())
    finetune = {spec.name: spec for spec in get_strategy_class("finetune").param_specs()}
    assert finetune["augment"].kind == "augment" and set(finetune["augment"].choices) == set(augment.PRESETS)
    assert finetune["mode"].choices == ("head", "last_n", "full") and finetune["epochs"].kind == "int"


def test_default_params_follow_the_project_pipeline_and_the_seed():
    for name in list_strategies():
        assert training_job.default_params(name, seed=1, project_augment=None)["seed"] == 1
    pipeline = augment.pipeline_dict("medium")
    assert training_job.default_params("finetune", seed=0, project_augment=pipeline)["augment"] == pipeline


def test_resolve_params_sets_the_seed_and_the_project_pipeline():
    pipeline = augment.pipeline_dict("medium")
    params = training_job.resolve_params("finetune", {"augment": training_job.PROJECT_PIPELINE, "epochs": 2},
                                         seed=5, project_augment=pipeline)
    assert params == {"augment": pipeline, "epochs": 2, "seed": 5}
    assert training_job.resolve_params("finetune", {"augment": training_job.PROJECT_PIPELINE}, seed=0,
                                       project_augment=None)["augment"] == "light"


def test_only_strategies_off_frozen_features_train_the_backbone():
    defaults = {name: training_job.default_params(name, seed=0, project_augment=None) for name in list_strategies()}
    assert {name for name, params in defaults.items() if training_job.strategy_trains_backbone(name, params)} \
        == {"finetune"}


def test_evaluate_all_strategies_resolves_auto_once_for_the_whole_set():
    project = new_project(labeled_per_class=4, unlabeled_per_class=1)
    plan, requests = training_job.requests_for_all_strategies(project.path, TINY, "random", "auto", 3, None)
    assert [r.strategy for r in requests] == list_strategies()
    # finetune trains the backbone: leave-one-out would fine-tune 12 times, a hold-out tests 3 images
    assert plan.protocol == "kfold" and "finetune trains the backbone" in plan.reason
    assert {(r.protocol, r.seed, r.params["seed"]) for r in requests} == {("kfold", 3, 3)}
    assert set(plan.seconds) == set(list_strategies()) and "Estimated time" in plan.text()


def test_evaluate_all_strategies_keeps_an_explicit_protocol():
    project = new_project(labeled_per_class=4, unlabeled_per_class=0, classes=2)
    plan, requests = training_job.requests_for_all_strategies(project.path, TINY, "random", "loo", 0, None)
    assert plan.protocol == "loo" and {r.protocol for r in requests} == {"loo"}


def test_evaluate_all_strategies_needs_labeled_images():
    project = new_project(labeled_per_class=0, unlabeled_per_class=2)
    with pytest.raises(ValueError, match="label some images"):
        training_job.requests_for_all_strategies(project.path, TINY, "random", "auto", 0, None)


def test_an_uploaded_checkpoint_is_kept_in_the_project_under_a_safe_name(tmp_path):
    path = training_job.save_weights_file(tmp_path, "../../evil/model.safetensors", b"weights")
    assert path == tmp_path / training_job.WEIGHTS_FOLDER / "model.safetensors" and path.read_bytes() == b"weights"
    assert training_job.save_weights_file(tmp_path, "..", b"x").name == "weights.pth"


# --- the job --------------------------------------------------------------------------------------------------------

def test_a_training_job_writes_a_run_in_the_project_and_records_it(queue):
    project = new_project()
    view = queue.wait(training_job.submit_training(queue, tiny_request(project), owner="t"), timeout=120)
    assert view.status == jobs.DONE, view.error
    runs = run_tables.project_runs(project.path)
    assert [Path(run["run_dir"]).parent for run in runs] == [run_tables.runs_dir(project.path)]
    assert runs[0]["metrics"]["protocol"] == "loo" and 0 <= runs[0]["metrics"]["accuracy"] <= 1
    assert [Path(info.run_dir).name for info in project.list_runs()] == [runs[0]["name"]]
    row = run_tables.run_table(runs)[0]
    assert row["strategy"] == "linear" and row["images"] == 12 and row["backbone"] == TINY
    assert view.result["run_dir"] == runs[0]["run_dir"]


def test_a_pool_aware_job_uses_the_projects_unlabeled_images_unless_told_not_to(queue):
    project = new_project(labeled_per_class=4, unlabeled_per_class=2, classes=3)
    with_pool = tiny_request(project, "selftrain")
    without = training_job.TrainRequest(**{**asdict(with_pool), "use_pool": False})
    assert with_pool.use_pool and with_pool.uses_pool() and not without.uses_pool()
    assert "without the pool" in without.title() and "pool" not in with_pool.title()
    for request in (with_pool, without):
        view = queue.wait(training_job.submit_training(queue, request, owner="pool"), timeout=120)
        assert view.status == jobs.DONE, view.error
        assert view.meta["use_pool"] is request.use_pool
    by_pool = {run["metrics"]["pool_size"]: run for run in run_tables.project_runs(project.path)}
    assert set(by_pool) == {6, 0}
    assert by_pool[6]["metrics"]["pseudo_labels"] <= by_pool[6]["metrics"]["pool_used"] <= 6
    assert by_pool[6]["metrics"]["n_images"] == by_pool[0]["metrics"]["n_images"] == 12
    recorded = {Path(info.run_dir).name: info for info in project.list_runs()}
    assert set(recorded) == {run["name"] for run in by_pool.values()}


def test_a_job_whose_strategy_ignores_the_pool_records_none():
    project = new_project(labeled_per_class=2, unlabeled_per_class=1, classes=2)
    request = tiny_request(project, "protonet")
    assert request.use_pool and not request.uses_pool() and "pool" not in request.title()
    assert not training_job.strategy_uses_pool("no such strategy")


def test_cancelling_a_fine_tuning_job_leaves_no_run_and_no_partial_folder(queue):
    project = new_project(labeled_per_class=4, unlabeled_per_class=0, classes=2)
    request = tiny_request(project, "finetune", epochs=500, patience=1000, augment="none")
    job_id = training_job.submit_training(queue, request, owner="cancel")
    deadline = time.monotonic() + 120
    while not queue.get(job_id).steps:
        assert time.monotonic() < deadline and not queue.get(job_id).finished, queue.get(job_id)
        time.sleep(0.05)
    queue.cancel(job_id)
    view = queue.wait(job_id, timeout=60)
    assert view.status == jobs.CANCELLED
    runs_folder = run_tables.runs_dir(project.path)
    assert not runs_folder.exists() or list(runs_folder.iterdir()) == []
    assert project.list_runs() == []


def test_a_job_on_unusable_data_fails_with_a_readable_message(queue):
    project = new_project(labeled_per_class=3, unlabeled_per_class=0, classes=1)
    view = queue.wait(training_job.submit_training(queue, tiny_request(project), owner="bad"), timeout=60)
    assert view.status == jobs.FAILED
    assert "at least 2 classes" in view.error and "Traceback" not in view.error


def test_job_progress_follows_the_epochs_of_the_current_fit():
    queue = jobs.JobQueue()
    try:
        release = threading.Event()

        def work(context):
            context.progress("evaluating", 1, 3)
            context.step({"step": 2, "epoch": 2, "loss": 0.5})
            release.wait(5)

        job_id = queue.submit(work, title="t", meta={"params": {"epochs": 8}})
        deadline = time.monotonic() + 10
        while not queue.get(job_id).steps:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        fraction, text = training_job.job_progress(queue.get(job_id))
        assert fraction == 0.25 and "evaluating (1/3)" in text and "epoch 2/8" in text
        release.set()
    finally:
        queue.shutdown()


def test_the_sample_run_uses_the_tiny_backbone_in_test_mode(monkeypatch, queue):
    monkeypatch.setenv(TEST_BACKBONES_ENV, "1")
    assert training_job.sample_backbone() == (TINY, "random")
    name, job_ids = training_job.start_sample(queue)
    assert name == sample_data.SAMPLE_PROJECT_NAME
    views = [queue.wait(job_id, timeout=120) for job_id in job_ids]
    assert [view.status for view in views] == [jobs.DONE] * 2
    assert [view.meta["strategy"] for view in views] == ["linear", "protonet"]
    monkeypatch.setenv(TEST_BACKBONES_ENV, "0")
    assert training_job.sample_backbone() == ("tf_efficientnet_lite0", "auto")
