"""Prototypical Networks: classify by distance to class-mean prototypes.

Snell, Swersky and Zemel, "Prototypical Networks for Few-shot Learning" (NeurIPS 2017). Each class is represented by
the mean of its support embeddings; a query gets the softmax over negative (squared euclidean or cosine) distances to
the prototypes. With features normalized by CL2N (SimpleShot, Wang et al. 2019) this is a strong, training-free
baseline. The squared euclidean distance -||x - p||^2 = 2 x.p - ||p||^2 - ||x||^2 and the last term is the same for
every class, so the classifier is exactly a linear layer. A temperature fitted on leave-one-out support predictions
turns distances into calibrated probabilities.

Optional episodic fine-tuning (``finetune_episodes > 0``) trains the backbone on N-way episodes sampled from the
user's own classes with the ProtoNet loss, as in the paper's meta-training, before computing the prototypes. A model
that trains its backbone does not decide on frozen features, so ``ProtoNet(finetune_episodes=N)`` with N > 0
constructs an :class:`EpisodicProtoNet`: a plain Strategy (evaluation refits it on images for every split) with the
same name, parameters and saved format, whose decision is a frozen ProtoNet on its tuned backbone's features. Both
ignore ``unlabeled`` images.
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
from ._heads import NORMALIZATIONS, FeatureNormalizer, LinearHead, fit_temperature
from ._prototypes import KeepsPrototypes
from ._registry import register_strategy
from .base import FeatureStrategy, OnStep, Strategy

DISTANCES = ("euclidean", "cosine")


@register_strategy
class ProtoNet(KeepsPrototypes, FeatureStrategy):
    name = "protonet"
    summary = "nearest class mean on frozen features, optionally after episodic training (ignores the pool)"
    param_help = {
        "distance": "how a query is compared with the class prototypes",
        "normalize": "cl2n: centre on the mean feature, then scale to unit length (SimpleShot); l2; none",
        "finetune_episodes": "0 keeps the backbone frozen; otherwise episodes of ProtoNet training first",
        "finetune_lr": "learning rate of the episodic fine-tuning",
    }
    param_choices = {"distance": DISTANCES, "normalize": NORMALIZATIONS}
    param_ranges = {"finetune_episodes": (0, None), "finetune_lr": (0, None)}

    def __new__(cls, **params):
        if cls is ProtoNet and params.get("finetune_episodes", 0) > 0:
            return EpisodicProtoNet(**params)  # not a ProtoNet, so Python skips ProtoNet.__init__ on it
        return super().__new__(cls)

    def __init__(self, *, distance: str = "euclidean", normalize: str = "cl2n", finetune_episodes: int = 0,
                 finetune_lr: float = 1e-4, seed: int = 0):
        self.distance = distance
        self.normalize = normalize
        self.finetune_episodes = finetune_episodes
        self.finetune_lr = finetune_lr
        self.seed = seed

    def check_params(self) -> None:
        super().check_params()
        if self.finetune_episodes > 0:  # only set_params can get here: the constructor builds an EpisodicProtoNet
            raise ValueError("a frozen ProtoNet cannot start episodic fine-tuning: create a new one with "
                             "create_strategy('protonet', finetune_episodes=N) instead of set_params.")

    def _fit_head(self, features: torch.Tensor, y: np.ndarray, unlabeled: torch.Tensor | None) -> nn.Module:
        normalizer = FeatureNormalizer.fit(features, self.normalize)
        with torch.no_grad():
            x = normalizer(features)
        prototypes = torch.stack([x[y == c].mean(0) for c in range(int(y.max()) + 1)])
        self.prototypes_ = prototypes
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


class EpisodicProtoNet(Strategy):
    """ProtoNet after episodic training of a copy of the backbone: what ``ProtoNet(finetune_episodes=N > 0)`` makes.

    The decision is a frozen :class:`ProtoNet` on the tuned backbone's features (kept in ``protonet_``).
    """

    name = "protonet"
    summary = ProtoNet.summary
    param_help = ProtoNet.param_help
    param_choices = ProtoNet.param_choices
    param_ranges = ProtoNet.param_ranges

    def __init__(self, *, distance: str = "euclidean", normalize: str = "cl2n", finetune_episodes: int = 0,
                 finetune_lr: float = 1e-4, seed: int = 0):
        self.distance = distance
        self.normalize = normalize
        self.finetune_episodes = finetune_episodes
        self.finetune_lr = finetune_lr
        self.seed = seed

    def fit(self, support: ImageSet, *, backbone: Backbone, unlabeled: ImageSet | None = None,
            on_step: OnStep = None) -> "EpisodicProtoNet":
        self.check_params()
        support = support.labeled()
        support.check_trainable(min_per_class=2)
        tuned = episodic_finetune(backbone, support, episodes=self.finetune_episodes, lr=self.finetune_lr,
                                  distance=self.distance, seed=self.seed, on_step=on_step)
        tuned_backbone = _tuned_backbone(backbone, tuned)
        self.protonet_ = _ProtoNetOnTunedBackbone(distance=self.distance, normalize=self.normalize,
                                                  seed=self.seed).fit(support, backbone=tuned_backbone)
        self.backbone_ = tuned_backbone
        self.classes_ = self.protonet_.classes_
        return self

    def predict_proba(self, images_or_features: ImageSet | torch.Tensor) -> torch.Tensor:
        """Probabilities (n, n_classes) for an ImageSet, a preprocessed batch (n, 3, H, W) or tuned features (n, d)."""
        self.check_is_fitted()
        if isinstance(images_or_features, torch.Tensor) and images_or_features.ndim == 4:
            with torch.inference_mode():
                images_or_features = self.backbone_.model(images_or_features)
        return self.protonet_.predict_proba(images_or_features)

    def embed(self, images: ImageSet) -> torch.Tensor:
        self.check_is_fitted()
        return self.protonet_.embed(images)

    def map_points(self) -> list[tuple[str, str, torch.Tensor]]:
        self.check_is_fitted()
        return self.protonet_.map_points()

    def to_module(self) -> nn.Module:
        self.check_is_fitted()
        return self.protonet_.to_module()

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {**self.protonet_._state_tensors(),
                **{f"backbone.{k}": v for k, v in self.backbone_.model.state_dict().items()}}

    def _state_meta(self) -> dict:
        return self.protonet_._state_meta()

    def _restore(self, meta: dict, tensors: dict[str, torch.Tensor], backbone: Backbone) -> None:
        model = copy.deepcopy(backbone.model)
        model.load_state_dict({k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")})
        self.backbone_ = _tuned_backbone(backbone, model)
        protonet = _ProtoNetOnTunedBackbone(distance=self.distance, normalize=self.normalize, seed=self.seed)
        self.protonet_ = protonet._load_state(meta, tensors, self.backbone_)


class _ProtoNetOnTunedBackbone(ProtoNet):
    """A frozen ProtoNet whose backbone exists only in this process: its features are neither cached on disk nor
    run through an exported ONNX copy."""

    def _extractor(self, backbone: Backbone) -> FeatureExtractor:
        if getattr(self, "_tuned_extractor", None) is None or self._tuned_extractor.backbone is not backbone:
            self._tuned_extractor = FeatureExtractor(backbone, engine="torch", cache=FeatureCache(enabled=False))
        return self._tuned_extractor


def _tuned_backbone(base: Backbone, model: nn.Module) -> Backbone:
    model.eval()
    return Backbone(name=base.name, model=model, data_config=base.data_config, num_features=base.num_features,
                    id=f"{base.name}-tuned-{weights_hash(model)[:16]}", source=f"tuned from {base.source}",
                    weights=base.weights)
