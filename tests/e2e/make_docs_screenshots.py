"""Screenshots for the README: the sample project on the real default backbone, every page, in chromium.

    .venv/bin/python tests/e2e/make_docs_screenshots.py [--out docs]

Starts its own studio on a free port with a temporary project store, loads the sample data (which trains a linear
probe and ProtoNet), trains a short fine-tuning (captured while its curves are live), then saves
docs/screenshot-<page>.png.
Takes one to three minutes on a CPU. Not collected by pytest (the browser test is test_browser.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from browser_setup import CHROMIUM, ROOT, running_studio
from test_browser import CHROMIUM_ARGS, VIEWPORT, open_page, sample_files, wait_idle

TRAIN_TIMEOUT_MS = 600_000


def capture(page, out: Path, name: str) -> None:
    page.wait_for_timeout(1500)
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], min(height, 3200))})
    page.wait_for_timeout(1500)
    page.wait_for_function("() => [...document.images].every(image => image.complete)")
    page.screenshot(path=str(out / f"screenshot-{name}.png"))
    page.set_viewport_size(VIEWPORT)
    print(f"saved {out / f'screenshot-{name}.png'}")


def choose(page, key: str, option: str) -> None:
    page.locator(f".st-key-{key}").click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_idle(page)


def type_number(page, key: str, value: float) -> None:
    field = page.locator(f".st-key-{key} input")
    field.fill(str(value))
    field.press("Enter")
    wait_idle(page)


def train(page, strategy: str, **numbers: float) -> None:
    """Queue a run of ``strategy``; ``numbers`` set hyperparameters (fine-tuning: the head only, for speed)."""
    choose(page, "train-strategy", strategy)
    if numbers:
        page.get_by_text("Hyperparameters").click()
        if strategy == "finetune":
            choose(page, f"param-{strategy}-mode", "head")
        for name, value in numbers.items():
            type_number(page, f"param-{strategy}-{name}", value)
        page.get_by_text("Hyperparameters").click()
    page.get_by_role("button", name="Train", exact=True).click()
    wait_idle(page)


def wait_for_runs(page, count: int) -> None:
    page.wait_for_function(
        f"() => [...document.querySelectorAll('[data-testid=\"stMetricLabel\"]')]"
        f".filter(e => e.innerText.startsWith('Accuracy')).length >= {count}", timeout=TRAIN_TIMEOUT_MS)
    wait_idle(page)


def make_screenshots(server: str, out: Path, folder: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.set_default_timeout(120_000)
        page.goto(server)
        page.get_by_role("button", name="Load the sample and train").click()
        wait_for_runs(page, 2)  # the sample queues linear and protonet
        train(page, "finetune", epochs=8, lr=0.01)
        page.locator(".js-plotly-plot").first.wait_for(timeout=TRAIN_TIMEOUT_MS)
        page.wait_for_timeout(4000)
        capture(page, out, "train")
        wait_for_runs(page, 3)

        open_page(page, "Home")
        capture(page, out, "home")
        open_page(page, "Data")
        page.locator(".st-key-suggest-on label").click()
        wait_idle(page)
        capture(page, out, "data")
        open_page(page, "Augment")
        choose(page, "aug-choice", "strong")
        capture(page, out, "augment")
        open_page(page, "Compare")
        page.locator(".st-key-map-run input").click()  # the ProtoNet map shows the class prototypes
        page.keyboard.type("protonet")
        page.keyboard.press("Enter")
        wait_idle(page)
        page.locator(".st-key-embedding-map .js-plotly-plot").wait_for()
        capture(page, out, "compare")
        open_page(page, "Export & try")
        page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
            sample_files(folder / "query", "seven", 10)[-1])
        page.get_by_text("Prediction:").wait_for()
        capture(page, out, "export")
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fsl_docs_") as temp:
        folder = Path(temp)
        env = {key: value for key, value in os.environ.items() if key != "FSL_APP_TEST_BACKBONES"}
        env.update(FSL_APP_HOME=str(folder / "home"), HF_HUB_OFFLINE="1")
        with running_studio(folder, env) as url:
            make_screenshots(url, args.out, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
