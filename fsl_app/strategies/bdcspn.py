"""Prototype rectification with the unlabeled pool: soft k-means from the class means, optionally Laplacian-smoothed.

Liu, Song and Qin, "Prototype Rectification for Few-Shot Learning" (BD-CSPN, ECCV 2020) observe that with one or
few shots a class mean is a biased estimate of the class centre, and rectify it with the unlabeled images: each one is
assigned to the prototypes by a softmax over similarities and pulled into them. Repeating that step is the soft
k-means of Ren et al., "Meta-Learning for Semi-Supervised Few-Shot Classification" (ICLR 2018), started from the class
means, with the labeled images fixed to their classes. Ziko et al., "Laplacian Regularized Few-Shot Learning"
(LaplacianShot, ICML 2020) add that neighbouring images should share a class: with ``laplacian > 0`` each pool image's
assignment is smoothed towards those of its ``knn`` nearest pool neighbours (their bound updates) before the
prototypes are recomputed. LaplacianShot also smooths the final predictions of the queries; a fixed exported head
cannot, so here the graph only shapes the prototypes.

The features are CL2N-normalized with the centre of the labeled images and the pool together, the pool is gated for
outliers (``_pool``), and the head is the prototype classifier, -temperature * ||x - p_k||^2, which is exactly a
linear layer, so export is backbone + nn.Linear as for ProtoNet. The k-NN graph is built over the (subsampled) pool
in row blocks, never as a dense pool x pool matrix of the whole pool.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._heads import FeatureNormalizer, LinearHead
from ._pool import OUTLIER_MODES, POOL_PARAM_HELP, PoolFeatureStrategy, class_means, squared_distances
from ._prototypes import KeepsPrototypes
from ._registry import register_strategy

BOUND_UPDATES = 10  # LaplacianShot's inner iterations per step
KNN_BLOCK = 1024  # pool rows whose distances are computed at once


@register_strategy
class BDCSPN(KeepsPrototypes, PoolFeatureStrategy):
    name = "bdcspn"
    summary = "class means rectified with the unlabeled pool (soft k-means, optional k-NN smoothing): best at 1 shot"
    param_help = {
        "steps": "rectification rounds: assign the pool to the prototypes, then recompute them",
        "temperature": "sharpness of the soft assignments (and of the final probabilities)",
        "laplacian": "weight of the k-NN agreement between pool images (LaplacianShot); 0 turns it off",
        "knn": "neighbours of each pool image in the k-NN graph",
        **POOL_PARAM_HELP,
    }
    param_choices = {"outliers": OUTLIER_MODES}
    param_ranges = {"steps": (0, 100), "temperature": (1e-3, None), "laplacian": (0, None), "knn": (1, 50),
                    "max_pool": (2, None)}

    def __init__(self, *, steps: int = 3, temperature: float = 5.0, laplacian: float = 0.7, knn: int = 3,
                 outliers: str = "gate", max_pool: int = 2000, seed: int = 0):
        self.steps = steps
        self.temperature = temperature
        self.laplacian = laplacian
        self.knn = knn
        self.outliers = outliers
        self.max_pool = max_pool
        self.seed = seed

    def _fit_normalized(self, normalizer: FeatureNormalizer, x: torch.Tensor, y: np.ndarray,
                        u: torch.Tensor | None) -> nn.Module:
        n_classes = int(y.max()) + 1
        prototypes = class_means(x, y, n_classes)
        if u is not None and self.steps > 0:
            prototypes = self._rectify(prototypes, x, y, u)
        self.prototypes_ = prototypes
        return LinearHead(normalizer, 2 * self.temperature * prototypes,
                          -self.temperature * (prototypes ** 2).sum(1))

    def _rectify(self, prototypes: torch.Tensor, x: torch.Tensor, y: np.ndarray, u: torch.Tensor) -> torch.Tensor:
        """Soft k-means steps over the pool u (m, d) with the labeled rows x (n, d) fixed to their classes."""
        onehot = nn.functional.one_hot(torch.as_tensor(y), len(prototypes)).float()
        labeled_sum, labeled_count = onehot.T @ x, onehot.sum(0)
        neighbours = self._neighbours(u) if self.laplacian > 0 else None
        for _ in range(self.steps):
            unary = -self.temperature * squared_distances(u, prototypes)
            assignment = unary.softmax(dim=1)
            for _ in range(BOUND_UPDATES if neighbours is not None else 0):
                assignment = (unary + self.laplacian * assignment[neighbours].sum(1)).softmax(dim=1)
            prototypes = (labeled_sum + assignment.T @ u) / (labeled_count + assignment.sum(0))[:, None]
        return prototypes

    def _neighbours(self, u: torch.Tensor) -> torch.Tensor:
        """Indices (m, k) of each pool row's k nearest other rows, computed in blocks of rows."""
        k = min(self.knn, len(u) - 1)
        blocks = []
        for start in range(0, len(u), KNN_BLOCK):
            distances = squared_distances(u[start:start + KNN_BLOCK], u)
            rows = torch.arange(start, min(start + KNN_BLOCK, len(u)))
            distances[rows - start, rows] = float("inf")
            blocks.append(distances.topk(k, dim=1, largest=False).indices)
        return torch.cat(blocks)
