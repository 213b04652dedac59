"""Training runs: evaluate with an honest protocol, fit on all images, write an immutable run folder.

A run folder holds ``config.json`` (backbone, strategy params, augment, seed, data snapshot), ``metrics.jsonl`` (one
StepLog per line, appended live), ``metrics.json`` (final evaluation), ``predictions.json`` (per held-out image) and the
fitted model (``model.safetensors`` + ``model.json``) and its out-of-distribution autoencoder (``ood.safetensors``
+ ``ood.json``, see :mod:`fsl_app.ood`). ``pool_size`` in config and metrics counts the unlabeled
images the fits received (0 when the strategy ignores the pool); metrics add what the fitted strategy reports of its
pool use (``pool_used``, ``pseudo_labels``). It is written under ``<name>.partial`` and renamed when complete, so
a crash mid-training never leaves a half-written run that looks finished. The writing process holds a lock on
``<name>.partial/.writer.lock``; the kernel releases it when the process dies (``kill -9`` included), and
:func:`list_runs` removes a ``.partial`` folder whose lock is free.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

try:
    import fcntl
except ImportError:  # Windows: abandoned .partial folders are skipped by list_runs, not removed
    fcntl = None

from . import __version__
from .atomic import write_json_atomic
from .backbones import Backbone, at_input_size, leaked_classes, load_backbone
from .dataset import ImageSet
from .evaluation import EvaluationReport, evaluate
from .features import describe_device, pick_device
from .ood import fit_run_autoencoder
from .strategies import Strategy, StepLog, load_strategy

PARTIAL_SUFFIX = ".partial"
WRITER_LOCK = ".writer.lock"
UNLOCKED_PARTIAL_AGE_S = 3600.0  # a .partial without a lock file (older versions) is removed after this long


@dataclass
class RunResult:
    run_dir: Path
    strategy: Strategy
    report: EvaluationReport
    metrics: dict


def new_run_name(strategy_name: str) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{strategy_name}-{uuid.uuid4().hex[:6]}"


def train_run(images: ImageSet, strategy: Strategy, backbone: Backbone, out_dir: str | Path, *,
              protocol: str = "auto", seed: int = 0, on_step: Callable[[StepLog], None] | None = None,
              on_progress: Callable[[str, int, int], None] | None = None, augment: dict | None = None,
              snapshot: dict | None = None, pool: ImageSet | None = None,
              extra_config: dict | None = None) -> RunResult:
    """Evaluate ``strategy`` on ``images`` with ``protocol``, fit it on all of them and save the run in ``out_dir``.

    ``pool``: unlabeled images (their labels are ignored) given to every evaluation split's fit and to the final fit
    when the strategy ``uses_unlabeled``; other strategies train without it. ``on_progress(phase, done, total)``
    reports evaluation and fitting; ``on_step`` gets every training StepLog (the evaluation splits' fits, then the
    final fit; only the final fit's go to ``metrics.jsonl``). ``extra_config``: more keys for ``config.json`` (e.g.
    ``distillation``: the teacher a distilled student learned from).
    """
    labeled = images.labeled()
    labeled.check_trainable()
    pool = pool if strategy.uses_unlabeled and pool is not None and len(pool) else None
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists: runs are immutable. Choose another --out.")
    partial = out_dir.with_name(out_dir.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    lock = _hold_writer_lock(partial)
    try:
        result = _train_into(partial, labeled, pool, strategy, backbone, protocol, seed, on_step, on_progress,
                             augment, snapshot, extra_config or {})
        os.replace(partial, out_dir)
        (out_dir / WRITER_LOCK).unlink(missing_ok=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # a failed or cancelled run leaves nothing behind
        raise
    finally:
        if lock is not None:
            os.close(lock)
    if on_progress:
        on_progress("done", 1, 1)
    return RunResult(run_dir=out_dir, strategy=result[0], report=result[1], metrics=result[2])


def _train_into(partial: Path, labeled: ImageSet, pool: ImageSet | None, strategy: Strategy, backbone: Backbone,
                protocol: str, seed: int, on_step, on_progress, augment,
                snapshot, extra_config: dict) -> tuple[Strategy, EvaluationReport, dict]:
    pool_size = 0 if pool is None else len(pool)
    config = {**_run_config(labeled, strategy, backbone, protocol, seed, augment, snapshot), "pool_size": pool_size,
              **extra_config}
    write_json_atomic(partial / "config.json", config)
    started = time.perf_counter()
    report = evaluate(strategy, labeled, backbone, protocol=protocol, seed=seed, unlabeled=pool,
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
        fitted = strategy.clone().fit(labeled, backbone=backbone, unlabeled=pool, on_step=log_step)
    finished = time.perf_counter()
    fitted.save(partial)
    ood_seconds = fit_run_autoencoder(fitted, labeled, backbone, partial, seed=seed)
    metrics = {**report.summary(), "classes": report.classes, "confusion": report.confusion,
               "evaluation_seconds": evaluated - started, "fit_seconds": finished - evaluated,
               "train_seconds": finished - started, "n_images": len(labeled), **_pool_metrics(fitted, pool_size),
               **({"ood_seconds": ood_seconds} if ood_seconds is not None else {})}
    write_json_atomic(partial / "metrics.json", metrics)
    write_json_atomic(partial / "predictions.json", _predictions(labeled, report))
    return fitted, report, metrics


def _pool_metrics(fitted: Strategy, pool_size: int) -> dict:
    """``pool_size`` and the pool statistics the fitted strategy exposes: ``pool_used`` (pool images that shaped
    the head), ``pseudo_labels`` (pool images trained on as labeled)."""
    metrics = {"pool_size": pool_size}
    for key in ("pool_used", "pseudo_labels"):
        value = getattr(fitted, f"{key}_", None)
        if value is not None:
            metrics[key] = int(value)
    return metrics


def _run_config(images: ImageSet, strategy: Strategy, backbone: Backbone, protocol: str, seed: int,
                augment: dict | None, snapshot: dict | None) -> dict:
    device = pick_device()
    return {"fsl_app_version": __version__, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "strategy": strategy.name, "params": strategy.get_params(), "backbone": backbone.spec(),
            "protocol": protocol, "seed": seed, "augment": augment, "classes": images.classes,
            "class_counts": images.class_counts(), "device": describe_device(device),
            "torch": torch.__version__, "python": platform.python_version(),
            "data": snapshot or {"images": [{"sha256": r.sha256, "label": r.label, "path": str(r.path)}
                                            for r in images.records]},
            **_leakage(backbone, images.classes)}


def _leakage(backbone: Backbone, classes: list[str]) -> dict:
    """``leaked_classes``: the classes a base-trained backbone checkpoint was trained on too (only for such)."""
    if not backbone.provenance:
        return {}
    return {"leaked_classes": leaked_classes(backbone.provenance.get("base_classes"), classes)}


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
    """Finished runs under ``root`` (newest first). Unfinished ``.partial`` folders are never listed; those whose
    writer died (killed mid-training) are removed."""
    root = Path(root)
    if not root.is_dir():
        return []
    remove_abandoned_runs(root)
    runs = [read_run(path) for path in root.iterdir()
            if path.is_dir() and not path.name.endswith(PARTIAL_SUFFIX) and (path / "metrics.json").is_file()]
    return sorted(runs, key=lambda run: run["config"].get("created_at", ""), reverse=True)


def remove_abandoned_runs(root: str | Path) -> list[str]:
    """Delete the ``.partial`` run folders under ``root`` whose writing process is gone; returns their names."""
    removed = []
    for path in Path(root).iterdir():
        if path.name.endswith(PARTIAL_SUFFIX) and path.is_dir() and _is_abandoned(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def _hold_writer_lock(partial: Path) -> int | None:
    """Lock ``partial/.writer.lock`` for as long as this process lives or writes the run; the file appears already
    locked (created under a temporary name first), so no listing ever sees it free while the run is written."""
    if fcntl is None:
        return None
    temp = partial / f"{WRITER_LOCK}.{uuid.uuid4().hex}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.replace(temp, partial / WRITER_LOCK)
    return fd


def _is_abandoned(partial: Path) -> bool:
    """True when no live process holds the writer lock of ``partial`` (or, lockless, it is over an hour old)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(partial / WRITER_LOCK, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return time.time() - _mtime(partial) > UNLOCKED_PARTIAL_AGE_S
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # its writer is alive
    finally:
        os.close(fd)
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def load_run(run_dir: str | Path) -> tuple[Strategy, Backbone]:
    """The fitted strategy and its backbone from a run folder; the backbone weights must be the ones trained on.

    A run trained at another input size than the backbone's default (a distilled student at a lower resolution) gets
    its backbone back at that size.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "model.json").is_file():
        raise FileNotFoundError(f"{run_dir} holds no model (model.json). Pass a finished run folder.")
    meta = json.loads((run_dir / "model.json").read_text(encoding="utf-8"))
    spec = meta["backbone"]
    backbone = load_backbone(spec["name"], spec["weights"])
    stored_size = (spec.get("data_config") or {}).get("input_size")
    if stored_size and tuple(stored_size) != backbone.input_size:
        backbone = at_input_size(backbone, tuple(stored_size))
    if not spec.get("source", "").startswith("tuned") and backbone.id != spec["id"]:
        raise ValueError(f"the backbone weights found now ({backbone.id}) differ from those the run was trained "
                         f"with ({spec['id']}). Reinstall the same weights or retrain the run.")
    return load_strategy(run_dir, backbone), backbone
