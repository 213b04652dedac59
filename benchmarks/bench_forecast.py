"""Issue 15.3: how far off is "with N more per class: about X %"? Forecasting 10-shot accuracy from 4 and 5 shots.

For each data set, strategy, project size K (4 or 5 labeled images per class, the fewest the forecast accepts and
the sample's size) and seed: draw a project of K images per class, run ``fsl_app.learning_curve.learning_curve`` on
its cached features (refits on 1 .. K-1 shots, tested on the rest, power law fitted, 80 % bootstrap range) and
forecast the accuracy at 10 shots per class (10 - K more). The truth: the same strategy trained on the project's K
images plus 10 - K more drawn per class (5 draws), tested on every other image of the data set (balanced accuracy).

Reported per row, over seeds: the mean absolute error of the forecast in accuracy points, how often the truth falls
in the range, and the error of two plain guesses: "no gain" (the curve's value at K, i.e. more images change
nothing) and the last measured point (accuracy at K - 1 shots).

Data sets (offline): scikit-learn's digits (224 px PNG, 10 classes) and scikit-image's bundled pictures cut into 64 px
patches (16 classes, 24-40 patches each). Features: the offline default backbone, from the feature cache.

Run alone: ``.venv/bin/python benchmarks/bench_forecast.py [--quick] [--seeds N]``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import _datasets
import _report
from fsl_app.backbones import load_backbone
from fsl_app.dataset import ImageSet
from fsl_app.features import get_extractor
from fsl_app.learning_curve import learning_curve
from fsl_app.strategies import create_strategy

TARGET = 10
PROJECT_SHOTS = (4, 5)
STRATEGIES = ("linear", "protonet")
TRUTH_DRAWS = 5


def balanced_accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([np.mean(predicted[truth == name] == name) for name in np.unique(truth)]))


def one_trial(features, labels: np.ndarray, strategy: str, shots: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels.tolist()))
    members = {name: rng.permutation(np.flatnonzero(labels == name)) for name in classes}
    project = np.concatenate([members[name][:shots] for name in classes])
    started = time.perf_counter()
    forecast = learning_curve(create_strategy(strategy), features[project], labels[project].tolist(),
                              more=(TARGET - shots,), seed=seed)
    seconds = time.perf_counter() - started
    prediction = forecast.predictions[0]
    truths = []
    for draw in range(TRUTH_DRAWS):
        extra = np.concatenate([np.random.default_rng([seed, draw]).choice(members[name][shots:], TARGET - shots,
                                                                           replace=False) for name in classes])
        train = np.concatenate([project, extra])
        test = np.setdiff1d(np.arange(len(labels)), train)
        fitted = create_strategy(strategy).fit_features(features[train], labels[train].tolist())
        truths.append(balanced_accuracy(np.asarray(fitted.predict(features[test])), labels[test]))
    truth = float(np.mean(truths))
    return {"truth": truth, "forecast": prediction.accuracy, "low": prediction.low, "high": prediction.high,
            "no_gain": forecast.now.accuracy, "last_point": forecast.points[-1].accuracy, "seconds": seconds,
            "inside": prediction.low <= truth <= prediction.high}


def mean_ci(values) -> str:
    values = np.asarray(values, dtype=float)
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{values.mean():.1f} ± {half:.1f}"


def summary_row(setting: str, trials: list[dict]) -> list:
    error = [100 * abs(t["forecast"] - t["truth"]) for t in trials]
    bias = [100 * (t["forecast"] - t["truth"]) for t in trials]
    no_gain = [100 * abs(t["no_gain"] - t["truth"]) for t in trials]
    last = [100 * abs(t["last_point"] - t["truth"]) for t in trials]
    width = [100 * (t["high"] - t["low"]) for t in trials]
    return [setting, f"{100 * np.mean([t['truth'] for t in trials]):.1f}", mean_ci(error), mean_ci(bias),
            f"{sum(t['inside'] for t in trials)}/{len(trials)}", f"{np.mean(width):.1f}", mean_ci(no_gain),
            mean_ci(last), f"{np.median([t['seconds'] for t in trials]):.1f}"]


def goal_rows(setting: str, trials: list[dict]) -> list[list]:
    error = np.mean([100 * abs(t["forecast"] - t["truth"]) for t in trials])
    no_gain = np.mean([100 * abs(t["no_gain"] - t["truth"]) for t in trials])
    inside = sum(t["inside"] for t in trials)
    return [[f"{setting}: forecast error < 'no gain' guess", f"{error:.1f} vs {no_gain:.1f} points",
             "met" if error < no_gain else "not met"],
            [f"{setting}: truth inside the 80 % range", f"{inside}/{len(trials)}",
             "met" if inside >= 0.7 * len(trials) else "not met"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 seeds")
    parser.add_argument("--seeds", type=int, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    info = _report.machine_info()
    seeds = args.seeds or (5 if args.quick else 10)
    backbone = load_backbone()
    rows, goals = [], []
    for name, folder in (("digits", _datasets.digits_folder()), ("patches", _datasets.patches_folder())):
        images = ImageSet.from_folder(folder)
        features = get_extractor(backbone).extract(images)
        labels = np.array(images.labels)
        for strategy in STRATEGIES:
            for shots in PROJECT_SHOTS:
                trials = [one_trial(features, labels, strategy, shots, seed) for seed in range(seeds)]
                setting = f"{name}, {strategy}, from {shots}/class"
                rows.append(summary_row(setting, trials))
                print(rows[-1], flush=True)
                if strategy == "linear":
                    goals += goal_rows(setting, trials)
    sections = [
        f"Cached `{backbone.name}` features; {seeds} seeds per row (mean ± 95 % CI over seeds). Errors in accuracy "
        f"points at {TARGET} images per class; truth: mean over {TRUTH_DRAWS} draws of the added images, tested on "
        "every other image of the data set.",
        "### Forecasting 10-shot accuracy\n\n" + _report.table(
            ["project", "truth at 10/class %", "forecast error", "bias (forecast - truth)", "truth in 80 % range",
             "mean range width", "error of 'no gain'", "error of the last measured point", "s per forecast"], rows),
        "'No gain' predicts the curve's value at K shots (more labels change nothing); the last measured point is "
        "the held-out accuracy at K - 1 shots. A forecast that does not beat them adds nothing.",
    ]
    _report.write_result("forecast", "Issue 15.3. Forecasting accuracy with more labels (learning curve)", sections,
                         info=info, seconds=time.perf_counter() - started, goals=goals)


if __name__ == "__main__":
    main()
