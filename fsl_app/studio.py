"""What the studio pages compute, without Streamlit: pickers, training jobs, run tables, maps and predictions.

The pages (``pages/*.py``) stay thin: they ask this module for plain data (lists, dicts, PIL images, file paths) and
render it. Everything here can be unit-tested without a browser and without Streamlit.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import threading
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from . import augment as augment_lib
from .backbones import SUGGESTED_BACKBONES, BackboneError, describe_backbone, load_backbone
from .dataset import ImageRecord, ImageSet
from .images import ImageError, decode_image, load_image, sha256_bytes, thumbnail
from .jobs import JobContext, JobQueue
from .runs import PARTIAL_SUFFIX, list_runs, load_run, new_run_name, read_run, train_run
from .strategies import create_strategy, get_strategy_class, interrupt_check, list_strategies

TEST_BACKBONES_ENV = "FSL_APP_TEST_BACKBONES"
TEST_BACKBONES = ("test_efficientnet", "test_vit")
RUNS_FOLDER = "runs"
WEIGHTS_FOLDER = "weights"
AUGMENT_FILE = "augment.json"
PROJECT_AUGMENT = "project pipeline"

PROTOCOL_LABELS = {
    "auto": "auto (leave-one-out for few images, else 5-fold; hold-out for fine-tuning)",
    "loo": "leave-one-out (every image tested once)",
    "kfold": "stratified k-fold (5 folds)",
    "holdout": "hold-out (25 % of each class)",
}


# --- projects and their runs ----------------------------------------------------------------------------------------

def runs_dir(project) -> Path:
    """Runs of a project live inside its folder."""
    return Path(project.path) / RUNS_FOLDER


def project_runs(project) -> list[dict]:
    """Finished runs of the project, newest first (see :func:`fsl_app.runs.read_run` for the fields)."""
    return list_runs(runs_dir(project))


def read_run_folder(run_dir: str | Path) -> dict:
    """config, metrics, steps and predictions of one run folder."""
    return read_run(run_dir)


def runs_by_name(runs: list[dict]) -> dict[str, dict]:
    return {run["name"]: run for run in runs}


def best_run(runs: list[dict]) -> dict | None:
    """The run with the highest held-out accuracy (the newest among equals), or None."""
    return max(runs, key=lambda run: (run["metrics"] or {}).get("accuracy", 0.0), default=None)  # runs: newest first


def percent(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f} %"


def accuracy_text(metrics: dict) -> str:
    """'83.3 % ± 12.1' (95 % confidence interval half-width)."""
    accuracy, ci95 = metrics.get("accuracy"), metrics.get("ci95")
    if accuracy is None:
        return "–"
    if ci95 is None or ci95 != ci95:  # NaN: no test images
        return percent(accuracy)
    return f"{100 * accuracy:.1f} % ± {100 * ci95:.1f}"


def run_label(run: dict) -> str:
    """Short name of a run for pickers and legends."""
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
            "accuracy %": _pct(metrics.get("accuracy")), "± 95 % CI": _pct(metrics.get("ci95")),
            "balanced acc %": _pct(metrics.get("balanced_accuracy")), "macro F1 %": _pct(metrics.get("macro_f1")),
            "images": metrics.get("n_images"), "train time s": _round(metrics.get("train_seconds")),
            "date": (config.get("created_at") or "")[:19].replace("T", " "),
        })
    return rows


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
    rows = []
    for step in steps:
        for metric in ("loss", "train_acc", "val_acc"):
            if step.get(metric) is not None:
                rows.append({"run": series, "step": step["step"], "epoch": step.get("epoch"), "metric": metric,
                             "value": step[metric]})
    return rows


def per_class_rows(runs: list[dict]) -> list[dict]:
    rows = []
    for run in runs:
        for name, value in ((run["metrics"] or {}).get("per_class_accuracy") or {}).items():
            rows.append({"run": run_label(run), "class": name, "accuracy %": round(100 * value, 1)})
    return rows


def misclassified(run: dict) -> list[dict]:
    """Held-out images the run got wrong, least confident first: path, true, predicted, probability."""
    wrong = [p for p in run.get("predictions") or [] if p["true"] != p["predicted"]]
    for item in wrong:
        item["probability"] = item["probabilities"].get(item["predicted"], 0.0)
    return sorted(wrong, key=lambda item: -item["probability"])


# --- backbones, strategies, protocols -------------------------------------------------------------------------------

def test_backbones_enabled() -> bool:
    return os.environ.get(TEST_BACKBONES_ENV, "0") not in ("", "0", "false", "False")


def backbone_names() -> list[str]:
    """Names offered in the backbone picker (tiny test models first when FSL_APP_TEST_BACKBONES is set)."""
    return (list(TEST_BACKBONES) if test_backbones_enabled() else []) + list(SUGGESTED_BACKBONES)


@dataclass(frozen=True)
class BackboneSummary:
    name: str
    availability: str
    default_weights: str
    params_m: float | None
    input_size: tuple[int, int, int] | None
    error: str | None = None

    @property
    def needs_download(self) -> bool:
        return self.availability.startswith("download") or self.availability.startswith("needs")


def backbone_summary(name: str) -> BackboneSummary:
    """Availability, size and input resolution of a backbone, decided from local files only."""
    try:
        info = describe_backbone(name, with_size=True)
    except Exception as error:  # noqa: BLE001 - timm raises RuntimeError for unknown names
        from .jobs import describe_error

        message = (f"{name!r} is not a timm model name. Pick one from the list or check the spelling (names as in "
                   "timm.list_models()).") if "unknown model" in str(error).lower() else \
            f"{name} cannot be built here: {describe_error(error)}"
        return BackboneSummary(name, "unknown", "random", None, None, message)
    default = "random" if name in TEST_BACKBONES else info.default_weights
    return BackboneSummary(name, info.availability, default, info.num_params_m, info.input_size)


def device_text() -> str:
    from .features import describe_device, pick_device

    return describe_device(pick_device())


@dataclass(frozen=True)
class ParamSpec:
    """How to render one strategy hyperparameter: kind is choice, bool, int, float, augment or text."""

    name: str
    default: Any
    kind: str
    choices: tuple = ()
    help: str = ""


PARAM_HELP = {
    "classifier": "logreg: logistic regression; svm: linear SVM; rbf: SVM with a Gaussian kernel",
    "C": "inverse regularisation strength: larger fits the training images more closely",
    "normalize": "cl2n: centre on the mean feature, then scale to unit length (SimpleShot); l2; none",
    "calibrate": "fit a temperature so that SVM scores become honest probabilities",
    "distance": "how a query is compared with the class prototypes",
    "finetune_episodes": "0 keeps the backbone frozen; otherwise episodes of ProtoNet training first",
    "finetune_lr": "learning rate of the episodic fine-tuning",
    "mode": "head: train only the new head; last_n: also the last N layer groups; full: every layer (slowest, "
            "and the most accurate on images far from ImageNet photos)",
    "last_n": "layer groups trained in mode last_n",
    "epochs": "passes over the training images (early stopping may end sooner)",
    "lr": "learning rate of the head (the backbone gets lr x backbone_lr_scale)",
    "augment": "train-time augmentation: the pipeline saved on the Augment page, or a preset",
    "l2sp": "pull the weights towards their pretrained values (0: off)",
    "patience": "epochs without validation gain before stopping",
    "val_fraction": "share of each class held out to pick the best epoch (only when every class has 10 images or more)",
    "head_init": "linear_probe: the new head starts as a logistic regression on the frozen features (LP-FT); random",
}


def strategy_names() -> list[str]:
    return list_strategies()


def param_specs(strategy: str) -> list[ParamSpec]:
    """The hyperparameters of a strategy from ``param_defaults()``; ``seed`` is left out (the page sets it)."""
    cls = get_strategy_class(strategy)
    specs = []
    for name, default in cls.param_defaults().items():
        if name == "seed":
            continue
        specs.append(ParamSpec(name, default, *_kind_and_choices(cls, name, default), PARAM_HELP.get(name, "")))
    return specs


def _kind_and_choices(cls, name: str, default: Any) -> tuple[str, tuple]:
    if name == "augment":
        return "augment", (PROJECT_AUGMENT, *augment_lib.PRESETS)
    choices = _choices_for(cls, name)
    if choices:
        return "choice", tuple(choices)
    if isinstance(default, bool):
        return "bool", ()
    if isinstance(default, int):
        return "int", ()
    if isinstance(default, float):
        return "float", ()
    return "text", ()


def _choices_for(cls, name: str) -> tuple | None:
    """Allowed values from the strategy module's constants (``mode`` -> MODES, ``normalize`` -> NORMALIZATIONS)."""
    import importlib
    import sys

    from .strategies import _heads

    if name == "normalize":
        return _heads.NORMALIZATIONS
    module = sys.modules.get(cls.__module__) or importlib.import_module(cls.__module__)
    value = getattr(module, f"{name.upper()}S", None)
    return tuple(value) if isinstance(value, (tuple, list)) else None


