"""How many more images do I need? A learning curve measured on subsampled shots and extrapolated.

For a labeled set with K images in its smallest class, the strategy is refitted on cached frozen features with s
images per class (s from 1 to K - 1, up to 8 levels), several seeded draws per level, and tested on the images
left out of each draw (balanced accuracy: the mean of the per-class accuracies). A power law of the error,
acc(n) = 1 - b * n^(-c) with b >= 0 and 0.05 <= c <= 2, is fitted to the mean accuracy per level (weighted by its
standard error); this is the form learning curves of classifiers follow (Hestness et al., "Deep Learning
Scaling is Predictable, Empirically", 2017; Mukherjee et al., "Estimating Dataset Size Requirements for Classifying
DNA Microarray Data", 2003). A free ceiling (acc = a - b n^-c) fitted worse from 4-5 shots: noisy top points made it
level off too early (benchmarks/results/forecast.md). Refitting the curve on bootstrap resamples of the draws and of
the classes gives a range for the forecast.

The range covers the noise of the subsamples, not a wrong curve shape: benchmarks/results/forecast.md measures how
often the 10-shot truth falls inside it when forecasting from 5 shots on digits and scikit-image patches.

Strategies that train the backbone are forecast with the linear probe on the same backbone (refitting a fine-tuning
once per draw would take minutes); pool-aware strategies are refitted without their pool. ``Forecast.strategy``
and ``Forecast.note`` say which.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from .backbones import Backbone
from .dataset import ImageSet

MIN_CLASSES = 2
MIN_PER_CLASS = 4  # three subsampled levels (1, 2, 3 shots) with images left over to test on
MAX_LEVELS = 8
DRAWS = 8  # seeded draws per level
BOOTSTRAP = 200
RANGE = (10.0, 90.0)  # percentiles of the bootstrap forecasts: an 80 % range
DEFAULT_MORE = (5, 10)
STAND_IN = "linear"
C_MIN, C_MAX = 0.05, 2.0
C_GRID = np.geomspace(C_MIN, C_MAX, 60)  # exponents tried by fit_power_law


@dataclass(frozen=True)
class CurvePoint:
    shots: int  # training images per class
    accuracy: float  # mean held-out balanced accuracy over the draws
    spread: float  # standard deviation over the draws
    draws: int


@dataclass(frozen=True)
class Prediction:
    more_per_class: int
    shots: int
    accuracy: float
    low: float
    high: float


@dataclass
class Forecast:
    """The learning curve of a labeled set and what it predicts; ``available`` False with a ``message`` naming what
    is missing when there is too little to fit."""

    available: bool
    message: str
    strategy: str = ""
    note: str = ""
    shots_now: int = 0
    n_classes: int = 0
    points: list[CurvePoint] = field(default_factory=list)
    curve: dict = field(default_factory=dict)  # a, b, c of acc(n) = a - b * n^-c
    now: Prediction | None = None  # the curve at shots_now (the data as it is)
    predictions: list[Prediction] = field(default_factory=list)
    range_percent: int = int(RANGE[1] - RANGE[0])

    def to_dict(self) -> dict:
        return asdict(self)

    def curve_at(self, shots: Sequence[float]) -> list[float]:
        """The fitted accuracy at each number of shots per class."""
        return power_law(np.asarray(shots, dtype=np.float64), **self.curve).tolist() if self.curve else []


def power_law(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a - b * np.power(n, -c)


# --- bad input ------------------------------------------------------------------------------------------------------

def forecast_problem(class_counts: dict[str, int]) -> str | None:
    """Why no learning curve can be fitted for labeled images with these counts (a sentence naming the fix), or None."""
    counts = [count for count in class_counts.values() if count > 0]
    smallest = min(counts) if counts else 0
    if len(counts) >= MIN_CLASSES and smallest >= MIN_PER_CLASS:
        return None
    found = f"found {len(counts)} class{'es' if len(counts) != 1 else ''}" + (
        f", the smallest with {smallest} image{'s' if smallest != 1 else ''}" if counts else "")
    return (f"Forecasting needs at least {MIN_CLASSES} classes with at least {MIN_PER_CLASS} labeled images each "
            f"({found}): it refits on 1, 2, 3... images per class and tests on the rest. Label more images, then "
            "forecast again.")


# --- measuring and fitting (on features) ----------------------------------------------------------------------------

def shot_levels(smallest_class: int, max_levels: int = MAX_LEVELS) -> list[int]:
    """Training images per class to measure: 1 .. smallest_class - 1, thinned to ``max_levels`` roughly geometric
    steps that always keep 1, 2, 3 and the largest."""
    top = smallest_class - 1
    if top <= max_levels:
        return list(range(1, top + 1))
    levels = np.unique(np.round(np.geomspace(1, top, max_levels)).astype(int))
    return sorted(set(levels.tolist()) | {1, 2, 3, top})


def measure_curve(strategy, features, labels: Sequence[str], *, seed: int = 0,
                  draws: int = DRAWS) -> tuple[list[int], np.ndarray]:
    """Held-out accuracy per (level, draw, class), shape (levels, draws, classes), of ``strategy`` (a FeatureStrategy,
    refitted on clones) trained on s images per class drawn from ``features`` (n, d) with ``labels`` (n,); the
    balanced accuracy of a draw is the mean over its last axis. Classes are in sorted order."""
    labels = np.asarray(labels)
    classes = sorted(set(labels.tolist()))
    members = [np.flatnonzero(labels == name) for name in classes]
    levels = shot_levels(min(len(m) for m in members))
    rng = np.random.default_rng(seed)
    accuracy = np.zeros((len(levels), draws, len(classes)))
    for row, shots in enumerate(levels):
        for column in range(draws):
            train, test = _draw(members, shots, rng)
            fitted = strategy.clone().fit_features(features[train], labels[train].tolist())
            predicted = np.asarray(fitted.predict(features[test]))
            accuracy[row, column] = [np.mean(predicted[labels[test] == name] == name) for name in classes]
    return levels, accuracy


def _draw(members: list[np.ndarray], shots: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    train, test = [], []
    for indices in members:
        order = rng.permutation(indices)
        train.append(order[:shots])
        test.append(order[shots:])
    return np.concatenate(train), np.concatenate(test)


def fit_power_law(shots: np.ndarray, accuracy: np.ndarray, spread: np.ndarray | None = None) -> dict:
    """Weighted least-squares fit of acc = 1 - b * n^-c (the error falls as a power of the shots) to mean accuracies
    per level, with b >= 0 and c on a grid over [C_MIN, C_MAX] (for each c, b has a closed form); returns {a: 1, b, c}.

    ``spread``: standard error per level (floored at 0.02); the weights are its inverse squares."""
    shots = np.asarray(shots, dtype=np.float64)
    error = 1.0 - np.asarray(accuracy, dtype=np.float64)
    se = np.full_like(error, 0.02) if spread is None else np.maximum(np.asarray(spread, dtype=np.float64), 0.02)
    w = 1.0 / se ** 2
    x = np.power(shots[None, :], -C_GRID[:, None])  # (grid, levels)
    b = np.maximum((w * error * x).sum(axis=1) / (w * x * x).sum(axis=1), 0.0)
    residual = (w * (error - b[:, None] * x) ** 2).sum(axis=1)
    best = int(np.argmin(residual))
    return {"a": 1.0, "b": float(b[best]), "c": float(C_GRID[best])}


def learning_curve(strategy, features, labels: Sequence[str], *, more: Sequence[int] = DEFAULT_MORE, seed: int = 0,
                   draws: int = DRAWS, bootstrap: int = BOOTSTRAP) -> Forecast:
    """Measure, fit and extrapolate the learning curve of ``strategy`` (a FeatureStrategy) on ``features`` (n, d)."""
    labels = list(labels)
    counts = {name: labels.count(name) for name in set(labels)}
    problem = forecast_problem(counts)
    if problem:
        return Forecast(available=False, message=problem)
    levels, per_class = measure_curve(strategy, features, labels, seed=seed, draws=draws)
    accuracy = per_class.mean(axis=2)  # (levels, draws) balanced accuracy
    shots = np.array(levels, dtype=np.float64)
    spread = accuracy.std(axis=1, ddof=1) / np.sqrt(draws)
    curve = fit_power_law(shots, accuracy.mean(axis=1), spread)
    shots_now = min(counts.values())
    targets = [shots_now] + [shots_now + m for m in more]
    samples = _bootstrap(shots, per_class, targets, bootstrap, seed)
    central = power_law(np.array(targets, dtype=np.float64), **curve)
    low, high = np.percentile(samples, RANGE, axis=0)
    low, high = np.minimum(low, central), np.maximum(high, central)
    predictions = [Prediction(m, t, float(central[i]), float(low[i]), float(high[i]))
                   for i, (m, t) in enumerate(zip([0] + list(more), targets))]
    points = [CurvePoint(int(s), float(accuracy[i].mean()), float(accuracy[i].std()), draws)
              for i, s in enumerate(levels)]
    forecast = Forecast(available=True, message="", strategy=strategy.name, shots_now=shots_now,
                        n_classes=len(counts), points=points, curve=curve, now=predictions[0],
                        predictions=predictions[1:])
    forecast.message = sentence(forecast)
    return forecast


def _bootstrap(shots: np.ndarray, accuracy: np.ndarray, targets: list[int], rounds: int, seed: int) -> np.ndarray:
    """Forecasts at ``targets`` from curves refitted on resamples (with replacement) of the draws of every level and
    of the classes, (rounds, t); ``accuracy`` is (levels, draws, classes). Resampling the classes carries the
    uncertainty of which classes are hard, which the draws alone miss."""
    rng = np.random.default_rng(seed + 1)
    n_levels, draws, n_classes = accuracy.shape
    target = np.array(targets, dtype=np.float64)
    results = np.empty((rounds, len(targets)))
    for r in range(rounds):
        classes = rng.integers(0, n_classes, size=n_classes)
        chosen = rng.integers(0, draws, size=(n_levels, draws))
        resampled = accuracy[np.arange(n_levels)[:, None], chosen][:, :, classes].mean(axis=2)
        spread = resampled.std(axis=1, ddof=1) / np.sqrt(draws)
        results[r] = power_law(target, **fit_power_law(shots, resampled.mean(axis=1), spread))
    return results


def sentence(forecast: Forecast) -> str:
    """One line for people: now, and with each number of images more per class."""
    if not forecast.available:
        return forecast.message
    parts = [f"with {p.more_per_class} more per class ({p.shots}): about {100 * p.accuracy:.0f} % "
             f"({100 * p.low:.0f}-{100 * p.high:.0f} %)" for p in forecast.predictions]
    now = forecast.now
    return (f"{'; '.join(parts)}. Now, with {now.shots} per class: about {100 * now.accuracy:.0f} % on the fitted "
            f"curve ({forecast.strategy}, {forecast.range_percent} % range from {BOOTSTRAP} bootstrap refits).")


# --- on images, a strategy and a backbone ---------------------------------------------------------------------------

def forecast_images(images: ImageSet, strategy, backbone: Backbone, *, more: Sequence[int] = DEFAULT_MORE,
                    seed: int = 0) -> Forecast:
    """The learning curve of ``strategy`` (fitted or not; only its hyperparameters are used) on the labeled
    ``images``, with frozen features of ``backbone`` from the feature cache. Never raises for too little data:
    the Forecast says what is missing."""
    from .features import get_extractor
    from .strategies import FeatureStrategy, create_strategy

    labeled = images.labeled()
    problem = forecast_problem(labeled.class_counts())
    if problem:
        return Forecast(available=False, message=problem)
    note = ""
    if not isinstance(strategy, FeatureStrategy):
        note = (f"{strategy.name} trains the backbone: refitting it for every draw would take minutes, so this is "
                f"the curve of the {STAND_IN} probe on the same backbone's frozen features.")
        strategy = create_strategy(STAND_IN, seed=seed)
    elif strategy.uses_unlabeled:
        note = f"{strategy.name} is refitted without the unlabeled pool here."
    features = get_extractor(backbone).extract(labeled)
    forecast = learning_curve(strategy, features, labeled.labels, more=more, seed=seed)
    forecast.note = note
    return forecast


def forecast_run(run_dir, *, more: Sequence[int] = DEFAULT_MORE, seed: int = 0, load=None) -> Forecast:
    """The forecast for a finished run: its strategy, backbone and the labeled images it trained on (those still
    on disk)."""
    from .inspect_run import run_image_set
    from .label_check import strategy_from_run
    from .runs import read_run

    images = run_image_set(read_run(run_dir))
    problem = forecast_problem(images.class_counts())
    if problem:
        return Forecast(available=False, message=problem)
    strategy, backbone = strategy_from_run(run_dir, **({"load": load} if load else {}))
    return forecast_images(images, strategy, backbone, more=more, seed=seed)
