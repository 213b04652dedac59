"""The UI-free helpers of the studio: pickers, augmentation, training jobs, maps, predictions, sample data."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from fsl_app import jobs, sample_data, studio
from fsl_app.images import ImageError
from fsl_app.store import create_project

TINY = "test_efficientnet"


def new_project(labeled_per_class: int = 4, unlabeled_per_class: int = 1, classes: int = 3):
    project = create_project(f"studio {uuid.uuid4().hex[:8]}")
    images = sample_data.sample_images(labeled_per_class, unlabeled_per_class)
    kept = list(sample_data.SAMPLE_CLASSES.values())[:classes]
    for label in [*kept, None]:
        project.import_files([(i.name, i.data) for i in images if i.label == label and i.true_label in kept],
                             label)
    return project


def tiny_request(project, strategy: str = "linear", **params) -> studio.TrainRequest:
    values = {**studio.default_params(strategy, seed=0, project_augment=None), **params}
    return studio.TrainRequest(str(project.path), TINY, "random", strategy, values, "auto", 0)


@pytest.fixture(scope="module")
def queue():
    queue = jobs.JobQueue()
    yield queue
    queue.shutdown()


@pytest.fixture(scope="module")
def trained(queue):
    """A project with a linear and a ProtoNet run of the tiny backbone."""
    project = new_project()
    linear = queue.wait(studio.submit_training(queue, tiny_request(project), owner="t"), timeout=120)
    proto = queue.wait(studio.submit_training(queue, tiny_request(project, "protonet"), owner="t"), timeout=120)
    assert linear.status == proto.status == jobs.DONE, (linear.error, proto.error)
    return project, {run["config"]["strategy"]: run for run in studio.project_runs(project)}


# --- pickers --------------------------------------------------------------------------------------------------------

def test_param_specs_come_from_the_strategies_with_their_choices():
    linear = {spec.name: spec for spec in studio.param_specs("linear")}
    assert linear["classifier"].kind == "choice" and linear["classifier"].choices == ("logreg", "svm", "rbf")
    assert linear["normalize"].choices == ("cl2n", "l2", "none")
    assert linear["C"].kind == "float" and linear["calibrate"].kind == "bool"
    assert "seed" not in linear
    finetune = {spec.name: spec for spec in studio.param_specs("finetune")}
    assert finetune["augment"].kind == "augment" and finetune["augment"].choices[0] == studio.PROJECT_AUGMENT
    assert finetune["mode"].choices == ("head", "last_n", "full") and finetune["epochs"].kind == "int"
    for name in studio.strategy_names():
        assert studio.default_params(name, seed=1, project_augment=None)["seed"] == 1


def test_resolve_params_sets_the_seed_and_the_project_pipeline():
    pipeline = studio.pipeline_dict("medium")
    params = studio.resolve_params("finetune", {"augment": studio.PROJECT_AUGMENT, "epochs": 2}, seed=5,
                                   project_augment=pipeline)
    assert params == {"augment": pipeline, "epochs": 2, "seed": 5}
    assert studio.resolve_params("finetune", {"augment": studio.PROJECT_AUGMENT}, seed=0,
                                 project_augment=None)["augment"] == "light"


def test_test_backbones_are_offered_only_when_enabled(monkeypatch):
    monkeypatch.delenv(studio.TEST_BACKBONES_ENV, raising=False)
    assert TINY not in studio.backbone_names()
    monkeypatch.setenv(studio.TEST_BACKBONES_ENV, "1")
    assert studio.backbone_names()[0] == TINY


def test_backbone_summary_reports_size_and_unknown_names():
    summary = studio.backbone_summary(TINY)
    assert summary.error is None and summary.default_weights == "random"
    assert summary.params_m > 0 and summary.input_size[0] == 3
    unknown = studio.backbone_summary("no_such_net_42")
    assert unknown.error and "not a timm model name" in unknown.error


# --- augmentation ---------------------------------------------------------------------------------------------------

def test_custom_pipeline_leaves_out_disabled_transforms_and_round_trips():
    settings = studio.AugmentSettings(horizontal_flip=0.0, rotate_degrees=30, crop_min_scale=0.6, blur=0.3,
                                      noise=0.2, coarse_dropout=0.1, color_jitter=0.0)
    names = [line.split(" ")[0] for line in studio.describe_pipeline(studio.pipeline_dict("custom", settings))]
    assert names == ["RandomResizedCrop", "Rotate", "GaussianBlur", "GaussNoise", "CoarseDropout"]
    from fsl_app.augment import build_augment

    build_augment(studio.pipeline_dict("custom", settings))  # albumentations can rebuild it


def test_project_augment_is_saved_in_the_project_folder_and_previews_are_seeded():
    project = new_project(labeled_per_class=2, unlabeled_per_class=0, classes=2)
    assert studio.load_project_augment(project).choice == "light"
    settings = studio.AugmentSettings(rotate_degrees=45, noise=0.5)
    pipeline = studio.save_project_augment(project, "custom", settings)
    saved = json.loads((Path(project.path) / studio.AUGMENT_FILE).read_text())
    assert saved["pipeline"] == pipeline and saved["choice"] == "custom"
    loaded = studio.load_project_augment(project)
    assert loaded.settings == settings and loaded.resolved_pipeline() == pipeline
    paths = [image.path for image in project.images()[:2]]
    first = studio.augment_preview(paths, pipeline, copies=3, seed=4)
    second = studio.augment_preview(paths, pipeline, copies=3, seed=4)
    assert len(first) == 2 and len(first[0]) == 3
    assert [list(im.getdata()) for im in first[0]] == [list(im.getdata()) for im in second[0]]


# --- training jobs --------------------------------------------------------------------------------------------------

def test_a_training_job_writes_a_run_in_the_project_and_records_it(trained):
    project, runs = trained
    run = runs["linear"]
    assert Path(run["run_dir"]).parent == studio.runs_dir(project)
    assert run["metrics"]["protocol"] == "loo" and 0 <= run["metrics"]["accuracy"] <= 1
    # both runs may start within the same second, so compare the recorded runs as a set
    assert {Path(info.run_dir).name for info in project.list_runs()} == {Path(r["run_dir"]).name
                                                                         for r in runs.values()}
    rows = studio.run_table(list(runs.values()))
    assert {row["strategy"] for row in rows} == {"linear", "protonet"}
    assert all(row["images"] == 12 and row["backbone"] == TINY for row in rows)
    assert "±" in studio.accuracy_text(run["metrics"])


def test_cancelling_a_fine_tuning_job_leaves_no_run_and_no_partial_folder(queue):
    project = new_project(labeled_per_class=4, unlabeled_per_class=0, classes=2)
    job_id = studio.submit_training(queue, tiny_request(project, "finetune", epochs=500, patience=1000,
                                                        augment="none"), owner="cancel")
    deadline = time.monotonic() + 120
    while not queue.get(job_id).steps:
        assert time.monotonic() < deadline and not queue.get(job_id).finished, queue.get(job_id)
        time.sleep(0.05)
    queue.cancel(job_id)
    view = queue.wait(job_id, timeout=60)
    assert view.status == jobs.CANCELLED
    runs_folder = studio.runs_dir(project)
    assert not runs_folder.exists() or list(runs_folder.iterdir()) == []
    assert project.list_runs() == []


def test_a_job_on_unusable_data_fails_with_a_readable_message(queue):
    project = new_project(labeled_per_class=3, unlabeled_per_class=0, classes=1)
    view = queue.wait(studio.submit_training(queue, tiny_request(project), owner="bad"), timeout=60)
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
        fraction, text = studio.job_progress(queue.get(job_id))
        assert fraction == 0.25 and "evaluating (1/3)" in text and "epoch 2/8" in text
        release.set()
    finally:
        queue.shutdown()


def test_evaluate_all_strategies_uses_one_protocol_and_seed():
    requests = studio.requests_for_all_strategies("/p", TINY, "random", "kfold", 3, None)
    assert [r.strategy for r in requests] == studio.strategy_names()
    assert {(r.protocol, r.seed, r.params["seed"]) for r in requests} == {("kfold", 3, 3)}


# --- results --------------------------------------------------------------------------------------------------------

def test_embedding_map_marks_held_out_images_and_protonet_prototypes(trained):
    project, runs = trained
    names = studio.source_names(project)
    for strategy, prototypes in (("linear", 0), ("protonet", 3)):
        run = runs[strategy]
        strategy_object = studio.fitted_run(run["run_dir"])
        result = studio.embedding_map(strategy_object, run, "pca", names=names)
        roles = [point["role"] for point in result.points]
        assert roles.count("prototype") == prototypes
        assert roles.count("held-out (evaluated)") == 12  # leave-one-out tests every image
        assert all(point["file"].endswith(".png") for point in result.points if point["role"] != "prototype")
        assert {point["label"] for point in result.points} == {"zero", "one", "seven"}


def test_predict_image_gives_top_k_and_nearest_training_images(trained):
    project, runs = trained
    run = runs["linear"]
    strategy = studio.fitted_run(run["run_dir"])
    image = sample_data.sample_images(12, 0)[-1]
    prediction = studio.predict_image(strategy, image.data, image.name, top_k=2,
                                      training=studio.run_image_set(run), neighbours=3)
    assert len(prediction.top_k) == 2 and prediction.top_k[0]["probability"] >= prediction.top_k[1]["probability"]
    assert sum(item["probability"] for item in prediction.top_k) <= 1.0 + 1e-6
    assert len(prediction.nearest) == 3 and prediction.nearest[0]["similarity"] >= prediction.nearest[-1][
        "similarity"]
    with pytest.raises(ImageError, match="not an image"):
        studio.predict_image(strategy, b"not an image", "notes.png")


def test_suggestions_rank_the_unlabeled_pool(trained):
    project, runs = trained
    suggestions = studio.suggestions_for(project, studio.fitted_run(runs["linear"]["run_dir"]))
    assert len(suggestions) == 3
    assert [s.margin for s in suggestions] == sorted(s.margin for s in suggestions)


def test_misclassified_and_per_class_rows_come_from_the_run_files(trained):
    _, runs = trained
    run = runs["linear"]
    wrong = studio.misclassified(run)
    assert all(item["true"] != item["predicted"] for item in wrong)
    rows = studio.per_class_rows([run])
    assert {row["class"] for row in rows} == {"zero", "one", "seven"}


def test_run_zip_holds_the_model_and_exports_are_reused(trained):
    project, runs = trained
    run_dir = Path(runs["linear"]["run_dir"])
    with zipfile.ZipFile(io.BytesIO(studio.run_zip_bytes(run_dir))) as archive:
        names = archive.namelist()
    assert f"{run_dir.name}/model.json" in names and f"{run_dir.name}/metrics.json" in names
    assert "onnx" in studio.export_formats()
    path = studio.export_model(project, run_dir, "onnx")
    assert path.parent == Path(project.path) / studio.EXPORTS_FOLDER and path.stat().st_size > 0
    assert studio.export_model(project, run_dir, "onnx") == path


# --- sample data ----------------------------------------------------------------------------------------------------

def test_sample_images_are_small_labeled_pngs_with_an_unlabeled_pool():
    images = sample_data.sample_images()
    labeled = [image for image in images if image.label]
    assert len(labeled) == 24 and len(images) == 30
    assert {image.label for image in labeled} == {"zero", "one", "seven"}
    assert all(image.data.startswith(b"\x89PNG") for image in images)


def test_sample_project_can_be_loaded_twice():
    home = Path(create_project(f"probe {uuid.uuid4().hex[:6]}").home)
    name = f"Sample {uuid.uuid4().hex[:6]}"
    first = sample_data.load_sample_project(name, home)
    second = sample_data.load_sample_project(name, home)
    assert first.stats().n_images == second.stats().n_images == 30
    assert second.stats().n_labeled == 24
