"""The webcam in a real browser: chromium's fake camera (a test pattern) and auto-accepted permission prompt.

A project with two classes and one finished run (tiny random backbone) is made in this test process's store, then
the studio is started on that store. On the Data page a photo taken with the camera lands in the chosen class (the
store and the page's class counter both go up by one); on the Export & try page a photo is classified.
"""

from __future__ import annotations

import os
import re
import uuid

import pytest
from browser_setup import chromium, running_studio  # noqa: F401  (chromium: the fixture)
from test_browser import CHROMIUM_ARGS, VIEWPORT

from fsl_app import jobs, sample_data, training_job
from fsl_app.store import create_project, open_project

pytestmark = pytest.mark.e2e

FAKE_CAMERA_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
CLASSES = ("zero", "one")
UI_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def trained_project() -> str:
    """Two classes of two images each and one finished linear run on the tiny random backbone."""
    project = create_project(f"camera {uuid.uuid4().hex[:6]}")
    images = sample_data.sample_images(2, 0, classes=CLASSES)
    for label in CLASSES:
        project.import_files([(image.name, image.data) for image in images if image.label == label], label)
    queue = jobs.JobQueue()
    request = training_job.TrainRequest(str(project.path), "test_efficientnet", "random", "linear",
                                        training_job.default_params("linear", seed=0, project_augment=None))
    view = queue.wait(training_job.submit_training(queue, request, owner=project.name), timeout=120)
    queue.shutdown()
    assert view.status == jobs.DONE, view.error
    return project.name


@pytest.fixture(scope="module")
def studio(tmp_path_factory, chromium, trained_project) -> str:
    """The studio on a free port, on this process's project store; stopped (this process only) afterwards."""
    folder = tmp_path_factory.mktemp("e2e-camera")
    env = {**os.environ, "FSL_APP_TEST_BACKBONES": "1", "HF_HUB_OFFLINE": "1"}  # FSL_APP_HOME: conftest's store
    with running_studio(folder, env) as url:
        yield url


def wait_idle(page) -> None:
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=UI_TIMEOUT_MS)
    page.wait_for_function("() => !document.querySelector('[data-stale=\"true\"]')", timeout=UI_TIMEOUT_MS)
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.first.inner_text()


def choose(page, key: str, option: str) -> None:
    """Pick ``option`` in the selectbox with ``key`` (whatever its order and default): typing filters the list."""
    box = page.locator(f".st-key-{key} input")
    if box.input_value() != option:
        box.click()
        box.fill(option)
        page.get_by_role("option", name=option, exact=True).click()
        wait_idle(page)
    assert box.input_value() == option


def take_photo(page, toggle_key: str) -> None:
    """Turn the page's webcam toggle on and press the camera widget's shutter once the fake stream plays."""
    page.locator(f".st-key-{toggle_key} label").click()
    wait_idle(page)
    camera = page.locator('[data-testid="stCameraInput"]')
    camera.locator("video").wait_for()
    page.wait_for_function("() => { const v = document.querySelector('[data-testid=\"stCameraInput\"] video');"
                           " return v && v.readyState >= 2 && v.videoWidth > 0; }", timeout=UI_TIMEOUT_MS)
    camera.get_by_role("button", name=re.compile("Take photo", re.IGNORECASE)).click()


def test_a_webcam_photo_joins_a_class_and_is_classified(studio, chromium, trained_project):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), headless=True,
                                             args=CHROMIUM_ARGS + FAKE_CAMERA_ARGS)
        context = browser.new_context(viewport=VIEWPORT)
        context.grant_permissions(["camera"], origin=studio)
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            page.goto(f"{studio}/data?project={trained_project}")
            page.get_by_text(f"Data · {trained_project}").wait_for()
            wait_idle(page)
            page.get_by_text(f"{CLASSES[1]} (2)").first.wait_for()  # the class browser's counter
            page.get_by_text("Take photos with the webcam").click()
            choose(page, "camera-target", CLASSES[1])
            wait_idle(page)
            take_photo(page, "camera-data-on")
            page.get_by_text(f"1 image(s) added to {CLASSES[1]}").wait_for()
            wait_idle(page)
            assert open_project(trained_project).class_counts() == {CLASSES[0]: 2, CLASSES[1]: 3}
            page.get_by_text(f"{CLASSES[1]} (3)").first.wait_for()
            [shot] = [image for image in open_project(trained_project).images(class_name=CLASSES[1])
                      if image.source_name.startswith("camera-")]

            page.goto(f"{studio}/export?project={trained_project}")
            page.get_by_text("Try a new image").wait_for()
            wait_idle(page)
            take_photo(page, "camera-try-on")
            prediction = page.get_by_text(re.compile(r"^Prediction: "))
            prediction.wait_for()
            assert re.fullmatch(rf"Prediction: ({'|'.join(CLASSES)}) \(\d+%\)", prediction.inner_text().strip())
            wait_idle(page)
        finally:
            context.close()
            browser.close()
    assert shot.path.is_file()
