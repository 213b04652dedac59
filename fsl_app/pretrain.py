"""Learning across projects: train a backbone on a project with many labeled (base) classes, save it as a checkpoint
that a project with few labels of new classes uses through ``--weights CKPT``.

The two-stage recipe of the few-shot literature: learn an embedding on many base classes, then adapt to new classes
from a handful of images. Methods (a small registry, :data:`METHODS`; another one is one function and one entry):

- ``supervised``: cross-entropy over every base class with a temporary linear head, which is dropped afterwards
  (the "Baseline" of Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019; Tian et al., "Rethinking
  Few-Shot Image Classification: a Good Embedding Is All You Need?", ECCV 2020);
- ``protonet``: episodic meta-training with the Prototypical Networks loss (Snell et al., NeurIPS 2017): each
  episode samples N classes, K shots and Q queries per class and classifies the queries by distance to the shots'
  means;
- ``maml``: first-order MAML (Finn et al., ICML 2017) of the trained layer groups, with the ``maml`` strategy's
  torch.func inner loop (:mod:`fsl_app.strategies.maml`): each episode adapts a Proto-MAML head, initialised from the
  shots' class means, and the trained layers for ``inner_steps`` SGD steps on the shots (backbone weights at
  ``inner_lr`` x ``BACKBONE_INNER_LR_SCALE``), and the queries' loss at the adapted weights updates the layers (Adam).

All start from the given backbone's weights (usually ImageNet), train the last ``last_n`` layer groups (every layer
when None) with the finetune strategy's augmentation and schedule, keep BatchNorm statistics fixed (maml runs the
model in eval mode, as the maml strategy does), call ``check_interrupt()`` between batches and report a
:class:`StepLog` per epoch (supervised) or per episode (episodic methods).

The checkpoint is a safetensors file of the pooled-feature model's tensors (no classifier), with the provenance
(architecture, base classes, method, source, date, data_config, image count) both in the safetensors header and in a
JSON sidecar of the same stem. Nothing is pickled. The file is written atomically after training, so a cancelled or
crashed pretraining leaves no checkpoint at all.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from timm.models import group_parameters
from torch import nn
from torch.utils.data import DataLoader

from . import __version__
from .atomic import write_bytes_atomic, write_json_atomic
from .augment import build_augment, seed_pipeline
from .backbones import CHECKPOINT_FORMAT, PROVENANCE_KEY, Backbone, sidecar_path
from .dataset import DataError, ImageSet
from .features import pick_device
from .preprocess import working_side
from .strategies._episodic import _negative_distance
from .strategies._training import AugmentedImages, freeze_batchnorm, warmup_cosine
from .strategies.base import OnStep, StepLog, check_interrupt
from .strategies.maml import BACKBONE_INNER_LR_SCALE, backbone_body, backbone_meta_params, meta_update


@dataclass
class PretrainSettings:
    """Hyperparameters of a pretraining; each method reads the ones it needs.

    ``epochs``/``batch_size``: supervised; ``episodes``/``n_way``/``k_shot``/``n_query``: episodic methods;
    ``inner_steps``/``inner_lr``: maml's per-episode adaptation (SGD; backbone weights at a hundredth of the rate).
    ``lr``: None takes the method's default. ``last_n``: layer groups trained (None: every layer).
    """

    epochs: int = 5
    batch_size: int = 32
    episodes: int = 200
    n_way: int = 5
    k_shot: int = 5
    n_query: int = 10
    lr: float | None = None
    last_n: int | None = None
    augment: str | dict | None = "light"
    seed: int = 0
    inner_steps: int = 5
    inner_lr: float = 0.1


PretrainFunction = Callable[[nn.Module, ImageSet, dict, PretrainSettings, OnStep], nn.Module]


@dataclass(frozen=True)
class PretrainMethod:
    """``train(model, images, data_config, settings, on_step)`` returns the trained feature model (num_classes=0).

    ``episodic``: the method samples ``n_way``-way episodes, so the base project needs that many classes.
    """

    train: PretrainFunction
    episodic: bool
    default_lr: float
    summary: str


METHODS: dict[str, PretrainMethod] = {}


def register_method(name: str, *, episodic: bool, default_lr: float, summary: str):
    def decorate(function: PretrainFunction) -> PretrainFunction:
        METHODS[name] = PretrainMethod(function, episodic, default_lr, summary)
        return function

    return decorate


# --- checks ---------------------------------------------------------------------------------------------------------

def check_base_classes(images: ImageSet, method: str, settings: PretrainSettings) -> None:
    """Refuse, naming the fix, a base set the method cannot learn from."""
    if method not in METHODS:
        raise ValueError(f"unknown pretraining method {method!r}. Pick one of: {', '.join(sorted(METHODS))}.")
    if settings.last_n is not None and settings.last_n < 1:
        raise ValueError(f"last_n must be at least 1 (None trains every layer), got {settings.last_n}.")
    counts = {name: count for name, count in images.labeled().class_counts().items() if count > 0}
    if len(counts) < 2:
        raise DataError(f"pretraining needs at least 2 labeled classes; the base data has {len(counts)}. Use a "
                        "project with many labeled classes.")
    if METHODS[method].episodic:
        if settings.n_way < 2:
            raise DataError(f"--n-way must be at least 2, got {settings.n_way}.")
        if len(counts) < settings.n_way:
            raise DataError(f"{method} pretraining samples {settings.n_way}-way episodes, so the base data needs at "
                            f"least {settings.n_way} classes; it has {len(counts)}. Lower --n-way to "
                            f"{len(counts)} or less, or add classes.")
        small = sorted(name for name, count in counts.items() if count < 2)
        if small:
            raise DataError(f"{method} pretraining needs at least 2 images per class (a shot and a query); "
                            f"{', '.join(small)} {'has' if len(small) == 1 else 'have'} fewer. Add images.")


# --- the methods ----------------------------------------------------------------------------------------------------

def _trainable(model: nn.Module, last_n: int | None) -> list[nn.Parameter]:
    """Parameters of the last ``last_n`` layer groups (timm's coarse grouping, the classifier aside), or every
    parameter for None; the others stop requiring gradients."""
    if last_n is None:
        chosen = {name for name, _ in model.named_parameters()}
    else:
        groups = group_parameters(model, model.group_matcher(coarse=True))
        head = str(model.default_cfg.get("classifier", "classifier"))  # the temporary head is not a layer group
        ordered = [names for _, names in sorted(groups.items()) if not all(n.startswith(head) for n in names)]
        chosen = {name for group in ordered[-last_n:] for name in group} if last_n > 0 else set()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in chosen)
    return [p for p in model.parameters() if p.requires_grad]


def _dataset(images: ImageSet, data_config: dict, settings: PretrainSettings) -> AugmentedImages:
    pipeline = build_augment(settings.augment)
    seed_pipeline(pipeline, settings.seed)
    side = working_side(data_config)
    return AugmentedImages([images.load(i, side=side) for i in range(len(images))], images.label_indices().tolist(),
                           data_config, pipeline)


@register_method("supervised", episodic=False, default_lr=1e-3,
                 summary="cross-entropy over every base class with a temporary linear head")
def train_supervised(model: nn.Module, images: ImageSet, data_config: dict, settings: PretrainSettings,
                     on_step: OnStep = None) -> nn.Module:
    """Train ``model`` with a temporary ``len(classes)``-way head (AdamW, warm-up + cosine, label smoothing 0.1);
    the head learns at ``lr``, the backbone at ``lr / 10``. Returns the model without a head."""
    device = pick_device()
    model.reset_classifier(len(images.classes))
    head = list(model.get_classifier().parameters())
    body = [p for p in _trainable(model, settings.last_n) if all(p is not h for h in head)]
    for parameter in head:
        parameter.requires_grad_(True)
    lr = settings.lr or METHODS["supervised"].default_lr
    groups = [{"params": head, "lr": lr}] + ([{"params": body, "lr": lr / 10}] if body else [])
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    loader = DataLoader(_dataset(images, data_config, settings), batch_size=settings.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(settings.seed))
    scheduler = warmup_cosine(optimizer, len(loader), settings.epochs * len(loader))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.to(device)
    step = 0
    for epoch in range(1, settings.epochs + 1):
        model.train()
        freeze_batchnorm(model)
        losses, correct, seen = [], 0, 0
        for batch, labels in loader:
            check_interrupt()
            batch, labels = batch.to(device), labels.to(device)
            logits = model(batch)
            loss = loss_fn(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(loss.item())
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        if on_step:
            on_step(StepLog(step=step, epoch=epoch, loss=float(np.mean(losses)), train_acc=correct / seen,
                            lr=scheduler.get_last_lr()[0]))
    model.reset_classifier(0)
    return model


@register_method("protonet", episodic=True, default_lr=1e-4,
                 summary="episodic Prototypical Networks meta-training on N-way K-shot episodes of the base classes")
def train_protonet(model: nn.Module, images: ImageSet, data_config: dict, settings: PretrainSettings,
                   on_step: OnStep = None) -> nn.Module:
    """Meta-train ``model`` on ``episodes`` episodes (Adam): prototypes from the shots, cross-entropy of the queries
    over negative squared euclidean distances. Returns the model."""
    device = pick_device()
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    y = images.label_indices()
    dataset = _dataset(images, data_config, settings)
    lr = settings.lr or METHODS["protonet"].default_lr
    optimizer = torch.optim.Adam(_trainable(model, settings.last_n), lr=lr)
    model.to(device)
    for episode in range(1, settings.episodes + 1):
        check_interrupt()
        model.train()
        freeze_batchnorm(model)
        shots, shot_labels, queries, query_labels = sample_base_episode(y, settings, rng)
        embeddings = model(torch.stack([dataset[i][0] for i in shots + queries]).to(device))  # (n, d)
        shot_labels, query_labels = torch.as_tensor(shot_labels), torch.as_tensor(query_labels).to(device)
        prototypes = torch.stack([embeddings[:len(shots)][shot_labels == c].mean(0)
                                  for c in range(settings.n_way)])  # (n_way, d)
        logits = _negative_distance(embeddings[len(shots):], prototypes, "euclidean")  # (n_queries, n_way)
        loss = nn.functional.cross_entropy(logits, query_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step:
            accuracy = float((logits.argmax(1) == query_labels).float().mean())
            on_step(StepLog(step=episode, epoch=episode, loss=loss.item(), train_acc=accuracy, lr=lr))
    return model


@register_method("maml", episodic=True, default_lr=1e-4,
                 summary="first-order MAML of the trained layers with a Proto-MAML head, on N-way K-shot episodes")
def train_maml(model: nn.Module, images: ImageSet, data_config: dict, settings: PretrainSettings,
               on_step: OnStep = None) -> nn.Module:
    """Meta-train the trained layers of ``model`` on ``episodes`` episodes: each adapts on its shots in the inner
    loop and the queries' loss at the adapted weights is the outer (Adam) gradient. Returns the model."""
    device = pick_device()
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    y = images.label_indices()
    dataset = _dataset(images, data_config, settings)
    _trainable(model, settings.last_n)
    keys = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    model.to(device).eval().requires_grad_(False)
    theta = {key: value.to(device) for key, value in backbone_meta_params(model, keys).items()}
    body = backbone_body(model, keys)
    lr = settings.lr or METHODS["maml"].default_lr
    optimizer = torch.optim.Adam(list(theta.values()), lr=lr)
    for episode in range(1, settings.episodes + 1):
        check_interrupt()
        shots, shot_labels, queries, query_labels = sample_base_episode(y, settings, rng)
        batch = torch.stack([dataset[i][0] for i in shots + queries]).to(device)
        labels = torch.as_tensor(shot_labels + query_labels, device=device)
        n = len(shots)
        loss, shot_acc, query_acc = meta_update(
            theta, optimizer, body, (batch[:n], labels[:n], batch[n:], labels[n:], settings.n_way),
            variant="fomaml", inner_keys=["W", "b", *keys], steps=settings.inner_steps, lr=settings.inner_lr,
            body_lr=settings.inner_lr * BACKBONE_INNER_LR_SCALE)
        if on_step:  # train_acc: the shots at the last inner step; val_acc: the queries, adapted
            on_step(StepLog(step=episode, epoch=episode, loss=loss, train_acc=shot_acc, val_acc=query_acc, lr=lr))
    model.load_state_dict({key: theta[key].detach() for key in keys}, strict=False)
    return model


def sample_base_episode(y: np.ndarray, settings: PretrainSettings,
                        rng: np.random.Generator) -> tuple[list[int], list[int], list[int], list[int]]:
    """(shot indices, their episode labels 0..n_way-1, query indices, their labels) of one training episode.

    A class with fewer than ``k_shot + n_query`` images gives all it has, keeping at least one query.
    """
    shots, shot_labels, queries, query_labels = [], [], [], []
    for episode_label, label in enumerate(rng.choice(np.unique(y), size=settings.n_way, replace=False)):
        members = rng.permutation(np.flatnonzero(y == label))[:settings.k_shot + settings.n_query]
        k = min(settings.k_shot, len(members) - 1)
        shots += members[:k].tolist()
        queries += members[k:].tolist()
        shot_labels += [episode_label] * k
        query_labels += [episode_label] * (len(members) - k)
    return shots, shot_labels, queries, query_labels


# --- the whole pretraining ------------------------------------------------------------------------------------------

def pretrain_backbone(images: ImageSet, backbone: Backbone, *, method: str = "supervised",
                      settings: PretrainSettings | None = None, on_step: OnStep = None) -> nn.Module:
    """A copy of ``backbone.model`` trained on the labeled images of ``images`` with ``method``; CPU, eval mode.

    Raises DataError (naming the minimum) when the base classes do not suit the method.
    """
    settings = settings or PretrainSettings()
    labeled = images.labeled()
    check_base_classes(labeled, method, settings)
    torch.manual_seed(settings.seed)
    model = copy.deepcopy(backbone.model)
    trained = METHODS[method].train(model, labeled, backbone.data_config, settings, on_step)
    for parameter in trained.parameters():
        parameter.requires_grad_(True)
    return trained.eval().cpu()


def checkpoint_provenance(backbone: Backbone, images: ImageSet, *, method: str, settings: PretrainSettings,
                          source: str) -> dict:
    """The JSON sidecar: what the checkpoint is, what it was trained on and how."""
    labeled = images.labeled()
    return {"format": CHECKPOINT_FORMAT, "architecture": backbone.name, "method": method,
            "base_classes": labeled.classes, "source_project": source, "n_images": len(labeled),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in backbone.data_config.items()},
            "started_from": {"weights": backbone.weights, "source": backbone.source, "id": backbone.id},
            "settings": asdict(settings), "fsl_app_version": __version__}


def checkpoint_path(out: str | Path) -> Path:
    """``out`` with the ``.safetensors`` suffix (added when missing)."""
    out = Path(out).expanduser()
    return out if out.suffix == ".safetensors" else out.with_name(out.name + ".safetensors")


def save_checkpoint(model: nn.Module, out: str | Path, provenance: dict) -> Path:
    """Write ``model``'s tensors (safetensors, provenance in the header) and the JSON sidecar; returns the path.

    Each file is written atomically, weights first; a failure writing the sidecar removes the weights too.
    """
    from safetensors.torch import save

    path = checkpoint_path(out)
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    data = save(tensors, metadata={PROVENANCE_KEY: json.dumps(provenance, ensure_ascii=False)})
    write_bytes_atomic(path, data)
    try:
        write_json_atomic(sidecar_path(path), provenance)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
