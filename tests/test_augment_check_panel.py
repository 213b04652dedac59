"""AppTests of the augmentation check (Augment page, Train page warning) and of the webcam widgets (Data, Export).

Each project carries a stub run folder naming the tiny random ``test_efficientnet``, so the check uses it (the latest
run's backbone) and stays fast; the rule itself is tested with the real backbone in test_augment_check.py. AppTest
cannot take a photo: the camera tests check that the widget appears behind its toggle without breaking the page, and
the import it calls is tested in test_augment_check.py (and in a real browser in tests/e2e/test_browser_camera.py).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from fsl_app import augment, augment_check, sample_data
from fsl_app.augment_check import AugmentCheck, TransformCheck
from fsl_app.backbones import TEST_BACKBONES_ENV
from fsl_app.store import create_project, open_project

APP = Path(__file__).resolve().parents[1] / "fsl_app" / "app.py"
CHECK_BUTTON = "Check in embedding space"


@pytest.fixture(autouse=True)
def tiny_backbones(monkeypatch):
    monkeypatch.setenv(TEST_BACKBONES_ENV, "1")


def new_project(classes=("zero", "one"), per_class: int = 3) -> str:
    project = create_project(f"augcheck {uuid.uuid4().hex[:8]}")
    images = sample_data.sample_images(per_class, 0, classes=classes)
    for label in classes:
        project.import_files([(image.name, image.data) for image in images if image.label == label], label)
    run = project.path / "runs" / "stub"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"created_at": "2026-01-01T00:00:00", "strategy": "linear",
                                                 "backbone": {"name": "test_efficientnet", "weights": "random"}}))
    (run / "metrics.json").write_text("{}")
    return project.name


def open_page(page: str, name: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=90)
    at.session_state["project"] = name
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> list[str]:
    return [element.value for element in elements]


def test_the_check_shows_a_row_per_transform_and_remembers_the_outcome():
    name = new_project()
    augment.save_project_augment(open_project(name).path, "strong", augment.AugmentSettings())
    at = open_page("views/augment.py", name)
    at.selectbox(key="aug-choice").select("strong").run()
    assert "Check in embedding space" in texts(at.subheader) and not at.dataframe  # nothing runs before the click
    next(button for button in at.button if button.label == CHECK_BUTTON).click().run()
    assert not at.exception, [e.value for e in at.exception]
    [table] = at.dataframe
    names = list(table.value["transform"])
    assert names == ["HorizontalFlip", "VerticalFlip", "Affine", "ColorJitter", "GaussianBlur", "GaussNoise",
                     "CoarseDropout", augment_check.WHOLE_PIPELINE]
    assert set(table.value.columns) >= {"shift", "toward another class", "class flips", "verdict"}
    caption = " ".join(texts(at.caption))
    assert "6 labeled images of 2 classes" in caption and "test_efficientnet features (the latest run)" in caption
    assert at.success or at.warning  # a verdict either way
    saved = json.loads((open_project(name).path / augment_check.CHECK_FILE).read_text())
    assert saved["pipeline"] == augment_check.pipeline_digest(augment.pipeline_dict("strong"))
    at.run()  # any other interaction: the table stays (cached)
    assert len(at.dataframe) == 1


@pytest.mark.parametrize("classes, per_class", [(("zero",), 3), (("zero", "one"), 1)])
def test_too_few_images_get_a_needs_at_least_message_instead_of_a_button(classes, per_class):
    at = open_page("views/augment.py", new_project(classes, per_class))
    assert any(text.startswith("Checking augmentations needs at least 2 classes with at least 2 labeled images")
               for text in texts(at.info))
    assert CHECK_BUTTON not in [button.label for button in at.button]


def test_the_train_page_repeats_the_warning_of_a_checked_harmful_pipeline():
    name = new_project()
    path = open_project(name).path
    pipeline = augment.save_project_augment(path, "medium", augment.AugmentSettings())
    assert not [w for w in texts(open_page("views/train.py", name).warning) if w.startswith("Augmentation")]
    flagged = TransformCheck("HorizontalFlip", 0.5, 6, 1.2, 0.8, 0.6, 0.5, 0.1, 0.5, True, "harmful")
    augment_check.save_check(path, pipeline, AugmentCheck(message="", rows=[flagged]))
    [warning] = [w for w in texts(open_page("views/train.py", name).warning) if w.startswith("Augmentation")]
    assert "HorizontalFlip (50% of copies change class)" in warning


@pytest.mark.parametrize("page, key", [("views/data.py", "camera-data-on"), ("views/export.py", "camera-try-on")])
def test_the_webcam_appears_behind_its_toggle_and_the_page_keeps_working(page, key):
    name = new_project()
    if page == "views/export.py":
        _finish_stub_run(name)
    at = open_page(page, name)
    assert not at.get("camera_input")  # no camera request before the user asks for it
    at.toggle(key=key).set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.get("camera_input")) == 1


def _finish_stub_run(name: str) -> None:
    """Give the stub run what the Export page lists (classes, a metric), without training."""
    run = open_project(name).path / "runs" / "stub"
    config = json.loads((run / "config.json").read_text())
    config["classes"] = ["zero", "one"]
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").write_text(json.dumps({"accuracy": 1.0, "protocol": "loo", "n_images": 6}))