def resolve_params(strategy: str, values: dict, *, seed: int, project_augment: dict | None) -> dict:
    """Turn picker values into constructor arguments: the seed, and the project's pipeline for ``augment``."""
    params = dict(values)
    if "seed" in get_strategy_class(strategy).param_names():
        params["seed"] = seed
    if params.get("augment") == PROJECT_AUGMENT:
        params["augment"] = project_augment if project_augment is not None else "light"
    return params


# --- augmentation ---------------------------------------------------------------------------------------------------

@dataclass
class AugmentSettings:
    """The sliders of a custom pipeline; a probability of 0 (or a neutral value) leaves a transform out."""

    horizontal_flip: float = 0.5
    vertical_flip: float = 0.0
    rotate_degrees: int = 15
    crop_min_scale: float = 1.0  # random resized crop keeps at least this share of the image; 1.0: no crop
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.1
    hue: float = 0.0
    color_jitter: float = 0.5  # probability
    blur: float = 0.0
    noise: float = 0.0
    coarse_dropout: float = 0.0

    @classmethod
    def from_dict(cls, data: dict | None) -> "AugmentSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


CROP_SIZE = (224, 224)


def custom_pipeline(settings: AugmentSettings):
    """An albumentations Compose from the sliders (transforms with probability 0 are left out)."""
    import albumentations as A

    s = settings
    transforms = []
    if s.crop_min_scale < 1.0:
        transforms.append(A.RandomResizedCrop(size=CROP_SIZE, scale=(s.crop_min_scale, 1.0), p=1.0))
    if s.horizontal_flip > 0:
        transforms.append(A.HorizontalFlip(p=s.horizontal_flip))
    if s.vertical_flip > 0:
        transforms.append(A.VerticalFlip(p=s.vertical_flip))
    if s.rotate_degrees > 0:
        transforms.append(A.Rotate(limit=s.rotate_degrees, p=0.7))
    if s.color_jitter > 0 and max(s.brightness, s.contrast, s.saturation, s.hue) > 0:
        transforms.append(A.ColorJitter(brightness=s.brightness, contrast=s.contrast, saturation=s.saturation,
                                        hue=s.hue, p=s.color_jitter))
    if s.blur > 0:
        transforms.append(A.GaussianBlur(blur_limit=(3, 7), p=s.blur))
    if s.noise > 0:
        transforms.append(A.GaussNoise(std_range=(0.05, 0.15), p=s.noise))
    if s.coarse_dropout > 0:
        transforms.append(A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.2),
                                          hole_width_range=(0.05, 0.2), p=s.coarse_dropout))
    return A.Compose(transforms)


