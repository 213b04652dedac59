"""alpha-TIM: a prototype head trained to be confident on the pool, without assuming its classes are balanced.

Boudiaf et al., "Transductive Information Maximization for Few-Shot Learning" (TIM, NeurIPS 2020) train the class
weights W on the labeled images' cross-entropy while maximising the mutual information between the unlabeled images
and their predicted classes: a low conditional entropy (each image confidently in one class) and a high marginal
entropy (the classes used evenly). The marginal term assumes the unlabeled images are spread evenly over the classes;
Veilleux et al., "Realistic Evaluation of Transductive Few-Shot Learning" (NeurIPS 2021) show that this assumption
costs TIM several points when the classes are imbalanced (Dirichlet-sampled), and replace both entropies by Tsallis
alpha-entropies, H_a(p) = (1 - sum p^a) / (a - 1), whose flatter shape for a > 1 tolerates uneven class marginals
(alpha-TIM; ``alpha = 1`` gives the original Shannon TIM).

Logits are temperature * (x . w_k - ||w_k||^2 / 2) on CL2N features (centred on the labeled images and the pool),
W starts at the class means and is trained with Adam for ``iterations`` steps; the trained W is exactly a linear
layer, so the exported head needs no pool. Pool images are gated for outliers first (``_pool``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._heads import FeatureNormalizer, LinearHead
from ._pool import OUTLIER_MODES, POOL_PARAM_HELP, PoolFeatureStrategy, class_means
from ._prototypes import KeepsPrototypes
from ._registry import register_strategy
from .base import check_interrupt


@register_strategy
class AlphaTIM(KeepsPrototypes, PoolFeatureStrategy):
    name = "alpha_tim"
    summary = "class weights made confident on the unlabeled pool (mutual information), tolerant of uneven classes"
    param_help = {
        "alpha": "order of the Tsallis entropies: 1 is Shannon (TIM, assumes balanced classes); larger tolerates "
                 "uneven classes in the pool",
        "iterations": "Adam steps on the class weights",
        "lr": "learning rate of those steps",
        "temperature": "scale of the logits (and sharpness of the final probabilities)",
        "ce_weight": "weight of the labeled images' cross-entropy",
        "conditional_weight": "weight of the pool's conditional entropy (confidence on each pool image)",
        **POOL_PARAM_HELP,
    }
    param_choices = {"outliers": OUTLIER_MODES}
    param_ranges = {"alpha": (1.0, 20.0), "iterations": (0, 10000), "lr": (0, 1), "temperature": (1e-3, None),
                    "ce_weight": (0, None), "conditional_weight": (0, None), "max_pool": (2, None)}

    def __init__(self, *, alpha: float = 2.0, iterations: int = 100, lr: float = 1e-3, temperature: float = 15.0,
                 ce_weight: float = 0.1, conditional_weight: float = 0.1, outliers: str = "gate",
                 max_pool: int = 2000, seed: int = 0):
        self.alpha = alpha
        self.iterations = iterations
        self.lr = lr
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.conditional_weight = conditional_weight
        self.outliers = outliers
        self.max_pool = max_pool
        self.seed = seed

    def _fit_normalized(self, normalizer: FeatureNormalizer, x: torch.Tensor, y: np.ndarray,
                        u: torch.Tensor | None) -> nn.Module:
        weights = class_means(x, y, int(y.max()) + 1)
        if u is not None and self.iterations > 0:
            weights = self._train(weights, x, torch.as_tensor(y), u)
        self.prototypes_ = weights
        return LinearHead(normalizer, self.temperature * weights, -self.temperature * (weights ** 2).sum(1) / 2)

    def _train(self, weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(self.seed)
        weights = weights.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([weights], lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.iterations):
                check_interrupt()
                cross_entropy = nn.functional.cross_entropy(self._logits(x, weights), y)
                pool = self._logits(u, weights).softmax(dim=1)
                marginal = self._entropy(pool.mean(0, keepdim=True)).mean()
                conditional = self._entropy(pool).mean()
                loss = self.ce_weight * cross_entropy - marginal + self.conditional_weight * conditional
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return weights.detach()

    def _logits(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.temperature * (x @ weights.T - (weights ** 2).sum(1) / 2)

    def _entropy(self, p: torch.Tensor) -> torch.Tensor:
        """Tsallis alpha-entropy of each row of p (rows, classes); Shannon for alpha = 1."""
        if self.alpha == 1:
            return -(p * torch.log(p + 1e-12)).sum(1)
        return (1 - ((p + 1e-12) ** self.alpha).sum(1)) / (self.alpha - 1)
