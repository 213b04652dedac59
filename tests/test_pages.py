"""One Streamlit AppTest per page of the studio, plus training, cancelling and failing through the Train page.

Every test uses the tiny random ``test_efficientnet`` backbone (``FSL_APP_TEST_BACKBONES=1``) and projects in the
per-session ``FSL_APP_HOME`` set by conftest.py.
"""

from __future__ import annotations

import io
import time
import uuid
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from fsl_app import augment, jobs, run_tables, sample_data, training_job
from fsl_app.backbones import TEST_BACKBONES_ENV
from fsl_app.strategies import get_strategy_class, list_strategies
from fsl_app.store import create_project, open_project

APP = Path(__file__).resolve().parents[1] / "fsl_app" / "app.py"
LAUNCHER = Path(__file__).resolve().parents[1] / "app.py"
TIMEOUT = 60
CLASSES = ("zero", "one", "seven")  # of the sample digits: the pages' test projects


@pytest.fixture(autouse=True)
def tiny_backbones(monkeypatch):
    monkeypatch.setenv(TEST_BACKBONES_ENV, "1")


def new_project(prefix: str = "pages", *, per_class: int = 4, unlabeled: int = 1) -> str:
    project = create_project(f"{prefix} {uuid.uuid4().hex[:8]}")
    images = sample_data.sample_images(per_class, unlabeled, classes=CLASSES)
    for label in dict.fromkeys(image.label for image in images):
        project.import_files([(image.name, image.data) for image in images if image.label == label], label)
    return project.name


@pytest.fixture(scope="module")
def trained_project() -> str:
    """A project with one finished linear run (trained without the UI, to test the pages that show runs)."""
    import os

    os.environ[TEST_BACKBONES_ENV] = "1"
    name = new_project("trained")
    project = open_project(name)
    queue = jobs.JobQueue()
    request = training_job.TrainRequest(str(project.path), "test_efficientnet", "random", "linear",
                                        training_job.default_params("linear", seed=0, project_augment=None))
    view = queue.wait(training_job.submit_training(queue, request, owner=name), timeout=120)
    queue.shutdown()
    assert view.status == jobs.DONE, view.error
    return name


