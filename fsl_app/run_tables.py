"""A project's finished runs as plain rows for tables and charts: comparison table, curves, per-class accuracy,
mistakes and accuracy text.

Runs are read with :func:`fsl_app.runs.read_run` (``run_dir``, ``name``, ``config``, ``metrics``, ``steps``,
``predictions``); nothing here loads a model.
"""

from __future__ import annotations

from pathlib import Path

from .intervals import accuracy_interval, accuracy_parts
from .runs import list_runs

RUNS_FOLDER = "runs"
CURVE_METRICS = ("loss", "train_acc", "val_acc")


def runs_dir(project_dir: str | Path) -> Path:
    """The folder that holds a project's run folders."""
    return Path(project_dir) / RUNS_FOLDER


def project_runs(project_dir: str | Path) -> list[dict]:
    """Finished runs of the project in ``project_dir``, newest first."""
    return list_runs(runs_dir(project_dir))


def best_run(runs: list[dict]) -> dict | None:
    """The run with the highest held-out accuracy (the newest among equals: ``runs`` are newest first), or None."""
    return max(runs, key=lambda run: (run["metrics"] or {}).get("accuracy", 0.0), default=None)


def percent(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f} %"


def accuracy_metric(metrics: dict) -> tuple[str, str]:
    """The accuracy for a metric tile and its interval for the caption below it: ("80.0 %", "95 % interval ...")."""
    if metrics.get("accuracy") is None:
        return "–", ""
    value, interval = accuracy_parts(metrics)
    return value, f"95 % interval {interval}" if interval else ""


def run_label(run: dict) -> str:
    """Short name of a run for pickers and legends: strategy · backbone · date and time."""
    config = run["config"]
    return f"{config.get('strategy')} · {config.get('backbone', {}).get('name')} · {run['name'][:15]}"


def run_table(runs: list[dict]) -> list[dict]:
    """One row per run for the sortable comparison table (accuracies in percent)."""
    rows = []
    for run in runs:
        config, metrics = run["config"], run["metrics"] or {}
        backbone = config.get("backbone", {})
        rows.append({
            "run": run["name"], "strategy": config.get("strategy"), "backbone": backbone.get("name"),
            "weights": backbone.get("source"), "protocol": metrics.get("protocol", config.get("protocol")),
            "accuracy %": _pct(metrics.get("accuracy")), "95 % CI low": _pct(_interval(metrics)[0]),
            "95 % CI high": _pct(_interval(metrics)[1]),
            "balanced acc %": _pct(metrics.get("balanced_accuracy")), "macro F1 %": _pct(metrics.get("macro_f1")),
            "images": metrics.get("n_images"), "pool": pool_text(metrics),
            "train time s": _round(metrics.get("train_seconds")),
            "date": (config.get("created_at") or "")[:19].replace("T", " "),
        })
    return rows


def pool_text(metrics: dict) -> str:
    """The unlabeled images a run learned from: 'none', '40', '31 of 40 · 12 pseudo-labels' (``pool_used`` of
    ``pool_size`` where the strategy left some out), or '–' for a run saved before pools were recorded."""
    size = metrics.get("pool_size")
    if size is None:
        return "–"
    if not size:
        return "none"
    used = metrics.get("pool_used")
    text = f"{used} of {size}" if used is not None and used != size else str(size)
    pseudo = metrics.get("pseudo_labels")
    return text if pseudo is None else f"{text} · {pseudo} pseudo-label{'s' if pseudo != 1 else ''}"


def _interval(metrics: dict) -> tuple[float | None, float | None]:
    """(low, high) of the 95 % interval; runs saved before ``ci_low`` existed get the Wilson interval."""
    if metrics.get("ci_low") is not None:
        return metrics["ci_low"], metrics["ci_high"]
    if metrics.get("accuracy") is None or not metrics.get("n_test"):
        return None, None
    return accuracy_interval(metrics["accuracy"], int(metrics["n_test"]))


def _pct(value: float | None) -> float | None:
    return None if value is None or value != value else round(100 * value, 1)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def curve_rows(runs: list[dict]) -> list[dict]:
    """Training curves of several runs as long-format rows: run, step, epoch, metric, value."""
    rows = []
    for run in runs:
        rows.extend(steps_to_rows(run["steps"], run_label(run)))
    return rows


def steps_to_rows(steps: list[dict], series: str) -> list[dict]:
    """StepLog dicts as long-format rows of one series (a run, or a fit of a running job)."""
    rows = []
    for step in steps:
        for metric in CURVE_METRICS:
            if step.get(metric) is not None:
                rows.append({"run": series, "step": step["step"], "epoch": step.get("epoch"), "metric": metric,
                             "value": step[metric]})
    return rows


def per_class_rows(runs: list[dict]) -> list[dict]:
    """Held-out accuracy per class and run, in percent."""
    rows = []
    for run in runs:
        for name, value in ((run["metrics"] or {}).get("per_class_accuracy") or {}).items():
            rows.append({"run": run_label(run), "class": name, "accuracy %": round(100 * value, 1)})
    return rows


def misclassified(run: dict) -> list[dict]:
    """Held-out images the run got wrong, most confidently wrong first: path, sha256, true, predicted, probability."""
    wrong = [dict(p) for p in run.get("predictions") or [] if p["true"] != p["predicted"]]
    for item in wrong:
        item["probability"] = item["probabilities"].get(item["predicted"], 0.0)
    return sorted(wrong, key=lambda item: -item["probability"])
