"""Finding wrong labels (fsl_app.label_check): the confident-learning ranking on planted probabilities, planted flips
on real digits with the offline default backbone, projects too small to check, and ``project check-labels``."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from fsl_app import label_check, sample_data
from fsl_app.dataset import DataError, ImageRecord, ImageSet
from fsl_app.images import sha256_file
from fsl_app.cli.check_labels import add_check_labels_action
from fsl_app.store import create_project

TINY = "test_efficientnet"


# --- the ranking on planted probabilities ---------------------------------------------------------------------------

def planted_probabilities() -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The model is unsure about class 0 everywhere (its images get 0.40), fairly sure about class 1 (0.60) and sure
    about class 2 (0.90). Two labels are wrong: image 6 (labeled 1, clearly a 2) and image 9 (labeled 2, more a 1
    than a 2, yet with more given-label probability than the class-0 images)."""
    hard, medium, easy = [0.40, 0.30, 0.30], [0.10, 0.60, 0.30], [0.05, 0.05, 0.90]
    rows = [hard] * 4 + [medium] * 2 + [[0.05, 0.05, 0.90]] + [easy] * 2 + [[0.0, 0.55, 0.45]]
    given = [0] * 4 + [1] * 3 + [2] * 3
    return np.array(rows), np.array(given), [6, 9]


def test_planted_errors_come_first_and_a_hard_class_is_not_flagged():
    probabilities, given, wrong = planted_probabilities()
    ranking = label_check.rank_label_issues(probabilities, given)
    assert sorted(ranking.order[:2].tolist()) == wrong
    assert ranking.flagged.tolist() == [i in wrong for i in range(len(given))]
    assert ranking.suggested[6] == 2 and ranking.suggested[9] == 1
    assert np.allclose(ranking.thresholds, [0.40, (0.6 + 0.6 + 0.05) / 3, (0.9 + 0.9 + 0.45) / 3])
    assert ranking.suspicion[6] == pytest.approx(1 - 0.05 / ((0.6 + 0.6 + 0.05) / 3))
    assert ranking.suspicion[:4] == pytest.approx([0, 0, 0, 0])  # as confident as their class usually is
    # plain lowest-given-probability ranking puts the hard class's correct images before the wrong label 9
    by_self_confidence = np.argsort(probabilities[np.arange(len(given)), given], kind="stable")
    assert 9 not in by_self_confidence[:2].tolist()


def test_rank_label_issues_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="c >= 2"):
        label_check.rank_label_issues(np.ones((3, 1)), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="len\\(given\\) = 2"):
        label_check.rank_label_issues(np.full((3, 2), 0.5), np.zeros(2, dtype=int))


@pytest.mark.parametrize("counts, found", [
    ({}, "found 0 classes"), ({"cat": 9}, "found 1 class with labeled images, 1 of them"),
    ({"cat": 1, "dog": 1, "owl": 1}, "found 3 classes with labeled images, 0 of them"),
    ({"cat": 5, "dog": 1, "owl": 0}, "found 2 classes with labeled images, 1 of them")])
def test_too_little_to_check_says_what_is_needed(counts, found):
    message = label_check.check_problem(counts)
    assert message.startswith("Checking labels needs at least 2 classes with at least 2 labeled images each")
    assert found in message and "Label more images" in message


def test_check_problem_accepts_two_classes_of_two():
    assert label_check.check_problem({"cat": 2, "dog": 2, "owl": 1}) is None


# --- check_labels on real images ------------------------------------------------------------------------------------

def write_sample(folder: Path, per_class: int, classes: tuple[str, ...]) -> list[ImageRecord]:
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for image in sample_data.sample_images(per_class, 0, classes=classes):
        path = folder / image.name
        path.write_bytes(image.data)
        records.append(ImageRecord(path, sha256_file(path), image.label))
    return records


def flip(records: list[ImageRecord], positions: dict[int, str]) -> ImageSet:
    return ImageSet(ImageRecord(r.path, r.sha256, positions.get(i, r.label)) for i, r in enumerate(records))


@pytest.fixture(scope="module")
def default_backbone():
    from fsl_app.backbones import DEFAULT_BACKBONE, load_backbone

    return load_backbone(DEFAULT_BACKBONE)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["linear", "protonet"])
def test_planted_flips_on_real_digits_rank_first(tmp_path, default_backbone, strategy):
    records = write_sample(tmp_path, 8, ("zero", "one", "seven"))  # 24 images, ids 0-7 zero, 8-15 one, 16-23 seven
    planted = {3: "seven", 12: "zero"}
    check = label_check.check_labels(flip(records, planted), strategy=strategy, backbone=default_backbone)
    assert check.protocol == "loo" and len(check.issues) == 24 and check.unchecked == []
    top = check.issues[:2]
    assert {issue.file_name for issue in top} == {records[i].path.name for i in planted}
    assert check.issues[0].flagged and all(issue.suggested_probability > issue.given_probability for issue in top)
    assert {(issue.label, issue.suggested_label) for issue in top} == {("seven", "zero"), ("zero", "one")}
    assert len(check.review_queue) <= 4