def pipeline_dict(choice: str, settings: AugmentSettings | None = None) -> dict:
    """albumentations' serialized dict for a preset name or ``custom`` (with its settings), as plain JSON data."""
    compose = custom_pipeline(settings or AugmentSettings()) if choice == "custom" else augment_lib.preset(choice)
    return json.loads(json.dumps(augment_lib.to_dict(compose)))


def describe_pipeline(pipeline: dict) -> list[str]:
    """One line per transform: 'HorizontalFlip (p=0.5)'."""
    lines = []
    for item in pipeline.get("transform", {}).get("transforms", []):
        name = item.get("__class_fullname__", "?").rsplit(".", 1)[-1]
        lines.append(f"{name} (p={item.get('p', 1.0):g})")
    return lines


@dataclass
class ProjectAugment:
    choice: str = "light"  # a preset name or "custom"
    settings: AugmentSettings = field(default_factory=AugmentSettings)
    pipeline: dict | None = None

    def resolved_pipeline(self) -> dict:
        return self.pipeline if self.pipeline is not None else pipeline_dict(self.choice, self.settings)


def load_project_augment(project) -> ProjectAugment:
    """The pipeline saved with the project (``augment.json``), else the ``light`` preset."""
    path = Path(project.path) / AUGMENT_FILE
    if not path.is_file():
        return ProjectAugment()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ProjectAugment(data.get("choice", "light"), AugmentSettings.from_dict(data.get("settings")),
                              data.get("pipeline"))
    except (OSError, ValueError, TypeError):
        return ProjectAugment()


