"""The Data page's "Review labels" panel (AppTest): too little data, no run yet, a planted wrong label found with the
offline default backbone, relabeled in one click (logged), undone, then kept."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from fsl_app import jobs, sample_data, training_job
from fsl_app.backbones import DEFAULT_BACKBONE, TEST_BACKBONES_ENV
from fsl_app.store import create_project, open_project

APP = Path(__file__).resolve().parents[1] / "fsl_app" / "app.py"
TIMEOUT = 120
CLASSES = ("zero", "one", "seven")


@pytest.fixture(autouse=True)
def tiny_backbones(monkeypatch):
    monkeypatch.setenv(TEST_BACKBONES_ENV, "1")


def project_with(labels: dict[str, int], *, flipped: bool = False) -> str:
    """A project with ``labels[name]`` sample digits per class; with ``flipped`` the first 'one' is labeled seven."""
    project = create_project(f"review {uuid.uuid4().hex[:8]}")
    images = sample_data.sample_images(max(labels.values()), 0, classes=list(labels))
    for name, count in labels.items():
        members = [image for image in images if image.label == name][:count]
        if flipped and name == "one":
            project.import_files([(members[0].name, members[0].data)], "seven")
            members = members[1:]
        project.import_files([(image.name, image.data) for image in members], name)
    return project.name


def train(name: str, backbone: str, weights: str) -> None:
    project = open_project(name)
    queue = jobs.JobQueue()
    request = training_job.TrainRequest(str(project.path), backbone, weights, "linear",
                                        training_job.default_params("linear", seed=0, project_augment=None))
    view = queue.wait(training_job.submit_training(queue, request, owner=name), timeout=300)
    queue.shutdown()
    assert view.status == jobs.DONE, view.error


def data_page(name: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["project"] = name
    at.run()
    at.switch_page("views/data.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def review_subheader_shown(at: AppTest) -> bool:
    return any(subheader.value.startswith("Review labels") for subheader in at.subheader)


@pytest.mark.parametrize("labels", [{"zero": 4}, {"zero": 1, "one": 1, "seven": 1}])
def test_too_little_data_says_what_is_needed(labels):
    at = data_page(project_with(labels))
    assert review_subheader_shown(at)
    assert any("Checking labels needs at least 2 classes with at least 2 labeled images each" in info.value
               for info in at.info)
    assert "Check labels" not in [button.label for button in at.button]


def test_without_a_run_the_panel_asks_for_training_first():
    at = data_page(project_with({name: 3 for name in CLASSES}))
    assert any("Train a model first: the check refits" in caption.value for caption in at.caption)


def test_check_runs_on_the_tiny_backbone_and_reports_counts():
    name = project_with({name: 3 for name in CLASSES})
    train(name, "test_efficientnet", "random")
    at = data_page(name)
    at.button(key="check-labels").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("labels look wrong to linear" in caption.value for caption in at.caption)


@pytest.mark.slow
def test_a_planted_wrong_label_is_found_relabeled_and_undone():
    name = project_with({name: 5 for name in CLASSES}, flipped=True)
    train(name, DEFAULT_BACKBONE, "auto")
    project = open_project(name)
    [wrong] = [image for image in project.images(labeled=True) if image.source_name.startswith("one-")
               and image.label == "seven"]
    at = data_page(name)
    at.button(key="check-labels").click().run()
    assert not at.exception, [e.value for e in at.exception]
    relabel = [button for button in at.button if button.key and button.key.startswith("relabel-")]
    assert relabel and relabel[0].key == f"relabel-{wrong.id}" and relabel[0].label == "Relabel as one"
    relabel[0].click().run()
    assert not at.exception
    assert project.get_image(wrong.id).label == "one"
    assert project.label_history(1)[0].actor == "label check"
    assert f"relabel-{wrong.id}" not in [button.key for button in at.button]  # done: out of the queue
    at.button(key="label-check-undo").click().run()
    assert project.get_image(wrong.id).label == "seven"
    assert f"relabel-{wrong.id}" in [button.key for button in at.button]  # back in the queue
    at.button(key=f"keep-{wrong.id}").click().run()
    assert f"relabel-{wrong.id}" not in [button.key for button in at.button]  # kept: out of the queue
    assert project.get_image(wrong.id).label == "seven"
