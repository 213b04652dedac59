"""A studio training job: a :class:`TrainRequest` (plain data) becomes a run folder recorded in its project.

The generic :class:`fsl_app.jobs.JobQueue` runs the function :func:`training_work` returns; it reports its phases
by name and every training step, and stops at the next batch after a cancel. Backbones stay loaded between jobs.
A strategy that learns from unlabeled images (``uses_unlabeled``) gets the project's unlabeled images as its pool
unless the request says ``use_pool=False``.
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .atomic import write_bytes_atomic
from .backbones import DEFAULT_BACKBONE, TEST_BACKBONES, load_backbone, offering_test_backbones
from .jobs import JobContext, JobQueue, JobView
from .comparison import ProtocolPlan, plan_comparison
from .run_tables import project_runs, runs_dir
from .runs import PARTIAL_SUFFIX, new_run_name, train_run
from .strategies import FeatureStrategy, create_strategy, get_strategy_class, interrupt_check, list_strategies

PROJECT_PIPELINE = "project pipeline"  # an ``augment`` value: the pipeline saved with the project
WEIGHTS_FOLDER = "weights"
PHASE_NAMES = {"evaluate": "evaluating (fit and test on each split)", "fit": "fitting on every labeled image",
               "done": "saving the run"}
CACHED_BACKBONES = 3
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
SAMPLE_STRATEGIES = ("linear", "protonet")  # the sample's first runs: two that score differently on it


@dataclass(frozen=True)
class TrainRequest:
    """Everything a training job needs; plain data so it can be shown and queued."""

    project_path: str
    backbone: str
    weights: str
    strategy: str
    params: dict
    protocol: str = "auto"
    seed: int = 0
    use_pool: bool = True  # give the project's unlabeled images to a strategy that learns from them

    def uses_pool(self) -> bool:
        """True when the job trains with the project's unlabeled images (pool-aware strategy, pool wanted)."""
        return self.use_pool and strategy_uses_pool(self.strategy)

    def title(self) -> str:
        pool = ", without the pool" if strategy_uses_pool(self.strategy) and not self.use_pool else ""
        return f"{self.strategy} on {self.backbone} ({self.protocol}, seed {self.seed}{pool})"


def strategy_uses_pool(strategy: str) -> bool:
    """Whether the registered strategy ``strategy`` learns from unlabeled images (False for an unknown name, which
    the job then refuses in words)."""
    try:
        return get_strategy_class(strategy).uses_unlabeled
    except ValueError:
        return False


# --- hyperparameters ------------------------------------------------------------------------------------------------

def resolve_params(strategy: str, values: dict, *, seed: int, project_augment: dict | None) -> dict:
    """Turn picker values into constructor arguments: the seed, and the project's pipeline for ``augment``."""
    params = dict(values)
    if "seed" in get_strategy_class(strategy).param_names():
        params["seed"] = seed
    if params.get("augment") == PROJECT_PIPELINE:
        params["augment"] = project_augment if project_augment is not None else "light"
    return params


def default_params(strategy: str, *, seed: int, project_augment: dict | None) -> dict:
    """Constructor arguments with every default; ``augment`` follows the project's pipeline."""
    values = {spec.name: (PROJECT_PIPELINE if spec.kind == "augment" else spec.default)
              for spec in get_strategy_class(strategy).param_specs()}
    return resolve_params(strategy, values, seed=seed, project_augment=project_augment)


def strategy_trains_backbone(name: str, params: dict) -> bool:
    """True when the strategy, built with ``params``, trains the backbone (it is refitted on images for every split
    instead of deciding on cached frozen features)."""
    return not isinstance(create_strategy(name, **params), FeatureStrategy)


def requests_for_all_strategies(project_path: str | Path, backbone: str, weights: str, protocol: str, seed: int,
                                project_augment: dict | None, *, past_runs: Sequence[dict] | None = None
                                ) -> tuple[ProtocolPlan, list[TrainRequest]]:
    """One request per registered strategy with its default hyperparameters, and the plan that resolved ``protocol``.

    ``auto`` is resolved once for the whole set (:func:`fsl_app.comparison.plan_comparison` on the project's labeled
    images), so every request carries the same concrete protocol and seed and the runs can be compared image by
    image. ``past_runs`` (default: the project's finished runs) rate the time estimate. Raises ValueError when the
    project has no labeled image.
    """
    from .store import Project

    params = {name: default_params(name, seed=seed, project_augment=project_augment) for name in list_strategies()}
    project = Project(project_path)
    try:
        y = project.image_set(labeled_only=True).label_indices()
    finally:
        project.close()
    runs = project_runs(project_path) if past_runs is None else past_runs
    trainers = {name for name, values in params.items() if strategy_trains_backbone(name, values)}
    plan = plan_comparison(list(params), y, trains_backbone=trainers, requested=protocol, past_runs=runs,
                           backbone=backbone)
    requests = [TrainRequest(str(project_path), backbone, weights, name, values, plan.protocol, seed)
                for name, values in params.items()]
    return plan, requests


