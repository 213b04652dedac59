"""AppTest of the Export page's variants table and Distil panel (tiny random test_efficientnet, real digits)."""

from __future__ import annotations

import pytest

from fsl_app import jobs, run_tables, training_job
from fsl_app.backbones import TEST_BACKBONES_ENV
from fsl_app.runs import read_run
from fsl_app.store import open_project
from test_pages import new_project, open_page, run_until


@pytest.fixture(autouse=True)
def tiny_backbones(monkeypatch):
    monkeypatch.setenv(TEST_BACKBONES_ENV, "1")


@pytest.fixture(scope="module")
def project_with_run() -> str:
    """A project with unlabeled images and one finished linear run, trained without the UI."""
    import os

    os.environ[TEST_BACKBONES_ENV] = "1"
    name = new_project("distil", per_class=4, unlabeled=3)
    queue = jobs.JobQueue()
    request = training_job.TrainRequest(str(open_project(name).path), "test_efficientnet", "random", "linear",
                                        training_job.default_params("linear", seed=0, project_augment=None))
    view = queue.wait(training_job.submit_training(queue, request, owner=name), timeout=120)
    queue.shutdown()
    assert view.status == jobs.DONE, view.error
    return name


def test_variants_table_shows_size_speed_and_agreement(project_with_run):
    at = open_page("views/export.py", project_with_run)
    at.multiselect(key="variants-chosen").set_value(["onnx"]).run()
    at.button(key="variants-measure").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = at.dataframe[-1].value
    assert list(table["variant"]) == ["Run (PyTorch, the reference)", "ONNX fp32"]
    assert list(table["top-1 agreement %"]) == [100.0, 100.0]
    assert (table["images/s"] > 0).all() and table["size MB"][1] > 0


def test_distil_panel_queues_a_student_run_with_live_progress(project_with_run):
    project = open_project(project_with_run)
    teacher = run_tables.project_runs(project.path)[0]
    at = open_page("views/export.py", project_with_run)
    assert at.selectbox(key="distill-student").value == "test_efficientnet"
    at.selectbox(key="distill-size").set_value(64).run()
    at.number_input(key="distill-epochs").set_value(1).run()
    assert "teacher backbone" in " ".join(caption.value for caption in at.caption)
    at.button(key="distill-submit").click().run()
    run_until(at, lambda at: any(":material/check_circle:" in m.value and "distil" in m.value for m in at.markdown),
              timeout=180)
    runs = run_tables.project_runs(project.path)
    student = next(run for run in runs if run["name"] != teacher["name"])
    assert student["config"]["distillation"]["teacher_run"] == teacher["name"]
    assert read_run(student["run_dir"])["config"]["backbone"]["data_config"]["input_size"] == [3, 64, 64]
    assert student["metrics"]["pool_size"] == len(project.image_set().unlabeled()) > 0


def test_distil_panel_warns_about_a_student_larger_than_its_teacher(project_with_run):
    at = open_page("views/export.py", project_with_run)
    at.selectbox(key="distill-student").set_value("test_vit").run()  # 0.31 M parameters > 0.10 M
    assert any("more parameters" in warning.value for warning in at.warning)
    at.selectbox(key="distill-size").set_value(224).run()
    assert any("larger than the teacher's" in warning.value for warning in at.warning)
    assert not at.button(key="distill-submit").disabled
