"""The studio in a real browser: create a project, upload two classes, train, compare, download a model.

Runs `streamlit run app.py` on a free local port with a temporary FSL_APP_HOME and the tiny test backbone, and drives
Debian's chromium through Playwright (``playwright install`` needs the internet, so the system browser is used).
Screenshots of every page go to ``test-artifacts/``; with FSL_APP_UPDATE_DOCS=1 they are also copied to ``docs/``.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from fsl_app import sample_data

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
DOCS = ROOT / "docs"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
STARTUP_TIMEOUT_S = 90
TRAIN_TIMEOUT_MS = 120_000
UI_TIMEOUT_MS = 60_000
VIEWPORT = {"width": 1440, "height": 1000}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"streamlit did not answer within {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The studio on a free port, with its own project store, stopped (this process only) afterwards."""
    if not CHROMIUM.is_file():
        pytest.skip("the browser test needs Debian's chromium at /usr/bin/chromium (apt-get install chromium); "
                    "scripts/test.sh installs it when run as root")
    pytest.importorskip("playwright.sync_api", reason="the browser test needs the playwright Python package")
    folder = tmp_path_factory.mktemp("e2e")
    port = free_port()
    env = {**os.environ, "FSL_APP_HOME": str(folder / "home"), "FSL_APP_TEST_BACKBONES": "1",
           "HF_HUB_OFFLINE": "1", "FSL_APP_CACHE": os.environ.get("FSL_APP_CACHE", str(folder / "cache"))}
    log = folder / "streamlit.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless=true",
             "--server.address=127.0.0.1", "--browser.gatherUsageStats=false", f"--server.port={port}",
             "--server.fileWatcherType=none"],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="module")
def browser_page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        yield page
        context.close()
        browser.close()


@pytest.fixture(autouse=True)
def failure_evidence(request, server):
    """On a failure, keep what the browser showed and the server log in test-artifacts/ (for flaky runs in CI)."""
    yield
    report = getattr(request.node, "rep_call", None)
    page = request.node.funcargs.get("browser_page")
    if report is None or not report.failed or page is None:
        return
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
        (ARTIFACTS / "failure-page.txt").write_text(page.locator("body").inner_text(timeout=5000), encoding="utf-8")
    except Exception as error:  # noqa: BLE001 - evidence is best effort; the test has failed already
        print(f"no failure screenshot: {error}")


def screenshot(page, name: str) -> None:
    """The whole page (the viewport grows to the app's height) in test-artifacts/, and docs/ on request."""
    height = page.evaluate("() => { const main = document.querySelector('[data-testid=\"stMain\"]');"
                           " return main ? main.scrollHeight : document.body.scrollHeight; }")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], min(height, 4000))})
    page.wait_for_timeout(1000)  # charts re-layout to the new size
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"screenshot-{name}.png"
    page.screenshot(path=str(path))
    page.set_viewport_size(VIEWPORT)
    if os.environ.get("FSL_APP_UPDATE_DOCS"):
        DOCS.mkdir(exist_ok=True)
        shutil.copy(path, DOCS / path.name)


def wait_idle(page) -> None:
    """Wait until the script run triggered by the last action has finished."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=UI_TIMEOUT_MS)


def open_page(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()
    wait_idle(page)


def sample_files(folder: Path, label: str, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for image in [image for image in sample_data.sample_images(count, 0) if image.label == label][:count]:
        path = folder / image.name
        path.write_bytes(image.data)
        paths.append(str(path))
    return paths


def add_class(page, name: str) -> None:
    page.locator(".st-key-new-class input").fill(name)
    page.get_by_role("button", name="Add class").click()
    # the same rerun empties the name box: typing the next name before it arrives would lose that name
    page.get_by_text(f"Class '{name}' added").wait_for()
    wait_idle(page)


def upload(page, label: str, files: list[str]) -> None:
    wait_idle(page)
    uploader = page.locator(f'[class*="st-key-upload-"][class*="-class-{label}"]')  # key: upload-<round>-class-<label>
    inputs = uploader.locator('input[type="file"]')
    for _ in range(50):  # a rerun can briefly show the previous round's (stale) uploader beside the new one
        if inputs.count() == 1:
            break
        page.wait_for_timeout(200)
    inputs.last.set_input_files(files)
    page.get_by_text(f"{len(files)} image(s) added to {label}").wait_for()
    wait_idle(page)


def test_create_upload_train_compare_and_download(browser_page, server, tmp_path):
    page = browser_page
    page.goto(server)
    page.get_by_text("Few-shot image classification studio").first.wait_for()
    screenshot(page, "home")

    project = "Digits in the browser"
    page.locator(".st-key-home-new-project input").fill(project)
    page.locator(".st-key-home-new-project input").press("Enter")
    wait_idle(page)
    page.locator(".st-key-home-new-project-button button").click()
    page.get_by_text(f"Project: {project}").wait_for()

    open_page(page, "Data")
    add_class(page, "zero")
    add_class(page, "one")
    upload(page, "zero", sample_files(tmp_path / "zero", "zero", 5))
    upload(page, "one", sample_files(tmp_path / "one", "one", 5))
    page.get_by_text("Browse and edit").wait_for()
    screenshot(page, "data")

    open_page(page, "Augment")
    page.get_by_text("Pipeline").first.wait_for()
    screenshot(page, "augment")

    open_page(page, "Train")
    page.get_by_text("Random weights").wait_for()
    page.get_by_role("button", name="Train", exact=True).click()
    page.get_by_text("Accuracy (loo)").wait_for(timeout=TRAIN_TIMEOUT_MS)
    accuracy = page.locator('[data-testid="stMetricValue"]').first.inner_text()
    assert "%" in accuracy
    screenshot(page, "train")

    open_page(page, "Compare")
    page.get_by_text("Embedding map").wait_for()
    embedding = page.locator(".st-key-embedding-map .js-plotly-plot")
    embedding.wait_for(timeout=UI_TIMEOUT_MS)
    embedding.scroll_into_view_if_needed()
    assert page.locator(".js-plotly-plot").count() >= 3
    screenshot(page, "compare")

    open_page(page, "Export & try")
    page.get_by_text("Download the model").wait_for()
    query = sample_files(tmp_path / "query", "one", 6)[-1]
    page.locator('[data-testid="stFileUploader"]').filter(has_text="Drop an image").locator(
        'input[type="file"]').set_input_files(query)
    page.get_by_text("Prediction:").wait_for()
    wait_idle(page)
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Run folder (.zip)").click()
    download = download_info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with zipfile.ZipFile(io.BytesIO(saved.read_bytes())) as archive:
        assert any(name.endswith("/model.safetensors") for name in archive.namelist())
    screenshot(page, "export")