def save_weights_file(project_path: str | Path, name: str, data: bytes) -> Path:
    """Store an uploaded checkpoint in the project folder and return its path (a request's ``weights``)."""
    safe_name = Path(name).name
    if not safe_name or safe_name.startswith("."):
        safe_name = "weights.pth"
    path = Path(project_path) / WEIGHTS_FOLDER / safe_name
    write_bytes_atomic(path, data)
    return path


# --- the job --------------------------------------------------------------------------------------------------------

_BACKBONES: dict[tuple[str, str], Any] = {}
_BACKBONES_LOCK = threading.Lock()


def cached_backbone(name: str, weights: str):
    """The last few backbones stay loaded; a checkpoint file is read again each time (it may change on disk)."""
    if Path(weights).suffix in CHECKPOINT_SUFFIXES:
        return load_backbone(name, weights)
    with _BACKBONES_LOCK:
        key = (name, weights)
        if key not in _BACKBONES:
            if len(_BACKBONES) >= CACHED_BACKBONES:
                _BACKBONES.pop(next(iter(_BACKBONES)))
            _BACKBONES[key] = load_backbone(name, weights)
        return _BACKBONES[key]


def training_work(request: TrainRequest) -> Callable[[JobContext], dict]:
    """The job function for a request: train, write the run folder, record it in the project."""

    def work(context: JobContext) -> dict:
        from .store import Project

        project = Project(request.project_path)
        try:
            context.progress("reading the images", 0, 1)
            images = project.image_set(labeled_only=not request.uses_pool())
            labeled, pool = images.labeled(), images.unlabeled() if request.uses_pool() else None
            context.progress(f"loading backbone {request.backbone}", 0, 1)
            backbone = cached_backbone(request.backbone, request.weights)
            strategy = create_strategy(request.strategy, **request.params)
            out_dir = runs_dir(project.path) / new_run_name(request.strategy)
            augment = request.params.get("augment") if isinstance(request.params.get("augment"), dict) else None
            context.progress(PHASE_NAMES["evaluate"], 0, 1)
            try:
                with interrupt_check(context.check_cancelled):  # Cancel is honoured between batches
                    result = train_run(labeled, strategy, backbone, out_dir, protocol=request.protocol,
                                       seed=request.seed, on_step=context.step, on_progress=_phase_names(context),
                                       augment=augment, pool=pool)
            except BaseException:
                shutil.rmtree(out_dir.with_name(out_dir.name + PARTIAL_SUFFIX), ignore_errors=True)
                raise
            config = json.loads((result.run_dir / "config.json").read_text(encoding="utf-8"))
            run_id = project.record_run(result.run_dir, config, labeled)
            return {"run_dir": str(result.run_dir), "run_id": run_id, "metrics": result.metrics}
        finally:
            project.close()

    return work


def _phase_names(context: JobContext) -> Callable[[str, int, int], None]:
    def report(phase: str, done: int, total: int) -> None:
        context.progress(PHASE_NAMES.get(phase, phase), done, total)

    return report


def submit_training(queue: JobQueue, request: TrainRequest, *, owner: str) -> str:
    """Queue a request; returns the job id. The request travels as the job's ``meta`` (for :func:`job_progress`)."""
    return queue.submit(training_work(request), title=request.title(), owner=owner, meta=asdict(request))


def job_progress(view: JobView) -> tuple[float, str]:
    """Progress bar value and text of a running training job: the phase, its splits, the epoch of the fit."""
    fraction, text = view.fraction, view.phase
    if view.total > 1:
        text += f" ({view.done}/{view.total})"
    params = (view.meta or {}).get("params") or {}
    planned = params.get("epochs") or params.get("finetune_episodes")
    if view.steps and planned:
        epoch = view.steps[-1].get("epoch") or view.steps[-1].get("step", 0)
        fraction = min(1.0, epoch / planned)
        text += f" · fit {view.fit_number}, epoch {epoch}/{planned}"
    return fraction, f"{text} · {view.elapsed_s:.0f} s"


# --- the sample project ---------------------------------------------------------------------------------------------

def sample_backbone() -> tuple[str, str]:
    """(backbone, weights) for the sample run: the packaged offline default, or the tiny test model in test mode."""
    if offering_test_backbones():
        return TEST_BACKBONES[0], "random"
    return DEFAULT_BACKBONE, "auto"


def start_sample(queue: JobQueue) -> tuple[str, list[str]]:
    """Create (or top up) the sample project and queue one run per strategy of SAMPLE_STRATEGIES (a first Compare
    page); returns (project name, job ids)."""
    from .sample_data import load_sample_project

    project = load_sample_project()
    try:
        backbone, weights = sample_backbone()
        requests = [TrainRequest(str(project.path), backbone, weights, strategy,
                                 default_params(strategy, seed=0, project_augment=None), "auto", 0)
                    for strategy in SAMPLE_STRATEGIES]
        return project.name, [submit_training(queue, request, owner=project.name) for request in requests]
    finally:
        project.close()
