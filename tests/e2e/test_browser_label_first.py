"""The Data page's review panels in a real browser: the label-review queue finds a planted wrong label and relabels it
in one click, then "What to label first" picks unlabeled images and one of them is labeled in place.

The project (three sample digit classes, five labeled images each with one "one" labeled "seven", two unlabeled
images per class) and a linear run on the offline default backbone are made before the studio starts, so the test
spends its time on the two panels. Every change is checked in the project store the server writes to.
"""

from __future__ import annotations

import os

import pytest
from browser_setup import chromium, running_studio  # noqa: F401  (chromium: the fixture)
from test_browser import CHROMIUM_ARGS, VIEWPORT, open_page, wait_idle

from fsl_app import jobs, sample_data, training_job
from fsl_app.backbones import DEFAULT_BACKBONE
from fsl_app.store import create_project, open_project

pytestmark = pytest.mark.e2e

PROJECT = "Digits to review"
CLASSES = ["zero", "one", "seven"]
UI_TIMEOUT_MS = 60_000


def make_project(home) -> int:
    """The project with its planted wrong label and a finished run; returns the wrongly labeled image's id."""
    project = create_project(PROJECT, home)
    images = sample_data.sample_images(5, 2, classes=CLASSES)
    planted = next(image for image in images if image.label == "one")
    for image in images:
        project.import_files([(image.name, image.data)], "seven" if image is planted else image.label)
    wrong = project.find_by_sha256(next(r.sha256 for r in project.images() if r.source_name == planted.name)).id
    queue = jobs.JobQueue()
    request = training_job.TrainRequest(str(project.path), DEFAULT_BACKBONE, "auto", "linear",
                                        training_job.default_params("linear", seed=0, project_augment=None))
    view = queue.wait(training_job.submit_training(queue, request, owner=PROJECT), timeout=300)
    queue.shutdown()
    assert view.status == jobs.DONE, view.error
    project.close()
    return wrong


@pytest.fixture(scope="module")
def studio(tmp_path_factory, chromium):
    """(url, home, planted image id): the studio on a free port over a store that already holds the project."""
    folder = tmp_path_factory.mktemp("e2e-first")
    home = folder / "home"
    wrong = make_project(home)
    env = {**os.environ, "FSL_APP_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "FSL_APP_CACHE": os.environ.get("FSL_APP_CACHE", str(folder / "cache"))}
    with running_studio(folder, env) as url:
        yield url, home, wrong


def test_review_a_wrong_label_then_label_what_to_label_first(studio, chromium):
    from playwright.sync_api import sync_playwright

    url, home, wrong = studio
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            page.goto(f"{url}/?project={PROJECT.replace(' ', '+')}")
            page.get_by_text(f"Project: {PROJECT}").wait_for()
            wait_idle(page)
            open_page(page, "Data")
            with open_project(PROJECT, home) as project:
                review_the_planted_label(page, project, wrong)
                label_a_pick(page, project)
        finally:
            browser.close()


def review_the_planted_label(page, project, wrong: int) -> None:
    page.get_by_role("button", name="Check labels").click()
    page.get_by_text("labels look wrong to linear").wait_for()
    wait_idle(page)
    relabel = page.locator(f".st-key-relabel-{wrong} button")
    relabel.scroll_into_view_if_needed()
    assert relabel.inner_text().strip().endswith("Relabel as one")  # after the icon's name
    relabel.click()
    page.get_by_text("seven → one").wait_for()
    wait_idle(page)
    assert project.get_image(wrong).label == "one"
    assert project.label_history(1)[0].actor == "label check"


def label_a_pick(page, project) -> None:
    pool = {image.id for image in project.images(labeled=False)}
    page.get_by_role("button", name="Suggest images to label").click()
    page.get_by_text("picks by typical (no model needed)").wait_for()
    wait_idle(page)
    assign = page.locator('[class*="st-key-first-assign-"]')
    assert assign.count() == min(5, len(pool))
    key = next(name for name in assign.first.get_attribute("class").split() if name.startswith("st-key-first-assign-"))
    image_id = int(key.rsplit("-", 1)[1])
    assert image_id in pool
    assign.first.locator("button").click()  # the class box starts at the nearest labeled image's class
    page.get_by_text("“Undo last label change” brings it back to the pool").wait_for()
    wait_idle(page)
    labeled = project.get_image(image_id)
    assert labeled.label in CLASSES and project.label_history(1)[0].actor == "label first"
    assert page.get_by_text(f"{labeled.source_name} labeled {labeled.label}.").count() == 1
    assert page.locator(f".st-key-first-assign-{image_id}").count() == 0  # labeled: off the list