def save_project_augment(project, choice: str, settings: AugmentSettings) -> dict:
    """Save the pipeline in the project folder; returns the albumentations dict fine-tuning will use."""
    pipeline = pipeline_dict(choice, settings)
    augment_lib.build_augment(pipeline)  # refuse to save what cannot be rebuilt
    path = Path(project.path) / AUGMENT_FILE
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps({"choice": choice, "settings": asdict(settings), "pipeline": pipeline}, indent=2),
                    encoding="utf-8")
    os.replace(temp, path)
    return pipeline


def augment_preview(paths: list[Path], pipeline: dict, *, copies: int = 4, seed: int = 0,
                    max_side: int = 256) -> list[list]:
    """Rows of ``copies`` augmented PIL images per source image; the same seed gives the same grid."""
    compose = augment_lib.build_augment(pipeline)
    sources = [thumbnail(load_image(path), max_side) for path in paths]
    return augment_lib.preview(compose, sources, copies=copies, seed=seed)


# --- training as a background job -----------------------------------------------------------------------------------

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

    def title(self) -> str:
        return f"{self.strategy} on {self.backbone} ({self.protocol}, seed {self.seed})"


_BACKBONES: dict[tuple[str, str], Any] = {}
_BACKBONES_LOCK = threading.Lock()


def cached_backbone(name: str, weights: str):
    """Backbones are loaded once per process (weights files are not: they may change on disk)."""
    if Path(weights).suffix in (".pth", ".pt", ".bin", ".safetensors"):
        return load_backbone(name, weights)
    with _BACKBONES_LOCK:
        key = (name, weights)
        if key not in _BACKBONES:
            if len(_BACKBONES) >= 3:
                _BACKBONES.pop(next(iter(_BACKBONES)))
            _BACKBONES[key] = load_backbone(name, weights)
        return _BACKBONES[key]


def training_work(request: TrainRequest) -> Callable[[JobContext], dict]:
    """The job function for a :class:`TrainRequest`: train, write the run folder, record it in the project."""

    def work(context: JobContext) -> dict:
        from .store import Project

        project = Project(request.project_path)
        try:
            context.progress("reading the labeled images", 0, 1)
            images = project.image_set(labeled_only=True)
            context.progress(f"loading backbone {request.backbone}", 0, 1)
            backbone = cached_backbone(request.backbone, request.weights)
            strategy = create_strategy(request.strategy, **request.params)
            out_dir = runs_dir(project) / new_run_name(request.strategy)
            augment = request.params.get("augment") if isinstance(request.params.get("augment"), dict) else None
            context.progress(PHASE_NAMES["evaluate"], 0, 1)
            try:
                with interrupt_check(context.check_cancelled):  # Cancel is honoured between batches
                    result = train_run(images, strategy, backbone, out_dir, protocol=request.protocol,
                                       seed=request.seed, on_step=context.step, on_progress=_phase_names(context),
                                       augment=augment)
            except BaseException:
                shutil.rmtree(out_dir.with_name(out_dir.name + PARTIAL_SUFFIX), ignore_errors=True)
                raise
            config = json.loads((result.run_dir / "config.json").read_text(encoding="utf-8"))
            run_id = project.record_run(result.run_dir, config, images)
            return {"run_dir": str(result.run_dir), "run_id": run_id, "metrics": result.metrics}
        finally:
            project.close()

    return work


PHASE_NAMES = {"evaluate": "evaluating (fit and test on each split)", "fit": "fitting on every labeled image",
               "done": "saving the run"}


def _phase_names(context: JobContext) -> Callable[[str, int, int], None]:
    def report(phase: str, done: int, total: int) -> None:
        context.progress(PHASE_NAMES.get(phase, phase), done, total)

    return report


def job_progress(view) -> tuple[float, str]:
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


def submit_training(queue: JobQueue, request: TrainRequest, *, owner: str) -> str:
    return queue.submit(training_work(request), title=request.title(), owner=owner, meta=asdict(request))


def default_params(strategy: str, *, seed: int, project_augment: dict | None) -> dict:
    values = {spec.name: (PROJECT_AUGMENT if spec.kind == "augment" else spec.default)
              for spec in param_specs(strategy)}
    return resolve_params(strategy, values, seed=seed, project_augment=project_augment)


