"""Episodic fine-tuning of a backbone with the Prototypical Networks loss (Snell et al. 2017, Algorithm 1)."""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..augment import build_augment, seed_pipeline
from ..backbones import Backbone
from ..dataset import ImageSet
from ..features import pick_device
from ..preprocess import working_side
from ._meta_learning import split_in_half
from ._training import AugmentedImages, freeze_batchnorm
from .base import OnStep, StepLog, check_interrupt

# (shot embeddings (n_s, d), shot targets (n_s,) in 0..C-1, query embeddings (n_q, d)) -> query logits (n_q, C)
EpisodeLogits = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def episodic_finetune(backbone: Backbone, support: ImageSet, *, episodes: int, lr: float, distance: str,
                      seed: int, on_step: OnStep = None, n_way: int = 5,
                      episode_logits: EpisodeLogits | None = None) -> nn.Module:
    """A copy of ``backbone.model`` trained on episodes drawn from ``support`` (every class needs >= 2 images).

    Each episode takes up to ``n_way`` classes, splits each class's images in half into shots and queries, builds
    prototypes from the shots and minimises cross-entropy of the queries over negative distances; or, given
    ``episode_logits``, over the logits it computes (Matching Networks' attention).
    """
    device = pick_device()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    y = support.label_indices()
    pipeline = build_augment("light")
    seed_pipeline(pipeline, seed)
    side = working_side(backbone.data_config)
    images = [support.load(i, side=side) for i in range(len(support))]
    dataset = AugmentedImages(images, y.tolist(), backbone.data_config, pipeline)
    model = copy.deepcopy(backbone.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for episode in range(1, episodes + 1):
        check_interrupt()
        model.train()
        freeze_batchnorm(model)
        shots, queries = _sample_episode(y, n_way, rng)
        batch = torch.stack([dataset[i][0] for i in shots + queries]).to(device)
        embeddings = model(batch)
        shot_labels = torch.as_tensor([y[i] for i in shots])
        query_labels = torch.as_tensor([y[i] for i in queries])
        classes = torch.unique(shot_labels)
        targets = torch.searchsorted(classes, query_labels).to(device)
        if episode_logits is not None:
            shot_targets = torch.searchsorted(classes, shot_labels).to(device)
            logits = episode_logits(embeddings[: len(shots)], shot_targets, embeddings[len(shots):])
        else:
            prototypes = torch.stack([embeddings[: len(shots)][shot_labels == c].mean(0) for c in classes])
            logits = _negative_distance(embeddings[len(shots):], prototypes, distance)
        loss = nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step:
            accuracy = (logits.argmax(1) == targets).float().mean().item()
            on_step(StepLog(step=episode, epoch=episode, loss=loss.item(), train_acc=accuracy, lr=lr))
    return model.eval().cpu()


def _sample_episode(y: np.ndarray, n_way: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    classes = rng.choice(np.unique(y), size=min(n_way, len(np.unique(y))), replace=False)
    return split_in_half(y, classes, rng)


def _negative_distance(x: torch.Tensor, prototypes: torch.Tensor, distance: str) -> torch.Tensor:
    if distance == "cosine":
        return 10 * nn.functional.normalize(x, dim=1) @ nn.functional.normalize(prototypes, dim=1).T
    return -torch.cdist(x, prototypes) ** 2
