"""Fine-tuning: the pretrained timm backbone with a new classification head, trained on the user's images.

Transfer learning as in Kornblith et al., "Do Better ImageNet Models Transfer Better?" (CVPR 2019) and the few-shot
"baseline" of Chen et al., "A Closer Look at Few-shot Classification" (ICLR 2019): train only the head, the last N
layer groups, or the whole network. The new head starts as a linear probe fitted on the frozen features (LP-FT, Kumar
et al., "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution", ICLR 2022): a randomly
initialised head sends large, noisy gradients into the pretrained layers during the first epochs. AdamW with linear
warm-up and cosine decay, label smoothing, train-time augmentation (albumentations), BatchNorm statistics frozen
(few-shot batches are too small to estimate them), optional L2-SP (Li et al., ICML 2018) that pulls the weights toward
their pretrained values, early stopping on a stratified validation split (only when every class has enough images to
spare some), AMP on CUDA. The fitted model is itself the exported module. It ignores ``unlabeled`` images.
"""

from __future__ import annotations

import copy
import logging
import warnings

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..augment import build_augment, seed_pipeline
from ..backbones import Backbone
from ..dataset import ImageSet
from ..features import eval_transform, extract_features, pick_device
from ..preprocess import working_side
from ._heads import binary_to_two_columns
from ._registry import register_strategy
from ._training import (AugmentedImages, current_fabric, freeze_batchnorm, l2sp_penalty, sharded_loader,
                        stratified_validation_split, warmup_cosine)
from .base import OnStep, StepLog, Strategy, check_interrupt

MODES = ("head", "last_n", "full")
HEAD_INITS = ("linear_probe", "random")

log = logging.getLogger(__name__)


