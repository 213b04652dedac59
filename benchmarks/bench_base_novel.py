"""Issue 12, the classic split: does training the backbone on base classes help few-shot learning of new classes?

Data (``_datasets``): scikit-learn's digits with 0-4 as base classes and 5-9 as new classes; scikit-image patches with
their 16 classes (sorted by name) split in two: the first 8 are base classes, the last 8 new ones. No image and no
class of the new half is ever seen by the base training.

Backbones (all ``tf_efficientnet_lite0``):
- ``imagenet``: the packaged ImageNet weights, as the product uses them by default;
- ``base: supervised`` / ``base: protonet``: the ImageNet weights trained further on the base classes by
  :func:`fsl_app.pretrain.pretrain_backbone` (the code behind ``fsl-app pretrain``), with a small CPU budget stated in
  the results: ``BASE_PER_CLASS`` images per base class, the last ``LAST_N`` layer groups trained, and about the same
  number of image passes for both methods (supervised: ``EPOCHS`` epochs; protonet: ``EPISODES`` 5-way episodes of
  ``K_SHOT`` shots + ``N_QUERY_TRAIN`` queries per class).
- ``base: maml``: first-order MAML pretraining (:data:`EXTRA_METHODS`, measured when ``fsl_app.pretrain.METHODS`` has
  ``maml``) on the same number and shape of episodes as protonet, each adapted in ``PretrainSettings.inner_steps``
  inner steps (so more compute per episode, reported as its pretraining time).

Evaluation: frozen features of each backbone on the new classes; the same seeded 5-way 1-shot and 5-shot episodes
(``fsl_app.evaluation.sample_episode``, 15 queries per class) for every backbone, with the product's ``linear`` and
``protonet`` strategies fitted on the support features. Mean accuracy with a 95 % CI over episodes, and the paired
difference to ImageNet weights (same episodes) with its 95 % CI.

Run alone: ``.venv/bin/python benchmarks/bench_base_novel.py [--quick] [--episodes N]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

import _datasets
import _report
from fsl_app.backbones import load_backbone
from fsl_app.dataset import ImageSet
from fsl_app.evaluation import sample_episode
from fsl_app.features import FeatureCache, FeatureExtractor
from fsl_app.pretrain import METHODS, PretrainSettings, pretrain_backbone
from fsl_app.strategies import create_strategy
from fsl_app.strategies.maml import BACKBONE_INNER_LR_SCALE

BACKBONE = "tf_efficientnet_lite0"
PROTOCOLS = [(5, 1), (5, 5)]
N_QUERY = 15
NOVEL_PER_CLASS = 30  # images per new class that the episodes draw from (5 shots + 15 queries fit)
BASE_PER_CLASS = 40
LAST_N = 3  # lite0 coarse groups: stem, then one per stage (the last with the head conv): the last 3 stages train
EPOCHS = 2  # supervised: 2 passes over 5 x 40 digits = 400 image passes (8 x 40 patches: 640)
EPISODES = 16  # protonet: 16 episodes of 5 x (2 + 3) = 400 image passes
K_SHOT, N_QUERY_TRAIN = 2, 3
METHOD_NAMES = ("supervised", "protonet")
EXTRA_METHODS = ("maml",)  # columns added when fsl_app.pretrain registers them (the meta branch)
STRATEGIES = ("linear", "protonet")


def split_folder(root, dataset: str) -> tuple[ImageSet, ImageSet]:
    """(base, new) labeled image sets: digits 0-4 / 5-9; patches: first / second half of the sorted classes."""
    images = ImageSet.from_folder(root).labeled()
    classes = sorted(images.classes)
    base_classes = set(classes[:5]) if dataset == "digits" else set(classes[:len(classes) // 2])
    labels = np.array(images.labels)
    base = np.flatnonzero([label in base_classes for label in labels])
    new = np.flatnonzero([label not in base_classes for label in labels])
    return images.subset(base), images.subset(new)


def per_class(images: ImageSet, count: int, seed: int) -> ImageSet:
    """At most ``count`` images of every class, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    labels = np.array(images.labels)
    chosen = [i for c in sorted(set(images.labels)) for i in rng.permutation(np.flatnonzero(labels == c))[:count]]
    return images.subset(sorted(chosen))


