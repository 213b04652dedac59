"""Rows for the run tables and charts (fsl_app.run_tables), from run dicts shaped like fsl_app.runs.read_run's."""

from __future__ import annotations

import json
import math

from fsl_app import run_tables


def fake_run(name: str, strategy: str, accuracy: float | None, *, ci95: float | None = 0.1,
             predictions: list[dict] | None = None, steps: list[dict] | None = None) -> dict:
    metrics = None if accuracy is None else {
        "accuracy": accuracy, "ci95": ci95, "balanced_accuracy": accuracy, "macro_f1": accuracy, "protocol": "loo",
        "n_images": 12, "train_seconds": 1.234, "per_class_accuracy": {"zero": 1.0, "one": 0.5}}
    return {"run_dir": f"/runs/{name}", "name": name, "steps": steps or [], "predictions": predictions,
            "config": {"strategy": strategy, "backbone": {"name": "tiny", "source": "random"},
                       "created_at": "2026-12-01T10:20:30+00:00"}, "metrics": metrics}


def prediction(index: int, true: str, predicted: str, confidence: float) -> dict:
    other = "one" if predicted == "zero" else "zero"
    return {"index": index, "path": f"/img/{index}.png", "sha256": f"{index:064d}", "true": true,
            "predicted": predicted, "probabilities": {predicted: confidence, other: 1 - confidence}}


def test_project_runs_lists_finished_run_folders_newest_first(tmp_path):
    for name, created, finished in (("old", "2026-01-01", True), ("new", "2026-02-01", True),
                                    ("half", "2026-03-01", False)):
        folder = run_tables.runs_dir(tmp_path) / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"created_at": created}))
        if finished:
            (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    assert [run["name"] for run in run_tables.project_runs(tmp_path)] == ["new", "old"]
    assert run_tables.project_runs(tmp_path / "no project") == []


def test_best_run_prefers_accuracy_then_the_newest():
    runs = [fake_run("b-newer", "linear", 0.8), fake_run("a-older", "protonet", 0.8), fake_run("c", "x", 0.5)]
    assert run_tables.best_run(runs)["name"] == "b-newer"
    assert run_tables.best_run([]) is None


def test_accuracy_metric_shows_an_interval_that_does_not_collapse_at_100_percent():
    assert run_tables.accuracy_metric({"accuracy": 0.75, "ci_low": 0.6, "ci_high": 0.85, "n_test": 40}) == \
        ("75.0 %", "95 % interval 60.0-85.0, n=40")
    value, interval = run_tables.accuracy_metric({"accuracy": 1.0, "ci95": 0.0, "n_test": 24})  # saved before ci_low
    assert value == "100.0 %" and interval.startswith("95 % interval 86.") and interval.endswith("-100.0, n=24")
    assert run_tables.accuracy_metric({"accuracy": 0.5, "n_test": 0}) == ("n/a (nothing tested)", "")
    assert run_tables.accuracy_metric({}) == ("–", "")
    assert run_tables.percent(None) == "–"


def test_run_table_has_one_row_per_run_in_percent():
    rows = run_tables.run_table([fake_run("r1", "linear", 0.75, ci95=math.nan), fake_run("r2", "finetune", None)])
    assert rows[0]["accuracy %"] == 75.0 and rows[0]["95 % CI low"] is None and rows[0]["train time s"] == 1.2
    assert rows[0]["date"] == "2026-12-01 10:20:30" and rows[0]["protocol"] == "loo"
    assert rows[1]["strategy"] == "finetune" and rows[1]["accuracy %"] is None


def test_curve_rows_are_long_format_and_skip_missing_metrics():
    steps = [{"step": 1, "epoch": 1, "loss": 0.9, "train_acc": 0.5, "val_acc": None},
             {"step": 2, "epoch": 2, "loss": 0.4, "train_acc": 0.9, "val_acc": 0.8}]
    rows = run_tables.curve_rows([fake_run("r", "finetune", 0.8, steps=steps)])
    assert len(rows) == 5 and {row["metric"] for row in rows} == set(run_tables.CURVE_METRICS)
    assert rows[0] == {"run": "finetune · tiny · r", "step": 1, "epoch": 1, "metric": "loss", "value": 0.9}


def test_per_class_rows_and_misclassified_come_from_the_run_files():
    predictions = [prediction(0, "zero", "zero", 0.9), prediction(1, "one", "zero", 0.6),
                   prediction(2, "zero", "one", 0.95)]
    run = fake_run("r", "linear", 0.33, predictions=predictions)
    assert {(row["class"], row["accuracy %"]) for row in run_tables.per_class_rows([run])} == {("zero", 100.0),
                                                                                                ("one", 50.0)}
    wrong = run_tables.misclassified(run)
    assert [item["index"] for item in wrong] == [2, 1]  # the most confident mistake first
    assert wrong[0]["probability"] == 0.95
    assert "probability" not in run["predictions"][2]  # the run's own data is left as it was


def test_the_pool_column_tells_with_pool_runs_from_the_others():
    runs = [fake_run(name, "selftrain", 0.8) for name in ("old", "none", "all", "gated")]
    pools = [{}, {"pool_size": 0, "pool_used": 0}, {"pool_size": 40, "pool_used": 40, "pseudo_labels": 1},
             {"pool_size": 40, "pool_used": 31, "pseudo_labels": 12}]
    for run, pool in zip(runs, pools):
        run["metrics"].update(pool)
    assert [row["pool"] for row in run_tables.run_table(runs)] == [
        "–", "none", "40 · 1 pseudo-label", "31 of 40 · 12 pseudo-labels"]
    assert run_tables.pool_text({"pool_size": 9}) == "9"  # a strategy that reports no pool statistics
