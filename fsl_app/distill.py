"""Knowledge distillation: a finished run (the teacher) teaches a smaller or lower-resolution student backbone.

Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network" (NIPS 2014 workshop): the student matches
the teacher's temperature-softened class probabilities (KL divergence, scaled by T^2 so its gradients keep their size
as T grows) on every image it trains on, and the true class (cross-entropy) on the labeled ones:
``loss = (1 - alpha) * CE(student, label) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))``, the
recipe of timm's ``LogitDistillationTask``. The unlabeled pool is where distillation earns its keep in few-shot work:
the teacher labels it softly, so the student sees many more images than the handful that carry a label.

The teacher's "logits" are the log of its ``predict_proba`` (equal to its logits up to a per-row constant, which
softmax ignores), so any strategy can teach through the public contract. They are computed once per fit on the
un-augmented images; the student trains on augmented views of them (cheaper on a CPU than a teacher forward pass per
batch; Beyer et al. 2022 show that matching the teacher on the same view does better with long schedules).

The student is an ordinary run folder written by :func:`fsl_app.runs.train_run`: evaluated with the same protocols
(each split's student learns from a teacher refitted on that split's training images, so no held-out label reaches
it through the teacher), saved as a ``finetune`` model of the student backbone (``config.json`` records the recipe
under ``distillation``), listed on Compare and exported like any other run.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .augment import build_augment, seed_pipeline
from .backbones import Backbone, at_input_size, load_backbone
from .dataset import ImageRecord, ImageSet
from .features import pick_device
from .preprocess import working_side
from .runs import RunResult, load_run, new_run_name, read_run, train_run
from .strategies import StepLog, Strategy
from .strategies._training import AugmentedImages, freeze_batchnorm, warmup_cosine
from .strategies.base import check_interrupt
from .strategies.finetune import FineTune

log = logging.getLogger(__name__)

DEFAULT_TEMPERATURE = 4.0
DEFAULT_ALPHA = 0.7  # share of the distillation term (timm's LogitDistillationTask example: task weight 0.3)
DEFAULT_EPOCHS = 10
LOG_FLOOR = 1e-30  # teacher probabilities are clamped here before the log: an exact 0 would give -inf


class DistillationError(ValueError):
    """The teacher or the student cannot be used; the message says what to do instead."""


@dataclass
class Teacher:
    """A finished run loaded to teach: its fitted strategy, backbone and the (sha256, label) pairs it was fitted on."""

    run_dir: Path
    strategy: Strategy
    backbone: Backbone
    config: dict
    metrics: dict
    trained_on: frozenset = field(default_factory=frozenset)

    @property
    def classes(self) -> list[str]:
        return list(self.strategy.classes_)

    def fitted_for(self, support: ImageSet, unlabeled: ImageSet | None) -> Strategy:
        """The finished teacher when ``support`` is exactly what it was fitted on, else a copy of its recipe fitted on
        ``support`` (an evaluation split: the held-out images must not reach the student through the teacher)."""
        if frozenset((r.sha256, r.label) for r in support.records) == self.trained_on:
            return self.strategy
        pool = unlabeled if self.strategy.uses_unlabeled and unlabeled is not None and len(unlabeled) else None
        return self.strategy.clone().fit(support, backbone=self.backbone, unlabeled=pool)


def load_teacher(run_dir: str | Path) -> Teacher:
    """Load a finished run as a teacher; a run that no longer loads gives a DistillationError naming the fix."""
    run_dir = Path(run_dir)
    try:
        run = read_run(run_dir)
        strategy, backbone = load_run(run_dir)
    except Exception as error:  # noqa: BLE001 - missing files, weights or packages: one problem for the user
        raise DistillationError(f"the teacher run {run_dir.name} no longer loads ({_first_line(error)}). Retrain it, "
                                "restore its model files (model.json, model.safetensors) and backbone weights, or "
                                "pick another run as the teacher.") from error
    images = ((run["config"].get("data") or {}).get("images") or [])
    trained_on = frozenset((item["sha256"], item["label"]) for item in images if item.get("label") is not None)
    return Teacher(run_dir, strategy, backbone, run["config"], run["metrics"] or {}, trained_on)


def check_classes(teacher_classes: list[str], project_classes: list[str]) -> None:
    """Refuse a teacher whose classes differ from the project's, naming the classes on each side."""
    only_teacher = sorted(set(teacher_classes) - set(project_classes))
    only_project = sorted(set(project_classes) - set(teacher_classes))
    if only_teacher or only_project:
        parts = []
        if only_project:
            parts.append(f"the project has {', '.join(map(repr, only_project))} that the teacher never learned")
        if only_teacher:
            parts.append(f"the teacher knows {', '.join(map(repr, only_teacher))} that the project lacks")
        raise DistillationError(f"the teacher's classes differ from the project's: {'; '.join(parts)}. Pick a "
                                "teacher run trained on this project's current classes, or retrain one.")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def student_warnings(teacher: Teacher, student: Backbone) -> list[str]:
    """Why this student may not be worth it: more parameters or a larger input than the teacher's backbone."""
    warnings = []
    teacher_params, student_params = parameter_count(teacher.backbone.model), parameter_count(student.model)
    if student_params > teacher_params:
        warnings.append(f"the student {student.name} has more parameters ({student_params / 1e6:.2f} M) than the "
                        f"teacher's backbone {teacher.backbone.name} ({teacher_params / 1e6:.2f} M): it will not be "
                        "smaller. Pick a smaller student backbone.")
    teacher_pixels, student_pixels = np.prod(teacher.backbone.input_size[1:]), np.prod(student.input_size[1:])
    if student_pixels > teacher_pixels:
        warnings.append(f"the student's input {student.input_size[1]}x{student.input_size[2]} is larger than the "
                        f"teacher's {teacher.backbone.input_size[1]}x{teacher.backbone.input_size[2]}: it will be "
                        "slower per image. Pass a smaller --input-size.")
    return warnings