def test_check_labels_on_a_project_names_files_and_ids(tiny_backbone):
    project = create_project(f"check {uuid.uuid4().hex[:8]}")
    images = sample_data.sample_images(3, 1, classes=("zero", "one", "seven"))
    for label in ("zero", "one", "seven", None):
        project.import_files([(i.name, i.data) for i in images if i.label == label], label)
    project.import_files([(images[-1].name, images[-1].data)], None)  # a duplicate: skipped
    project.add_class("eight")
    only = project.images(labeled=False)[0]
    project.set_labels([only.id], "eight")  # a class of one: its image cannot be held out
    check = label_check.check_labels(project, strategy="protonet", backbone=tiny_backbone)
    stored = {image.id: image for image in project.images(labeled=True)}
    assert len(check.issues) == 9 and check.unchecked == [only.source_name]
    assert check.classes == ["eight", "one", "seven", "zero"] and check.strategy == "protonet"
    for issue in check.issues:
        image = stored[issue.image_id]
        assert (issue.file_name, issue.sha256, issue.label) == (image.source_name, image.sha256, image.label)
        assert issue.suggested_label != issue.label and 0.0 <= issue.score <= 1.0
    scores = [issue.score for issue in check.issues]
    assert scores == sorted(scores, reverse=True)
    assert set(map(id, check.flagged)) <= set(map(id, check.review_queue))


def test_check_labels_refuses_one_class_and_holdout(tiny_backbone, tmp_path):
    records = write_sample(tmp_path, 3, ("zero", "one"))
    with pytest.raises(DataError, match="needs at least 2 classes"):
        label_check.check_labels(ImageSet(records[:3]), backbone=tiny_backbone)
    with pytest.raises(DataError, match="needs at least 2 classes with at least 2 labeled images"):
        label_check.check_labels(ImageSet([records[0], records[3]]), backbone=tiny_backbone)
    with pytest.raises(ValueError, match="every image held out once"):
        label_check.check_labels(ImageSet(records), backbone=tiny_backbone, protocol="holdout")


# --- fsl-app project check-labels -----------------------------------------------------------------------------------

def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fsl-app")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", default=None)
    project = parser.add_subparsers(dest="command").add_parser("project")
    add_check_labels_action(project.add_subparsers(dest="project_command"), common)
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture(scope="module")
def flipped_project() -> str:
    """The name of a project of zero/one/seven x 4 where one 'one' is labeled seven."""
    project = create_project(f"cli check {uuid.uuid4().hex[:8]}")
    images = sample_data.sample_images(4, 0, classes=("zero", "one", "seven"))
    flipped = images[5]
    for label in ("zero", "one", "seven"):
        project.import_files([(i.name, i.data) for i in images if i.label == label and i is not flipped], label)
    project.import_files([(flipped.name, flipped.data)], "seven")
    return project.name


def test_cli_prints_a_json_list_most_suspicious_first(flipped_project, capsys):
    name = flipped_project
    code = run_cli(["project", "check-labels", name, "--strategy", "linear", "--backbone", TINY, "--weights",
                    "random", "--all", "--top", "5", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and len(rows) == 5
    assert set(rows[0]) >= {"image_id", "file_name", "sha256", "label", "suggested_label", "score"}
    assert [row["score"] for row in rows] == sorted((row["score"] for row in rows), reverse=True)


def test_cli_checks_with_a_runs_strategy(flipped_project, capsys):
    from fsl_app import jobs, training_job
    from fsl_app.store import open_project

    name = flipped_project
    project = open_project(name)
    queue = jobs.JobQueue()
    request = training_job.TrainRequest(str(project.path), TINY, "random", "protonet",
                                        training_job.default_params("protonet", seed=0, project_augment=None))
    view = queue.wait(training_job.submit_training(queue, request, owner=name), timeout=120)
    queue.shutdown()
    assert view.status == jobs.DONE, view.error
    assert run_cli(["project", "check-labels", name, "--run", view.result["run_dir"]]) == 0
    out = capsys.readouterr().out
    assert "more are worth a look (protonet, loo on test_efficientnet" in out
    assert out.splitlines()[1].split()[:5] == ["image", "file", "label", "suggested", "score"]


def test_cli_user_errors_exit_1_with_one_line(flipped_project, capsys, tmp_path):
    name = flipped_project
    assert run_cli(["project", "check-labels", f"missing {uuid.uuid4().hex[:6]}"]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    assert run_cli(["project", "check-labels", name, "--run", str(tmp_path)]) == 1
    assert "not a run folder" in capsys.readouterr().err
    assert run_cli(["project", "check-labels", name, "--strategy", "nope", "--backbone", TINY]) == 1
    assert "unknown strategy 'nope'" in capsys.readouterr().err
    lonely = create_project(f"lonely {uuid.uuid4().hex[:6]}")
    image = sample_data.sample_images(1, 0, classes=("zero",))[0]
    lonely.import_files([(image.name, image.data)], "zero")
    assert run_cli(["project", "check-labels", lonely.name, "--backbone", TINY, "--weights", "random"]) == 1
    err = capsys.readouterr().err
    assert "needs at least 2 classes" in err and "Traceback" not in err


def test_adding_the_action_does_not_import_torch():
    code = ("import argparse, sys; from fsl_app.cli.check_labels import add_check_labels_action; "
            "add_check_labels_action(argparse.ArgumentParser().add_subparsers(), argparse.ArgumentParser("
            "add_help=False)); print(sorted(m for m in ('torch', 'timm', 'sklearn') if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"
