"""Issue 15.2: does "what to label first" beat labeling images at random? Digits and scikit-image patches.

For each data set and seed: a random 60 % of the images is the unlabeled pool (at most 1000), the rest is the test
set. Starting from nothing labeled, a person labels B images per round, B = 1, then 1, 3 and 5 images per class
(1, 2, 5 and 10 per class in total), chosen by one of three paths:

- **random**: images drawn at random from the pool (the oracle does not know their classes, so classes can be
  missed);
- **typical**: ``fsl_app.label_first.typical_picks`` (TypiClust: k-means with k = labeled + B on the features,
  the most typical image of each uncovered cluster) every round;
- **typical, then margin**: typical picks for the first round (no model yet), then
  ``fsl_app.label_first.probe_margin_picks`` (margin x diversity with class balance from a linear probe on the
  images labeled so far), as the studio's ``auto`` method does.

After each round the labeled images train ``linear`` and ``protonet`` on cached frozen features of the offline
default backbone; the score is the balanced accuracy on the test set (a class never labeled scores 0 on its test
images). Means over seeds with 95 % CIs; the differences to random are paired (same pool and test set per seed).

Run alone: ``.venv/bin/python benchmarks/bench_label_first.py [--quick] [--seeds N]``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

import _datasets
import _report
from fsl_app.backbones import load_backbone
from fsl_app.dataset import ImageSet
from fsl_app.features import get_extractor
from fsl_app.label_first import probe_margin_picks, typical_picks
from fsl_app.strategies import create_strategy

POOL_FRACTION, MAX_POOL = 0.6, 1000
PER_CLASS_AFTER = (1, 2, 5, 10)  # labeled images per class (on average) after each round
STRATEGIES = ("linear", "protonet")
RANDOM, TYPICAL, TYPICAL_MARGIN = "random", "typical", "typical, then margin"
PATHS = (RANDOM, TYPICAL, TYPICAL_MARGIN)


def balanced_accuracy(predicted: np.ndarray, truth: np.ndarray, classes: list[str]) -> float:
    return float(np.mean([np.mean(predicted[truth == name] == name) for name in classes]))


def score(features, labels: np.ndarray, labeled: np.ndarray, test: np.ndarray, strategy: str) -> float:
    classes = sorted(set(labels.tolist()))
    if len(set(labels[labeled].tolist())) < 2:
        return 1.0 / len(classes)  # one class labeled: every image gets it
    fitted = create_strategy(strategy).fit_features(torch.as_tensor(features[labeled]), labels[labeled].tolist())
    return balanced_accuracy(np.asarray(fitted.predict(torch.as_tensor(features[test]))), labels[test], classes)


def next_round(path: str, features: np.ndarray, labels: np.ndarray, pool: np.ndarray, labeled: np.ndarray,
               budget: int, round_number: int, rng: np.random.Generator, seed: int) -> np.ndarray:
    """Pool images (global indices) the path picks for this round."""
    remaining = np.setdiff1d(pool, labeled)
    if path == RANDOM:
        return rng.choice(remaining, budget, replace=False)
    if path == TYPICAL or round_number == 0 or len(set(labels[labeled].tolist())) < 2:
        picks = typical_picks(features[remaining], features[labeled], budget, seed=seed)
        return remaining[picks.order]
    picks, _, _ = probe_margin_picks(features[labeled], labels[labeled].tolist(), features[remaining], budget,
                                     seed=seed)
    return remaining[picks.order]


def one_seed(features: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    """{(path, per class, strategy): accuracy} and {(path, per class): classes covered} for one seed."""
    rng = np.random.default_rng(seed)
    n_classes = len(set(labels.tolist()))
    order = rng.permutation(len(labels))
    n_pool = min(MAX_POOL, int(POOL_FRACTION * len(labels)))
    pool, test = order[:n_pool], order[n_pool:]
    results, coverage, seconds = {}, {}, {}
    for path in PATHS:
        labeled = np.zeros(0, dtype=np.int64)
        path_rng = np.random.default_rng([seed, 1])
        done = 0
        for round_number, per_class in enumerate(PER_CLASS_AFTER):
            budget = per_class * n_classes - done
            started = time.perf_counter()
            labeled = np.concatenate([labeled, next_round(path, features, labels, pool, labeled, budget,
                                                          round_number, path_rng, seed)])
            seconds[(path, per_class)] = time.perf_counter() - started
            done += budget
            coverage[(path, per_class)] = len(set(labels[labeled].tolist()))
            for strategy in STRATEGIES:
                results[(path, per_class, strategy)] = score(features, labels, labeled, test, strategy)
    return {"accuracy": results, "coverage": coverage, "seconds": seconds}


def mean_ci(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return float(values.mean()), float(half)


def text(values, scale: float = 100.0) -> str:
    mean, half = mean_ci(np.asarray(values) * scale)
    return f"{mean:.1f} ± {half:.1f}"


def verdict(differences) -> str:
    mean, half = mean_ci(np.asarray(differences) * 100)
    if mean - half > 0:
        return "better"
    if mean + half < 0:
        return "worse"
    return "no clear difference"


def dataset_rows(name: str, trials: list[dict], n_classes: int) -> tuple[list, list]:
    rows, goals = [], []
    for strategy in STRATEGIES:
        for per_class in PER_CLASS_AFTER:
            accuracy = {path: [t["accuracy"][(path, per_class, strategy)] for t in trials] for path in PATHS}
            typical_gain = np.subtract(accuracy[TYPICAL], accuracy[RANDOM])
            margin_gain = np.subtract(accuracy[TYPICAL_MARGIN], accuracy[RANDOM])
            margin_cell = text(margin_gain) + f" ({verdict(margin_gain)})" if per_class > 1 else "same picks as typical"
            rows.append([f"{name}, {strategy}, {per_class}/class ({per_class * n_classes} labels)",
                         text(accuracy[RANDOM]), text(accuracy[TYPICAL]), text(accuracy[TYPICAL_MARGIN]),
                         text(typical_gain) + f" ({verdict(typical_gain)})", margin_cell])
            if strategy == "linear":
                goals.append([f"{name}, {per_class}/class: typical picks vs random (linear, paired)",
                              f"{text(typical_gain)} points", verdict(typical_gain)])
                if per_class > 1:
                    goals.append([f"{name}, {per_class}/class: typical then margin vs random (linear, paired)",
                                  f"{text(margin_gain)} points", verdict(margin_gain)])
    return rows, goals


def coverage_rows(name: str, trials: list[dict], n_classes: int) -> list:
    return [[f"{name}, {per_class}/class", *[f"{np.mean([t['coverage'][(path, per_class)] for t in trials]):.1f} "
                                             f"of {n_classes}" for path in PATHS],
             f"{np.median([t['seconds'][(TYPICAL, per_class)] for t in trials]):.2f}",
             f"{np.median([t['seconds'][(TYPICAL_MARGIN, per_class)] for t in trials]):.2f}"]
            for per_class in PER_CLASS_AFTER]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 seeds")
    parser.add_argument("--seeds", type=int, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    info = _report.machine_info()
    seeds = args.seeds or (4 if args.quick else 10)
    backbone = load_backbone()
    rows, goals, coverage = [], [], []
    for name, folder in (("digits", _datasets.digits_folder()), ("patches", _datasets.patches_folder())):
        images = ImageSet.from_folder(folder)
        features = get_extractor(backbone).extract(images).numpy()
        labels = np.array(images.labels)
        trials = []
        for seed in range(seeds):
            trials.append(one_seed(features, labels, seed))
            print(name, seed, {k: round(v, 3) for k, v in trials[-1]["accuracy"].items() if k[2] == "linear"},
                  flush=True)
        n_classes = len(set(labels.tolist()))
        more_rows, more_goals = dataset_rows(name, trials, n_classes)
        rows, goals = rows + more_rows, goals + more_goals
        coverage += coverage_rows(name, trials, n_classes)
    sections = [
        f"Cached `{backbone.name}` features; pool: a random {POOL_FRACTION:.0%} of the images (at most {MAX_POOL}), "
        f"test: the rest; {seeds} seeds. Balanced test accuracy in % (mean ± 95 % CI over seeds); gains are paired "
        "differences to random picks in points.",
        "### Accuracy after labeling the picks\n\n" + _report.table(
            ["labels (data set, strategy, per class)", "random", "typical", "typical, then margin",
             "typical - random", "typical then margin - random"], rows),
        "### Classes covered by the picks, and picking time\n\n" + _report.table(
            ["data set, per class", *[f"classes labeled: {path}" for path in PATHS], "s to pick (typical)",
             "s to pick (typical, then margin)"], coverage)
        + "\n\nRandom picks come from the pool as it is, so a class can be missed; typical picks cover the "
          "clusters of the features, which are not always the classes.",
    ]
    _report.write_result("label_first", "Issue 15.2. What to label first: typical and margin picks vs random",
                         sections, info=info, seconds=time.perf_counter() - started, goals=goals)


if __name__ == "__main__":
    main()