@register_strategy
class FineTune(Strategy):
    name = "finetune"
    summary = "trains the backbone with a new head: slowest, best on images far from photos (ignores the pool)"
    param_help = {
        "mode": "head: train only the new head; last_n: also the last N layer groups; full: every layer (slowest, "
                "and the most accurate on images far from ImageNet photos)",
        "last_n": "layer groups trained in mode last_n",
        "epochs": "passes over the training images (early stopping may end sooner)",
        "lr": "learning rate of the head (the backbone gets lr x backbone_lr_scale)",
        "backbone_lr_scale": "the backbone's learning rate as a fraction of lr",
        "weight_decay": "AdamW weight decay",
        "warmup_epochs": "epochs of linear learning-rate warm-up",
        "label_smoothing": "share of each target spread over the other classes",
        "augment": "train-time augmentation: the pipeline saved on the Augment page, or a preset",
        "l2sp": "pull the weights towards their pretrained values (0: off)",
        "batch_size": "images per training step",
        "patience": "epochs without validation gain before stopping",
        "val_fraction": "share of each class held out to pick the best epoch (only when every class has 10 images "
                        "or more)",
        "head_init": "linear_probe: the new head starts as a logistic regression on the frozen features (LP-FT); "
                     "random",
    }
    param_choices = {"mode": MODES, "head_init": HEAD_INITS}
    param_ranges = {"last_n": (0, None), "epochs": (0, None), "lr": (0, None), "backbone_lr_scale": (0, None),
                    "weight_decay": (0, None), "warmup_epochs": (0, None), "label_smoothing": (0, 1),
                    "l2sp": (0, None), "batch_size": (1, None), "patience": (1, None), "val_fraction": (0, 0.9)}

    def __init__(self, *, mode: str = "last_n", last_n: int = 2, epochs: int = 15, lr: float = 1e-3,
                 backbone_lr_scale: float = 0.1, weight_decay: float = 0.01, warmup_epochs: int = 1,
                 label_smoothing: float = 0.1, l2sp: float = 0.0, augment: dict | str | None = "light",
                 batch_size: int = 16, patience: int = 5, val_fraction: float = 0.2,
                 head_init: str = "linear_probe", seed: int = 0):
        self.mode = mode
        self.last_n = last_n
        self.epochs = epochs
        self.lr = lr
        self.backbone_lr_scale = backbone_lr_scale
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.label_smoothing = label_smoothing
        self.l2sp = l2sp
        self.augment = augment
        self.batch_size = batch_size
        self.patience = patience
        self.val_fraction = val_fraction
        self.head_init = head_init
        self.seed = seed

    # --- training ---
    def fit(self, support: ImageSet, *, backbone: Backbone, unlabeled: ImageSet | None = None,
            on_step: OnStep = None) -> "FineTune":
        self.check_params()
        support = support.labeled()  # unlabeled images carry no class, and this strategy ignores the pool
        support.check_trainable()
        torch.manual_seed(self.seed)
        classes = support.classes
        self.backbone_ = backbone
        y = support.label_indices(classes)
        side = working_side(backbone.data_config)
        images = [support.load(i, side=side) for i in range(len(support))]
        train_idx, val_idx = stratified_validation_split(y, self.val_fraction, self.seed)
        model = self._build_model(backbone, len(classes))
        if self.head_init == "linear_probe":
            self._init_head_from_probe(model, support.subset(train_idx), y[train_idx])
        self.model_ = self._train(model, images, y, train_idx, val_idx, on_step).eval().cpu()
        self.classes_ = classes  # set last: a crash mid-fit must not leave an object that looks fitted
        return self

    def _build_model(self, backbone: Backbone, n_classes: int) -> nn.Module:
        model = copy.deepcopy(backbone.model)
        model.reset_classifier(n_classes)
        head = {id(p) for p in model.get_classifier().parameters()}
        trainable = self._trainable_names(model)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(id(parameter) in head or name in trainable)
        return model

    def _init_head_from_probe(self, model: nn.Module, train: ImageSet, y: np.ndarray) -> None:
        """Set the new linear head to a logistic regression fitted on the frozen (cached) features of ``train``."""
        classifier = model.get_classifier()
        features = extract_features(self.backbone_, train).double()  # (n, num_features)
        if not isinstance(classifier, nn.Linear) or features.shape[1] != classifier.in_features:
            log.info("head_init='linear_probe' skipped: the head of %s is not one linear layer on the pooled "
                     "features; it starts random.", self.backbone_.name)
            return
        weight, bias = probe_weights(features, y, classifier.out_features, self.seed)
        with torch.no_grad():
            classifier.weight.copy_(weight)
            classifier.bias.copy_(bias)

    def _trainable_names(self, model: nn.Module) -> set[str]:
        if self.mode == "full":
            return {name for name, _ in model.named_parameters()}
        if self.mode == "head":
            return set()
        from timm.models import group_parameters  # timm is imported when fine-tuning runs, not with the registry

        groups = group_parameters(model, model.group_matcher(coarse=True))
        head = _classifier_prefix(model)  # the new head is always trained: it is not one of the last N groups
        ordered = [names for key, names in sorted(groups.items()) if not all(n.startswith(head) for n in names)]
        return {name for group in ordered[-self.last_n:] for name in group} if self.last_n > 0 else set()

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        head = {id(p) for p in model.get_classifier().parameters()}
        body = [p for p in model.parameters() if p.requires_grad and id(p) not in head]
        groups = [{"params": list(model.get_classifier().parameters()), "lr": self.lr}]
        if body:
            groups.append({"params": body, "lr": self.lr * self.backbone_lr_scale})
        return torch.optim.AdamW(groups, weight_decay=self.weight_decay)

    def _train(self, model, images, y, train_idx, val_idx, on_step) -> nn.Module:
        """The training loop; inside ``_training.data_parallel(fabric)`` each process trains on its share of every
        batch and DDP averages the gradients (Lightning Fabric)."""
        fabric = current_fabric()
        device = fabric.device if fabric is not None else pick_device()
        on_cuda = device.type == "cuda"
        model = model.to(device)
        if on_cuda:
            model = model.to(memory_format=torch.channels_last)
        pipeline = build_augment(self.augment)
        seed_pipeline(pipeline, self.seed)
        train_set = AugmentedImages([images[i] for i in train_idx], y[train_idx].tolist(),
                                    self.backbone_.data_config, pipeline)
        if fabric is None:
            loader = DataLoader(train_set, batch_size=self.batch_size, shuffle=True, drop_last=False,
                                generator=torch.Generator().manual_seed(self.seed), pin_memory=on_cuda)
        else:
            loader = sharded_loader(train_set, self.batch_size, self.seed, fabric)
        val_batch = self._val_batch(images, y, val_idx)
        optimizer = self._optimizer(model)
        total = self.epochs * len(loader)
        scheduler = warmup_cosine(optimizer, self.warmup_epochs * len(loader), total)
        scaler = torch.amp.GradScaler(enabled=on_cuda and fabric is None)  # Fabric brings its own precision
        reference = {n: p.detach().clone() for n, p in model.named_parameters()
                     if p.requires_grad and not n.startswith(_classifier_prefix(model))}
        network = model  # the plain module: parameter names for L2-SP, what the strategy keeps
        if fabric is not None:
            model, optimizer = fabric.setup(model, optimizer)  # DDP; the scheduler still drives the same optimizer
        loss_fn = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
        best_state, best_score, stale, step = None, -1.0, 0, 0
        for epoch in range(1, self.epochs + 1):
            model.train()
            freeze_batchnorm(model)
            losses, correct, seen = [], 0, 0
            if fabric is not None:
                loader.sampler.set_epoch(epoch)
            for batch, labels in loader:
                check_interrupt()
                batch, labels = batch.to(device, non_blocking=True), labels.to(device)
                if on_cuda:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, enabled=on_cuda and fabric is None):
                    logits = model(batch)
                    loss = loss_fn(logits, labels)
                if self.l2sp > 0:
                    loss = loss + self.l2sp * l2sp_penalty(network, reference)
                optimizer.zero_grad(set_to_none=True)
                if fabric is None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    fabric.backward(loss)
                    optimizer.step()
                scheduler.step()
                step += 1
                batch_loss, batch_correct, batch_seen = _world_totals(
                    fabric, loss.item() * len(labels), (logits.argmax(1) == labels).sum().item(), len(labels))
                losses.append(batch_loss / batch_seen)
                correct += batch_correct
                seen += batch_seen
            val_acc = self._accuracy(model, val_batch, device)
            if on_step:
                on_step(StepLog(step=step, epoch=epoch, loss=float(np.mean(losses)), train_acc=correct / seen,
                                val_acc=val_acc, lr=scheduler.get_last_lr()[0]))
            score = val_acc if val_acc is not None else -float(np.mean(losses))
            if score > best_score:
                best_score, stale = score, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if val_acc is not None and stale >= self.patience:
                    break
        if best_state is not None and val_batch is not None:
            model.load_state_dict(best_state)
        return network

    def _val_batch(self, images, y, val_idx):
        if len(val_idx) == 0:
            return None
        transform = eval_transform(self.backbone_.data_config)
        return torch.stack([transform(images[i]) for i in val_idx]), torch.as_tensor(y[val_idx])

    @staticmethod
    def _accuracy(model, val_batch, device) -> float | None:
        if val_batch is None:
            return None
        model.eval()
        with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
            predictions = model(val_batch[0].to(device)).argmax(1).cpu()
        return float((predictions == val_batch[1]).float().mean())

    # --- prediction ---
    def predict_proba(self, images_or_features: ImageSet | torch.Tensor) -> torch.Tensor:
        """Probabilities (n, n_classes) for an ImageSet or a preprocessed batch (n, 3, H, W)."""
        self.check_is_fitted()
        batch = images_or_features
        if isinstance(images_or_features, ImageSet):
            batch = self._preprocess(images_or_features)
        with torch.inference_mode():
            return torch.cat([torch.softmax(self.model_(batch[i:i + 64]).float(), 1)
                              for i in range(0, len(batch), 64)]) if len(batch) else torch.zeros(0, len(self.classes_))

    def _preprocess(self, images: ImageSet) -> torch.Tensor:
        transform = eval_transform(self.backbone_.data_config)
        side = working_side(self.backbone_.data_config)
        return torch.stack([transform(images.load(i, side=side)) for i in range(len(images))]) if len(images) else \
            torch.zeros(0, *self.backbone_.input_size)

    def embed(self, images: ImageSet) -> torch.Tensor:
        """Pooled features of the fine-tuned network, (n, num_features)."""
        self.check_is_fitted()
        with torch.inference_mode():
            return self.model_.forward_head(self.model_.forward_features(self._preprocess(images)), pre_logits=True)

    def to_module(self) -> nn.Module:
        self.check_is_fitted()
        return copy.deepcopy(self.model_).eval()

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.model_.state_dict())

    def _restore(self, meta: dict, tensors: dict[str, torch.Tensor], backbone: Backbone) -> None:
        self.backbone_ = backbone
        model = copy.deepcopy(backbone.model)
        model.reset_classifier(len(self.classes_))
        model.load_state_dict(tensors)
        self.model_ = model.eval()


