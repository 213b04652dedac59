"""Matching Networks: classify a query by softmax attention over the support images, weighted by cosine similarity.

Vinyals, Blundell, Lillicrap, Kavukcuoglu and Wierstra, "Matching Networks for One Shot Learning" (NeurIPS 2016).
The probability of class c is the attention mass on the support images of c: ``sum_{j in c} softmax_j(scale cos(f(x),
g(x_j)))``, a differentiable nearest-neighbour rule. On frozen CL2N features it needs no training; ``scale`` (the
sharpness of the attention) is chosen by leave-one-out likelihood on the support (10 when no class has two images).
Optional full-context embeddings (``fce_steps > 0``): a bidirectional LSTM reads the support set as a sequence and
adds context to each support embedding, and an attention LSTM refines each query for ``fce_steps`` rounds against
the support, as in the paper and easyfsl's ``matching_networks.py``. Both LSTMs start at zero weights (so FCE starts
as plain attention: the paper's residual form then gives the identity) and are trained for ``fce_episodes`` episodes
drawn from the support, split into shots and queries; with one image per class there is nothing to train them on
and plain attention is used (logged). The exported head folds in the context-embedded support.

Optional episodic fine-tuning (``finetune_episodes > 0``) first trains the backbone with the matching loss on
episodes of the user's classes, as ProtoNet's does with its own loss: ``MatchingNet(finetune_episodes=N)`` constructs
an :class:`EpisodicMatchingNet`, a Strategy on images with the same name, parameters and saved format. Both ignore
``unlabeled`` images.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from torch import nn

from ..backbones import Backbone
from ..dataset import ImageSet
from ..features import FeatureCache, FeatureExtractor
from . import _meta_learning as meta
from ._episodic import episodic_finetune
from ._heads import AttentionHead, FeatureNormalizer, attention_logits, fce_queries
from ._registry import register_strategy
from .base import FeatureStrategy, OnStep, StepLog, Strategy, check_interrupt
from .protonet import EpisodicProtoNet, _tuned_backbone

log = logging.getLogger(__name__)
FINETUNE_SCALE = 10.0  # attention sharpness of the episodic fine-tuning loss
SCALES = torch.logspace(0, 2.5, 26)  # 1 .. 316


@register_strategy
class MatchingNet(FeatureStrategy):
    name = "matchingnet"
    summary = "attention over the support images by cosine similarity (Matching Networks; ignores the pool)"
    param_help = {
        "normalize": "cl2n: centre on the mean feature, then scale to unit length (SimpleShot); l2",
        "fce_steps": "0: plain cosine attention; N > 0: full-context embeddings with N attention-LSTM rounds",
        "fce_episodes": "training episodes of the full-context LSTMs (used when fce_steps > 0); their size grows "
                        "with the square of the feature width: seconds per episode at 1280 features on a CPU",
        "fce_lr": "learning rate (Adam) of the full-context LSTMs",
        "finetune_episodes": "0 keeps the backbone frozen; otherwise episodes of matching-loss training first",
        "finetune_lr": "learning rate of the episodic fine-tuning",
    }
    param_choices = {"normalize": ("cl2n", "l2")}
    param_ranges = {"fce_steps": (0, 20), "fce_episodes": (0, None), "fce_lr": (0, None),
                    "finetune_episodes": (0, None), "finetune_lr": (0, None)}

    def __new__(cls, **params):
        if cls is MatchingNet and params.get("finetune_episodes", 0) > 0:
            return EpisodicMatchingNet(**params)  # not a MatchingNet, so Python skips MatchingNet.__init__ on it
        return super().__new__(cls)

    def __init__(self, *, normalize: str = "cl2n", fce_steps: int = 0, fce_episodes: int = 30, fce_lr: float = 1e-3,
                 finetune_episodes: int = 0, finetune_lr: float = 1e-4, seed: int = 0):
        self.normalize = normalize
        self.fce_steps = fce_steps
        self.fce_episodes = fce_episodes
        self.fce_lr = fce_lr
        self.finetune_episodes = finetune_episodes
        self.finetune_lr = finetune_lr
        self.seed = seed

    def check_params(self) -> None:
        super().check_params()
        if self.finetune_episodes > 0 and type(self) is MatchingNet:  # only set_params can get here
            raise ValueError("a frozen MatchingNet cannot start episodic fine-tuning: create a new one with "
                             "create_strategy('matchingnet', finetune_episodes=N) instead of set_params.")

    def fit(self, support: ImageSet, *, backbone: Backbone, unlabeled: ImageSet | None = None,
            on_step: OnStep = None) -> "MatchingNet":
        self._on_step = on_step  # fit_features has no on_step; _fit_head reports FCE training through this
        try:
            return super().fit(support, backbone=backbone, unlabeled=unlabeled)
        finally:
            self._on_step = None

    def _fit_head(self, features: torch.Tensor, y: np.ndarray, unlabeled: torch.Tensor | None) -> nn.Module:
        normalizer = FeatureNormalizer.fit(features, self.normalize)
        with torch.no_grad():
            x = normalizer(features)
        coef = nn.functional.one_hot(torch.as_tensor(y), int(y.max()) + 1).float()
        scale = _leave_one_out_scale(x, coef)
        self.fce_trained_ = False
        if self.fce_steps == 0:
            return AttentionHead(normalizer, x, coef, scale)
        torch.manual_seed(self.seed)
        d = x.shape[1]
        encoder, cell = _zero(nn.LSTM(d, d, batch_first=True, bidirectional=True)), _zero(nn.LSTMCell(2 * d, d))
        if self.fce_episodes > 0 and len(meta.meta_trainable_classes(y)) >= 2:
            self._train_fce(encoder, cell, x, y, scale)
            self.fce_trained_ = True
        elif self.fce_episodes > 0:
            log.warning("matchingnet: no class has two images to split into shots and queries, so the full-context "
                        "LSTMs cannot be trained; using plain cosine attention. Add a second image to at least two "
                        "classes to train them.")
        with torch.no_grad():
            context = _fce_support(encoder, x)
        return AttentionHead(normalizer, context, coef, scale, cell.eval(), self.fce_steps)

    def _train_fce(self, encoder: nn.LSTM, cell: nn.LSTMCell, x: torch.Tensor, y: np.ndarray, scale: float) -> None:
        rng = np.random.default_rng(self.seed)
        optimizer = torch.optim.Adam([*encoder.parameters(), *cell.parameters()], lr=self.fce_lr)
        on_step = getattr(self, "_on_step", None)
        for episode in range(1, self.fce_episodes + 1):
            check_interrupt()
            shots, queries = meta.sample_split_episode(y, 5, rng)
            classes = np.unique(y[shots])
            order = np.argsort(y[shots], kind="stable")  # the paper reads the support sorted by class
            shots = shots[order]
            coef = nn.functional.one_hot(torch.as_tensor(np.searchsorted(classes, y[shots])), len(classes)).float()
            targets = torch.as_tensor(np.searchsorted(classes, y[queries]))
            context = _fce_support(encoder, x[shots])
            logits = attention_logits(fce_queries(x[queries], context, cell, self.fce_steps), context, coef, scale)
            loss = nn.functional.cross_entropy(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_step:
                accuracy = float((logits.argmax(1) == targets).float().mean())
                on_step(StepLog(step=self.finetune_episodes + episode, epoch=self.finetune_episodes + episode,
                                loss=loss.item(), train_acc=accuracy, lr=self.fce_lr))

    def _state_meta(self) -> dict:
        return {**super()._state_meta(), "fce_trained": self.fce_trained_}

    def _restore(self, meta_json: dict, tensors: dict[str, torch.Tensor], backbone: Backbone) -> None:
        super()._restore(meta_json, tensors, backbone)
        self.fce_trained_ = meta_json.get("fce_trained", False)


def _zero(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.zero_()
    return module


def _fce_support(encoder: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """g(x_j) = x_j + forward + backward hidden states of the bidirectional LSTM over the support sequence (n, d)."""
    hidden = encoder(x[None])[0][0]
    d = x.shape[1]
    return x + hidden[:, :d] + hidden[:, d:]


def _leave_one_out_scale(x: torch.Tensor, coef: torch.Tensor) -> float:
    """The attention sharpness with the best leave-one-out likelihood on the support; 10 without such rows."""
    labels = coef.argmax(1)
    rows = torch.nonzero(coef.sum(0)[labels] >= 2).flatten()  # images whose class keeps another when left out
    if len(rows) == 0:
        return 10.0
    similarity = x[rows] @ x.T / (x[rows].norm(dim=1, keepdim=True) * x.norm(dim=1)[None]).clamp_min(1e-12)
    similarity[torch.arange(len(rows)), rows] = -torch.inf  # leave each row's own image out
    targets = labels[rows]
    losses = []
    for scale in SCALES:
        scores = scale * similarity
        mass = torch.logsumexp(scores[:, :, None] + torch.log(coef.clamp_min(1e-30))[None], dim=1)
        losses.append(nn.functional.cross_entropy(mass, targets).item())
    return float(SCALES[int(np.argmin(losses))])


class EpisodicMatchingNet(EpisodicProtoNet):
    """Matching Networks after episodic training of a copy of the backbone: ``MatchingNet(finetune_episodes=N > 0)``.

    The decision is a frozen :class:`MatchingNet` on the tuned backbone's features (kept in ``protonet_``, the name
    its ProtoNet twin uses for the same role).
    """

    name = "matchingnet"
    summary = MatchingNet.summary
    param_help = MatchingNet.param_help
    param_choices = MatchingNet.param_choices
    param_ranges = MatchingNet.param_ranges

    __init__ = MatchingNet.__init__

    def fit(self, support: ImageSet, *, backbone: Backbone, unlabeled: ImageSet | None = None,
            on_step: OnStep = None) -> "EpisodicMatchingNet":
        self.check_params()
        support = support.labeled()
        support.check_trainable()
        if len(meta.meta_trainable_classes(support.label_indices())) >= 2:
            tuned = episodic_finetune(backbone, support, episodes=self.finetune_episodes, lr=self.finetune_lr,
                                      distance="cosine", seed=self.seed, on_step=on_step,
                                      episode_logits=_matching_episode_logits)
        else:
            log.warning("matchingnet: no class has two images to split into shots and queries; the backbone is not "
                        "fine-tuned. Add a second image to at least two classes to fine-tune it.")
            tuned = copy.deepcopy(backbone.model)
        tuned_backbone = _tuned_backbone(backbone, tuned)
        self.protonet_ = self._frozen().fit(support, backbone=tuned_backbone, on_step=on_step)
        self.backbone_ = tuned_backbone
        self.classes_ = self.protonet_.classes_
        return self

    def _frozen(self) -> "_MatchingNetOnTunedBackbone":
        return _MatchingNetOnTunedBackbone(**self.get_params())

    def _restore(self, meta_json: dict, tensors: dict[str, torch.Tensor], backbone: Backbone) -> None:
        model = copy.deepcopy(backbone.model)
        model.load_state_dict({k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")})
        self.backbone_ = _tuned_backbone(backbone, model)
        self.protonet_ = self._frozen()._load_state(meta_json, tensors, self.backbone_)


class _MatchingNetOnTunedBackbone(MatchingNet):
    """A frozen MatchingNet on a backbone that exists only in this process: its features are not cached on disk."""

    def _extractor(self, backbone: Backbone) -> FeatureExtractor:
        if getattr(self, "_tuned_extractor", None) is None or self._tuned_extractor.backbone is not backbone:
            self._tuned_extractor = FeatureExtractor(backbone, engine="torch", cache=FeatureCache(enabled=False))
        return self._tuned_extractor


def _matching_episode_logits(shots: torch.Tensor, targets: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    coef = nn.functional.one_hot(targets, int(targets.max()) + 1).float()
    return attention_logits(queries, shots, coef, FINETUNE_SCALE)
