"""The Strategy contract (scikit-learn estimator style) and the shared frozen-feature implementation.

``__init__`` stores keyword hyperparameters only; ``fit(support, *, backbone, unlabeled=None, on_step=None)`` returns
``self`` and sets the ``*_`` attributes; ``unlabeled`` (the pool) may shape the fit, but the fitted model never needs
it to predict; ``predict_proba`` gives (n_query, n_classes) rows that sum to 1; ``to_module`` gives one ``nn.Module``
that maps a preprocessed image batch (n, 3, H, W) to logits, the same for every strategy, so export has a single path.

A strategy describes itself to the fronts through class attributes: ``summary`` (one line), ``uses_unlabeled``, and
per hyperparameter its help text (``param_help``), choices (``param_choices``) and range (``param_ranges``), which
:meth:`Strategy.param_specs` turns into :class:`ParamSpec` rows. Whether a strategy decides on cached frozen features
is told by its type alone: ``isinstance(strategy, FeatureStrategy)``.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import torch
from safetensors.torch import save_file
from threadpoolctl import threadpool_limits
from torch import nn

from ..augment import PRESETS
from ..backbones import Backbone
from ..dataset import DataError, ImageSet
from ..features import get_extractor
from . import _heads
from ._params import ParamSpec, infer_kind


class NotFittedError(RuntimeError):
    """A strategy was used before ``fit``."""


@dataclass
class StepLog:
    """One progress report from training: written to metrics.jsonl and drawn as live curves."""

    step: int
    epoch: int
    loss: float
    train_acc: float | None = None
    val_acc: float | None = None
    lr: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


OnStep = Callable[[StepLog], None] | None

_INTERRUPT = threading.local()


@contextmanager
def interrupt_check(check: Callable[[], None]) -> Iterator[None]:
    """Inside this block, in this thread, training loops call ``check`` between batches: it raises to stop them.

    ``on_step`` is a cancellation point too, but it comes once an epoch; this makes Cancel answer within one batch.
    """
    previous = getattr(_INTERRUPT, "check", None)
    _INTERRUPT.check = check
    try:
        yield
    finally:
        _INTERRUPT.check = previous


def check_interrupt() -> None:
    """Call the check installed by :func:`interrupt_check` for this thread, if any (it may raise)."""
    check = getattr(_INTERRUPT, "check", None)
    if check is not None:
        check()


class ImageClassifier(nn.Module):
    """Backbone followed by a head: (n, 3, H, W) preprocessed images -> (n, n_classes) logits."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


