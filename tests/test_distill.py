"""Distillation: a finished run teaches a student run (tiny random timm models, real digit images)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import make_digits_folder
from fsl_app.backbones import at_input_size, load_backbone
from fsl_app.dataset import ImageSet
from fsl_app.distill import (DistillationError, DistilledStudent, distill_run, load_teacher, student_warnings,
                             teacher_log_probabilities)
from fsl_app.distill_job import preview
from fsl_app.runs import list_runs, load_run, read_run, train_run
from fsl_app.strategies import create_strategy, interrupt_check

TEACHER_BACKBONE = "test_resnet"  # 0.37 M parameters; the student test_efficientnet has 0.10 M


def add_pool(root, count: int = 12, offset: int = 40):
    """Loose digit images at the top of the folder: the unlabeled pool."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index in range(offset, offset + count):
        if digits.target[index] in (0, 1, 2):
            pixels = (digits.images[index] / 16 * 255).astype(np.uint8)
            Image.fromarray(pixels).resize((64, 64)).convert("RGB").save(root / f"pool_{index:04d}.png")
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return add_pool(make_digits_folder(tmp_path_factory.mktemp("distill_digits"), per_class=8))


@pytest.fixture(scope="module")
def teacher_dir(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher_runs") / "teacher"
    train_run(ImageSet.from_folder(data_dir), create_strategy("linear"), load_backbone(TEACHER_BACKBONE, "random"),
              out, protocol="holdout")
    return out


@pytest.mark.slow
def test_the_student_learns_the_teachers_answers_not_the_labels(data_dir, tmp_path):
    """A teacher trained on rotated labels (digit 0 called digit_1, ...) and alpha=1: the student's head starts as a
    probe of the true labels and ends answering like the teacher, on the images it was taught and on the pool."""
    rotated = tmp_path / "rotated"
    names = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
    for source, target in zip(names, names[1:] + names[:1]):
        shutil.copytree(data_dir / source, rotated / target)
    images = ImageSet.from_folder(data_dir)
    labeled, pool = images.labeled(), images.unlabeled()
    teacher_run = train_run(ImageSet.from_folder(rotated), create_strategy("linear"),
                            load_backbone(TEACHER_BACKBONE, "random"), tmp_path / "teacher", protocol="holdout")
    teacher = load_teacher(teacher_run.run_dir)
    # the rule "refit the teacher unless it was fitted on exactly these labeled images" would refit it on the true
    # labels here: declare it fitted on them, so the rotated teacher itself teaches
    teacher.trained_on = frozenset((r.sha256, r.label) for r in labeled.records)
    student = DistilledStudent(teacher=teacher, alpha=1.0, temperature=2.0, mode="head", lr=0.03, epochs=6,
                               batch_size=64, augment="none", warmup_epochs=0)
    # a pretrained student (random tiny models give near-constant features a head cannot be taught on)
    backbone = at_input_size(load_backbone("tf_efficientnet_lite0", "package"), (3, 48, 48))
    student.fit(labeled, backbone=backbone, unlabeled=pool)
    for images_seen in (labeled, pool):
        by_teacher, by_student = teacher.strategy.predict(images_seen), student.predict(images_seen)
        assert np.mean([a == b for a, b in zip(by_student, by_teacher)]) >= 0.6, (by_student, by_teacher)
    assert np.mean([a == b for a, b in zip(student.predict(labeled), labeled.labels)]) <= 0.4
    assert student.pool_used_ == len(pool)


def test_a_split_fit_refits_the_teacher_on_its_training_images(teacher_dir, data_dir):
    """Evaluation splits never learn from the finished teacher, which saw their held-out labels."""
    teacher = load_teacher(teacher_dir)
    labeled = ImageSet.from_folder(data_dir).labeled()
    assert teacher.fitted_for(labeled, None) is teacher.strategy
    split = teacher.fitted_for(labeled.subset(list(range(0, len(labeled), 2))), None)
    assert split is not teacher.strategy and split.classes_ == teacher.classes


def test_teacher_log_probabilities_follow_the_students_class_order(teacher_dir, data_dir):
    teacher = load_teacher(teacher_dir)
    images = ImageSet.from_folder(data_dir).labeled().subset([0, 1])
    order = teacher.classes[::-1]
    reversed_log_proba = teacher_log_probabilities(teacher.strategy, images, order)
    straight = teacher_log_probabilities(teacher.strategy, images, teacher.classes)
    assert reversed_log_proba.shape == (2, 3)
    assert np.allclose(reversed_log_proba.numpy(), straight.numpy()[:, ::-1], atol=1e-5)
    assert np.allclose(reversed_log_proba.exp().sum(1).numpy(), 1.0, atol=1e-5)


def test_cli_writes_an_ordinary_run_at_the_smaller_input_size(teacher_dir, data_dir, tmp_path, capsys):
    from fsl_app.cli import main

    out = tmp_path / "runs" / "student"
    code = main(["distill", str(teacher_dir), str(data_dir), "--student-backbone", "test_efficientnet",
                 "--weights", "random", "--input-size", "64", "--epochs", "1", "--out", str(out), "--json"])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["run_dir"] == str(out) and metrics["pool_size"] > 0 and metrics["warnings"] == []
    run = read_run(out)
    assert run["config"]["strategy"] == "finetune"  # refits (label check) train the student directly
    assert run["config"]["distillation"]["teacher_run"] == teacher_dir.name
    assert run["config"]["protocol"] == read_run(teacher_dir)["config"]["protocol"]  # compared image by image
    assert run["config"]["backbone"]["data_config"]["input_size"] == [3, 64, 64]
    assert len(run["predictions"]) == run["metrics"]["n_test"] > 0
    strategy, backbone = load_run(out)
    assert backbone.input_size == (3, 64, 64)
    assert strategy.predict_proba(ImageSet.from_folder(data_dir).labeled()).shape == (24, 3)
    assert [r["name"] for r in list_runs(out.parent)] == ["student"]


def test_a_teacher_with_other_classes_is_refused_naming_them(teacher_dir, tmp_path):
    other = make_digits_folder(tmp_path / "other", classes=(0, 1, 3), per_class=3)
    with pytest.raises(DistillationError, match=r"'digit_3'.*never learned.*'digit_2'.*lacks"):
        distill_run(teacher_dir, ImageSet.from_folder(other), tmp_path / "s", student_backbone="test_efficientnet",
                    weights="random")
    assert not (tmp_path / "s").exists()
    assert "digit_3" in preview(teacher_dir, ["digit_0", "digit_1", "digit_3"], "test_efficientnet").error


def test_a_teacher_that_no_longer_loads_gives_a_clear_error(teacher_dir, data_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(teacher_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(DistillationError, match="teacher run broken no longer loads.*Retrain it"):
        distill_run(broken, ImageSet.from_folder(data_dir), tmp_path / "s", student_backbone="test_efficientnet",
                    weights="random")


def test_a_student_larger_than_its_teacher_warns(teacher_dir):
    teacher = load_teacher(teacher_dir)
    bigger = load_backbone("test_vit", "random")  # 0.31 M parameters < test_resnet's 0.37 M: no size warning
    assert student_warnings(teacher, bigger) == []
    larger_input = student_warnings(teacher, at_input_size(bigger, (3, 192, 192)))
    assert len(larger_input) == 1 and "larger than the teacher's 160x160" in larger_input[0]
    small_teacher = preview(teacher_dir, teacher.classes, "test_efficientnet")
    assert small_teacher.error is None and small_teacher.warnings == []
    # the other way round: test_resnet (0.37 M) as the student of a test_efficientnet-sized teacher
    teacher.backbone = load_backbone("test_efficientnet", "random")
    warnings = student_warnings(teacher, load_backbone(TEACHER_BACKBONE, "random"))
    assert len(warnings) == 1 and "more parameters" in warnings[0]


def test_cancel_leaves_no_run(teacher_dir, data_dir, tmp_path):
    calls = []

    def cancel_after_three_batches():
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt("cancelled")

    out = tmp_path / "runs" / "student"
    with pytest.raises(KeyboardInterrupt), interrupt_check(cancel_after_three_batches):
        distill_run(teacher_dir, ImageSet.from_folder(data_dir), out, student_backbone="test_efficientnet",
                    weights="random", input_size=64, epochs=3)
    assert len(calls) > 3
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_a_backbone_at_another_input_size_has_its_own_id(tiny_backbone):
    """The id keys the process-wide extractors and the fixed-size ONNX export: 64 px must not reuse the 160 px one."""
    small = at_input_size(tiny_backbone, (3, 64, 64))
    assert small.id == f"{tiny_backbone.id}-64x64" and small.input_size == (3, 64, 64)
    assert at_input_size(small, (3, 160, 160)).id == tiny_backbone.id
    with pytest.raises(ValueError, match="Pass e.g. 160"):
        at_input_size(tiny_backbone, (3, 8, 8))
