"""MAML and ANIL: meta-learn, on episodes drawn from the user's own classes, a model that adapts in a few steps.

Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks" (ICML 2017), in its
first-order form (``variant="fomaml"``: the inner loop adapts the head and the adapting layers, the outer update uses
the gradient at the adapted weights); Raghu et al., "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML" (ICLR 2020) (``variant="anil"``: the inner loop adapts only the head and the outer gradient
goes through it, second order, which is cheap for a head). The head starts every task as the Proto-MAML
initialisation from the class means (Triantafillou et al. 2020), so a model meta-trained on 5-way episodes adapts to
any number of classes. What is meta-learned is ``adapt``: ``head``, a feature-wise gain and shift on the frozen,
CL2N-normalised features (cached features, seconds on a CPU), or ``last_block``, the backbone's last two layer
groups (on images, slow). Episodes take ``n_way`` classes (all of them when there are fewer) and split each class's
images in half into shots and queries; after meta-training the model adapts once more on the whole support. With one
image per class there is no such split: the strategy then adapts without meta-training (logged, and recorded as
``meta_trained_ = False``). The result is a linear layer on normalised features, exported like ProtoNet's. It
ignores ``unlabeled`` images.
"""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from ..backbones import Backbone
from ..dataset import ImageSet
from ..features import FeatureCache, FeatureExtractor, images_to_batch
from ..preprocess import working_side
from . import _meta_learning as meta
from ._heads import FeatureNormalizer, LinearHead, head_from_config
from ._registry import register_strategy
from .base import FeatureStrategy, ImageClassifier, OnStep, StepLog, Strategy, check_interrupt
from .protonet import _tuned_backbone

VARIANTS = ("anil", "fomaml")
ADAPTS = ("head", "last_block")
LAST_GROUPS = 2  # "last block": the backbone's last two layer groups (timm's coarse group_matcher)
# first-order MAML's inner steps on backbone weights: inner_lr x this (at inner_lr itself, 0.1, one step on the
# pretrained last layers of tf_efficientnet_lite0 left a 5-way digits task at chance; at 0.001 it did not)
BACKBONE_INNER_LR_SCALE = 0.01

log = logging.getLogger(__name__)


class _MetaLearner:
    """What both forms share: hyperparameters, the meta-training loop and the final adaptation."""

    summary = "meta-learns, on episodes of your classes, a model that adapts in a few steps (ignores the pool)"
    param_help = {
        "variant": "anil: only the head adapts per task (second-order through it); fomaml: first-order MAML, the "
                   "head and the meta-learned layers adapt per task",
        "adapt": "head: meta-learn a feature-wise gain and shift on frozen features (fast); last_block: meta-learn "
                 "the backbone's last two layer groups (trains on images, slow)",
        "n_way": "classes per meta-training episode (all classes when there are fewer)",
        "meta_episodes": "meta-training episodes (0: adapt the Proto-MAML head without meta-training)",
        "inner_steps": "gradient steps of each task's adaptation (and of the final one on the whole support)",
        "inner_lr": "learning rate of the per-task adaptation (SGD; backbone weights step at a hundredth of it)",
        "outer_lr": "learning rate of the meta-update (Adam)",
    }
    param_choices = {"variant": VARIANTS, "adapt": ADAPTS}
    param_ranges = {"n_way": (2, None), "meta_episodes": (0, None), "inner_steps": (1, 100), "inner_lr": (0, None),
                    "outer_lr": (0, None)}

    def __init__(self, *, variant: str = "anil", adapt: str = "head", n_way: int = 5, meta_episodes: int = 50,
                 inner_steps: int = 5, inner_lr: float = 0.1, outer_lr: float = 1e-3, seed: int = 0):
        self.variant = variant
        self.adapt = adapt
        self.n_way = n_way
        self.meta_episodes = meta_episodes
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.outer_lr = outer_lr
        self.seed = seed

    def _meta_fit(self, theta: meta.Params, body: meta.Body, inputs: torch.Tensor, y: np.ndarray,
                  body_keys: list[str], on_step: OnStep) -> tuple[meta.Params, torch.Tensor]:
        """Meta-train ``theta`` in place, then adapt it on all of ``inputs``: (adapted params, CL2N centre)."""
        inner_keys = ["W", "b"] + (body_keys if self.variant == "fomaml" else [])
        self.meta_trained_ = self.meta_episodes > 0 and len(meta.meta_trainable_classes(y)) >= 2
        if self.meta_episodes > 0 and not self.meta_trained_:
            log.warning("maml: no class has two images to split into shots and queries, so there is nothing to "
                        "meta-train on; adapting the Proto-MAML head on the support without meta-training. Add a "
                        "second image to at least two classes to meta-train.")
        if self.meta_trained_:
            self._meta_train(theta, body, inputs, y, inner_keys, on_step)
        labels, n_classes = meta.relabel(y)
        adapted, centre, _ = meta.adapt(theta, body, inputs, labels.to(inputs.device), n_classes, keys=inner_keys,
                                        steps=self.inner_steps, lr=self.inner_lr, first_order=True,
                                        body_lr=self._body_lr())
        return adapted, centre

    def _meta_train(self, theta, body, inputs, y, inner_keys, on_step) -> None:
        rng = np.random.default_rng(self.seed)
        optimizer = torch.optim.Adam(list(theta.values()), lr=self.outer_lr)
        for episode in range(1, self.meta_episodes + 1):
            check_interrupt()
            shots, queries = meta.sample_split_episode(y, self.n_way, rng)
            classes = np.unique(y[shots])
            y_shots = torch.as_tensor(np.searchsorted(classes, y[shots]), device=inputs.device)
            y_queries = torch.as_tensor(np.searchsorted(classes, y[queries]), device=inputs.device)
            loss, shot_acc, query_acc = meta_update(
                theta, optimizer, body, (inputs[shots], y_shots, inputs[queries], y_queries, len(classes)),
                variant=self.variant, inner_keys=inner_keys, steps=self.inner_steps, lr=self.inner_lr,
                body_lr=self._body_lr())
            if on_step:  # train_acc: the episode's shots at the last inner step; val_acc: its queries, adapted
                on_step(StepLog(step=episode, epoch=episode, loss=loss, train_acc=shot_acc, val_acc=query_acc,
                                lr=self.outer_lr))

    def _body_lr(self) -> float:
        """Inner learning rate of the adapting layers: inner_lr on features, a hundredth of it on backbone weights."""
        return self.inner_lr * (BACKBONE_INNER_LR_SCALE if self.adapt == "last_block" else 1.0)

    @staticmethod
    def _linear_head(adapted: meta.Params, centre: torch.Tensor) -> LinearHead:
        """The adapted model folded into one linear layer on CL2N features: s W diag(gain), s (W shift + b)."""
        scale, W, b = adapted["log_scale"].exp(), adapted["W"], adapted["b"]
        gain = adapted.get("gain", torch.ones(W.shape[1], device=W.device))
        shift = adapted.get("shift", torch.zeros(W.shape[1], device=W.device))
        normalizer = FeatureNormalizer(centre.detach().cpu(), subtract_center=True, l2=True)
        weight, bias = scale * W * gain[None, :], scale * (W @ shift + b)
        return LinearHead(normalizer, weight.detach().cpu(), bias.detach().cpu()).eval()

    def _state_meta(self) -> dict:
        return {**super()._state_meta(), "meta_trained": self.meta_trained_}