class DistilledStudent(FineTune):
    """Fine-tuning of the student backbone on the teacher's softened probabilities (labeled images and the pool)
    plus the true labels (Hinton et al. 2014). Not registered: it needs a teacher; it saves as ``finetune``, so the
    run loads, exports and refits (label check) like a fine-tuned student trained directly.

    Hyperparameters are FineTune's (recorded in the run config); ``teacher``, ``temperature`` and ``alpha`` are the
    distillation recipe (recorded under ``distillation``).
    """

    uses_unlabeled = True

    def __init__(self, *, teacher: Teacher, temperature: float = DEFAULT_TEMPERATURE, alpha: float = DEFAULT_ALPHA,
                 **finetune_params):
        super().__init__(**{"epochs": DEFAULT_EPOCHS, **finetune_params})
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha

    @classmethod
    def param_names(cls) -> list[str]:
        return FineTune.param_names()

    @classmethod
    def param_defaults(cls) -> dict:
        return FineTune.param_defaults()

    def clone(self) -> "DistilledStudent":
        return DistilledStudent(teacher=self.teacher, temperature=self.temperature, alpha=self.alpha,
                                **copy.deepcopy(self.get_params()))

    def fit(self, support: ImageSet, *, backbone: Backbone, unlabeled: ImageSet | None = None,
            on_step=None) -> "DistilledStudent":
        self.check_params()
        if not self.temperature > 0 or not 0 <= self.alpha <= 1:
            raise ValueError(f"temperature must be > 0 and alpha in [0, 1], got {self.temperature} and {self.alpha}.")
        support = support.labeled()
        support.check_trainable()
        torch.manual_seed(self.seed)
        classes = support.classes
        pool = ImageSet(ImageRecord(r.path, r.sha256, None) for r in (unlabeled.records if unlabeled else []))
        taught = ImageSet(list(support.records) + list(pool.records))
        targets = teacher_log_probabilities(self.teacher.fitted_for(support, pool), taught, classes)
        y = np.concatenate([support.label_indices(classes), np.full(len(pool), -1)])  # -1: no label (pool)
        self.backbone_ = backbone
        model = self._build_model(backbone, len(classes))
        if self.head_init == "linear_probe":
            self._init_head_from_probe(model, support, y[:len(support)])
        side = working_side(backbone.data_config)
        images = [taught.load(i, side=side) for i in range(len(taught))]
        self.model_ = self._distill(model, images, y, targets, on_step).eval().cpu()
        self.pool_used_ = len(pool)
        self.classes_ = classes  # set last: a crash mid-fit must not leave an object that looks fitted
        return self

    def _distill(self, model: nn.Module, images: list, y: np.ndarray, targets: torch.Tensor, on_step) -> nn.Module:
        device = pick_device()
        model = model.to(device)
        pipeline = build_augment(self.augment)
        seed_pipeline(pipeline, self.seed)
        dataset = AugmentedImages(images, list(range(len(images))), self.backbone_.data_config, pipeline)
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(self.seed))
        optimizer = self._optimizer(model)
        scheduler = warmup_cosine(optimizer, self.warmup_epochs * len(loader), self.epochs * len(loader))
        labels, targets, step = torch.as_tensor(y), targets.float(), 0
        for epoch in range(1, self.epochs + 1):
            model.train()
            freeze_batchnorm(model)
            losses, correct, seen = [], 0, 0
            for batch, index in loader:
                check_interrupt()
                logits = model(batch.to(device))
                loss = self.distillation_loss(logits, targets[index].to(device), labels[index].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                losses.append(loss.item())
                known = labels[index] >= 0
                correct += int((logits.argmax(1).cpu()[known] == labels[index][known]).sum())
                seen += int(known.sum())
            if on_step:
                on_step(StepLog(step=step, epoch=epoch, loss=float(np.mean(losses)),
                                train_acc=correct / seen if seen else None, lr=scheduler.get_last_lr()[0]))
        return model

    def distillation_loss(self, logits: torch.Tensor, teacher_log_proba: torch.Tensor,
                          labels: torch.Tensor) -> torch.Tensor:
        """(1 - alpha) * CE on the labeled rows + alpha * T^2 * KL(teacher || student) on every row.

        logits (n, C) of the student; teacher_log_proba (n, C); labels (n,) with -1 for unlabeled rows.
        """
        t = self.temperature
        kd = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher_log_proba / t, 1), reduction="batchmean",
                      log_target=True) * t * t
        known = labels >= 0
        ce = F.cross_entropy(logits[known], labels[known], label_smoothing=self.label_smoothing) if known.any() \
            else logits.sum() * 0
        return (1 - self.alpha) * ce + self.alpha * kd


