"""What to label first (fsl_app.label_first): TypiClust picks, margin x diversity with class balance, the checks
that name what is missing, and the picks on a real project (tiny backbone) and from the command line."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from fsl_app import label_first, sample_data
from fsl_app.backbones import TEST_BACKBONES_ENV
from fsl_app.cli import main as cli_main
from fsl_app.dataset import DataError
from fsl_app.store import create_project, open_project

TINY = "test_efficientnet"


@pytest.fixture(autouse=True)
def tiny_backbones(monkeypatch):
    monkeypatch.setenv(TEST_BACKBONES_ENV, "1")  # the default backbone for features becomes the tiny test model


def blobs(sizes=(60, 30, 12), spread=0.05, seed=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (n, 8) around len(sizes) far-apart centres, their blob (n,), and the centres."""
    rng = np.random.default_rng(seed)
    centres = np.eye(8)[:len(sizes)] * 5
    points = np.concatenate([centre + spread * rng.standard_normal((size, 8)) for centre, size in zip(centres, sizes)])
    return points, np.repeat(np.arange(len(sizes)), sizes), centres


# --- the pure pickers -----------------------------------------------------------------------------------------------

def test_typical_picks_one_central_image_per_blob_largest_first():
    points, blob, centres = blobs()
    picks = label_first.typical_picks(points, np.zeros((0, 8)), 3, seed=0)
    assert blob[picks.order].tolist() == [0, 1, 2]
    assert picks.cluster_size.tolist() == [60, 30, 12] and picks.labeled_in_cluster.tolist() == [0, 0, 0]
    for index, b in zip(picks.order, blob[picks.order]):  # the most typical image sits near its blob's centre
        own = points[blob == b]
        distances = np.linalg.norm(own - own.mean(0), axis=1)
        assert np.linalg.norm(points[index] - own.mean(0)) <= np.quantile(distances, 0.25)


def test_typical_picks_skip_the_clusters_labels_already_cover():
    points, blob, _ = blobs()
    labeled = points[blob == 0][:2]  # the big blob is covered
    picks = label_first.typical_picks(points, labeled, 2, seed=0)
    assert sorted(blob[picks.order].tolist()) == [1, 2]


