"""The Strategy contract (scikit-learn estimator style) and the shared frozen-feature implementation.

``__init__`` stores keyword hyperparameters only; ``fit`` returns ``self`` and sets the ``*_`` attributes;
``predict_proba`` gives (n_query, n_classes) rows that sum to 1; ``to_module`` gives one ``nn.Module`` that maps a
preprocessed image batch (n, 3, H, W) to logits, the same for every strategy, so export has a single path.
"""

from __future__ import annotations

import copy
import inspect
import json
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from threadpoolctl import threadpool_limits
from torch import nn

from ..backbones import Backbone
from ..dataset import DataError, ImageSet
from ..features import get_extractor
from . import _heads


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
    uses_frozen_features: ClassVar[bool] = True

    # --- hyperparameters (scikit-learn style) ---
    @classmethod
    def param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [p.name for p in signature.parameters.values() if p.name != "self" and p.kind == p.KEYWORD_ONLY]

    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        signature = inspect.signature(cls.__init__)
        return {name: signature.parameters[name].default for name in cls.param_names()}

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
    def fit(self, support: ImageSet, *, backbone: Backbone, on_step: OnStep = None) -> "Strategy": ...

    @abstractmethod
    def predict_proba(self, images_or_features: ImageSet | torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def embed(self, images: ImageSet) -> torch.Tensor: ...

    @abstractmethod
    def to_module(self) -> nn.Module: ...

    def predict(self, images_or_features: ImageSet | torch.Tensor) -> list[str]:
        indices = self.predict_proba(images_or_features).argmax(dim=1).tolist()
        return [self.classes_[i] for i in indices]

    def check_is_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(support, backbone=...) "
                                 "or load a saved run first.")

    # --- persistence: model.safetensors + model.json ---
    def save(self, directory: str | Path) -> None:
        self.check_is_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._state_tensors().items()}
        save_file(tensors, str(directory / "model.safetensors"))
        meta = {"strategy": self.name, "params": self.get_params(), "classes": list(self.classes_),
                "backbone": self.backbone_.spec(), **self._state_meta()}
        (directory / "model.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, backbone: Backbone) -> "Strategy":
        from ._registry import get_strategy_class

        directory = Path(directory)
        meta = json.loads((directory / "model.json").read_text(encoding="utf-8"))
        strategy = get_strategy_class(meta["strategy"])(**meta["params"])
        strategy.classes_ = list(meta["classes"])
        strategy._restore(meta, load_file(str(directory / "model.safetensors")), backbone)
        return strategy

    @abstractmethod
    def _state_tensors(self) -> dict[str, torch.Tensor]: ...

    def _state_meta(self) -> dict:
        return {}

    @abstractmethod
    def _restore(self, meta: dict, tensors: dict[str, torch.Tensor], backbone: Backbone) -> None: ...


class FeatureStrategy(Strategy):
    """A strategy that decides on frozen backbone features with a small head (linear or kernel).

    Subclasses implement ``_fit_head(features (n, d), y (n,)) -> nn.Module`` returning logits (n, n_classes).
    """

    uses_frozen_features: ClassVar[bool] = True

    def fit(self, support: ImageSet, *, backbone: Backbone, on_step: OnStep = None) -> "FeatureStrategy":
        support = support.labeled()  # unlabeled images carry no class: ignore them, as train_run does
        support.check_trainable()
        self.backbone_ = backbone
        features = self._features(support)
        return self.fit_features(features, support.labels)

    def fit_features(self, features: torch.Tensor, labels: list[str]) -> "FeatureStrategy":
        """Fit on precomputed features (n, d) with string labels (n,)."""
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise DataError(f"training needs at least 2 classes, got {classes}. Add images for another class.")
        y = np.array([classes.index(label) for label in labels])
        # Few-shot problems are tiny (n x d, n ~ 100): BLAS/OpenMP threads only fight each other and the ONNX
        # Runtime workers here; one thread measured ~30x faster (benchmarks/results/latency.md).
        with threadpool_limits(1):
            head = self._fit_head(features.float(), y).eval()
        self.classes_ = classes
        self.head_ = head
        return self

    @abstractmethod
    def _fit_head(self, features: torch.Tensor, y: np.ndarray) -> nn.Module: ...

    def _features(self, images: ImageSet) -> torch.Tensor:
        return get_extractor(self.backbone_).extract(images)

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
        return ImageClassifier(copy.deepcopy(self.backbone_.model).eval(), copy.deepcopy(self.head_)).eval()

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"head.{k}": v for k, v in self.head_.state_dict().items()}

    def _state_meta(self) -> dict:
        return {"head": self.head_.config()}

    def _restore(self, meta: dict, tensors: dict[str, torch.Tensor], backbone: Backbone) -> None:
        self.backbone_ = backbone
        head_state = {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")}
        self.head_ = _heads.head_from_config(meta["head"], head_state).eval()

