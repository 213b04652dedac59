"""Run folders (fsl_app.runs): what a finished run holds, atomicity on failure, immutability, reloading."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_digits_folder
from fsl_app import runs
from fsl_app.dataset import DataError, ImageSet
from fsl_app.runs import PARTIAL_SUFFIX, list_runs, load_run, read_run, train_run
from fsl_app.strategies import create_strategy, get_strategy_class

RUN_FILES = {"config.json", "metrics.json", "metrics.jsonl", "predictions.json", "model.safetensors", "model.json",
             "ood.safetensors", "ood.json"}  # ood.*: the "none of these" autoencoder (fsl_app.ood)


@pytest.fixture(scope="module")
def query_set(tmp_path_factory) -> ImageSet:
    return ImageSet.from_folder(make_digits_folder(tmp_path_factory.mktemp("query"), per_class=2, offset=6))


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory, digits_set, tiny_backbone):
    root = tmp_path_factory.mktemp("runs")
    progress = []
    result = train_run(digits_set, create_strategy("linear", C=1.0), tiny_backbone, root / "first", seed=3,
                       on_progress=lambda phase, done, total: progress.append((phase, done, total)),
                       augment={"preset": "none"})
    return result, progress


def leftovers(parent: Path) -> list[str]:
    return sorted(path.name for path in parent.iterdir())


# --- a finished run -----------------------------------------------------------------------------------------------

def test_finished_run_holds_exactly_the_run_files(linear_run):
    result, _ = linear_run
    assert result.run_dir.is_dir()
    assert {path.name for path in result.run_dir.iterdir()} == RUN_FILES  # no temp files left
    assert leftovers(result.run_dir.parent) == ["first"]  # no .partial sibling


def test_config_records_what_was_trained(linear_run, digits_set, tiny_backbone):
    result, _ = linear_run
    config = json.loads((result.run_dir / "config.json").read_text(encoding="utf-8"))
    assert config["strategy"] == "linear"
    assert config["params"] == create_strategy("linear", C=1.0).get_params()
    assert config["backbone"]["id"] == tiny_backbone.id and config["backbone"]["weights"] == "random"
    assert config["seed"] == 3 and config["augment"] == {"preset": "none"}
    assert config["classes"] == digits_set.classes
    assert config["class_counts"] == {"digit_0": 6, "digit_1": 6, "digit_2": 6}
    assert [image["sha256"] for image in config["data"]["images"]] == digits_set.shas
    assert {"fsl_app_version", "created_at", "device", "torch", "python"} <= set(config)


def test_metrics_match_the_evaluation(linear_run, digits_set):
    result, _ = linear_run
    metrics = json.loads((result.run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics == json.loads(json.dumps(result.metrics))
    assert metrics["protocol"] == "loo" and metrics["n_test"] == metrics["n_images"] == len(digits_set)
    assert metrics["accuracy"] == pytest.approx(result.report.accuracy)
    assert np.array(metrics["confusion"]).sum() == len(digits_set)
    assert 0 <= metrics["evaluation_seconds"] <= metrics["train_seconds"]
    assert metrics["train_seconds"] == pytest.approx(metrics["evaluation_seconds"] + metrics["fit_seconds"])


def test_predictions_describe_each_held_out_image(linear_run, digits_set):
    result, _ = linear_run
    predictions = json.loads((result.run_dir / "predictions.json").read_text(encoding="utf-8"))
    assert len(predictions) == len(digits_set)
    accuracy = np.mean([item["true"] == item["predicted"] for item in predictions])
    assert accuracy == pytest.approx(result.report.accuracy)
    for item in predictions:
        record = digits_set[item["index"]]
        assert item["sha256"] == record.sha256 and item["true"] == record.label
        assert sum(item["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert item["predicted"] == max(item["probabilities"], key=item["probabilities"].get)


def test_frozen_strategy_run_has_an_empty_step_log(linear_run):
    result, _ = linear_run
    assert (result.run_dir / "metrics.jsonl").read_text(encoding="utf-8") == ""


def test_progress_reports_evaluation_fit_and_done(linear_run, digits_set):
    _, progress = linear_run
    evaluation = [entry for entry in progress if entry[0] == "evaluate"]
    assert evaluation == [("evaluate", i, len(digits_set)) for i in range(1, len(digits_set) + 1)]
    assert progress[-2:] == [("fit", 0, 1), ("done", 1, 1)]


def test_read_run_and_list_runs(linear_run):
    result, _ = linear_run
    data = read_run(result.run_dir)
    assert data["name"] == "first" and data["config"]["strategy"] == "linear"
    assert data["metrics"]["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert data["steps"] == [] and len(data["predictions"]) == result.metrics["n_images"]
    assert [run["name"] for run in list_runs(result.run_dir.parent)] == ["first"]


def test_list_runs_skips_unfinished_folders(linear_run, tmp_path):
    result, _ = linear_run
    shutil.copytree(result.run_dir, tmp_path / "done")
    shutil.copytree(result.run_dir, tmp_path / ("crashed" + PARTIAL_SUFFIX))
    shutil.copytree(result.run_dir, tmp_path / "no_metrics")
    (tmp_path / "no_metrics" / "metrics.json").unlink()
    assert [run["name"] for run in list_runs(tmp_path)] == ["done"]
    assert list_runs(tmp_path / "nothing_here") == []


@pytest.mark.skipif(runs.fcntl is None, reason="needs POSIX file locks")
def test_list_runs_removes_partial_folders_whose_writer_died(tmp_path):
    dead = tmp_path / ("killed" + PARTIAL_SUFFIX)  # its writer held the lock file until it was killed
    dead.mkdir()
    (dead / runs.WRITER_LOCK).touch()
    (dead / "config.json").write_text("{}")
    old = tmp_path / ("old-version" + PARTIAL_SUFFIX)  # no lock file, untouched for a day
    old.mkdir()
    os.utime(old, (time.time() - 86400, time.time() - 86400))
    young = tmp_path / ("just-created" + PARTIAL_SUFFIX)  # no lock file yet: may be starting right now
    young.mkdir()
    assert list_runs(tmp_path) == []
    assert leftovers(tmp_path) == ["just-created" + PARTIAL_SUFFIX]


@pytest.mark.skipif(runs.fcntl is None, reason="needs POSIX file locks")
def test_list_runs_keeps_the_partial_folder_of_a_run_in_progress(tmp_path, digits_set, tiny_backbone):
    """The studio lists runs from another thread of the process that trains: the live lock protects the run."""
    seen = []

    def list_meanwhile(phase, done, total):
        if phase != "done":
            assert list_runs(tmp_path) == []
            seen.append(leftovers(tmp_path))

    train_run(digits_set, create_strategy("protonet"), tiny_backbone, tmp_path / "run", on_progress=list_meanwhile)
    assert ["run" + PARTIAL_SUFFIX] in seen and leftovers(tmp_path) == ["run"]
    assert runs.WRITER_LOCK not in {path.name for path in (tmp_path / "run").iterdir()}


def test_load_run_predicts_the_same(linear_run, query_set, tiny_backbone):
    result, _ = linear_run
    strategy, backbone = load_run(result.run_dir)
    assert backbone.id == tiny_backbone.id
    assert strategy.classes_ == result.strategy.classes_ and strategy.get_params() == result.strategy.get_params()
    assert torch.allclose(strategy.predict_proba(query_set), result.strategy.predict_proba(query_set), atol=1e-6)


def test_load_run_refuses_other_backbone_weights(linear_run, tmp_path):
    result, _ = linear_run
    copy = shutil.copytree(result.run_dir, tmp_path / "copied")
    meta = json.loads((copy / "model.json").read_text(encoding="utf-8"))
    meta["backbone"]["id"] = "test_efficientnet-0000000000000000"  # trained with weights we no longer have
    (copy / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ValueError, match="differ from those the run was trained with"):
        load_run(copy)


def test_load_and_read_run_refuse_other_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no model"):
        load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        read_run(tmp_path)


# --- immutability and atomicity -----------------------------------------------------------------------------------

def test_existing_out_dir_is_refused(tmp_path, digits_set, tiny_backbone):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="runs are immutable"):
        train_run(digits_set, create_strategy("protonet"), tiny_backbone, out)
    assert (out / "keep.txt").read_text() == "precious"
    assert leftovers(tmp_path) == ["taken"]


def test_untrainable_data_creates_nothing(tmp_path, digits_set, tiny_backbone):
    with pytest.raises(DataError):
        train_run(digits_set.subset(range(6)), create_strategy("protonet"), tiny_backbone, tmp_path / "run")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError("out of memory"), KeyboardInterrupt()])
def test_crash_mid_training_leaves_no_run_folder(tmp_path, digits_set, tiny_backbone, monkeypatch, error):
    def crash(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(get_strategy_class("protonet"), "fit", crash)
    out = tmp_path / "run"
    with pytest.raises(type(error)):
        train_run(digits_set, create_strategy("protonet"), tiny_backbone, out, protocol="kfold")
    assert leftovers(tmp_path) == []  # neither the run nor its .partial
    assert list_runs(tmp_path) == []
    monkeypatch.undo()
    train_run(digits_set, create_strategy("protonet"), tiny_backbone, out, protocol="kfold")  # same name works now
    assert leftovers(tmp_path) == ["run"]


def test_crash_during_evaluation_leaves_no_run_folder(tmp_path, digits_set, tiny_backbone, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(runs, "evaluate", crash)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        train_run(digits_set, create_strategy("linear"), tiny_backbone, tmp_path / "run")
    assert leftovers(tmp_path) == []


def test_stale_partial_folder_from_a_killed_run_is_replaced(tmp_path, digits_set, tiny_backbone):
    stale = tmp_path / ("run" + PARTIAL_SUFFIX)
    stale.mkdir()
    (stale / "config.json").write_text("{half written")
    (stale / "junk.bin").write_bytes(b"x")
    result = train_run(digits_set, create_strategy("protonet"), tiny_backbone, tmp_path / "run", protocol="kfold")
    assert {path.name for path in result.run_dir.iterdir()} == RUN_FILES
    assert leftovers(tmp_path) == ["run"]
    json.loads((result.run_dir / "config.json").read_text(encoding="utf-8"))


def test_fine_tuning_run_logs_one_step_per_epoch(tmp_path, digits_set, tiny_backbone):
    small = digits_set.subset([0, 1, 2, 3, 6, 7, 8, 9])  # 2 classes x 4
    seen = []
    result = train_run(small, create_strategy("finetune", mode="head", epochs=2), tiny_backbone, tmp_path / "ft",
                       on_step=seen.append)
    lines = (result.run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    steps = [json.loads(line) for line in lines]
    assert [step["epoch"] for step in steps] == [1, 2]
    assert result.metrics["protocol"] == "holdout"
    # on_step sees the hold-out split's fit (2 epochs), then the final fit: what the log holds
    assert [step.epoch for step in seen] == [1, 2, 1, 2]
    assert [step.to_dict() for step in seen[2:]] == steps
    assert read_run(result.run_dir)["steps"] == steps


# --- the unlabeled pool -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pool_set(tmp_path_factory) -> ImageSet:
    """9 other digits of the same 3 classes, without labels."""
    from fsl_app.dataset import ImageRecord

    folder = make_digits_folder(tmp_path_factory.mktemp("pool"), per_class=3, offset=10)
    return ImageSet(ImageRecord(r.path, r.sha256, None) for r in ImageSet.from_folder(folder).records)


def spy_on_fit_features(monkeypatch, name: str) -> list:
    """Record the number of unlabeled rows (None: no pool) of every fit_features call of strategy ``name``."""
    strategy_class = get_strategy_class(name)
    original, seen = strategy_class.fit_features, []

    def spy(self, features, labels, **kwargs):
        unlabeled = kwargs.get("unlabeled")
        seen.append(None if unlabeled is None else tuple(unlabeled.shape))
        return original(self, features, labels, **kwargs)

    monkeypatch.setattr(strategy_class, "fit_features", spy)
    return seen


def test_a_pool_reaches_every_split_and_the_final_fit_and_is_recorded(tmp_path, digits_set, pool_set, tiny_backbone,
                                                                      monkeypatch):
    seen = spy_on_fit_features(monkeypatch, "selftrain")
    result = train_run(digits_set, create_strategy("selftrain"), tiny_backbone, tmp_path / "run", protocol="kfold",
                       pool=pool_set)
    dim = tiny_backbone.num_features
    assert seen == [(9, dim)] * (len(result.report.split_accuracies) + 1)  # 5 folds, then the final fit
    config = json.loads((result.run_dir / "config.json").read_text(encoding="utf-8"))
    metrics = json.loads((result.run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert config["pool_size"] == metrics["pool_size"] == 9 and metrics["n_images"] == 18
    assert metrics["pool_used"] == result.strategy.pool_used_ and 0 <= metrics["pool_used"] <= 9
    assert metrics["pseudo_labels"] == result.strategy.pseudo_labels_ <= metrics["pool_used"]
    assert {image["sha256"] for image in config["data"]["images"]} == set(digits_set.shas)  # the pool is no data
    assert {row["sha256"] for row in read_run(result.run_dir)["predictions"]} <= set(digits_set.shas)


def test_with_and_without_pool_runs_are_compared_image_by_image(tmp_path, digits_set, pool_set, tiny_backbone):
    from fsl_app.comparison import comparability_key

    made = {name: train_run(digits_set, create_strategy("bdcspn"), tiny_backbone, tmp_path / name, protocol="kfold",
                            pool=pool)
            for name, pool in (("with", pool_set), ("without", None))}
    with_pool, without = (read_run(made[name].run_dir) for name in ("with", "without"))
    assert with_pool["metrics"]["pool_size"] == 9 and without["metrics"]["pool_size"] == 0
    assert without["metrics"]["pool_used"] == 0 and "pseudo_labels" not in without["metrics"]
    assert comparability_key(with_pool) == comparability_key(without)


def test_a_strategy_that_ignores_the_pool_trains_without_it(tmp_path, digits_set, pool_set, tiny_backbone,
                                                            monkeypatch):
    seen = spy_on_fit_features(monkeypatch, "linear")
    result = train_run(digits_set, create_strategy("linear"), tiny_backbone, tmp_path / "run", protocol="kfold",
                       pool=pool_set)
    assert seen and set(seen) == {None}
    assert result.metrics["pool_size"] == 0 and "pool_used" not in result.metrics
    assert json.loads((result.run_dir / "config.json").read_text(encoding="utf-8"))["pool_size"] == 0