def test_typical_picks_cover_more_digit_classes_than_random_picks():
    """sklearn digits pixels as features: 10 typical picks find more of the 10 classes than 10 random ones."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.data[:600], digits.target[:600]
    typical = [len(set(y[label_first.typical_picks(x, np.zeros((0, 64)), 10, seed=s).order])) for s in range(3)]
    rng = np.random.default_rng(0)
    random = [len(set(y[rng.choice(len(y), 10, replace=False)])) for _ in range(200)]
    assert np.mean(typical) >= np.mean(random) + 1.0, (typical, np.mean(random))


def test_balanced_quota_tops_up_the_smallest_classes_first():
    assert label_first.balanced_quota(np.array([3, 1, 0]), 4).tolist() == [0, 2, 2]
    assert label_first.balanced_quota(np.array([1, 1]), 3).sum() == 3


def test_margin_picks_the_unsure_spread_out_and_balanced():
    pool = np.eye(4)[[0, 0, 1, 2, 3]] + 1e-3 * np.arange(5)[:, None]
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    proba = np.array([[0.5, 0.5], [0.51, 0.49], [0.6, 0.4], [0.95, 0.05], [0.3, 0.7]])
    picks = label_first.margin_diversity_picks(proba, pool, np.zeros((0, 4)), np.array([1, 1]), 2)
    assert picks.order[0] == 0  # smallest margin
    assert picks.order[1] == 4  # image 1 is as unsure but sits on image 0; image 4 is predicted class 1 (quota)
    assert picks.predicted.tolist() == [0, 1]


# --- bad input ------------------------------------------------------------------------------------------------------

def test_problems_name_what_is_missing():
    assert "needs at least 1 unlabeled image" in label_first.first_problem(0, {"a": 3, "b": 3}, "auto")
    assert "at least 2 classes with labeled images (found 1)" in label_first.first_problem(5, {"a": 4}, "margin")
    assert label_first.first_problem(5, {"a": 4}, "auto") is None  # auto falls back to typical images
    assert label_first.first_problem(5, {}, "margin", has_run=True) is None
    assert label_first.choose_method("auto", {"a": 4}) == "typical"
    assert label_first.choose_method("auto", {"a": 5, "b": 5}) == "typical"  # typical picks measured better here
    assert label_first.choose_method("auto", {"a": 10, "b": 12}) == "margin"


# --- on a project ---------------------------------------------------------------------------------------------------

def digit_project(labeled: dict[str, int], unlabeled_per_class: int = 3) -> str:
    """A project of sample digits (zero, one, seven): ``labeled[name]`` labeled images of a class, and
    ``unlabeled_per_class`` images of each class in the pool."""
    project = create_project(f"first {uuid.uuid4().hex[:8]}")
    kept: dict[str, int] = {}
    for image in sample_data.sample_images(max(labeled.values(), default=0), unlabeled_per_class,
                                           classes=["zero", "one", "seven"]):
        if image.label is not None and kept.get(image.label, 0) >= labeled.get(image.label, 0):
            continue
        if image.label is not None:
            kept[image.label] = kept.get(image.label, 0) + 1
        project.import_files([(image.name, image.data)], image.label)
    return project.name


def test_suggest_first_without_labels_gives_typical_pool_images():
    name = digit_project({}, unlabeled_per_class=4)
    with open_project(name) as project:
        pool = {image.id for image in project.images(labeled=False)}
        result = label_first.suggest_first(project, budget=4)
    assert result.method == "typical" and result.backbone == TINY and result.pool_size == 12
    assert len(result.picks) == 4 and len({p.image_id for p in result.picks}) == 4
    assert {p.image_id for p in result.picks} <= pool
    assert all("most typical of a group of" in p.reason and p.suggested_label is None for p in result.picks)


def test_suggest_first_with_labels_uses_a_probe_and_guesses_a_class():
    name = digit_project({"zero": 2, "one": 2})
    with open_project(name) as project:
        result = label_first.suggest_first(project, budget=20, method="margin")  # more than the pool: all of it
        subsampled = label_first.suggest_first(project, budget=2, max_pool=4, method="typical")
    assert result.method == "margin" and "linear probe on the 4 labeled images" in result.model
    assert len(result.picks) == 9
    assert all(p.suggested_label in {"zero", "one"} and "hesitates between" in p.reason for p in result.picks)
    assert subsampled.considered == 4 and "random 4 of the 9" in subsampled.note
    assert subsampled.picks[0].suggested_label in {"zero", "one"}  # the nearest labeled image's class


def test_suggest_first_refuses_an_empty_pool_and_a_bad_budget():
    name = digit_project({"zero": 2, "one": 2}, unlabeled_per_class=0)
    with open_project(name) as project, pytest.raises(DataError, match="needs at least 1 unlabeled image"):
        label_first.suggest_first(project)
    with open_project(name) as project, pytest.raises(DataError, match="at least 1 image"):
        label_first.suggest_first(project, budget=0)


# --- command line ---------------------------------------------------------------------------------------------------

def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli_main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_cli_suggest_first_table_json_and_clear_errors(capsys):
    name = digit_project({"zero": 1})
    code, out, _ = run_cli(capsys, "suggest", name, "--first", "--budget", "3")
    assert code == 0 and "label these 3 first (typical" in out and "most typical" in out
    code, out, _ = run_cli(capsys, "suggest", name, "--first", "--budget", "2", "--json")
    data = json.loads(out)
    assert code == 0 and data["method"] == "typical" and len(data["picks"]) == 2
    assert set(data["picks"][0]) >= {"image_id", "file_name", "sha256", "reason", "suggested_label"}
    code, _, err = run_cli(capsys, "suggest", name, "--first", "--method", "margin")
    assert code == 1 and "at least 2 classes with labeled images (found 1)" in err
    code, _, err = run_cli(capsys, "suggest", name)
    assert code == 1 and "pass --run RUN_DIR" in err and "--first" in err
    empty = digit_project({"zero": 2, "one": 2}, unlabeled_per_class=0)
    code, _, err = run_cli(capsys, "suggest", empty, "--first")
    assert code == 1 and "needs at least 1 unlabeled image" in err