class Strategy(ABC):
    """Base class of every few-shot strategy; subclasses register with ``@register_strategy``."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    uses_unlabeled: ClassVar[bool] = False
    param_help: ClassVar[dict[str, str]] = {}
    param_choices: ClassVar[dict[str, tuple]] = {}
    param_ranges: ClassVar[dict[str, tuple[float | None, float | None]]] = {}

    # --- hyperparameters (scikit-learn style) ---
    @classmethod
    def param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [p.name for p in signature.parameters.values() if p.name != "self" and p.kind == p.KEYWORD_ONLY]

    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        signature = inspect.signature(cls.__init__)
        return {name: signature.parameters[name].default for name in cls.param_names()}

    @classmethod
    def param_specs(cls) -> list[ParamSpec]:
        """How the fronts show each hyperparameter (``seed`` left out: the front sets it), from the class's
        ``param_help``, ``param_choices`` and ``param_ranges``; ``augment`` offers the presets."""
        specs = []
        for name, default in cls.param_defaults().items():
            if name == "seed":
                continue
            choices = tuple(PRESETS) if name == "augment" else tuple(cls.param_choices.get(name, ()))
            low, high = cls.param_ranges.get(name, (None, None))
            specs.append(ParamSpec(name, default, infer_kind(name, default, choices), choices,
                                   cls.param_help.get(name, ""), low, high))
        return specs

    def check_params(self) -> None:
        """Raise ValueError naming the valid values for a hyperparameter outside its declared choices or range."""
        for spec in self.param_specs():
            if spec.kind != "augment":
                spec.check(getattr(self, spec.name), type(self).__name__)

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.param_names()}

    def set_params(self, **params: Any) -> "Strategy":
        for key, value in params.items():
            if key not in self.param_names():
                raise ValueError(f"{self.name} has no parameter {key!r}; valid: {self.param_names()}")
            setattr(self, key, value)
        return self

    def clone(self) -> "Strategy":
        """An unfitted copy with the same hyperparameters."""
        return type(self)(**copy.deepcopy(self.get_params()))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # --- the contract ---
    @abstractmethod
    def fit(self, support: ImageSet, *, backbone: Backbone, unlabeled: ImageSet | None = None,
            on_step: OnStep = None) -> "Strategy":
        """Fit on the labeled images of ``support``; ``unlabeled`` images may shape the fit (``uses_unlabeled``)."""

    @abstractmethod
    def predict_proba(self, images_or_features: ImageSet | torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def embed(self, images: ImageSet) -> torch.Tensor: ...

    @abstractmethod
    def to_module(self) -> nn.Module: ...

    def map_points(self) -> list[tuple[str, str, torch.Tensor]]:
        """Extra points for the embedding map as (role, label, vector (d,) in the ``embed`` space), e.g. prototypes."""
        return []

    def predict(self, images_or_features: ImageSet | torch.Tensor) -> list[str]:
        indices = self.predict_proba(images_or_features).argmax(dim=1).tolist()
        return [self.classes_[i] for i in indices]

    def check_is_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(support, backbone=...) "
                                 "or load a saved run first.")

    # --- persistence: model.safetensors + model.json (loading: ``strategies.load_strategy``) ---
    def save(self, directory: str | Path) -> None:
        self.check_is_fitted()
        if getattr(self, "backbone_", None) is None:
            raise ValueError(f"this {type(self).__name__} was fitted on features without a backbone: pass "
                             "backbone= to fit_features to save it.")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._state_tensors().items()}
        meta = {"strategy": self.name, "params": self.get_params(), "classes": list(self.classes_),
                "backbone": self.backbone_.spec(), **self._state_meta()}
        save_file(tensors, str(directory / "model.safetensors"))
        partial = directory / "model.json.partial"
        partial.write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(partial, directory / "model.json")

    def _load_state(self, meta: dict, tensors: dict[str, torch.Tensor], backbone: Backbone) -> "Strategy":
        """Become the fitted strategy saved as ``meta`` (model.json) and ``tensors`` (model.safetensors)."""
        self.classes_ = list(meta["classes"])  # _restore may need it (e.g. to size a head)
        self._restore(meta, tensors, backbone)
        return self

    @abstractmethod
    def _state_tensors(self) -> dict[str, torch.Tensor]: ...

    def _state_meta(self) -> dict:
        return {}

    @abstractmethod
    def _restore(self, meta: dict, tensors: dict[str, torch.Tensor], backbone: Backbone) -> None: ...


class FeatureStrategy(Strategy):
    """A strategy that decides on frozen backbone features with a small head (linear or kernel).

    Evaluation extracts (and caches) the features once and calls :meth:`fit_features` per split. Subclasses
    implement ``_fit_head(features (n, d), y (n,), unlabeled (m, d) or None) -> nn.Module`` returning logits
    (n, n_classes); ``unlabeled`` is None for strategies whose ``uses_unlabeled`` is False.
    """

    def fit(self, support: ImageSet, *, backbone: Backbone, unlabeled: ImageSet | None = None,
            on_step: OnStep = None) -> "FeatureStrategy":
        support = support.labeled()  # unlabeled images carry no class: the pool is passed as ``unlabeled``
        support.check_trainable()
        extractor = self._extractor(backbone)
        features = extractor.extract(support)
        pool = None
        if self.uses_unlabeled and unlabeled is not None and len(unlabeled):
            pool = extractor.extract(self.pool_to_extract(unlabeled))
        return self.fit_features(features, support.labels, backbone=backbone, unlabeled=pool)

    def pool_to_extract(self, unlabeled: ImageSet) -> ImageSet:
        """The pool images whose features the fit needs (all of them here; a subset where the fit samples)."""
        return unlabeled

    def fit_features(self, features: torch.Tensor, labels: list[str], *, backbone: Backbone | None = None,
                     unlabeled: torch.Tensor | None = None) -> "FeatureStrategy":
        """Fit on precomputed features (n, d) with string labels (n,); ``unlabeled``: pool features (m, d).

        ``backbone`` (the one that made the features) is needed to predict on images, embed, export and save.
        """
        self.check_params()
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise DataError(f"training needs at least 2 classes, got {classes}. Add images for another class.")
        features = _checked_features(features, "the labeled features")
        pool = None
        if self.uses_unlabeled and unlabeled is not None:
            pool = _checked_features(unlabeled, "the unlabeled pool's features", dim=features.shape[1])
        y = np.array([classes.index(label) for label in labels])
        # Few-shot problems are tiny (n x d, n ~ 100): BLAS/OpenMP threads only fight each other and the ONNX
        # Runtime workers here; one thread is much faster (benchmarks/results/latency.md).
        with threadpool_limits(1):
            head = self._fit_head(features, y, pool).eval()
        self.backbone_ = backbone
        self.head_ = head
        self.classes_ = classes  # set last: a crash mid-fit must not leave an object that looks fitted
        return self

    @abstractmethod
    def _fit_head(self, features: torch.Tensor, y: np.ndarray, unlabeled: torch.Tensor | None) -> nn.Module: ...

    def _extractor(self, backbone: Backbone):
        return get_extractor(backbone)

    def _features(self, images: ImageSet) -> torch.Tensor:
        if self.backbone_ is None:
            raise ValueError(f"this {type(self).__name__} was fitted on features without a backbone: pass "
                             "backbone= to fit_features, or give it features instead of images.")
        return self._extractor(self.backbone_).extract(images)

    def predict_proba(self, images_or_features: ImageSet | torch.Tensor) -> torch.Tensor:
        self.check_is_fitted()
        features = images_or_features
        if isinstance(images_or_features, ImageSet):
            features = self._features(images_or_features)
        with torch.no_grad(), threadpool_limits(1):
            return torch.softmax(self.head_(features.float()), dim=1)

    def embed(self, images: ImageSet) -> torch.Tensor:
        """The normalized feature space the head decides in, (n, d)."""
        self.check_is_fitted()
        with torch.no_grad():
            return self.head_.normalizer(self._features(images).float())

    def to_module(self) -> nn.Module:
        self.check_is_fitted()
        if self.backbone_ is None:
            raise ValueError(f"this {type(self).__name__} was fitted on features without a backbone: pass "
                             "backbone= to fit_features to export it.")
        return ImageClassifier(copy.deepcopy(self.backbone_.model).eval(), copy.deepcopy(self.head_)).eval()

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"head.{k}": v for k, v in self.head_.state_dict().items()}

    def _state_meta(self) -> dict:
        return {"head": self.head_.config()}

    def _restore(self, meta: dict, tensors: dict[str, torch.Tensor], backbone: Backbone) -> None:
        self.backbone_ = backbone
        head_state = {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")}
        self.head_ = _heads.head_from_config(meta["head"], head_state).eval()


def _checked_features(features: torch.Tensor, what: str, *, dim: int | None = None) -> torch.Tensor:
    """``features`` as a float (n, d) tensor; a clear DataError for another shape, width or non-finite values."""
    features = torch.as_tensor(features).float()
    if features.ndim != 2 or (dim is not None and features.shape[1] != dim):
        expected = f"(n, {dim})" if dim is not None else "(n, d)"
        raise DataError(f"{what} must be a {expected} tensor, got shape {tuple(features.shape)}. Extract them with "
                        "the same backbone as the labeled images.")
    bad = (~torch.isfinite(features)).any(dim=1)
    if bad.any():
        raise DataError(f"{what} hold NaN or infinite values in {int(bad.sum())} of {len(features)} rows (first: "
                        f"row {int(bad.nonzero()[0])}). Re-extract them (clear the feature cache) or drop those "
                        "images.")
    return features
