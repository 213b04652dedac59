"""Model-assisted labeling: rank unlabeled images by how unsure a fitted strategy is about them.

Labeling the images the model is least sure about first (uncertainty sampling, margin criterion: Scheffer et al.,
"Active Hidden Markov Models for Information Extraction", 2001) gives the most information per label. Accepting a
suggestion is an ordinary :meth:`Project.set_labels` call, so it is logged and undoable like any other label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from ..dataset import ImageSet
from .errors import StoreError

if TYPE_CHECKING:
    from .project import Project


class FittedStrategy(Protocol):
    classes_: list[str]

    def predict_proba(self, images: ImageSet):  # -> torch.Tensor of shape (n, n_classes)
        ...


@dataclass(frozen=True)
class Suggestion:
    image_id: int
    label: str  # the most probable class
    confidence: float  # its probability
    margin: float  # top-1 minus top-2 probability; small = unsure between two classes
    entropy: float  # of the predicted distribution, in nats; large = unsure overall


def suggest_labels(strategy: FittedStrategy, images: ImageSet, ids: Sequence[int], *,
                   top: int | None = None) -> list[Suggestion]:
    """Predict a label for each image; most uncertain first (smallest margin, then highest entropy, then id).

    ``images`` and ``ids`` are parallel: ``ids[i]`` is the project image id of ``images[i]``.
    """
    if len(images) != len(ids):
        raise ValueError(f"got {len(images)} images but {len(ids)} ids; pass one id per image.")
    if len(images) == 0:
        return []
    classes = _fitted_classes(strategy)
    proba = _probabilities(strategy.predict_proba(images), len(images), len(classes))
    ordered = np.sort(proba, axis=1)[:, ::-1]
    best = proba.argmax(axis=1)
    margin = ordered[:, 0] - (ordered[:, 1] if proba.shape[1] > 1 else 0.0)
    entropy = -np.sum(np.where(proba > 0, proba * np.log(np.where(proba > 0, proba, 1.0)), 0.0), axis=1)
    suggestions = [Suggestion(int(ids[i]), classes[best[i]], float(ordered[i, 0]), float(margin[i]),
                              float(entropy[i])) for i in range(len(ids))]
    suggestions.sort(key=lambda s: (round(s.margin, 12), -round(s.entropy, 12), s.image_id))
    return suggestions[:top] if top is not None else suggestions


def suggest_for_project(project: "Project", strategy: FittedStrategy, *, top: int | None = None,
                        max_images: int | None = None) -> list[Suggestion]:
    """Suggestions for every unlabeled image of ``project``; with ``max_images``, for a seeded random sample of at
    most that many of them (a big pool: scoring all of it would mean extracting features of every image)."""
    images, ids = project.image_set_with_ids(labeled=False, sample=max_images)
    return suggest_labels(strategy, images, ids, top=top)


def _fitted_classes(strategy) -> list[str]:
    classes = getattr(strategy, "classes_", None)
    if classes is None or len(classes) == 0:
        raise StoreError(f"{type(strategy).__name__} is not fitted (no classes_). Train it (fit) or load a "
                         "finished run before asking for suggestions.")
    return [str(name) for name in classes]


def _probabilities(raw, n_images: int, n_classes: int) -> np.ndarray:
    """Validate predict_proba output (tensor or array) as an (n_images, n_classes) float64 array of distributions."""
    if hasattr(raw, "detach"):
        raw = raw.detach().float().cpu().numpy()
    proba = np.asarray(raw, dtype=np.float64)
    if proba.shape != (n_images, n_classes):
        raise ValueError(f"predict_proba returned shape {proba.shape}, expected ({n_images}, {n_classes}).")
    if not np.isfinite(proba).all() or (proba < -1e-6).any():
        raise ValueError("predict_proba returned negative or non-finite values; it must return probabilities.")
    proba = np.clip(proba, 0.0, None)
    sums = proba.sum(axis=1, keepdims=True)
    if not np.allclose(sums, 1.0, atol=1e-3):
        raise ValueError("predict_proba rows do not sum to 1; return probabilities (e.g. softmax of the logits).")
    return proba / sums
