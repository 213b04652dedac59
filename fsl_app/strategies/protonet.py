"""Prototypical Networks: classify by distance to class-mean prototypes.

Snell, Swersky and Zemel, "Prototypical Networks for Few-shot Learning" (NeurIPS 2017). Each class is represented by
the mean of its support embeddings; a query gets the softmax over negative (squared euclidean or cosine) distances to
the prototypes. With features normalized by CL2N (SimpleShot, Wang et al. 2019) this is a strong, training-free
baseline. The squared euclidean distance -||x - p||^2 = 2 x.p - ||p||^2 - ||x||^2 and the last term is the same for
every class, so the classifier is exactly a linear layer. A temperature fitted on leave-one-out support predictions
turns distances into calibrated probabilities.

Optional episodic fine-tuning (``finetune_episodes > 0``) trains the backbone on N-way episodes sampled from the
user's own classes with the ProtoNet loss, as in the paper's meta-training, before computing the prototypes.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..backbones import Backbone, weights_hash
from ..dataset import ImageSet
from ..features import FeatureCache, FeatureExtractor
from ._episodic import episodic_finetune
from ._heads import FeatureNormalizer, LinearHead, fit_temperature
from ._registry import register_strategy
from .base import FeatureStrategy, OnStep

DISTANCES = ("euclidean", "cosine")


@register_strategy
class ProtoNet(FeatureStrategy):
    name = "protonet"

    def __init__(self, *, distance: str = "euclidean", normalize: str = "cl2n", finetune_episodes: int = 0,
                 finetune_lr: float = 1e-4, seed: int = 0):
        self.distance = distance
        self.normalize = normalize
        self.finetune_episodes = finetune_episodes
        self.finetune_lr = finetune_lr
        self.seed = seed

    @property
    def uses_frozen_features(self) -> bool:
        """Without episodic fine-tuning, ProtoNet only needs cached frozen features."""
        return self.finetune_episodes <= 0

    def fit(self, support: ImageSet, *, backbone: Backbone, on_step: OnStep = None) -> "ProtoNet":
        support = support.labeled()
        if self.finetune_episodes > 0:
            support.check_trainable(min_per_class=2)
            tuned = episodic_finetune(backbone, support, episodes=self.finetune_episodes, lr=self.finetune_lr,
                                      distance=self.distance, seed=self.seed, on_step=on_step)
            backbone = _tuned_backbone(backbone, tuned)
        return super().fit(support, backbone=backbone, on_step=on_step)

    def _features(self, images: ImageSet) -> torch.Tensor:
        if self.backbone_.source.startswith("tuned"):
            if getattr(self, "_extractor_", None) is None:
                self._extractor_ = FeatureExtractor(self.backbone_, engine="torch",
                                                    cache=FeatureCache(enabled=False))
            return self._extractor_.extract(images)
        return super()._features(images)

    def _fit_head(self, features: torch.Tensor, y: np.ndarray) -> nn.Module:
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        normalizer = FeatureNormalizer.fit(features, self.normalize)
        with torch.no_grad():
            x = normalizer(features)
        prototypes = torch.stack([x[y == c].mean(0) for c in range(int(y.max()) + 1)])
        weight, bias = self._linear_form(prototypes)
        temperature = fit_temperature(self._leave_one_out_logits(x, y), y[self._loo_rows(y)])
        return LinearHead(normalizer, weight / temperature, bias / temperature)

    def _linear_form(self, prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.distance == "cosine":
            unit = prototypes / prototypes.norm(dim=1, keepdim=True).clamp_min(1e-12)
            return unit, torch.zeros(len(prototypes))
        return 2 * prototypes, -(prototypes ** 2).sum(1)

    @staticmethod
    def _loo_rows(y: np.ndarray) -> np.ndarray:
        """Support points whose class keeps at least one other image when they are left out."""
        return np.flatnonzero(np.bincount(y)[y] >= 2)

    def _leave_one_out_logits(self, x: torch.Tensor, y: np.ndarray) -> torch.Tensor:
        """Logits of each support point against prototypes computed without it, (n_rows, n_classes)."""
        rows = self._loo_rows(y)
        counts = torch.as_tensor(np.bincount(y)).float()
        sums = torch.stack([x[y == c].sum(0) for c in range(len(counts))])
        logits = []
        for i in rows:
            prototypes = sums.clone()
            prototypes[y[i]] -= x[i]
            n = counts.clone()
            n[y[i]] -= 1
            weight, bias = self._linear_form(prototypes / n[:, None])
            logits.append(x[i] @ weight.T + bias)
        return torch.stack(logits) if logits else torch.zeros(0, len(counts))

    # --- persistence of a fine-tuned backbone ---
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = super()._state_tensors()
        if self.backbone_.source.startswith("tuned"):
            tensors.update({f"backbone.{k}": v for k, v in self.backbone_.model.state_dict().items()})
        return tensors

    def _restore(self, meta: dict, tensors: dict[str, torch.Tensor], backbone: Backbone) -> None:
        tuned = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}
        if tuned:
            model = copy.deepcopy(backbone.model)
            model.load_state_dict(tuned)
            backbone = _tuned_backbone(backbone, model)
        super()._restore(meta, tensors, backbone)


def _tuned_backbone(base: Backbone, model: nn.Module) -> Backbone:
    model.eval()
    return Backbone(name=base.name, model=model, data_config=base.data_config, num_features=base.num_features,
                    id=f"{base.name}-tuned-{weights_hash(model)[:16]}", source=f"tuned from {base.source}",
                    weights=base.weights)