def settings_for(method: str, quick: bool) -> PretrainSettings:
    scale = 2 if quick else 1
    return PretrainSettings(epochs=max(1, EPOCHS // scale), batch_size=16, episodes=EPISODES // scale, n_way=5,
                            k_shot=K_SHOT, n_query=N_QUERY_TRAIN, last_n=LAST_N, seed=0)


def backbones_for(base: ImageSet, quick: bool) -> tuple[dict, dict]:
    """{column: Backbone} (ImageNet, then one per pretraining method) and {column: seconds of pretraining}."""
    imagenet = load_backbone(BACKBONE)
    found, seconds = {"imagenet": imagenet}, {}
    for method in METHOD_NAMES + tuple(m for m in EXTRA_METHODS if m in METHODS):
        start = time.perf_counter()
        model = pretrain_backbone(base, imagenet, method=method, settings=settings_for(method, quick))
        seconds[f"base: {method}"] = time.perf_counter() - start
        found[f"base: {method}"] = imagenet.__class__(name=imagenet.name, model=model,
                                                       data_config=imagenet.data_config,
                                                       num_features=imagenet.num_features,
                                                       id=f"{imagenet.name}-base-{method}", source=f"base {method}")
    return found, seconds


def accuracy(strategy: str, features: torch.Tensor, names: list[str], support: np.ndarray,
             query: np.ndarray) -> float:
    model = create_strategy(strategy).fit_features(features[support], [names[i] for i in support])
    predicted = np.array(model.classes_)[model.predict_proba(features[query]).argmax(1).numpy()]
    return float(np.mean(predicted == np.array([names[i] for i in query])))


def evaluate(features: dict[str, torch.Tensor], new: ImageSet, episodes: int) -> dict:
    """{(n_way, k_shot, strategy, column): per-episode accuracies}, the same episodes for every column."""
    names, labels = list(new.labels), new.label_indices()
    results = {}
    for n_way, k_shot in PROTOCOLS:
        rng = np.random.default_rng(0)
        draws = [sample_episode(labels, n_way, k_shot, N_QUERY, rng) for _ in range(episodes)]
        for strategy in STRATEGIES:
            for column, matrix in features.items():
                results[(n_way, k_shot, strategy, column)] = np.array(
                    [accuracy(strategy, matrix, names, s, q) for s, q in draws])
    return results


def ci95(values: np.ndarray) -> float:
    return float(1.96 * values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def cell(values: np.ndarray, reference: np.ndarray | None) -> str:
    text = f"{100 * values.mean():.1f} ± {100 * ci95(values):.1f}"
    if reference is not None:
        diff = values - reference
        text += f" ({0.0 + round(100 * diff.mean(), 1):+.1f} ± {100 * ci95(diff):.1f})"  # 0.0 +: never "-0.0"
    return text


def dataset_section(dataset: str, results: dict, columns: list[str], seconds: dict, base: ImageSet,
                    new: ImageSet) -> tuple[str, list]:
    rows, goals = [], []
    for n_way, k_shot in PROTOCOLS:
        for strategy in STRATEGIES:
            reference = results[(n_way, k_shot, strategy, "imagenet")]
            rows.append([f"{n_way}-way {k_shot}-shot", strategy] + [
                cell(results[(n_way, k_shot, strategy, c)], None if c == "imagenet" else reference)
                for c in columns])
            diffs = {c: results[(n_way, k_shot, strategy, c)] - reference for c in columns if c != "imagenet"}
            verdict = "base training helps" if any(d.mean() - ci95(d) > 0 for d in diffs.values()) else (
                "base training hurts" if all(d.mean() + ci95(d) < 0 for d in diffs.values()) else "no clear winner")
            measured = "; ".join(f"{c.removeprefix('base: ')} {0.0 + round(100 * d.mean(), 1):+.1f} ± "
                                 f"{100 * ci95(d):.1f}"
                                 for c, d in diffs.items())
            goals.append([f"base-trained beats ImageNet weights, {dataset} {n_way}-way {k_shot}-shot {strategy}",
                          measured + " pts", verdict])
    timing = ", ".join(f"{c} {s:.0f} s" for c, s in seconds.items())
    text = (f"### {dataset}: base {', '.join(sorted(set(base.labels)))} ({len(base)} images used) -> new "
            f"{', '.join(sorted(set(new.labels)))} ({len(new)} images)\n\nPretraining time: {timing}.\n\n"
            + _report.table(["protocol", "strategy", *columns], rows))
    return text, goals


def run_dataset(dataset: str, root, args) -> tuple[str, list]:
    base_all, new_all = split_folder(root, dataset)
    base = per_class(base_all, BASE_PER_CLASS // (2 if args.quick else 1), seed=0)
    new = per_class(new_all, NOVEL_PER_CLASS, seed=1)
    print(f"{dataset}: pretraining on {len(base)} base images", file=sys.stderr)
    backbones, seconds = backbones_for(base, args.quick)
    print(f"{dataset}: features and {args.episodes} episodes per protocol", file=sys.stderr)
    features = {column: FeatureExtractor(backbone, engine="torch", cache=FeatureCache(enabled=False)).extract(new)
                for column, backbone in backbones.items()}
    results = evaluate(features, new, args.episodes)
    return dataset_section(dataset, results, list(backbones), seconds, base, new)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="half the pretraining budget and 100 episodes")
    parser.add_argument("--episodes", type=int, default=None)
    args = parser.parse_args()
    args.episodes = args.episodes or (100 if args.quick else 200)
    torch.manual_seed(0)
    info = _report.machine_info()
    start = time.perf_counter()
    sections, goals = [], []
    for dataset, root in (("digits", _datasets.digits_folder()), ("patches", _datasets.patches_folder())):
        text, rows = run_dataset(dataset, root, args)
        sections.append(text)
        goals += rows
    scale = 2 if args.quick else 1
    inner = PretrainSettings()
    maml_budget = (f"; maml (first-order MAML, Proto-MAML head) the same episodes, each adapted in {inner.inner_steps} "
                   f"SGD steps at {inner.inner_lr} (backbone weights at {inner.inner_lr * BACKBONE_INNER_LR_SCALE:g}), "
                   f"outer Adam lr {METHODS['maml'].default_lr:g}" if "maml" in METHODS else "")
    budget = (f"Pretraining budget (CPU): {BASE_PER_CLASS // scale} images per base class, last {LAST_N} layer "
              f"groups of {BACKBONE} trained, BatchNorm statistics frozen, light augmentation; supervised "
              f"{max(1, EPOCHS // scale)} epoch(s) (batch 16, AdamW, head lr 1e-3, backbone 1e-4); protonet "
              f"{EPISODES // scale} episode(s) of 5-way {K_SHOT}-shot {N_QUERY_TRAIN}-query (Adam, lr 1e-4)"
              f"{maml_budget}. "
              f"Evaluation: {args.episodes} seeded episodes per protocol on {NOVEL_PER_CLASS} images per new class, "
              f"{N_QUERY} queries per class, frozen features. Cells: mean accuracy % ± 95 % CI over episodes; "
              "base-trained columns add (paired difference to ImageNet weights on the same episodes ± 95 % CI). "
              "One pretraining run per column: CPU pretraining is not bit-for-bit reproducible, so the intervals "
              "cover the evaluation episodes, not the pretraining's run-to-run variation.")
    missing = [m for m in EXTRA_METHODS if m not in METHODS]
    hook = (f"Not measured yet: {', '.join(missing)} (the column appears once fsl_app.pretrain registers the "
            "method)." if missing else "")
    _report.write_result("base_novel", "Q12. Base classes -> new classes: ImageNet vs base-trained backbones",
                         [budget + (" " + hook if hook else ""), *sections], info=info,
                         seconds=time.perf_counter() - start, goals=goals)


if __name__ == "__main__":
    main()