def open_page(page: str | None, project: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    if project is not None:
        at.session_state["project"] = project
    at.run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def run_until(at: AppTest, condition, timeout: float = 90.0) -> AppTest:
    """Rerun the app (run_every fragments do not tick under AppTest) until ``condition(at)`` holds."""
    deadline = time.monotonic() + timeout
    while not condition(at):
        assert time.monotonic() < deadline, "the page never reached the expected state"
        assert not at.exception, [e.value for e in at.exception]
        time.sleep(0.3)
        at.run()
    return at


def labels(widgets) -> list[str]:
    return [widget.label for widget in widgets]


def png(name: str = "extra") -> tuple[str, bytes, str]:
    image = sample_data.sample_images(12, 0, classes=CLASSES)[-1]
    return f"{name}.png", image.data, "image/png"


# --- Home -----------------------------------------------------------------------------------------------------------

def test_home_offers_sample_data_and_creates_a_project():
    at = open_page(None)
    assert at.title[0].value.startswith("Few-shot image classification studio")
    assert "Load the sample and train" in labels(at.button)
    name = f"created {uuid.uuid4().hex[:6]}"
    at.text_input(key="home-new-project").input(name)
    at.button(key="home-new-project-button").click().run()
    assert not at.exception
    assert at.session_state["project"] == name
    assert at.sidebar.selectbox[0].value == name
    assert any(subheader.value == f"Project: {name}" for subheader in at.subheader)


def test_the_source_checkout_launcher_runs_the_same_app():
    name = new_project("launcher", per_class=1, unlabeled=0)
    at = AppTest.from_file(str(LAUNCHER), default_timeout=TIMEOUT)
    at.session_state["project"] = name
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value.startswith("Few-shot image classification studio")
    at.switch_page("fsl_app/views/augment.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == f"Augment · {name}"


def test_page_urls_stay_the_file_names_of_the_views():
    from fsl_app.views import _nav

    assert [view.file for view in _nav.VIEWS] == ["home.py", "data.py", "augment.py", "train.py", "compare.py",
                                                  "export.py"]  # URLs /, /data, /augment ... (bookmarks, e2e)
    assert all((_nav.VIEWS_DIR / view.file).is_file() for view in _nav.VIEWS)
    assert [view.title for view in _nav.VIEWS if view.tour] == ["Data", "Augment", "Train", "Compare",
                                                                "Export & try"]


def test_sample_button_loads_the_sample_and_trains_two_strategies_to_compare():
    at = open_page(None)
    at.button(key="sample-button").click().run()
    assert at.session_state["project"] == sample_data.SAMPLE_PROJECT_NAME
    assert at.title[0].value == f"Train · {sample_data.SAMPLE_PROJECT_NAME}"
    run_until(at, lambda at: any(metric.label.startswith("Accuracy") for metric in at.metric))
    project = open_project(sample_data.SAMPLE_PROJECT_NAME)
    assert project.stats().n_labeled == 50 and len(project.classes()) == 10
    deadline = time.monotonic() + 120
    while len(run_tables.project_runs(project.path)) < 2:
        assert time.monotonic() < deadline, "the second sample run never finished"
        time.sleep(0.5)
    strategies = {run["config"]["strategy"] for run in run_tables.project_runs(project.path)}
    assert strategies == set(training_job.SAMPLE_STRATEGIES) == {"linear", "protonet"}


# --- Data -----------------------------------------------------------------------------------------------------------

def test_data_page_imports_uploads_and_edits_labels_in_bulk():
    name = new_project("data", per_class=2, unlabeled=1)
    at = open_page("views/data.py", name)
    assert at.title[0].value == f"Data · {name}"
    assert len(at.file_uploader) == 4  # one per class and the pool
    assert any("unlabeled" in warning.value for warning in at.warning)
    assert {metric.label for metric in at.metric} >= {"Images", "Labeled", "Unlabeled", "Classes"}

    zero_uploader = next(u for u in at.file_uploader if "zero" in u.label)
    zero_uploader.set_value([png("new"), ("broken.png", b"not an image", "image/png")]).run()
    assert not at.exception
    assert any("1 image(s) added to zero" in success.value for success in at.success)
    assert any("rejected: broken.png" in error.value for error in at.error)

    at.text_input(key="new-class").input("eight")
    next(button for button in at.button if button.label == "Add class").click().run()
    assert "eight" in open_project(name).classes()

    first = open_project(name).images(class_name="one")[0]
    at.checkbox(key=f"pick-{first.id}").check().run()
    at.selectbox(key="move-target").select("seven").run()
    next(b for b in at.button if b.label.startswith("Move 1 selected")).click().run()
    assert open_project(name).get_image(first.id).label == "seven"
    next(b for b in at.button if b.label == "Undo last label change").click().run()
    assert open_project(name).get_image(first.id).label == "one"


def test_data_page_accepts_a_zip_and_shows_suggestions(trained_project):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("seven/zip-one.png", png()[1])
        archive.writestr("readme.txt", b"not an image")
    at = open_page("views/data.py", trained_project)
    pool = next(u for u in at.file_uploader if "zip" in u.label)
    pool.set_value(("more.zip", buffer.getvalue(), "application/zip")).run()
    assert not at.exception
    assert any("added" in success.value for success in at.success)

    at.toggle(key="suggest-on").set_value(True).run()
    assert not at.exception
    accept = [b for b in at.button if b.label.startswith("Accept ") and b.key and b.key.startswith("accept-")]
    assert accept, "no suggestion shown for the unlabeled pool"
    before = open_project(trained_project).stats().n_unlabeled
    accept[0].click().run()
    assert open_project(trained_project).stats().n_unlabeled == before - 1


# --- Augment --------------------------------------------------------------------------------------------------------

def test_augment_page_previews_and_saves_a_custom_pipeline():
    name = new_project("augment", per_class=2, unlabeled=0)
    at = open_page("views/augment.py", name)
    assert at.selectbox(key="aug-choice").value == "light"
    assert len(at.image) == 3 * (1 + 5)  # 3 images: the original and 5 copies each
    at.selectbox(key="aug-choice").select("custom").run()
    at.slider(key="aug-rotate_degrees").set_value(90).run()
    at.slider(key="aug-blur").set_value(0.5).run()
    next(b for b in at.button if b.label == "Save with the project").click().run()
    assert not at.exception
    saved = augment.load_project_augment(open_project(name).path)
    assert saved.choice == "custom" and saved.settings.rotate_degrees == 90 and saved.settings.blur == 0.5


# --- Train ----------------------------------------------------------------------------------------------------------

def test_train_page_trains_the_tiny_backbone_and_shows_the_accuracy():
    name = new_project("train")
    at = open_page("views/train.py", name)
    assert at.selectbox(key="train-backbone").value == "test_efficientnet"
    assert at.radio(key="train-weights").value == "random"
    assert any("Random weights" in warning.value for warning in at.warning)
    assert at.selectbox(key="train-strategy").value == "linear"
    assert "classifier" in labels(at.selectbox) and "Evaluation protocol" in labels(at.selectbox)
    assert any("device" in caption.value for caption in at.caption)
    at.button(key="train-button").click().run()
    run_until(at, lambda at: any(metric.label.startswith("Accuracy") for metric in at.metric))
    accuracy = next(metric for metric in at.metric if metric.label.startswith("Accuracy"))
    assert accuracy.label == "Accuracy (loo)" and "%" in accuracy.value
    assert len(run_tables.project_runs(open_project(name).path)) == 1


def test_train_page_offers_the_unlabeled_pool_to_a_strategy_that_learns_from_it():
    name = new_project("pool", per_class=3, unlabeled=2)
    project = open_project(name)
    at = open_page("views/train.py", name)
    assert get_strategy_class("linear").summary in [caption.value for caption in at.caption]
    assert "train-use-pool" not in [box.key for box in at.checkbox]  # linear ignores the pool
    at.selectbox(key="train-strategy").select("selftrain").run()
    assert get_strategy_class("selftrain").summary in [caption.value for caption in at.caption]
    box = at.checkbox(key="train-use-pool")
    assert box.label == "Use the 6 unlabeled images" and box.value is True
    box.uncheck().run()
    at.button(key="train-button").click().run()
    run_until(at, lambda at: len(run_tables.project_runs(project.path)) == 1)
    assert run_tables.project_runs(project.path)[0]["metrics"]["pool_size"] == 0
    at.checkbox(key="train-use-pool").check().run()
    at.button(key="train-button").click().run()
    run_until(at, lambda at: len(run_tables.project_runs(project.path)) == 2)
    runs = run_tables.project_runs(project.path)
    assert sorted(run["metrics"]["pool_size"] for run in runs) == [0, 6]
    assert {run["config"]["strategy"] for run in runs} == {"selftrain"}
    compare = open_page("views/compare.py", name)  # with- and without-pool runs side by side, and the shift check
    assert "Domain shift" in [subheader.value for subheader in compare.subheader]
    assert not compare.exception


def test_train_page_cancels_a_running_fine_tuning():
    name = new_project("cancel", per_class=3, unlabeled=0)
    at = open_page("views/train.py", name)
    at.selectbox(key="train-strategy").select("finetune").run()
    at.number_input(key="param-finetune-epochs").set_value(500).run()
    at.number_input(key="param-finetune-patience").set_value(1000).run()
    at.selectbox(key="param-finetune-augment").select("none").run()
    at.button(key="train-button").click().run()
    run_until(at, lambda at: any(b.label == "Cancel" and b.key.startswith("cancel-") for b in at.button)
              and at.get("plotly_chart"))
    next(b for b in at.button if b.label == "Cancel").click().run()
    run_until(at, lambda at: any("Cancelled" in info.value for info in at.info))
    assert run_tables.project_runs(open_project(name).path) == []


def test_train_page_offers_a_base_trained_checkpoint_and_warns_about_shared_classes():
    from fsl_app.backbones import load_backbone, pretrained_folder
    from fsl_app.pretrain import save_checkpoint

    name = new_project("base", per_class=3, unlabeled=0)
    tiny = load_backbone("test_efficientnet", "random")
    provenance = {"format": "fsl_app.backbone/1", "architecture": "test_efficientnet", "method": "supervised",
                  "base_classes": [" Zero", "two"], "source_project": "digits base", "n_images": 40,
                  "created_at": "2026-11-30T08:00:00+00:00"}
    path = str(save_checkpoint(tiny.model, pretrained_folder() / f"page-{uuid.uuid4().hex[:6]}", provenance))
    at = open_page("views/train.py", name)
    at.radio(key="train-weights").set_value("base").run()
    picker = at.selectbox(key="train-weights-base")
    assert any(option.startswith(f"{Path(path).stem} · supervised on digits base (2 classes:  Zero, two)")
               for option in picker.options)
    picker.set_value(path).run()
    assert any("trained on 1 of this project's classes (zero;" in warning.value for warning in at.warning)
    at.button(key="train-button").click().run()
    run_until(at, lambda at: any(metric.label.startswith("Accuracy") for metric in at.metric))
    config = run_tables.project_runs(open_project(name).path)[0]["config"]
    assert config["leaked_classes"] == ["zero"] and config["backbone"]["weights"] == path


def test_train_page_shows_a_failed_job_in_words():
    name = new_project("fail", per_class=2, unlabeled=0)
    at = open_page("views/train.py", name)
    at.radio(key="train-weights").set_value("file").run()
    at.file_uploader(key="train-weights-file").set_value(("weights.pth", b"garbage", "application/octet-stream"))
    at.run()
    at.button(key="train-button").click().run()
    run_until(at, lambda at: len(at.error) > 0)
    assert "cannot be read safely" in at.error[0].value
    assert any(expander.label == "Details for a bug report" for expander in at.expander)


def test_a_new_session_reattaches_to_the_project_and_its_jobs(trained_project):
    name = new_project("reload", per_class=2, unlabeled=0)
    first = open_page("views/train.py", name)
    first.button(key="train-button").click().run()
    reloaded = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    reloaded.query_params["project"] = name
    reloaded.run()
    reloaded.switch_page("views/train.py").run()
    assert reloaded.title[0].value == f"Train · {name}"
    run_until(reloaded, lambda at: any(metric.label.startswith("Accuracy") for metric in at.metric))


# --- Compare --------------------------------------------------------------------------------------------------------

def test_compare_page_shows_the_table_charts_and_embedding_map(trained_project):
    at = open_page("views/compare.py", trained_project)
    assert at.title[0].value == f"Compare · {trained_project}"
    table = at.dataframe[0].value
    assert list(table["strategy"]) == ["linear"] and "accuracy %" in table.columns
    assert list(table["pool"]) == ["none"]  # linear learns nothing from the project's unlabeled images
    assert {"Confusion matrices", "Accuracy per class", "Misclassified held-out images", "Embedding map"} <= {
        subheader.value for subheader in at.subheader}
    assert len(at.get("plotly_chart")) >= 3  # confusion, per class, embedding map
    assert f"Evaluate {len(list_strategies())} strategies" in labels(at.button)
    assert any("stratified" in caption.value and "Estimated time" in caption.value for caption in at.caption)
    at.radio(key="map-method").set_value("tsne").run()
    assert not at.exception and not at.error


def test_compare_page_names_the_winner_with_its_interval_or_marks_the_ties():
    name = new_project("winner", per_class=4, unlabeled=0)
    project = open_project(name)
    queue = jobs.JobQueue()
    for strategy in ("linear", "protonet"):
        request = training_job.TrainRequest(str(project.path), "test_efficientnet", "random", strategy,
                                            training_job.default_params(strategy, seed=0, project_augment=None))
        assert queue.wait(training_job.submit_training(queue, request, owner=name), timeout=120).status == jobs.DONE
    queue.shutdown()
    at = open_page("views/compare.py", name)
    group_table = at.dataframe[1].value
    assert set(group_table["strategy"]) == {"linear", "protonet"}
    standing = list(group_table["standing"])
    assert standing[0] in ("winner", "most accurate, tied within the interval")
    assert standing[1].startswith(("behind: ", "tied with the best: "))
    texts = [element.value for element in [*at.success, *at.markdown]]
    headline = next(text for text in texts if "Winner for this project" in text or "No single winner" in text)
    assert "95 % interval" in headline
    assert ("tied within the 95 % interval" in headline) == standing[1].startswith("tied")


# --- Export & try ---------------------------------------------------------------------------------------------------

def test_export_page_predicts_an_uploaded_image_and_offers_downloads(trained_project):
    at = open_page("views/export.py", trained_project)
    assert at.title[0].value == f"Export & try · {trained_project}"
    assert any(button.label.startswith("Run folder (.zip)") for button in at.get("download_button"))
    assert {button.label for button in at.button} >= {"Prepare ONNX", "Prepare TorchScript", "Prepare Bundle"}
    next(button for button in at.button if button.label == "Prepare ONNX").click().run()
    assert not at.error, [error.value for error in at.error]
    assert any(button.label == "Download ONNX" for button in at.get("download_button"))
    at.file_uploader(key="try-image").set_value(png("query")).run()
    assert not at.exception and not at.error
    assert any(markdown.value.startswith("Prediction: **") for markdown in at.markdown)
    assert any("Nearest training images" in caption.value for caption in at.caption)


def test_train_page_offers_a_one_file_strategy_with_its_declared_parameters(trained_project, tmp_path, monkeypatch):
    """Adding a strategy is one file: the Train page's pickers list it and render its declared parameters."""
    import importlib
    import sys
    import textwrap

    from fsl_app.strategies import _registry
    from test_strategy_registration import NAME, SOURCE

    monkeypatch.setattr(_registry, "_STRATEGIES", dict(_registry._STRATEGIES))
    (tmp_path / "throwaway_page_strategy.py").write_text(textwrap.dedent(SOURCE), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        importlib.import_module("throwaway_page_strategy")
        at = open_page("views/train.py", trained_project)
        assert NAME in at.selectbox(key="train-strategy").options
        at.selectbox(key="train-strategy").set_value(NAME).run()
        shrink = at.number_input(key=f"param-{NAME}-shrink")
        assert shrink.value == 0.25 and "overall mean" in shrink.help
        assert at.selectbox(key=f"param-{NAME}-metric").options == ["euclidean"]
        assert not at.exception
    finally:
        sys.modules.pop("throwaway_page_strategy", None)
