"""Training helpers shared by the strategies that update backbone weights (finetune, episodic ProtoNet)."""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

if TYPE_CHECKING:  # imported where a pipeline is built: it takes seconds
    import albumentations as A

from ..augment import apply
from ..features import eval_transform


class AugmentedImages(Dataset):
    """Decoded images with integer labels; each access draws a fresh augmentation. Item: ((3, H, W), label)."""

    def __init__(self, images: Sequence[Image.Image], labels: Sequence[int], data_config: dict,
                 pipeline: A.Compose | None):
        self.images = list(images)
        self.labels = list(labels)
        self.pipeline = pipeline
        self.transform = eval_transform(data_config)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.pipeline is not None:
            image = apply(self.pipeline, image)
        return self.transform(image), self.labels[index]


_FABRIC: contextvars.ContextVar = contextvars.ContextVar("fsl_app_fabric", default=None)


@contextlib.contextmanager
def data_parallel(fabric) -> Iterator[None]:
    """Backbone-training loops run inside this block train data-parallel on ``fabric`` (a launched Lightning
    Fabric, see :mod:`fsl_app.distributed_train`); every process must run the same fits in the same order."""
    token = _FABRIC.set(fabric)
    try:
        yield
    finally:
        _FABRIC.reset(token)


def current_fabric():
    """The Fabric installed by :func:`data_parallel`, or None (one process)."""
    return _FABRIC.get()


def sharded_loader(dataset: Dataset, batch_size: int, seed: int, fabric) -> DataLoader:
    """A loader over this process's share of each global batch of ``batch_size`` (the world's batches together are
    those one process would draw with the same seed, so the loss curve does not depend on the number of processes).
    Call ``loader.sampler.set_epoch(epoch)`` every epoch."""
    world = fabric.world_size
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} does not split over {world} processes: pass a multiple of "
                         f"{world} (--param batch_size=...) or change --devices.")
    sampler = DistributedSampler(dataset, num_replicas=world, rank=fabric.global_rank, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=batch_size // world, sampler=sampler)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up to the base learning rate, then cosine decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def freeze_batchnorm(model: nn.Module) -> None:
    """Keep BatchNorm statistics fixed: batches of a few-shot task are too small to estimate them."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def l2sp_penalty(model: nn.Module, reference: dict[str, torch.Tensor]) -> torch.Tensor:
    """L2-SP (Li et al. 2018): sum of ||theta - theta_0||^2 over the trainable pretrained parameters."""
    terms = [((p - reference[n]) ** 2).sum() for n, p in model.named_parameters()
             if p.requires_grad and n in reference]
    return torch.stack(terms).sum() if terms else torch.zeros(())


MIN_IMAGES_FOR_VALIDATION = 10


def stratified_validation_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train / validation indices holding out ``fraction`` of each class (at least one image each).

    All or nothing: when the smallest class has fewer than ``MIN_IMAGES_FOR_VALIDATION`` images, nothing is held out.
    With 5 shots a class would lose a fifth of its training images to a validation set of one image per class, whose
    accuracy moves in steps of a whole class and is too noisy to pick an epoch (the previous default, which held one
    image per class out, scored 46.0 against linear's 74.0 on a 10-way 5-shot digit episode; see
    benchmarks/results/fewshot_digits.md).
    """
    counts = np.bincount(y) if len(y) else np.zeros(0, dtype=int)
    present = counts[counts > 0]
    if fraction <= 0 or not len(present) or present.min() < MIN_IMAGES_FOR_VALIDATION:
        return np.arange(len(y)), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        n_val = max(1, int(round(len(members) * fraction)))
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.array(sorted(train)), np.array(sorted(val), dtype=np.int64)