def _initial_scale() -> torch.Tensor:
    return torch.tensor(math.log(10.0))


@register_strategy
class MAML(_MetaLearner, FeatureStrategy):
    name = "maml"

    def __new__(cls, **params):
        if cls is MAML and params.get("adapt", "head") == "last_block":
            return ImageMAML(**params)  # not a MAML, so Python skips MAML.__init__ on it
        return super().__new__(cls)

    def check_params(self) -> None:
        super().check_params()
        if self.adapt != "head":  # only set_params can get here: the constructor builds an ImageMAML
            raise ValueError("a MAML on frozen features cannot adapt the backbone: create a new one with "
                             "create_strategy('maml', adapt='last_block') instead of set_params.")

    def fit(self, support: ImageSet, *, backbone: Backbone, unlabeled: ImageSet | None = None,
            on_step: OnStep = None) -> "MAML":
        self._on_step = on_step  # fit_features has no on_step; _fit_head reports through this
        try:
            return super().fit(support, backbone=backbone, unlabeled=unlabeled)
        finally:
            self._on_step = None

    def _fit_head(self, features: torch.Tensor, y: np.ndarray, unlabeled: torch.Tensor | None) -> nn.Module:
        torch.manual_seed(self.seed)
        d = features.shape[1]
        theta = {"gain": torch.ones(d), "shift": torch.zeros(d), "log_scale": _initial_scale()}
        adapted, centre = self._meta_fit(theta, lambda params, x: x, features, y, ["gain", "shift"],
                                         getattr(self, "_on_step", None))
        return self._linear_head(adapted, centre)

    def _restore(self, meta_json: dict, tensors: dict[str, torch.Tensor], backbone: Backbone) -> None:
        super()._restore(meta_json, tensors, backbone)
        self.meta_trained_ = meta_json.get("meta_trained", True)


