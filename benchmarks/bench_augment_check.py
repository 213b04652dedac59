"""Issue 15 item 4: does the augmentation check in embedding space flag the transforms that hurt, and only those?

(a) The check (``fsl_app.augment_check.check_augment``, the product's rule and caps, default backbone
tf_efficientnet_lite0) on three labeled sets, each drawn anew per seed: hand-written 6s and 9s (8 per class: the case
where turning an image upside down changes its class), all ten digits (4 per class) and the scikit-image patches
(3 per class of 16). Per transform (each applied alone, p=1): mean shift, margin drop, approach toward
another class and class-flip rate over the seeds, and in how many seeds the warning fired.

(b) Is the warning backed by accuracy? Seeded few-shot episodes (6 vs 9 5-shot; ten-digit and patches 5-way
5-shot; 15 queries per class): the product's linear probe (``create_strategy("linear")``, CL2N logistic
regression) fit on the support's frozen features, then on the support plus augmented copies of it (the same label;
2 copies per image and transform, seeded) -- what fine-tuning with that augmentation teaches the head. Accuracy on
the unaugmented queries, paired per episode against no augmentation (mean difference, 95 % t interval).

Run alone: ``.venv/bin/python benchmarks/bench_augment_check.py [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import time

import albumentations as A
import numpy as np
import torch
from scipy.stats import t as student_t

import _datasets
import _report
from fsl_app import augment_check
from fsl_app.augment_check import augmented_copies
from fsl_app.backbones import load_backbone
from fsl_app.dataset import ImageSet
from fsl_app.evaluation import sample_episode
from fsl_app.features import get_extractor
from fsl_app.images import load_image, thumbnail
from fsl_app.strategies import create_strategy

TRANSFORMS = {  # name shown -> the transform (each is checked alone, with p=1)
    "horizontal flip": A.HorizontalFlip(p=1.0),
    "vertical flip": A.VerticalFlip(p=1.0),
    "rotate 180": A.Rotate(limit=(180, 180), p=1.0),
    "brightness 0.4": A.ColorJitter(brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0, p=1.0),
    "light affine (preset light)": A.Affine(scale=(0.9, 1.1), rotate=(-10, 10), translate_percent=(-0.05, 0.05),
                                            p=1.0),
    "colour jitter (preset medium)": A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.2, hue=0.02, p=1.0),
    "gaussian blur 3-7": A.GaussianBlur(blur_limit=(3, 7), p=1.0),
    "gaussian noise": A.GaussNoise(std_range=(0.05, 0.15), p=1.0),
    "resized crop >= 0.5": A.RandomResizedCrop(size=(224, 224), scale=(0.5, 1.0), p=1.0),
}
TRAINED = ["brightness 0.4", "horizontal flip", "vertical flip", "rotate 180", "gaussian blur 3-7", "gaussian noise"]
COPIES = 2


def labeled_sets() -> dict[str, ImageSet]:
    digits = ImageSet.from_folder(_datasets.digits_folder())
    return {"digits 6 vs 9": ImageSet([r for r in digits.records if r.label in ("6", "9")]),
            "digits, 10 classes": digits, "patches, 16 classes": ImageSet.from_folder(_datasets.patches_folder())}


def check_rows(images: ImageSet, backbone, seeds: int) -> dict[str, list]:
    """Per transform: the TransformCheck of every seed (each seed samples its own images)."""
    pipeline = A.to_dict(A.Compose(list(TRANSFORMS.values())))
    rows = {name: [] for name in TRANSFORMS}
    for seed in range(seeds):
        check = augment_check.check_augment(images, pipeline, backbone, seed=seed)
        for name, row in zip(TRANSFORMS, check.rows):  # the last row (whole pipeline) is left out
            rows[name].append(row)
        rows.setdefault("_baseline", []).append(check.baseline_error)
        rows.setdefault("_seconds", []).append(check.seconds)
    return rows


def check_table(name: str, rows: dict[str, list]) -> str:
    table = _report.table(
        ["transform", "shift", "margin drop", "toward another class", "class flips", "warning fired"],
        [[transform, f"{np.mean([r.shift for r in found]):.2f}", f"{np.mean([r.margin_drop for r in found]):.2f}",
          f"{np.mean([r.approach for r in found]):.2f}",
          f"{np.mean([r.flip_rate for r in found]):.0%}", f"{sum(r.harmful for r in found)}/{len(found)}"]
         for transform, found in rows.items() if not transform.startswith("_")])
    return (f"### (a) {name}\n\nUnaugmented images nearer another class's prototype: "
            f"{np.mean(rows['_baseline']):.0%} (mean over {len(rows['_baseline'])} seeds); one check of all "
            f"{len(TRANSFORMS)} transforms took {np.median(rows['_seconds']):.1f} s (median).\n\n{table}")


def episode_accuracies(images: ImageSet, features: torch.Tensor, extractor, n_way: int, episodes: int,
                       ) -> dict[str, list[float]]:
    """Per variant ("none" and each TRAINED transform): the accuracy of every episode."""
    labels = np.asarray(images.labels)
    classes = sorted(set(images.labels))
    y = np.asarray([classes.index(label) for label in labels])
    rng = np.random.default_rng(0)
    found = {name: [] for name in ["none", *TRAINED]}
    for episode in range(episodes):
        support, query = sample_episode(y, n_way, 5, 15, rng)
        sources = [thumbnail(load_image(images[i].path), augment_check.WORK_SIDE) for i in support]
        base = extractor.extract_pil(sources)
        support_labels = [labels[i] for i in support]
        found["none"].append(accuracy(base, support_labels, features[query], labels[query]))
        for index, name in enumerate(TRAINED):
            copies, owners = augmented_copies(A.Compose([TRANSFORMS[name]]), sources, COPIES,
                                              seed=1000 * episode + index)
            train = torch.cat([base, extractor.extract_pil(copies)])
            train_labels = support_labels + [support_labels[owner] for owner in owners]
            found[name].append(accuracy(train, train_labels, features[query], labels[query]))
    return found


def accuracy(train: torch.Tensor, train_labels: list[str], queries: torch.Tensor, truth: np.ndarray) -> float:
    model = create_strategy("linear").fit_features(train, train_labels)
    predicted = np.asarray(model.classes_)[model.predict_proba(queries).argmax(1).numpy()]
    return float(np.mean(predicted == truth))


def paired(differences: list[float]) -> str:
    values = 100 * np.asarray(differences)
    half = student_t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 \
        else float("nan")
    return f"{values.mean():+.1f} (±{half:.1f})"


def training_table(name: str, found: dict[str, list[float]], flagged: dict[str, str]) -> str:
    rows = [["none", f"{100 * np.mean(found['none']):.1f}", "", ""]]
    for transform in TRAINED:
        rows.append([transform, f"{100 * np.mean(found[transform]):.1f}",
                     paired(list(np.subtract(found[transform], found["none"]))), flagged.get(transform, "")])
    return (f"### (b) {name}: linear probe trained with augmented copies, {len(found['none'])} episodes\n\n"
            + _report.table(["augmentation", "accuracy %", "vs none, points (95 % CI)", "warning fired (a)"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds and 6 episodes instead of 8 and 16")
    args = parser.parse_args()
    seeds, episodes = (3, 6) if args.quick else (8, 16)
    info, start = _report.machine_info(), time.perf_counter()
    backbone = load_backbone()
    extractor = get_extractor(backbone)
    sections, goals, fired = [], [], {}
    for name, images in labeled_sets().items():
        rows = check_rows(images, backbone, seeds)
        sections.append(check_table(name, rows))
        fired[name] = {t: f"{sum(r.harmful for r in rows[t])}/{len(rows[t])}" for t in TRANSFORMS}
        fires = {t: sum(r.harmful for r in rows[t]) for t in TRANSFORMS}
        if name == "digits 6 vs 9":
            for transform in ("vertical flip", "rotate 180"):
                goals.append([f"warning fires for {transform} on {name} in most seeds",
                              f"fired {fired[name][transform]}", "met" if fires[transform] > seeds / 2 else "missed"])
        goals.append([f"warning quiet for brightness on {name} in every seed",
                      f"fired {fired[name]['brightness 0.4']}", "met" if fires["brightness 0.4"] == 0 else "missed"])
    for name, images, n_way in [("digits 6 vs 9", labeled_sets()["digits 6 vs 9"], 2),
                                ("digits, 10 classes", labeled_sets()["digits, 10 classes"], 5),
                                ("patches, 16 classes", labeled_sets()["patches, 16 classes"], 5)]:
        features = extractor.extract(images)
        found = episode_accuracies(images, features, extractor, n_way, episodes)
        sections.append(training_table(f"{name}, {n_way}-way 5-shot", found, fired[name]))
        if name == "digits 6 vs 9":
            change = 100 * np.subtract(found["rotate 180"], found["none"])
            goals.append(["training with rotate 180 (flagged) lowers 6-vs-9 accuracy (linear probe + copies)",
                          paired(list(change / 100)) + " pts", "met" if change.mean() < 0 else "missed"])
    write_intro = (f"The warning's rule: margin drop >= {augment_check.MARGIN_DROP_WARNING:g}, toward another class "
                   f">= {augment_check.APPROACH_WARNING:g} and class flips >= {augment_check.FLIP_RATE_WARNING:.0%}"
                   f"; caps: {augment_check.MAX_IMAGES_PER_CLASS} images per class, {augment_check.MAX_IMAGES} in "
                   f"all, about {augment_check.COPY_BUDGET} copies per check. Backbone: {backbone.name}.")
    _report.write_result("augment_check", "Q15. Augmentation check in embedding space: does the warning flag what "
                         "hurts?", [write_intro, *sections], info=info, seconds=time.perf_counter() - start,
                         goals=goals)


if __name__ == "__main__":
    main()
