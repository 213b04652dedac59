"""Issue 15.1: does the label check find wrong labels? Planted label flips on digits and scikit-image patches.

For each data set, project size (images per class) and seed: draw a project from the data set, give 10 % of its
images (rounded, at least 1) a random other class, then rank its labels with ``fsl_app.label_check`` on held-out
predictions (``out_of_fold_probabilities``: leave-one-out or 5-fold refits of the strategy on the cached features
of the offline default backbone, as ``check_labels`` does). With k = the number of flipped labels, the precision of
the top k of four rankings is compared on the same predictions:

- the check's order (``rank_label_issues``): given-label probability relative to the class's confident-learning
  threshold, lowest first;
- plain lowest given-label probability (self-confidence), the usual baseline;
- confident-learning flagged labels first, each group by normalized margin (the issue order of the paper's
  reference implementation, cleanlab);
- random order, whose expected precision is exactly k / n = the flip rate.

Also reported: how many labels confident learning flags and how many of them are flips, and the recall of the
review queue (flagged labels plus those where the held-out model prefers another class). Means over seeds with 95 %
CIs (t-free normal approximation); the comparison with self-confidence is paired (same projects, same predictions).

Data sets (both offline): scikit-learn's digits (224 px PNG, 10 classes) and scikit-image's bundled pictures cut
into 64 px patches (16 classes, 24-40 patches each; the class is the source picture).

Run alone: ``.venv/bin/python benchmarks/bench_label_errors.py [--quick] [--seeds N]``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import _datasets
import _report
from fsl_app.backbones import load_backbone
from fsl_app.dataset import ImageRecord, ImageSet
from fsl_app.features import get_extractor
from fsl_app.label_check import out_of_fold_probabilities, rank_label_issues
from fsl_app.strategies import create_strategy

FLIP_RATE = 0.10
SHOTS = (5, 20)  # labeled images per class of a drawn project
STRATEGIES = ("linear", "protonet")
CHECK, LOWEST, FLAGGED_FIRST, RANDOM = ("the check", "lowest given-label probability",
                                       "flagged first, normalized margin", "random")


def draw_project(images: ImageSet, per_class: int, rng: np.random.Generator) -> tuple[ImageSet, np.ndarray]:
    """``per_class`` images of every class with 10 % of the labels flipped; returns (project, flipped mask (n,))."""
    classes = images.classes
    labels = np.array(images.labels)
    chosen = np.concatenate([rng.choice(np.flatnonzero(labels == name), size=per_class, replace=False)
                             for name in classes])
    n_flipped = max(1, round(FLIP_RATE * len(chosen)))
    flipped = np.zeros(len(chosen), dtype=bool)
    flipped[rng.choice(len(chosen), size=n_flipped, replace=False)] = True
    records = []
    for position, index in enumerate(chosen):
        record = images[int(index)]
        label = record.label
        if flipped[position]:
            label = str(rng.choice([name for name in classes if name != record.label]))
        records.append(ImageRecord(record.path, record.sha256, label))
    return ImageSet(records), flipped


def precision_at_k(order: np.ndarray, flipped: np.ndarray) -> float:
    k = int(flipped.sum())
    return float(flipped[order[:k]].mean())


def one_trial(images: ImageSet, per_class: int, strategy: str, backbone, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    project, flipped = draw_project(images, per_class, rng)
    started = time.perf_counter()
    probabilities, tested, protocol = out_of_fold_probabilities(create_strategy(strategy), project, backbone,
                                                                seed=seed)
    seconds = time.perf_counter() - started
    classes = project.classes
    given = project.label_indices(classes)[tested]
    flipped = flipped[tested]
    ranking = rank_label_issues(probabilities, given)
    rows = np.arange(len(given))
    self_confidence = probabilities[rows, given]
    others = probabilities.copy()
    others[rows, given] = -np.inf
    margin = self_confidence - others.max(1)
    queue = ranking.flagged | (others.max(1) > self_confidence)
    return {CHECK: precision_at_k(ranking.order, flipped),
            LOWEST: precision_at_k(np.argsort(self_confidence, kind="stable"), flipped),
            FLAGGED_FIRST: precision_at_k(np.lexsort((rows, margin, ~ranking.flagged)), flipped),
            RANDOM: float(flipped.mean()),  # the expectation of a random order's precision at any k
            "n": len(given), "k": int(flipped.sum()), "flagged": int(ranking.flagged.sum()),
            "flagged_flips": int((ranking.flagged & flipped).sum()), "queue": int(queue.sum()),
            "queue_recall": float(flipped[queue].sum() / flipped.sum()), "protocol": protocol, "seconds": seconds}


def mean_ci(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return float(values.mean()), float(half)


def text(values) -> str:
    mean, half = mean_ci(values)
    return f"{mean:.2f} ± {half:.2f}"


def summarise(trials: list[dict]) -> dict:
    return {name: mean_ci([t[name] for t in trials]) for name in (CHECK, LOWEST, FLAGGED_FIRST, RANDOM)} | {
        "vs_self": mean_ci([t[CHECK] - t[LOWEST] for t in trials]),
        "vs_random": mean_ci([t[CHECK] - t[RANDOM] for t in trials])}


def verdict_vs_random(summary: dict) -> str:
    mean, half = summary["vs_random"]
    return "met" if mean - half > 0 else "not met"


def verdict_vs_self(summary: dict) -> str:
    mean, half = summary["vs_self"]
    if mean - half > 0:
        return "better"
    if mean + half < 0:
        return "worse"
    return "no clear difference"


def dataset_rows(name: str, images: ImageSet, backbone, strategies, seeds: int) -> tuple[list, list, list]:
    rows, goals, detail = [], [], []
    for per_class in SHOTS:
        for strategy in strategies:
            trials = [one_trial(images, per_class, strategy, backbone, seed) for seed in range(seeds)]
            setting = (f"{name}, {per_class}/class ({trials[0]['n']} images, {trials[0]['k']} flipped), "
                       f"{strategy}")
            rows.append(precision_row(setting, trials))
            detail.append(flagging_row(setting, trials))
            print(rows[-1], detail[-1], flush=True)
            if strategy == "linear":  # the check's default strategy: the goals
                goals += goal_rows(f"{name}, {per_class}/class", trials)
    return rows, goals, detail


def precision_row(setting: str, trials: list[dict]) -> list:
    return [setting, trials[0]["protocol"], text([t[CHECK] for t in trials]), text([t[LOWEST] for t in trials]),
            text([t[FLAGGED_FIRST] for t in trials]), f"{summarise(trials)[RANDOM][0]:.2f}",
            text([t[CHECK] - t[LOWEST] for t in trials]), verdict_vs_self(summarise(trials))]


def flagging_row(setting: str, trials: list[dict]) -> list:
    return [setting, f"{np.mean([t['flagged'] for t in trials]):.1f}",
            f"{np.mean([t['flagged_flips'] for t in trials]):.1f} of {trials[0]['k']}",
            f"{np.mean([t['queue'] for t in trials]):.1f}", text([t["queue_recall"] for t in trials]),
            f"{np.median([t['seconds'] for t in trials]):.2f}"]


def goal_rows(project: str, trials: list[dict]) -> list[list]:
    summary = summarise(trials)
    return [[f"{project}: top-k precision of the check > random ({len(trials)} seeds)",
             f"{summary[CHECK][0]:.2f} ± {summary[CHECK][1]:.2f} vs {summary[RANDOM][0]:.2f}",
             verdict_vs_random(summary)],
            [f"{project}: check vs lowest given-label probability (paired)",
             f"{summary['vs_self'][0]:+.2f} ± {summary['vs_self'][1]:.2f}", verdict_vs_self(summary)]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 seeds, the linear strategy only")
    parser.add_argument("--seeds", type=int, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    info = _report.machine_info()
    seeds = args.seeds or (5 if args.quick else 20)
    strategies = STRATEGIES[:1] if args.quick else STRATEGIES
    backbone = load_backbone()
    rows, goals, detail = [], [], []
    for name, folder in (("digits", _datasets.digits_folder()), ("patches", _datasets.patches_folder())):
        images = ImageSet.from_folder(folder)
        get_extractor(backbone).extract(images)  # fill the feature cache once; every check reads it
        more_rows, more_goals, more_detail = dataset_rows(name, images, backbone, strategies, seeds)
        rows, goals, detail = rows + more_rows, goals + more_goals, detail + more_detail
    sections = [
        f"Cached `{backbone.name}` features; {FLIP_RATE:.0%} of each drawn project's labels flipped to a random other "
        f"class; k = number flipped; {seeds} seeds per row (mean ± 95 % CI). Random ranking: its expected precision, "
        "k / n.",
        "### Precision of the top k\n\n" + _report.table(
            ["project, strategy", "held out by", "the check", "lowest given-label probability",
             "flagged first, normalized margin", "random", "paired difference (check - lowest)", "verdict"], rows),
        "### What the check flags\n\n" + _report.table(
            ["project, strategy", "flagged (mean)", "flips among them", "review queue (mean)",
             "queue recall of flips", "s per check (median)"], detail)
        + "\n\nFlagged: off the diagonal of the confident joint. The review queue is what the Data page and "
          "`fsl-app project check-labels` list: the flagged labels and those where the held-out model prefers "
          "another class without that class reaching its threshold.",
    ]
    _report.write_result("label_errors", "Issue 15.1. Finding wrong labels: planted flips on digits and patches",
                         sections, info=info, seconds=time.perf_counter() - started, goals=goals)


if __name__ == "__main__":
    main()
