"""Training runs: evaluate with an honest protocol, fit on all images, write an immutable run folder.

A run folder holds ``config.json`` (backbone, strategy params, augment, seed, data snapshot), ``metrics.jsonl`` (one
StepLog per line, appended live), ``metrics.json`` (final evaluation), ``predictions.json`` (per held-out image) and the
fitted model (``model.safetensors`` + ``model.json``). It is written under ``<name>.partial`` and renamed when
complete, so a crash mid-training never leaves a half-written run that looks finished.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from . import __version__
from .backbones import Backbone, load_backbone
from .dataset import ImageSet
from .evaluation import EvaluationReport, evaluate
from .features import describe_device, pick_device
from .strategies import Strategy, StepLog, create_strategy
from .strategies import load_strategy

PARTIAL_SUFFIX = ".partial"


@dataclass
class RunResult:
    run_dir: Path
    strategy: Strategy
    report: EvaluationReport
    metrics: dict


def new_run_name(strategy_name: str) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{strategy_name}-{uuid.uuid4().hex[:6]}"


def write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=2, ensure_ascii=False)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temp, path)


def train_run(images: ImageSet, strategy: Strategy, backbone: Backbone, out_dir: str | Path, *,
              protocol: str = "auto", seed: int = 0, on_step: Callable[[StepLog], None] | None = None,
              on_progress: Callable[[str, int, int], None] | None = None, augment: dict | None = None,
              snapshot: dict | None = None) -> RunResult:
    """Evaluate ``strategy`` on ``images`` with ``protocol``, fit it on all of them and save the run in ``out_dir``.

    ``on_progress(phase, done, total)`` reports evaluation and fitting; ``on_step`` gets every training StepLog (the
    evaluation splits' fits, then the final fit; only the final fit's go to ``metrics.jsonl``).
    """
    labeled = images.labeled()
    labeled.check_trainable()
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists: runs are immutable. Choose another --out.")
    partial = out_dir.with_name(out_dir.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        result = _train_into(partial, labeled, strategy, backbone, protocol, seed, on_step, on_progress, augment,
                             snapshot)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # a failed or cancelled run leaves nothing behind
        raise
    os.replace(partial, out_dir)
    if on_progress:
        on_progress("done", 1, 1)
    return RunResult(run_dir=out_dir, strategy=result[0], report=result[1], metrics=result[2])


def _train_into(partial: Path, labeled: ImageSet, strategy: Strategy, backbone: Backbone, protocol: str, seed: int,
                on_step, on_progress, augment, snapshot) -> tuple[Strategy, EvaluationReport, dict]:
    config = _run_config(labeled, strategy, backbone, protocol, seed, augment, snapshot)
    write_json_atomic(partial / "config.json", config)
    started = time.perf_counter()
    report = evaluate(strategy, labeled, backbone, protocol=protocol, seed=seed,
                      progress=(lambda d, t: on_progress("evaluate", d, t)) if on_progress else None, on_step=on_step)
    evaluated = time.perf_counter()
    with open(partial / "metrics.jsonl", "a", encoding="utf-8") as log_file:
        def log_step(step: StepLog) -> None:
            log_file.write(json.dumps(step.to_dict()) + "\n")
            log_file.flush()
            if on_step:
                on_step(step)

        if on_progress:
            on_progress("fit", 0, 1)
        fitted = strategy.clone().fit(labeled, backbone=backbone, on_step=log_step)
    finished = time.perf_counter()
    fitted.save(partial)
    metrics = {**report.summary(), "classes": report.classes, "confusion": report.confusion,
               "evaluation_seconds": evaluated - started, "fit_seconds": finished - evaluated,
               "train_seconds": finished - started, "n_images": len(labeled)}
    write_json_atomic(partial / "metrics.json", metrics)
    write_json_atomic(partial / "predictions.json", _predictions(labeled, report))
    return fitted, report, metrics


def _run_config(images: ImageSet, strategy: Strategy, backbone: Backbone, protocol: str, seed: int,
                augment: dict | None, snapshot: dict | None) -> dict:
    device = pick_device()
    return {"fsl_app_version": __version__, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "strategy": strategy.name, "params": strategy.get_params(), "backbone": backbone.spec(),
            "protocol": protocol, "seed": seed, "augment": augment, "classes": images.classes,
            "class_counts": images.class_counts(), "device": describe_device(device),
            "torch": torch.__version__, "python": platform.python_version(),
            "data": snapshot or {"images": [{"sha256": r.sha256, "label": r.label, "path": str(r.path)}
                                            for r in images.records]}}


def _predictions(images: ImageSet, report: EvaluationReport) -> list[dict]:
    return [{"index": index, "path": str(images[index].path), "sha256": images[index].sha256,
             "true": report.classes[true], "predicted": report.classes[pred],
             "probabilities": dict(zip(report.classes, proba))}
            for index, true, pred, proba in zip(report.test_indices, report.y_true, report.y_pred,
                                                report.probabilities)]


def read_run(run_dir: str | Path) -> dict:
    """config, metrics, step log and predictions of a run folder, as plain data (no model loading)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json). Pass a folder made by "
                                "`fsl-app train`.")
    data = {"run_dir": str(run_dir), "name": run_dir.name,
            "config": json.loads((run_dir / "config.json").read_text(encoding="utf-8"))}
    for name in ("metrics", "predictions"):
        path = run_dir / f"{name}.json"
        data[name] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    steps = run_dir / "metrics.jsonl"
    data["steps"] = [json.loads(line) for line in steps.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if steps.is_file() else []
    return data


def list_runs(root: str | Path) -> list[dict]:
    """Finished runs under ``root`` (newest first); unfinished ``.partial`` folders are skipped."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [read_run(path) for path in root.iterdir()
            if path.is_dir() and not path.name.endswith(PARTIAL_SUFFIX) and (path / "metrics.json").is_file()]
    return sorted(runs, key=lambda run: run["config"].get("created_at", ""), reverse=True)


def load_run(run_dir: str | Path) -> tuple[Strategy, Backbone]:
    """The fitted strategy and its backbone from a run folder; the backbone weights must be the ones trained on."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.json").is_file():
        raise FileNotFoundError(f"{run_dir} holds no model (model.json). Pass a finished run folder.")
    meta = json.loads((run_dir / "model.json").read_text(encoding="utf-8"))
    spec = meta["backbone"]
    backbone = load_backbone(spec["name"], spec["weights"])
    if not spec.get("source", "").startswith("tuned") and backbone.id != spec["id"]:
        raise ValueError(f"the backbone weights found now ({backbone.id}) differ from those the run was trained "
                         f"with ({spec['id']}). Reinstall the same weights or retrain the run.")
    return load_strategy(run_dir, backbone), backbone


def strategy_from_config(name: str, params: dict) -> Strategy:
    return create_strategy(name, **params)