def requests_for_all_strategies(project_path: str, backbone: str, weights: str, protocol: str, seed: int,
                                project_augment: dict | None) -> list[TrainRequest]:
    """One request per registered strategy with its default hyperparameters and the same protocol and seed."""
    return [TrainRequest(str(project_path), backbone, weights, name,
                         default_params(name, seed=seed, project_augment=project_augment), protocol, seed)
            for name in strategy_names()]


def save_weights_file(project, name: str, data: bytes) -> Path:
    """Store an uploaded checkpoint in the project folder and return its path (for ``weights``)."""
    safe = Path(name).name or "weights.pth"
    folder = Path(project.path) / WEIGHTS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / safe
    path.write_bytes(data)
    return path


# --- embeddings, predictions, suggestions ---------------------------------------------------------------------------

def fitted_run(run_dir: str | Path):
    """The fitted strategy of a run folder; the error says what to do when its backbone weights are missing."""
    try:
        strategy, _ = load_run(run_dir)
    except BackboneError as error:
        raise BackboneError(f"this run's backbone cannot be loaded here: {error}") from error
    return strategy


def run_image_set(run: dict) -> ImageSet:
    """The labeled images a run trained on, in the order of its predictions' indices."""
    records = (run["config"].get("data") or {}).get("images") or []
    return ImageSet(ImageRecord(path=Path(r["path"]), sha256=r["sha256"], label=r["label"])
                    for r in records if Path(r["path"]).is_file())


@dataclass
class EmbeddingMap:
    """Points of a 2-D map: x, y, label, file, role (held-out / training only / prototype), correct."""

    points: list[dict]
    method: str
    note: str = ""


def embedding_map(strategy, run: dict, method: str = "pca", *, seed: int = 0,
                  names: dict[str, str] | None = None) -> EmbeddingMap:
    """2-D map of the space the strategy decides in, coloured by class; ProtoNet prototypes added as points.

    ``names`` maps sha256 to the imported file name shown on hover (default: the stored file name).
    """
    import numpy as np

    from .projection import project_2d

    images = run_image_set(run)
    if len(images) == 0:
        return EmbeddingMap([], method, "The images of this run are no longer on disk.")
    vectors = strategy.embed(images).detach().float().cpu().numpy()
    labels = images.labels
    prototypes = []
    if run["config"].get("strategy") == "protonet":
        prototypes = [(name, vectors[[i for i, label in enumerate(labels) if label == name]].mean(0))
                      for name in sorted(set(labels))]
    stacked = np.concatenate([vectors, np.stack([v for _, v in prototypes])]) if prototypes else vectors
    coordinates = project_2d(stacked, method, seed=seed)
    outcome = {p["index"]: p["true"] == p["predicted"] for p in run.get("predictions") or []}
    points = [{"x": float(coordinates[i, 0]), "y": float(coordinates[i, 1]), "label": labels[i],
               "file": (names or {}).get(images[i].sha256, images[i].path.name), "path": str(images[i].path),
               "role": "held-out (evaluated)" if i in outcome else "training only",
               "correct": outcome.get(i)} for i in range(len(images))]
    points += [{"x": float(coordinates[len(images) + j, 0]), "y": float(coordinates[len(images) + j, 1]),
                "label": name, "file": f"prototype of {name}", "path": None, "role": "prototype", "correct": None}
               for j, (name, _) in enumerate(prototypes)]
    return EmbeddingMap(points, method)


@dataclass
class Prediction:
    top_k: list[dict]  # [{label, probability}], most probable first
    nearest: list[dict] = field(default_factory=list)  # [{path, label, similarity}]


def predict_image(strategy, data: bytes, name: str, *, top_k: int = 3, training: ImageSet | None = None,
                  neighbours: int = 5) -> Prediction:
    """Top-k classes of one uploaded image and its nearest training images in the strategy's embedding space."""
    decode_image(data, name)  # raises ImageError with a readable reason
    with tempfile.TemporaryDirectory(prefix="fsl_app_try_") as folder:
        path = Path(folder) / f"query{Path(name).suffix.lower() or '.png'}"
        path.write_bytes(data)
        query = ImageSet([ImageRecord(path=path, sha256=sha256_bytes(data), label=None)])
        probabilities = strategy.predict_proba(query)[0].float()
        values, indices = probabilities.topk(min(top_k, len(strategy.classes_)))
        top = [{"label": strategy.classes_[i], "probability": float(v)}
               for v, i in zip(values.tolist(), indices.tolist())]
        nearest = _nearest(strategy, query, training, neighbours) if training is not None and len(training) else []
    return Prediction(top, nearest)


