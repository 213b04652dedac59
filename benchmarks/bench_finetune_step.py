"""Q3: fine-tuning step time of the product's ``finetune`` strategy vs a minimal hand-written timm training loop.

Same model (the default backbone with a new head), same images (digits, 224 px PNG), same batch size, same
trainable parameters and optimizer groups (AdamW, head lr, backbone lr x 0.1), same loss (cross-entropy with label
smoothing 0.1), BatchNorm statistics frozen in both (the product always freezes them), no augmentation, no
validation split, data decoded once and transformed per step with timm's eval transform in both. The product is
timed through its ``on_step`` callback (one StepLog per epoch); the first epoch is warm-up and not counted.
Product and hand loop alternate (interleaved); the ratio is taken per round. Goal: product / hand <= 1.1.

Run alone: ``.venv/bin/python benchmarks/bench_finetune_step.py [--quick]``.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from timm.models import group_parameters
from torch import nn
from torch.utils.data import DataLoader, Dataset

import _datasets
import _report
from fsl_app.backbones import load_backbone
from fsl_app.dataset import ImageSet
from fsl_app.features import eval_transform
from fsl_app.strategies import create_strategy


class Images(Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.transform(self.images[index]), self.labels[index]


def trainable_model(backbone, n_classes: int, mode: str, last_n: int = 2) -> nn.Module:
    model = copy.deepcopy(backbone.model)
    model.reset_classifier(n_classes)
    head = {id(p) for p in model.get_classifier().parameters()}
    if mode == "full":
        chosen = {name for name, _ in model.named_parameters()}
    elif mode == "head":
        chosen = set()
    else:
        groups = group_parameters(model, model.group_matcher(coarse=True))
        classifier = model.default_cfg.get("classifier", "classifier")
        prefix = (classifier[0] if isinstance(classifier, (list, tuple)) else classifier) + "."
        body_groups = [names for key, names in sorted(groups.items()) if not all(n.startswith(prefix) for n in names)]
        chosen = {name for names in body_groups[-last_n:] for name in names}  # the last N groups besides the head
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(id(parameter) in head or name in chosen)
    return model


def hand_loop(backbone, pil_images, labels, mode: str, epochs: int, batch_size: int, lr: float = 1e-3, *,
              device: torch.device | str = "cpu", amp: bool = False) -> list[float]:
    """Seconds per epoch of a plain loop; returns one entry per epoch. ``amp``: autocast + GradScaler +
    channels_last (what the product does on CUDA)."""
    torch.manual_seed(0)
    device = torch.device(device)
    model = trainable_model(backbone, int(max(labels)) + 1, mode).to(device)
    if amp:
        model = model.to(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler(enabled=amp)
    head = list(model.get_classifier().parameters())
    body = [p for p in model.parameters() if p.requires_grad and all(p is not h for h in head)]
    groups = [{"params": head, "lr": lr}] + ([{"params": body, "lr": lr * 0.1}] if body else [])
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    loader = DataLoader(Images(pil_images, labels, eval_transform(backbone.data_config)), batch_size=batch_size,
                        shuffle=True, generator=torch.Generator().manual_seed(0), pin_memory=device.type == "cuda")
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        for batch, target in loader:
            batch, target = batch.to(device, non_blocking=True), target.to(device)
            if amp:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, enabled=amp):
                loss = loss_fn(model(batch), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def product_fit(backbone, support: ImageSet, mode: str, epochs: int, batch_size: int) -> tuple[list[float], float]:
    """Seconds per epoch (from epoch 2 on: between consecutive StepLogs) and the whole ``fit`` time."""
    stamps = []
    strategy = create_strategy("finetune", mode=mode, epochs=epochs, batch_size=batch_size, augment="none",
                               val_fraction=0.0, patience=epochs, seed=0)
    start = time.perf_counter()
    strategy.fit(support, backbone=backbone, on_step=lambda step: stamps.append(time.perf_counter()))
    total = time.perf_counter() - start
    return list(np.diff(stamps)), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="mode full only, one round, 3 epochs")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    started = time.perf_counter()
    info = _report.machine_info()
    torch.manual_seed(0)
    backbone = load_backbone()
    everything = ImageSet.from_folder(_datasets.digits_folder())
    per_class, n_classes = 6, 8  # 48 images: 3 full batches of 16
    picked = [i for c in everything.classes[:n_classes]
              for i in [j for j, r in enumerate(everything.records) if r.label == c][:per_class]]
    support = everything.subset(picked)
    pil_images = [support.load(i) for i in range(len(support))]
    labels = support.label_indices().tolist()
    steps_per_epoch = -(-len(support) // args.batch_size)
    modes = ["full"] if args.quick else ["head", "last_n", "full"]
    rounds = 1 if args.quick else 4
    epochs = 3 if args.quick else 4
    rows = []
    for mode in modes:
        product_steps, hand_steps, ratios, totals = [], [], [], []
        for number in range(rounds):
            def product():
                return product_fit(backbone, support, mode, epochs, args.batch_size)

            def hand():
                return hand_loop(backbone, pil_images, labels, mode, epochs, args.batch_size)

            if number % 2:  # alternate which one runs first
                hand_times, (epoch_times, total) = hand(), product()
            else:
                (epoch_times, total), hand_times = product(), hand()
            product_step = _report.median(epoch_times) / steps_per_epoch
            hand_step = _report.median(hand_times[1:]) / steps_per_epoch
            product_steps.append(product_step)
            hand_steps.append(hand_step)
            ratios.append(product_step / hand_step)
            totals.append(total / (sum(hand_times)))
        rows.append([mode, _report.median(product_steps), _report.median(hand_steps), _report.median(ratios),
                     _report.median(totals)])
        print(rows[-1], flush=True)
    _report.write_result("finetune_step", "Q3. Fine-tuning step time vs a hand-written timm loop (CPU)", [
        f"{len(support)} digit images ({n_classes} classes x {per_class}), batch {args.batch_size} "
        f"({steps_per_epoch} steps per epoch), {epochs} epochs, first epoch not counted, {rounds} interleaved "
        "round(s); eager PyTorch on CPU.",
        _report.table(["mode", "product s / step", "hand loop s / step", "product / hand (goal <= 1.1)",
                       "whole fit() / hand loop incl. epoch 1"], rows),
    ], info=info, seconds=time.perf_counter() - started,
        goals=[[f"fine-tuning step ({row[0]}) / hand-written timm loop <= 1.1", f"{row[3]:.2f}",
                "met" if row[3] <= 1.1 else "not met"] for row in rows])


if __name__ == "__main__":
    main()
