"""The Data page's domain-shift panel (AppTest): the check runs on a click, shows the verdict and the furthest pool
images, stays shown while the project is unchanged, and says what to add when it cannot run.

Each project carries a stub run folder naming the tiny random ``test_efficientnet``, so the check uses it (the
latest run's backbone) instead of the real default backbone.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from fsl_app.backbones import TEST_BACKBONES_ENV
from fsl_app.store import create_project, open_project

try:
    from tests.test_shift_check import digit_files
except ModuleNotFoundError:
    from test_shift_check import digit_files

APP = Path(__file__).resolve().parents[1] / "fsl_app" / "app.py"
CHECK_BUTTON = "Check the pool against the labeled images"


@pytest.fixture(autouse=True)
def tiny_backbones(monkeypatch):
    monkeypatch.setenv(TEST_BACKBONES_ENV, "1")


def new_project(pool: list[tuple[str, bytes]], labeled=range(0, 30)) -> str:
    project = create_project(f"shift {uuid.uuid4().hex[:8]}")
    if labeled:
        project.import_files(digit_files(labeled), "digits")
    if pool:
        project.import_files(pool)
    run = project.path / "runs" / "stub"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"created_at": "2026-01-01T00:00:00", "strategy": "linear",
                                                 "backbone": {"name": "test_efficientnet", "weights": "random"}}))
    (run / "metrics.json").write_text("{}")
    return project.name


def open_data_page(name: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=90)
    at.session_state["project"] = name
    at.run()
    at.switch_page("views/data.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def check_button(at: AppTest):
    return next(button for button in at.button if button.label == CHECK_BUTTON)


def shift_texts(elements) -> list[str]:
    return [element.value for element in elements if "labeled images" in element.value]


def test_an_inverted_pool_is_flagged_with_thumbnails_of_its_furthest_images():
    name = new_project(digit_files(range(100, 130), inverted=True, prefix="inverted"))
    at = open_data_page(name)
    assert "Domain shift" in [subheader.value for subheader in at.subheader]
    assert not shift_texts(at.warning) and not shift_texts(at.success)  # nothing runs before the click
    images_before = len(at.image)
    check_button(at).click().run()
    assert not at.exception, [e.value for e in at.exception]
    [warning] = shift_texts(at.warning)
    assert warning.startswith("The pool differs from the labeled images: shift detected (p=")
    assert "test_efficientnet features (the latest run)" in " ".join(caption.value for caption in at.caption)
    furthest = [caption.value for caption in at.caption if caption.value.startswith("inverted_")]
    assert len(furthest) == 12 and len(at.image) == images_before + 12
    at.run()  # any other interaction: the result stays, from the cache
    assert shift_texts(at.warning) == [warning]

    open_project(name).import_files(digit_files([131], inverted=True, prefix="late"))
    at.run()  # the project changed: the old verdict is gone until the next click
    assert not shift_texts(at.warning) and CHECK_BUTTON in [button.label for button in at.button]


def test_a_same_domain_pool_gets_a_success():
    at = open_data_page(new_project(digit_files(range(100, 130), prefix="pool")))
    check_button(at).click().run()
    assert not at.exception, [e.value for e in at.exception]
    [success] = shift_texts(at.success)
    assert success.startswith("The pool looks like the labeled images: no measurable shift")


def test_too_small_a_pool_says_what_to_add_and_offers_no_check():
    at = open_data_page(new_project(digit_files([100]), labeled=range(0, 5)))
    assert any("needs at least 2 images in the unlabeled pool (there are 1)" in info.value for info in at.info)
    assert CHECK_BUTTON not in [button.label for button in at.button]
