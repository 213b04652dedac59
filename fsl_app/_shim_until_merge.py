"""shim until merge: the strategy self-description API, for a branch that does not have it yet. DELETE AT MERGE.

The strategy classes gain ``Strategy.param_specs() -> list[ParamSpec]`` (``ParamSpec`` in
``fsl_app/strategies/_params.py``) and ``Strategy.map_points() -> [(role, label, vector)]`` on another branch. The
studio is written against that API; this module fills the gap until both branches meet:

- :func:`install_param_specs` gives ``Strategy`` the classmethod only where it is missing, built the old way
  (``{NAME}S`` module constants and a help table);
- :func:`map_points` calls ``strategy.map_points()`` when it exists, else computes ProtoNet's prototypes as the mean
  embedding of each class, as the studio did before.

At merge: delete this file, its import in ``fsl_app/training_job.py`` and ``fsl_app/inspect_run.py``, and replace
``_shim_until_merge.map_points(strategy, vectors, labels)`` in ``inspect_run.embedding_map`` by
``strategy.map_points()``.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import augment
from .strategies import Strategy

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


@dataclass(frozen=True)
class ParamSpec:
    """The fields of ``fsl_app.strategies.ParamSpec``: kind is choice, bool, int, float, augment or text."""

    name: str
    default: Any
    kind: str
    choices: tuple = ()
    help: str = ""
    low: float | None = None
    high: float | None = None


def _legacy_param_specs(cls) -> list[ParamSpec]:
    """The hyperparameters of ``cls`` from ``param_defaults()``, ``seed`` left out."""
    return [ParamSpec(name, default, *_kind_and_choices(cls, name, default), PARAM_HELP.get(name, ""))
            for name, default in cls.param_defaults().items() if name != "seed"]


def _kind_and_choices(cls, name: str, default: Any) -> tuple[str, tuple]:
    if name == "augment":
        return "augment", tuple(augment.PRESETS)
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
    from .strategies import _heads

    if name == "normalize":
        return _heads.NORMALIZATIONS
    module = sys.modules.get(cls.__module__) or importlib.import_module(cls.__module__)
    value = getattr(module, f"{name.upper()}S", None)
    return tuple(value) if isinstance(value, (tuple, list)) else None


def install_param_specs() -> None:
    """Give ``Strategy`` a ``param_specs`` classmethod where the branch lacks it."""
    if not hasattr(Strategy, "param_specs"):
        Strategy.param_specs = classmethod(_legacy_param_specs)


def map_points(strategy, vectors: np.ndarray, labels: list[str]) -> list[tuple[str, str, Any]]:
    """``strategy.map_points()``, or ProtoNet's class means of ``vectors`` (n, d) where the method is missing."""
    if hasattr(strategy, "map_points"):
        return strategy.map_points()
    if strategy.name != "protonet":
        return []
    return [("prototype", name, vectors[[i for i, label in enumerate(labels) if label == name]].mean(0))
            for name in sorted(set(labels))]


install_param_specs()