def teacher_log_probabilities(teacher: Strategy, images: ImageSet, classes: list[str]) -> torch.Tensor:
    """log p_teacher (n, len(classes)) for ``images``, its columns in ``classes`` order (renormalised over them)."""
    with torch.inference_mode():
        proba = teacher.predict_proba(images).double()
    columns = [list(teacher.classes_).index(name) for name in classes]
    return torch.log_softmax(torch.log(proba[:, columns].clamp_min(LOG_FLOOR)), 1).float()


# --- a distillation run ---------------------------------------------------------------------------------------------

@dataclass
class DistillResult:
    run: RunResult
    warnings: list[str]
    teacher_accuracy: float | None


def prepare_student(teacher: Teacher, student_backbone: str, weights: str = "auto",
                    input_size: int | None = None) -> tuple[Backbone, list[str]]:
    """The student backbone (at ``input_size`` px if given) and the warnings about it (larger than the teacher)."""
    backbone = load_backbone(student_backbone, weights)
    if input_size is not None:
        backbone = at_input_size(backbone, (3, int(input_size), int(input_size)))
    return backbone, student_warnings(teacher, backbone)


def distill_run(teacher_run: str | Path, images: ImageSet, out_dir: str | Path | None = None, *,
                student_backbone: str, weights: str = "auto", input_size: int | None = None,
                epochs: int = DEFAULT_EPOCHS, temperature: float = DEFAULT_TEMPERATURE, alpha: float = DEFAULT_ALPHA,
                use_pool: bool = True, protocol: str | None = None, seed: int | None = None,
                student_params: dict | None = None, runs_root: str | Path = "runs",
                on_step: Callable[[StepLog], None] | None = None,
                on_progress: Callable[[str, int, int], None] | None = None,
                on_warning: Callable[[str], None] | None = None) -> DistillResult:
    """Distil ``teacher_run`` into ``student_backbone`` on ``images`` (labeled, plus unlabeled as the pool).

    ``protocol``/``seed`` default to the teacher's, so the student is compared with it image by image (leave-one-out
    becomes hold-out: one student fine-tuning per image is too slow). ``student_params``: FineTune hyperparameters.
    Warnings (a student larger than its teacher) go to ``on_warning`` before training and into the result.
    """
    teacher = load_teacher(teacher_run)
    labeled = images.labeled()
    labeled.check_trainable()
    check_classes(teacher.classes, labeled.classes)
    backbone, warnings = prepare_student(teacher, student_backbone, weights, input_size)
    for warning in warnings:
        log.warning(warning)
        if on_warning:
            on_warning(warning)
    pool = images.unlabeled() if use_pool else ImageSet([])
    protocol = protocol or _teacher_protocol(teacher)
    seed = teacher.config.get("seed", 0) if seed is None else seed
    params = {"epochs": epochs, "seed": seed, **(student_params or {})}
    student = DistilledStudent(teacher=teacher, temperature=temperature, alpha=alpha, **params)
    out_dir = Path(out_dir) if out_dir is not None else Path(runs_root) / new_run_name("distilled")
    recipe = {"teacher_run": teacher.run_dir.name, "teacher_strategy": teacher.strategy.name,
              "teacher_backbone": teacher.backbone.name, "teacher_accuracy": teacher.metrics.get("accuracy"),
              "teacher_parameters": parameter_count(teacher.backbone.model),
              "teacher_input_size": list(teacher.backbone.input_size),
              "student_parameters": parameter_count(backbone.model), "temperature": temperature, "alpha": alpha,
              "pool_images": len(pool), "warnings": warnings}
    result = train_run(labeled, student, backbone, out_dir, protocol=protocol, seed=seed, on_step=on_step,
                       on_progress=on_progress, pool=pool if len(pool) else None,
                       augment=params.get("augment") if isinstance(params.get("augment"), dict) else None,
                       extra_config={"distillation": recipe})
    return DistillResult(result, warnings, teacher.metrics.get("accuracy"))


def _teacher_protocol(teacher: Teacher) -> str:
    protocol = (teacher.metrics or {}).get("protocol") or teacher.config.get("protocol", "holdout")
    return protocol if protocol in ("holdout", "kfold") else "holdout"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


__all__ = ["DEFAULT_ALPHA", "DEFAULT_EPOCHS", "DEFAULT_TEMPERATURE", "DistillResult", "DistillationError",
           "DistilledStudent", "Teacher", "check_classes", "distill_run", "load_teacher", "prepare_student",
           "student_warnings", "teacher_log_probabilities"]
