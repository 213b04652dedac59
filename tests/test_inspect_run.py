"""Looking inside trained runs (fsl_app.inspect_run): the fitted strategy, the embedding map with the strategy's own
points, predictions with nearest training images, and the store's suggestions from a fitted run."""

from __future__ import annotations

import uuid

import pytest

from fsl_app import inspect_run, jobs, run_tables, sample_data, training_job
from fsl_app.images import ImageError
from fsl_app.store import create_project, suggest_for_project

TINY = "test_efficientnet"


@pytest.fixture(scope="module")
def trained():
    """A project (4 labeled digits of zero / one / seven, 1 unlabeled each) with a linear and a ProtoNet run."""
    project = create_project(f"inspect {uuid.uuid4().hex[:8]}")
    classes = ("zero", "one", "seven")
    images = sample_data.sample_images(4, 1, classes=classes)
    for label in [*classes, None]:
        project.import_files([(i.name, i.data) for i in images if i.label == label], label)
    queue = jobs.JobQueue()
    try:
        for strategy in ("linear", "protonet"):
            params = training_job.default_params(strategy, seed=0, project_augment=None)
            request = training_job.TrainRequest(str(project.path), TINY, "random", strategy, params)
            view = queue.wait(training_job.submit_training(queue, request, owner="t"), timeout=120)
            assert view.status == jobs.DONE, view.error
    finally:
        queue.shutdown()
    return project, {run["config"]["strategy"]: run for run in run_tables.project_runs(project.path)}


def test_embedding_map_marks_held_out_images_and_protonet_prototypes(trained):
    project, runs = trained
    names = {image.sha256: image.source_name for image in project.images()}
    for strategy, prototypes in (("linear", 0), ("protonet", 3)):
        run = runs[strategy]
        result = inspect_run.embedding_map(inspect_run.fitted_strategy(run["run_dir"]), run, "pca", names=names)
        roles = [point["role"] for point in result.points]
        assert roles.count("prototype") == prototypes
        assert roles.count(inspect_run.HELD_OUT) == 12  # leave-one-out tests every image
        assert all(point["file"].endswith(".png") for point in result.points if point["role"] != "prototype")
        assert {point["label"] for point in result.points} == {"zero", "one", "seven"}
        held_out = [point for point in result.points if point["role"] == inspect_run.HELD_OUT]
        assert all(point["correct"] in (True, False) for point in held_out)


def test_embedding_map_says_when_the_images_are_gone(trained):
    _, runs = trained
    run = {**runs["linear"], "config": {**runs["linear"]["config"], "data": {"images": [
        {"path": "/nowhere/x.png", "sha256": "0" * 64, "label": "zero"}]}}}
    result = inspect_run.embedding_map(inspect_run.fitted_strategy(run["run_dir"]), run)
    assert result.points == [] and "no longer on disk" in result.note


def test_predict_image_gives_top_k_and_nearest_training_images(trained):
    _, runs = trained
    run = runs["linear"]
    strategy = inspect_run.fitted_strategy(run["run_dir"])
    image = sample_data.sample_images(12, 0)[-1]
    prediction = inspect_run.predict_image(strategy, image.data, image.name, top_k=2,
                                           training=inspect_run.run_image_set(run), neighbours=3)
    assert len(prediction.top_k) == 2 and prediction.top_k[0]["probability"] >= prediction.top_k[1]["probability"]
    assert sum(item["probability"] for item in prediction.top_k) <= 1.0 + 1e-6
    similarities = [item["similarity"] for item in prediction.nearest]
    assert len(similarities) == 3 and similarities == sorted(similarities, reverse=True)
    with pytest.raises(ImageError, match="not an image"):
        inspect_run.predict_image(strategy, b"not an image", "notes.png")


def test_suggestions_from_a_fitted_run_rank_the_unlabeled_pool(trained):
    project, runs = trained
    suggestions = suggest_for_project(project, inspect_run.fitted_strategy(runs["linear"]["run_dir"]), top=24)
    assert len(suggestions) == 3
    assert [s.margin for s in suggestions] == sorted(s.margin for s in suggestions)
