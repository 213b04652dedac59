"""Comparing runs (fsl_app.comparison, fsl-app compare): one protocol per set of strategies, comparable groups,
paired differences and a recommendation that names a winner only when the data says so.

Synthetic run folders (config.json / metrics.json / predictions.json) drive the statistics; a pair made by
``train_run`` on the tiny backbone proves the real files have the shapes the comparison reads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_digits_folder
from fsl_app import comparison
from fsl_app.cli.compare import EXIT_NOTHING_TO_COMPARE, add_compare_command
from fsl_app.comparison import (comparability_key, compare_runs, estimate_seconds, group_comparable, mcnemar_exact,
                                paired_bootstrap_interval, paired_difference, plan_comparison, recommend,
                                shared_protocol)
from fsl_app.intervals import wilson_interval
from fsl_app.dataset import ImageSet
from fsl_app.runs import read_run, train_run
from fsl_app.strategies import create_strategy

CLASSES = ("cat", "dog")


def synthetic_images(n: int, *, salt: str = "") -> list[tuple[str, str]]:
    return [(f"{salt}{i:060d}", CLASSES[i % 2]) for i in range(n)]


def write_run(root: Path, name: str, correct, *, strategy: str = "linear", seed: int = 0, protocol: str = "loo",
              images: list[tuple[str, str]] | None = None, train_seconds: float | None = 1.0,
              fit_seconds: float | None = None, finished: bool = True) -> dict:
    """A run folder whose held-out prediction i is right exactly when ``correct[i]``."""
    images = images or synthetic_images(len(correct))
    folder = root / name
    folder.mkdir(parents=True)
    config = {"strategy": strategy, "params": {}, "protocol": "auto", "seed": seed, "classes": list(CLASSES),
              "data": {"images": [{"sha256": sha, "label": label, "path": f"/data/{label}/{i}.png"}
                                  for i, (sha, label) in enumerate(images)]}}
    (folder / "config.json").write_text(json.dumps(config))
    if finished:
        predictions = [{"index": i, "path": f"/data/{label}/{i}.png", "sha256": sha, "true": label,
                        "predicted": label if right else next(c for c in CLASSES if c != label),
                        "probabilities": {}} for i, ((sha, label), right) in enumerate(zip(images, correct))]
        metrics = {"protocol": protocol, "accuracy": float(np.mean(correct)), "classes": list(CLASSES),
                   "n_test": len(correct), "n_images": len(images), "train_seconds": train_seconds,
                   "fit_seconds": train_seconds if fit_seconds is None else fit_seconds}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        (folder / "predictions.json").write_text(json.dumps(predictions))
    return read_run(folder)


def pattern(n: int, right: int, *, start: int = 0) -> list[bool]:
    """n answers, ``right`` of them correct, the correct ones starting at ``start`` (cyclically)."""
    return [(i - start) % n < right for i in range(n)]


# --- one protocol per comparison --------------------------------------------------------------------------------------

def test_frozen_feature_strategies_share_leave_one_out_on_few_shot_data():
    y = np.repeat(np.arange(3), 8)
    protocol, reason = shared_protocol(["linear", "protonet"], y, trains_backbone={"finetune"})
    assert protocol == "loo" and "frozen features" in reason


def test_one_strategy_training_the_backbone_puts_every_strategy_on_the_same_kfold():
    y = np.repeat(np.arange(3), 8)  # the sample project's size: a 25 % hold-out would test 6 images
    protocol, reason = shared_protocol(["finetune", "linear", "protonet"], y, trains_backbone={"finetune"})
    assert protocol == "kfold"
    assert "finetune trains the backbone" in reason and "5-fold" in reason and "6 images" in reason
    same = shared_protocol(["finetune", "linear"], y, trains_backbone=lambda name: name == "finetune")
    assert same[0] == "kfold"  # a predicate works like a set


def test_a_single_image_class_or_a_large_set_with_fine_tuning_uses_one_holdout():
    single = np.array([0, 0, 0, 1, 1, 1, 2])
    assert shared_protocol(["finetune", "linear"], single, trains_backbone={"finetune"})[0] == "holdout"
    assert shared_protocol(["linear"], single, trains_backbone={"finetune"})[0] == "loo"
    large = np.repeat(np.arange(4), 100)  # a 25 % hold-out tests 100 images
    protocol, reason = shared_protocol(["finetune", "linear"], large, trains_backbone={"finetune"})
    assert protocol == "holdout" and "100 images" in reason
    assert shared_protocol(["linear"], large, trains_backbone={"finetune"})[0] == "kfold"


def test_an_explicit_protocol_is_kept_and_a_wrong_one_is_refused():
    y = np.repeat(np.arange(2), 5)
    assert shared_protocol(["finetune"], y, trains_backbone={"finetune"}, requested="loo")[0] == "loo"
    with pytest.raises(ValueError, match="protocol must be"):
        shared_protocol(["linear"], y, trains_backbone=set(), requested="bootstrap")
    with pytest.raises(ValueError, match="label some images"):
        shared_protocol(["linear"], np.array([], dtype=int), trains_backbone=set())


def test_time_estimate_counts_the_images_every_fit_trains_on():
    y = np.repeat(np.arange(4), 10)  # 40 images, 5 folds: 4 x 40 images over the splits, + 40 in the final fit
    assert estimate_seconds("kfold", y, trains_backbone=True, seconds_per_image=0.5) == pytest.approx(0.5 * 200)
    assert estimate_seconds("holdout", y, trains_backbone=True, seconds_per_image=0.5) == pytest.approx(0.5 * 70)
    assert estimate_seconds("loo", y, trains_backbone=True, seconds_per_image=0.5) == pytest.approx(0.5 * 40 * 40)
    frozen = estimate_seconds("loo", y, trains_backbone=False, seconds_per_image=0.1)
    assert frozen < estimate_seconds("kfold", y, trains_backbone=True, seconds_per_image=0.1)


def test_plan_rates_each_strategy_from_earlier_runs(tmp_path):
    slow = write_run(tmp_path, "ft", [True] * 10, strategy="finetune", train_seconds=20.0)  # 2 s per image
    y = np.repeat(np.arange(2), 5)
    plan = plan_comparison(["finetune", "linear"], y, trains_backbone={"finetune"}, past_runs=[slow])
    assert plan.protocol == "kfold"
    assert plan.seconds["finetune"] == pytest.approx(2.0 * (10 * 4 + 10))
    assert plan.seconds["linear"] < plan.seconds["finetune"]
    assert "rough estimate" in plan.text() and "Estimated time" in plan.text()


# --- comparability ----------------------------------------------------------------------------------------------------

def test_snapshot_ignores_image_order_but_not_labels(tmp_path):
    images = synthetic_images(6)
    a = write_run(tmp_path, "a", [True] * 6, images=images)
    reordered = write_run(tmp_path, "b", [True] * 6, images=images)
    reordered["config"]["data"]["images"].reverse()
    relabeled = write_run(tmp_path, "c", [True] * 6, images=[(sha, "cat") for sha, _ in images])
    assert comparison.snapshot_id(a) == comparison.snapshot_id(reordered)
    assert comparison.snapshot_id(a) != comparison.snapshot_id(relabeled)


def test_runs_on_different_snapshots_protocols_or_seeds_are_never_grouped(tmp_path):
    base = write_run(tmp_path, "base", pattern(20, 15))
    same = write_run(tmp_path, "same", pattern(20, 12), strategy="protonet")
    other_data = write_run(tmp_path, "other-data", pattern(20, 15), images=synthetic_images(20, salt="x"))
    other_protocol = write_run(tmp_path, "other-protocol", pattern(20, 15), protocol="kfold")
    other_seed = write_run(tmp_path, "other-seed", pattern(20, 15), seed=1)
    groups = group_comparable([base, same, other_data, other_protocol, other_seed])
    assert [sorted(run["name"] for run in group) for group in groups][0] == ["base", "same"]
    assert len(groups) == 4
    with pytest.raises(ValueError, match="data snapshot"):
        paired_difference(base, other_data)


def test_a_run_still_training_is_left_out_with_a_reason(tmp_path):
    done_a = write_run(tmp_path, "a", pattern(10, 8))
    done_b = write_run(tmp_path, "b", pattern(10, 7))
    training = write_run(tmp_path, "c.partial", pattern(10, 5), finished=False)
    result = compare_runs([done_a, done_b, training])
    assert [item["run"] for item in result.excluded] == ["c.partial"]
    assert "still training" in result.excluded[0]["reason"]
    assert len(result.groups) == 1 and len(result.groups[0].runs) == 2
    assert sum(len(group) for group in group_comparable([training])) == 0


# --- paired differences -----------------------------------------------------------------------------------------------

def test_identical_predictions_show_no_measurable_difference(tmp_path):
    a = write_run(tmp_path, "a", pattern(40, 30))
    b = write_run(tmp_path, "b", pattern(40, 30), strategy="protonet")
    diff = paired_difference(a, b)
    assert diff.difference == 0 and (diff.ci_low, diff.ci_high) == (0, 0) and diff.p_value == 1.0
    assert not diff.measurable and diff.verdict.startswith("no measurable difference")
    assert diff.only_a_right == diff.only_b_right == [] and diff.n == 40


def test_all_right_against_half_right_is_measurable(tmp_path):
    a = write_run(tmp_path, "a", [True] * 40)
    b = write_run(tmp_path, "b", pattern(40, 20), strategy="protonet")
    diff = paired_difference(a, b)
    assert (diff.accuracy_a, diff.accuracy_b, diff.difference) == (1.0, 0.5, 0.5)
    assert diff.measurable and 0 < diff.ci_low < 0.5 < diff.ci_high <= 1.0
    assert diff.p_value == pytest.approx(2 * 0.5 ** 20)
    assert len(diff.only_a_right) == 20 and diff.only_b_right == []
    row = diff.only_a_right[0]
    assert row["predicted_a"] == row["true"] != row["predicted_b"] and row["path"].endswith(".png")
    assert "better" in diff.verdict and "linear (a)" in diff.verdict.split("better")[0]


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_images():
    assert mcnemar_exact(6, 1) == pytest.approx(2 * (1 + 7) / 2 ** 7)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == pytest.approx(1.0)


def test_few_discordant_images_are_not_called_a_difference(tmp_path):
    """4 images right for a only out of 24: the percentile bootstrap alone would exclude 0; McNemar (p=0.125) not."""
    low, _ = paired_bootstrap_interval(4, 0, 24)
    assert low > 0
    a = write_run(tmp_path, "a", pattern(24, 20))
    b = write_run(tmp_path, "b", pattern(24, 16), strategy="protonet")
    diff = paired_difference(a, b)
    assert diff.p_value == pytest.approx(0.125)
    assert not diff.measurable and "does not confirm" in diff.verdict


def test_bootstrap_is_seeded():
    assert paired_bootstrap_interval(7, 3, 30, seed=5) == paired_bootstrap_interval(7, 3, 30, seed=5)
    low, high = paired_bootstrap_interval(7, 3, 30)
    assert low < 4 / 30 < high


# --- recommendation ---------------------------------------------------------------------------------------------------

def test_a_clear_winner_is_named(tmp_path):
    runs = [write_run(tmp_path, "ft", [True] * 40, strategy="finetune", train_seconds=90.0),
            write_run(tmp_path, "lin", pattern(40, 20), strategy="linear", train_seconds=2.0),
            write_run(tmp_path, "pn", pattern(40, 22, start=5), strategy="protonet", train_seconds=1.0)]
    result = recommend(runs)
    assert result.kind == "winner" and result.run == "ft" and result.strategy == "finetune"
    assert "wins" in result.text and "more than the noise" in result.text


def test_within_the_noise_the_cheapest_is_recommended_and_says_so(tmp_path):
    runs = [write_run(tmp_path, "ft", pattern(30, 27), strategy="finetune", train_seconds=90.0),
            write_run(tmp_path, "lin", pattern(30, 26, start=1), strategy="linear", train_seconds=3.0),
            write_run(tmp_path, "pn", pattern(30, 15), strategy="protonet", train_seconds=1.0)]
    result = recommend(runs)
    assert result.kind == "cheapest" and result.run == "lin"  # protonet is cheaper but measurably worse
    assert set(result.within_noise) == {"ft", "lin"}
    assert "No run wins by more than the noise" in result.text and "cheapest" in result.text


def test_cost_order_breaks_ties_when_no_time_is_recorded(tmp_path):
    runs = [write_run(tmp_path, "ft", pattern(20, 15), strategy="finetune", train_seconds=None),
            write_run(tmp_path, "pn", pattern(20, 15), strategy="protonet", train_seconds=None),
            write_run(tmp_path, "lin", pattern(20, 15), strategy="linear", train_seconds=None)]
    assert recommend(runs).run == "lin"


def test_cost_is_the_final_fit_not_a_cold_feature_cache_nor_timing_noise(tmp_path):
    """The first frozen-feature run pays the feature extraction (train_seconds 16 s); its fit costs the same."""
    runs = [write_run(tmp_path, "pn", pattern(20, 15), strategy="protonet", train_seconds=2.0, fit_seconds=0.1),
            write_run(tmp_path, "lin", pattern(20, 15), strategy="linear", train_seconds=16.0, fit_seconds=0.4)]
    assert recommend(runs).run == "lin"
    slower = write_run(tmp_path, "lin-slow", pattern(20, 15), strategy="linear", train_seconds=16.0, fit_seconds=3.5)
    assert recommend([runs[0], slower]).run == "pn"


def test_one_run_and_mixed_runs_get_no_ranking(tmp_path):
    only = write_run(tmp_path, "only", pattern(20, 15))
    assert recommend([only]).kind == "nothing_to_compare"
    assert "Nothing to compare yet" in recommend([only]).text
    other = write_run(tmp_path, "other", [True] * 20, images=synthetic_images(20, salt="y"))
    mixed = recommend([only, other])
    assert mixed.kind == "not_comparable" and mixed.run is None and "data snapshot" in mixed.text
    result = compare_runs([only, other])
    assert not result.comparable and all(group.pairs == [] for group in result.groups)
    assert "Nothing can be compared" in result.message


# --- runs made by train_run -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_runs(tmp_path_factory, digits_set, tiny_backbone):
    root = tmp_path_factory.mktemp("compare-runs")
    other = ImageSet.from_folder(make_digits_folder(tmp_path_factory.mktemp("other"), per_class=6, offset=6))
    made = {"linear": train_run(digits_set, create_strategy("linear"), tiny_backbone, root / "linear",
                                protocol="loo", seed=0),
            "protonet": train_run(digits_set, create_strategy("protonet"), tiny_backbone, root / "protonet",
                                  protocol="loo", seed=0),
            "holdout": train_run(digits_set, create_strategy("linear"), tiny_backbone, root / "holdout",
                                 protocol="holdout", seed=0),
            "other-data": train_run(other, create_strategy("linear"), tiny_backbone, root / "other-data",
                                    protocol="loo", seed=0)}
    return {name: result.run_dir for name, result in made.items()}


def test_train_run_folders_have_the_shapes_the_comparison_reads(real_runs, digits_set):
    linear, protonet = read_run(real_runs["linear"]), read_run(real_runs["protonet"])
    assert comparability_key(linear) == comparability_key(protonet)
    diff = paired_difference(linear, protonet)
    assert diff.n == len(digits_set)
    assert diff.accuracy_a == pytest.approx(linear["metrics"]["accuracy"])
    assert diff.accuracy_b == pytest.approx(protonet["metrics"]["accuracy"])
    groups = group_comparable([read_run(path) for path in real_runs.values()])
    assert sorted(len(group) for group in groups) == [1, 1, 2]


def compare_cli(capsys, *argv) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="fsl-app")
    add_compare_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["compare", *map(str, argv)])
    code = args.handler(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_prints_groups_pairs_and_a_recommendation(capsys, real_runs, tmp_path):
    code, out, err = compare_cli(capsys, real_runs["linear"], real_runs["protonet"], real_runs["holdout"],
                                 tmp_path / "missing")
    assert code == 0
    assert "group 1: leave-one-out, seed 0, 18 test images, 3 classes" in out
    assert "group 2: hold-out" in out and "recommendation:" in out and "McNemar" in out
    assert "2 groups" in out and "never against another" in out
    assert "missing is not a folder" in err


def test_cli_json_is_one_machine_readable_object(capsys, real_runs):
    code, out, _ = compare_cli(capsys, real_runs["linear"], real_runs["protonet"], "--json")
    data = json.loads(out)
    assert code == 0 and data["comparable"] is True and len(data["groups"]) == 1
    group = data["groups"][0]
    assert {row["strategy"] for row in group["runs"]} == {"linear", "protonet"}
    assert len(group["pairs"]) == 1 and {"ci_low", "ci_high", "p_value", "only_a_right"} <= set(group["pairs"][0])
    assert group["recommendation"]["kind"] in ("winner", "cheapest")


def test_cli_fails_only_when_nothing_can_be_compared(capsys, real_runs, tmp_path):
    code, out, _ = compare_cli(capsys, real_runs["linear"], real_runs["other-data"])
    assert code == EXIT_NOTHING_TO_COMPARE and "data snapshot" in out and "Nothing can be compared" in out
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    code, out, err = compare_cli(capsys, not_a_run, "--json")
    assert code == EXIT_NOTHING_TO_COMPARE
    assert json.loads(out)["excluded"][0]["reason"].startswith(f"{not_a_run} is not a run folder")
    code, _, err = compare_cli(capsys, real_runs["linear"])
    assert code == EXIT_NOTHING_TO_COMPARE and "Traceback" not in err


def test_the_winner_is_named_with_its_95_interval_and_the_others_marked_behind(tmp_path):
    runs = [write_run(tmp_path, "ft", [True] * 40, strategy="finetune", train_seconds=90.0),
            write_run(tmp_path, "lin", pattern(40, 20), strategy="linear", train_seconds=2.0),
            write_run(tmp_path, "pn", pattern(40, 22, start=5), strategy="protonet", train_seconds=1.0)]
    group = compare_runs(runs).groups[0]
    low, high = wilson_interval(40, 40)
    assert group.headline == (f"Winner for this project: finetune (ft), 100.0 % (95 % interval {100 * low:.1f}-"
                              f"{100 * high:.1f}); every other run is measurably behind it.")
    assert [(row.strategy, row.status) for row in group.standings] == [
        ("finetune", "winner"), ("protonet", "behind"), ("linear", "behind")]
    assert group.standings[2].text().startswith("behind: -50.0 pts (paired 95 % interval -")
    assert group.to_dict()["standings"][0]["status"] == "winner"


def test_runs_within_the_noise_of_the_best_are_marked_tied_and_no_winner_is_named(tmp_path):
    runs = [write_run(tmp_path, "ft", pattern(30, 27), strategy="finetune", train_seconds=90.0),
            write_run(tmp_path, "lin", pattern(30, 26, start=1), strategy="linear", train_seconds=3.0),
            write_run(tmp_path, "pn", pattern(30, 15), strategy="protonet", train_seconds=1.0)]
    group = compare_runs(runs).groups[0]
    assert [row.status for row in group.standings] == ["best", "tied", "behind"]
    assert group.headline.startswith("No single winner: the most accurate, finetune (ft) at 90.0 % (95 % interval ")
    assert group.headline.endswith("is tied within the 95 % interval with linear (86.7 %).")
    tied = group.standings[1]
    assert tied.diff_low < 0 <= tied.diff_high and tied.text().startswith("tied with the best: -3.3 pts (paired 95 % "
                                                                         "interval -10.0 to +0.0)")
    assert compare_runs(runs[:1]).groups[0].headline == ""  # one run: nothing to name
