"""Shared machinery of the strategies that learn from the unlabeled pool (``uses_unlabeled = True``).

Every pool-aware strategy decides on CL2N-normalized frozen features with a fixed head, so the fitted model never
needs the pool to predict. The steps they share live here:

- the pool is subsampled (seeded) to at most ``max_pool`` rows, so a pool of 100,000 images costs what 2,000 do;
- CL2N centres on the mean of the labeled images and the pool together: the pool shows where the deployment images
  lie, and the normalizer (part of the exported head) carries that centre;
- an outlier gate keeps only the pool images whose best cosine similarity to a class prototype reaches the median
  similarity that labeled images get to the prototype of a class they do NOT belong to: an image of a class nobody
  labeled looks, to every prototype, like an image of another class, so it should not pull any prototype;
- when the gate turns away most of the pool, the pool as a whole looks unlike the labeled classes (a folder of
  other classes, another domain): the fit falls back to the strategy's inductive version and logs why
  (``pool_used_ == 0``); so it does with fewer than 2 pool images.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ._heads import FeatureNormalizer
from ..dataset import ImageSet
from .base import FeatureStrategy

log = logging.getLogger(__name__)

OUTLIER_MODES = ("gate", "off")
MIN_INLIER_SHARE = 0.4  # below this share of gated-in pool images, the pool is judged foreign and left out
POOL_PARAM_HELP = {
    "outliers": "gate: pool images less similar to every class than labeled images are to other classes are left "
                "out (images of classes nobody labeled); off: use every pool image",
    "max_pool": "at most this many pool images shape the fit (a seeded random subset of a larger pool)",
}


class PoolFeatureStrategy(FeatureStrategy):
    """A frozen-feature strategy that uses the unlabeled pool; subclasses implement :meth:`_fit_normalized`."""

    uses_unlabeled: ClassVar[bool] = True

    def _fit_head(self, features: torch.Tensor, y: np.ndarray, unlabeled: torch.Tensor | None) -> nn.Module:
        pool = subsample(unlabeled, self.max_pool, self.seed)
        normalizer = FeatureNormalizer.fit(features if pool is None else torch.cat([features, pool]), "cl2n")
        with torch.no_grad():
            x = normalizer(features)
            u = None if pool is None else normalizer(pool)
        if u is not None and self.outliers == "gate":
            inliers = inlier_mask(x, y, u)
            if inliers.float().mean() < MIN_INLIER_SHARE:
                log.warning("%s: only %d of %d pool images look like the labeled classes; fitted without the pool.",
                            self.name, int(inliers.sum()), len(u))
                inliers[:] = False
            u = u[inliers]
        if u is not None and len(u) < 2:
            u = None
        if u is None and pool is not None:  # the inductive fit: centred on the labeled images alone
            normalizer = FeatureNormalizer.fit(features, "cl2n")
            with torch.no_grad():
                x = normalizer(features)
        self.pool_used_ = 0 if u is None else len(u)
        return self._fit_normalized(normalizer, x, y, u)

    def pool_to_extract(self, unlabeled: ImageSet) -> ImageSet:
        """A seeded subset of at most ``max_pool`` images: a 100,000-image pool is never extracted whole."""
        if len(unlabeled) <= self.max_pool:
            return unlabeled
        rows = np.random.default_rng(self.seed).choice(len(unlabeled), size=self.max_pool, replace=False)
        return unlabeled.subset(np.sort(rows))

    @abstractmethod
    def _fit_normalized(self, normalizer: FeatureNormalizer, x: torch.Tensor, y: np.ndarray,
                        u: torch.Tensor | None) -> nn.Module:
        """The head on normalized labeled features x (n, d), labels y (n,) and inlier pool u (m, d) or None."""

    def _state_meta(self) -> dict:
        return {**super()._state_meta(), "pool_used": getattr(self, "pool_used_", 0)}

    def _restore(self, meta: dict, tensors: dict[str, torch.Tensor], backbone) -> None:
        super()._restore(meta, tensors, backbone)
        self.pool_used_ = int(meta.get("pool_used", 0))


def subsample(pool: torch.Tensor | None, max_pool: int, seed: int) -> torch.Tensor | None:
    """At most ``max_pool`` rows of ``pool`` (a seeded random subset); None for a missing or empty pool."""
    if pool is None or len(pool) == 0:
        return None
    if len(pool) <= max_pool:
        return pool
    rows = np.random.default_rng(seed).choice(len(pool), size=max_pool, replace=False)
    return pool[torch.from_numpy(np.sort(rows))]


def class_means(x: torch.Tensor, y: np.ndarray, n_classes: int) -> torch.Tensor:
    """Mean of each class's rows, (n_classes, d)."""
    onehot = nn.functional.one_hot(torch.as_tensor(y), n_classes).float()
    return (onehot.T @ x) / onehot.sum(0)[:, None]


def inlier_mask(x: torch.Tensor, y: np.ndarray, u: torch.Tensor) -> torch.Tensor:
    """Pool rows (m,) whose best cosine similarity to a class mean of ``x`` reaches the median over labeled images of
    their best similarity to the mean of another class."""
    n_classes = int(y.max()) + 1
    prototypes = nn.functional.normalize(class_means(x, y, n_classes), dim=1)
    own = nn.functional.one_hot(torch.as_tensor(y), n_classes).bool()
    other = (x @ prototypes.T).masked_fill(own, -2.0).max(dim=1).values
    return (u @ prototypes.T).max(dim=1).values >= other.median()


def squared_distances(x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """||x_i - p_k||^2, (n, k), without an (n, k, d) intermediate."""
    return ((x * x).sum(1, keepdim=True) - 2 * x @ prototypes.T + (prototypes * prototypes).sum(1)[None]).clamp_min(0)