class ImageMAML(_MetaLearner, Strategy):
    """``MAML(adapt="last_block")``: meta-trains the backbone's last layer groups on images (a plain Strategy, refit
    on images for every evaluation split), with the same name, parameters and saved format as :class:`MAML`."""

    name = "maml"

    def fit(self, support: ImageSet, *, backbone: Backbone, unlabeled: ImageSet | None = None,
            on_step: OnStep = None) -> "ImageMAML":
        self.check_params()
        support = support.labeled()
        support.check_trainable()
        torch.manual_seed(self.seed)
        model = copy.deepcopy(backbone.model).eval().requires_grad_(False)
        body_keys = _last_group_names(model)
        theta = backbone_meta_params(model, body_keys)
        side = working_side(backbone.data_config)
        batch = images_to_batch([support.load(i, side=side) for i in range(len(support))], backbone.data_config)
        adapted, centre = self._meta_fit(theta, backbone_body(model, body_keys), batch, support.label_indices(),
                                         body_keys, on_step)
        model.load_state_dict({key: adapted[key].detach() for key in body_keys}, strict=False)
        self.backbone_ = _tuned_backbone(backbone, model)
        self.head_ = self._linear_head(adapted, centre)
        self.classes_ = support.classes
        return self

    def _features(self, images_or_batch: ImageSet | torch.Tensor) -> torch.Tensor:
        if isinstance(images_or_batch, torch.Tensor) and images_or_batch.ndim == 4:
            with torch.inference_mode():
                return self.backbone_.model(images_or_batch)
        if isinstance(images_or_batch, ImageSet):
            extractor = FeatureExtractor(self.backbone_, engine="torch", cache=FeatureCache(enabled=False))
            return extractor.extract(images_or_batch)
        return images_or_batch

    def predict_proba(self, images_or_features: ImageSet | torch.Tensor) -> torch.Tensor:
        """Probabilities (n, C) for an ImageSet, a preprocessed batch (n, 3, H, W) or tuned features (n, d)."""
        self.check_is_fitted()
        with torch.inference_mode():
            return torch.softmax(self.head_(self._features(images_or_features).float()), dim=1)

    def embed(self, images: ImageSet) -> torch.Tensor:
        self.check_is_fitted()
        with torch.inference_mode():
            return self.head_.normalizer(self._features(images).float())

    def to_module(self) -> nn.Module:
        self.check_is_fitted()
        return ImageClassifier(copy.deepcopy(self.backbone_.model).eval(), copy.deepcopy(self.head_)).eval()

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {**{f"head.{k}": v for k, v in self.head_.state_dict().items()},
                **{f"backbone.{k}": v for k, v in self.backbone_.model.state_dict().items()}}

    def _state_meta(self) -> dict:
        return {"head": self.head_.config(), "meta_trained": self.meta_trained_}

    def _restore(self, meta_json: dict, tensors: dict[str, torch.Tensor], backbone: Backbone) -> None:
        model = copy.deepcopy(backbone.model)
        model.load_state_dict({k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")})
        self.backbone_ = _tuned_backbone(backbone, model)
        head_state = {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")}
        self.head_ = head_from_config(meta_json["head"], head_state).eval()
        self.meta_trained_ = meta_json.get("meta_trained", True)


def _last_group_names(model: nn.Module) -> list[str]:
    """Names of the parameters in the model's last ``LAST_GROUPS`` coarse layer groups (timm ``group_matcher``)."""
    from timm.models import group_parameters  # timm is imported only where a backbone is adapted

    groups = group_parameters(model, model.group_matcher(coarse=True))
    ordered = [names for _, names in sorted(groups.items())]
    return [name for group in ordered[-LAST_GROUPS:] for name in group]


# --- shared with fsl_app.pretrain (MAML pretraining of a backbone on base classes) --------------------------------

def backbone_meta_params(model: nn.Module, keys: list[str]) -> meta.Params:
    """Meta-parameters of a backbone's adapting layers: detached copies of the ``keys`` weights, and the Proto-MAML
    head's log scale (the head itself is rebuilt from class means in every task)."""
    theta = {key: value.detach().clone() for key, value in model.named_parameters() if key in keys}
    theta["log_scale"] = _initial_scale()
    return theta


def backbone_body(model: nn.Module, keys: list[str]) -> meta.Body:
    """``body(params, images (n, 3, H, W)) -> features (n, d)``: ``model`` with the ``keys`` weights from ``params``."""
    def body(params: meta.Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {key: params[key] for key in keys}, (x,))

    return body


def meta_update(theta: meta.Params, optimizer: torch.optim.Optimizer, body: meta.Body, episode: tuple, *,
                variant: str, inner_keys: list[str], steps: int, lr: float,
                body_lr: float | None = None) -> tuple[float, float, float]:
    """One outer step on ``theta`` for one episode (shots, y_shots, queries, y_queries, C), see
    :func:`_meta_learning.meta_gradient`; returns (query loss, shot accuracy, query accuracy)."""
    grads, loss, shot_acc, query_acc = meta.meta_gradient(theta, body, episode, variant=variant,
                                                          inner_keys=inner_keys, steps=steps, lr=lr, body_lr=body_lr)
    for key, value in theta.items():
        value.grad = grads[key].detach()
    optimizer.step()
    return loss, shot_acc, query_acc