def _nearest(strategy, query: ImageSet, training: ImageSet, count: int) -> list[dict]:
    import torch

    both = strategy.embed(ImageSet(list(query.records) + list(training.records))).float()
    unit = torch.nn.functional.normalize(both, dim=1)
    similarity = (unit[1:] @ unit[0]).tolist()
    order = sorted(range(len(similarity)), key=lambda i: -similarity[i])[:count]
    return [{"path": str(training[i].path), "label": training[i].label, "similarity": similarity[i]} for i in order]


def suggestions_for(project, strategy, *, top: int = 24) -> list:
    """Unlabeled images ranked by how unsure the model is (smallest margin first)."""
    from .store import suggest_for_project

    return suggest_for_project(project, strategy, top=top)


def run_zip_bytes(run_dir: str | Path) -> bytes:
    """The run folder as a zip (config, metrics, predictions, model.safetensors + model.json)."""
    run_dir = Path(run_dir)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(run_dir.rglob("*")):
            if path.is_file():
                archive.write(path, f"{run_dir.name}/{path.relative_to(run_dir)}")
    return buffer.getvalue()


def readable_error(error: BaseException) -> str:
    """The message a page shows in st.error."""
    from .jobs import describe_error

    if isinstance(error, ImageError):
        return str(error)
    return describe_error(error)



# --- the sample project ---------------------------------------------------------------------------------------------

def sample_backbone() -> tuple[str, str]:
    """(backbone, weights) for the sample run: the packaged offline default, or the tiny test model in test mode."""
    from .backbones import DEFAULT_BACKBONE

    if test_backbones_enabled():
        return TEST_BACKBONES[0], "random"
    return DEFAULT_BACKBONE, "auto"


def start_sample(queue: JobQueue) -> tuple[str, str]:
    """Create (or top up) the sample project and queue a first linear-probe run; returns (project name, job id)."""
    from .sample_data import load_sample_project

    project = load_sample_project()
    try:
        backbone, weights = sample_backbone()
        request = TrainRequest(str(project.path), backbone, weights, "linear",
                               default_params("linear", seed=0, project_augment=None), "auto", 0)
        return project.name, submit_training(queue, request, owner=project.name)
    finally:
        project.close()


@dataclass(frozen=True)
class ProjectOverview:
    n_images: int
    n_labeled: int
    n_unlabeled: int
    n_classes: int
    n_runs: int
    best_run: dict | None
    warnings: list[str]


def project_overview(project) -> ProjectOverview:
    stats = project.stats()
    runs = project_runs(project)
    best = best_run(runs)
    return ProjectOverview(stats.n_images, stats.n_labeled, stats.n_unlabeled, len(stats.class_counts), len(runs),
                           best, list(stats.warnings))


def source_names(project) -> dict[str, str]:
    """sha256 -> the file name the image was imported under (run folders only know content paths)."""
    return {image.sha256: image.source_name for image in project.images()}


# --- export ---------------------------------------------------------------------------------------------------------

EXPORTS_FOLDER = "exports"
FORMAT_LABELS = {"onnx": "ONNX", "torchscript": "TorchScript", "bundle": "Bundle"}
FORMAT_HELP = {
    "onnx": ".onnx file: runs with onnxruntime alone, no PyTorch needed",
    "torchscript": ".pt file: runs with PyTorch alone",
    "bundle": ".zip: safetensors weights, ONNX model, predict scripts, requirements and a model card",
}


def export_formats() -> list[str]:
    """The formats fsl_app.export can write (empty while that module offers none)."""
    from . import export

    return list(getattr(export, "EXPORT_FORMATS", ()))


def export_model(project, run_dir: str | Path, format: str) -> Path:
    """Export a run once into the project's ``exports/`` folder (runs are immutable, so the file is reused)."""
    from . import export

    run_dir = Path(run_dir)
    suffix = export.FORMAT_SUFFIXES[format][0]
    out = Path(project.path) / EXPORTS_FOLDER / f"{run_dir.name}{suffix}"
    if out.is_file():
        return out
    return Path(export.export_run(run_dir, format, out))
