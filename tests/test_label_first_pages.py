"""The Data page's "What to label first" panel and the Compare page's forecast panel (AppTest): clear messages for
too little data, picks labeled in place through the store (logged, undoable), a forecast for a trained run."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from fsl_app import jobs, sample_data, training_job
from fsl_app.backbones import TEST_BACKBONES_ENV
from fsl_app.store import create_project, open_project

APP = Path(__file__).resolve().parents[1] / "fsl_app" / "app.py"
TIMEOUT = 120
CLASSES = ["zero", "one", "seven"]


@pytest.fixture(autouse=True)
def tiny_backbones(monkeypatch):
    monkeypatch.setenv(TEST_BACKBONES_ENV, "1")  # features for the picks come from the tiny test model


def project_with(labels: dict[str, int], unlabeled_per_class: int = 2) -> str:
    project = create_project(f"first pages {uuid.uuid4().hex[:8]}")
    kept: dict[str, int] = {}
    for image in sample_data.sample_images(max(labels.values()), unlabeled_per_class, classes=CLASSES):
        if image.label is not None and kept.get(image.label, 0) >= labels.get(image.label, 0):
            continue
        kept[image.label] = kept.get(image.label, 0) + 1
        project.import_files([(image.name, image.data)], image.label)
    return project.name


def train(name: str) -> None:
    project = open_project(name)
    queue = jobs.JobQueue()
    request = training_job.TrainRequest(str(project.path), "test_efficientnet", "random", "protonet",
                                        training_job.default_params("protonet", seed=0, project_augment=None))
    view = queue.wait(training_job.submit_training(queue, request, owner=name), timeout=300)
    queue.shutdown()
    assert view.status == jobs.DONE, view.error


def open_page(page: str, name: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["project"] = name
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def infos(at: AppTest) -> str:
    return "\n".join(info.value for info in at.info)


def test_an_empty_pool_says_what_to_add():
    at = open_page("views/data.py", project_with({"zero": 2, "one": 2}, unlabeled_per_class=0))
    assert any(subheader.value == "What to label first" for subheader in at.subheader)
    assert "Suggesting what to label first needs at least 1 unlabeled image" in infos(at)
    assert "first-pick" not in [button.key for button in at.button]


def test_margin_picks_need_two_labeled_classes():
    at = open_page("views/data.py", project_with({"zero": 3}))
    at.selectbox(key="first-method").set_value("margin").run()
    assert "needs a trained run or at least 2 classes with labeled images (found 1)" in infos(at)


def test_typical_picks_are_labeled_in_place_logged_and_undone():
    name = project_with({"zero": 1, "one": 1})
    project = open_project(name)
    at = open_page("views/data.py", name)
    at.number_input(key="first-budget").set_value(3).run()
    at.button(key="first-pick").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assign = [button for button in at.button if button.key and button.key.startswith("first-assign-")]
    assert len(assign) == 3 and any("most typical of a group of" in caption.value for caption in at.caption)
    image_id = int(assign[0].key.rsplit("-", 1)[1])
    at.selectbox(key=f"first-label-{image_id}").set_value("one").run()
    at.button(key=f"first-assign-{image_id}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert project.get_image(image_id).label == "one"
    assert project.label_history(1)[0].actor == "label first"
    assert f"first-assign-{image_id}" not in [button.key for button in at.button]  # labeled: off the list
    project.undo_last_label_change()
    assert project.get_image(image_id).label is None


def test_with_a_run_the_picks_come_from_its_model():
    name = project_with({"zero": 2, "one": 2, "seven": 2})
    train(name)
    at = open_page("views/data.py", name)
    at.button(key="first-pick").click().run()  # auto: typical picks with 2 per class
    assert any("by **typical** (no model needed)" in caption.value for caption in at.caption)
    at.selectbox(key="first-method").set_value("margin").run()
    at.button(key="first-pick").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("by **margin** from the run" in caption.value for caption in at.caption)
    assert any("hesitates between" in caption.value for caption in at.caption)


def test_compare_page_forecasts_a_run_and_says_when_it_cannot():
    name = project_with({name: 4 for name in CLASSES}, unlabeled_per_class=0)
    train(name)
    at = open_page("views/compare.py", name)
    assert any(subheader.value == "How many more images do I need?" for subheader in at.subheader)
    at.button(key="forecast-button").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "With 5 more per class" in [metric.label for metric in at.metric]
    assert any("with 5 more per class (9): about" in caption.value for caption in at.caption)

    small = project_with({name: 2 for name in CLASSES}, unlabeled_per_class=0)
    train(small)
    at = open_page("views/compare.py", small)
    assert "Forecasting needs at least 2 classes with at least 4 labeled images each" in infos(at)