def probe_weights(features: torch.Tensor, y: np.ndarray, n_classes: int,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression on raw features (n, d) -> (weight (n_classes, d), bias (n_classes,)) acting on them.

    Fitted on centred features scaled to unit mean norm (what ``linear`` sees, less the per-image normalisation,
    which a linear layer cannot express), then folded back so that ``weight @ f + bias`` takes raw features.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    mean = features.mean(0)
    scale = float((features - mean).norm(dim=1).mean()) or 1.0
    x = ((features - mean) / scale).numpy()
    weight, bias = np.zeros((n_classes, x.shape[1])), np.zeros(n_classes)
    present = np.unique(y)
    if len(present) >= 2:
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            estimator = LogisticRegression(C=10.0, max_iter=2000, random_state=seed).fit(x, y)
        coef, intercept = binary_to_two_columns(estimator.coef_, np.atleast_1d(estimator.intercept_))
        weight[present], bias[present] = coef, intercept
    weight = torch.from_numpy(weight / scale)
    bias = torch.from_numpy(bias) - weight @ mean
    return weight.float(), bias.float()


def _world_totals(fabric, *values: float) -> list[float]:
    """``values`` summed over every process of ``fabric`` (unchanged in one process)."""
    if fabric is None:
        return list(values)
    return fabric.all_reduce(torch.tensor(values, dtype=torch.float64), reduce_op="sum").tolist()


def _classifier_prefix(model: nn.Module) -> str:
    classifier = model.default_cfg.get("classifier", "classifier")
    return (classifier[0] if isinstance(classifier, (list, tuple)) else classifier) + "."
