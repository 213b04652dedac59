"""Evaluation protocols (hold-out, stratified k-fold, leave-one-out, N-way K-shot episodes) and their metrics.

With 3-5 images per class a single split is noise: leave-one-out uses every image as a test once, and episodes give
a mean with a 95% confidence interval. Frozen-feature strategies are evaluated on features extracted once (cached);
strategies that train the backbone are refitted on images for every split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score
from sklearn.model_selection import StratifiedKFold, train_test_split

from .backbones import Backbone
from .dataset import DataError, ImageRecord, ImageSet
from .features import get_extractor
from .intervals import accuracy_interval, mean_interval
from .strategies.base import FeatureStrategy, OnStep, Strategy

PROTOCOL_LABELS = {  # every protocol of evaluate(), with what it does in words (for pickers)
    "auto": "auto (leave-one-out for few images, else 5-fold; hold-out for fine-tuning)",
    "loo": "leave-one-out (every image tested once)",
    "kfold": "stratified k-fold (5 folds)",
    "holdout": "hold-out (25 % of each class)",
}
PROTOCOLS = tuple(PROTOCOL_LABELS)
Progress = Callable[[int, int], None] | None


@dataclass
class EvaluationReport:
    """Metrics of one protocol; accuracies are fractions in [0, 1].

    ``ci_low``/``ci_high`` is the 95 % interval to show (:func:`fsl_app.intervals.accuracy_interval`, filled in when
    not given); ``ci95`` is the normal-approximation half-width, kept for compatibility (zero at 0 % and 100 %).
    Classes without a test image are listed in ``untested_classes``; balanced accuracy and macro F1 then average
    over the tested classes only (``tested_classes_only``).
    """

    protocol: str
    classes: list[str]
    accuracy: float
    ci95: float
    balanced_accuracy: float
    macro_f1: float
    per_class_accuracy: dict[str, float]
    confusion: list[list[int]]
    n_test: int
    y_true: list[int] = field(default_factory=list)
    y_pred: list[int] = field(default_factory=list)
    test_indices: list[int] = field(default_factory=list)
    probabilities: list[list[float]] = field(default_factory=list)
    split_accuracies: list[float] = field(default_factory=list)
    ci_low: float | None = None
    ci_high: float | None = None
    untested_classes: list[str] = field(default_factory=list)
    tested_classes_only: bool = False

    def __post_init__(self) -> None:
        if self.ci_low is None or self.ci_high is None:
            splits = self.split_accuracies if self.protocol != "loo" else []
            self.ci_low, self.ci_high = accuracy_interval(self.accuracy, self.n_test, splits)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        keys = ("protocol", "accuracy", "ci95", "ci_low", "ci_high", "balanced_accuracy", "macro_f1",
                "per_class_accuracy", "untested_classes", "tested_classes_only", "n_test")
        return {key: getattr(self, key) for key in keys}


@dataclass
class EpisodeReport:
    n_way: int
    k_shot: int
    n_query: int
    episodes: int
    mean_accuracy: float  # percent
    ci95: float  # percent, half-width of the normal approximation (kept for compatibility)
    accuracies: list[float]
    # like EvaluationReport: fractions, over every query of every episode; filled in when not given
    accuracy: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n_test: int | None = None

    def __post_init__(self) -> None:
        if self.accuracy is None:
            self.accuracy = self.mean_accuracy / 100
        if self.n_test is None:
            self.n_test = self.episodes * self.n_way * self.n_query
        if self.ci_low is None or self.ci_high is None:
            successes = min(self.n_test, round(self.accuracy * self.n_test))
            self.ci_low, self.ci_high = mean_interval(self.accuracies, successes, self.n_test)

    def to_dict(self) -> dict:
        return asdict(self)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class accuracy (recall), balanced accuracy and macro F1 over the classes that have a test
    image; the others are listed in ``untested_classes`` (e.g. a class with one image under leave-one-out)."""
    labels = list(range(len(classes)))
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    totals = matrix.sum(1)
    tested = [label for label in labels if totals[label] > 0]
    per_class = {classes[i]: float(matrix[i, i] / totals[i]) for i in tested}
    accuracy = float((y_true == y_pred).mean())
    untested = [classes[i] for i in labels if totals[i] == 0]
    return {"accuracy": accuracy, "ci95": binomial_ci95(accuracy, len(y_true)),
            "balanced_accuracy": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
            "macro_f1": float(f1_score(y_true, y_pred, labels=tested, average="macro", zero_division=0)),
            "per_class_accuracy": per_class, "confusion": matrix.tolist(),
            "untested_classes": untested, "tested_classes_only": bool(untested)}


def metrics_warnings(metrics: Mapping) -> list[str]:
    """What a front must say beside the figures of ``metrics`` (a report summary or a run's metrics.json)."""
    untested = metrics.get("untested_classes") or []
    if not untested:
        return []
    return [f"class(es) {', '.join(map(repr, untested))} never tested: each has a single image, which has to "
            "stay in training, so its accuracy is unknown. Balanced accuracy and macro F1 average over the tested "
            "classes only. Add a second image to each to test them."]


def binomial_ci95(accuracy: float, n: int) -> float:
    return 1.96 * math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n) if n else float("nan")


def mean_ci95(values: np.ndarray) -> float:
    return float(1.96 * values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


# --- splits -----------------------------------------------------------------------------------------------------

def choose_protocol(strategy: Strategy, y: np.ndarray) -> str:
    """Leave-one-out in the few-shot regime (up to 60 images, or up to 300 with a class of at most 5): every image
    is tested once. Above that, 5-fold is as honest and needs 5 fits instead of one per image. Strategies that train the backbone: hold-out."""
    if not isinstance(strategy, FeatureStrategy):
        return "holdout"
    counts = np.bincount(y)[np.bincount(y) > 0]
    if counts.min() < 2:
        return "loo"  # k-fold cannot keep a training image in every class
    return "loo" if len(y) <= 60 or (counts.min() <= 5 and len(y) <= 300) else "kfold"


def split_indices(protocol: str, y: np.ndarray, *, folds: int = 5, test_size: float = 0.25,
                  seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (train, test) index arrays; every class keeps at least one training image."""
    counts = np.bincount(y)
    if protocol == "loo":
        for i in range(len(y)):
            if counts[y[i]] >= 2:
                yield np.delete(np.arange(len(y)), i), np.array([i])
    elif protocol == "kfold":
        k = min(folds, int(counts[counts > 0].min()))
        if k < 2:
            raise DataError("k-fold needs at least 2 images in every class. Add images or use leave-one-out.")
        yield from StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    elif protocol == "holdout":
        yield _holdout(y, test_size, seed)
    else:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def _holdout(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    indices = np.arange(len(y))
    splittable = np.bincount(y)[y] >= 2
    n_classes = len(np.unique(y[splittable]))
    if n_classes == 0:
        raise DataError("hold-out needs at least 2 images in some class. Add images.")
    n_test = max(n_classes, int(round(test_size * splittable.sum())))
    n_test = min(n_test, int(splittable.sum()) - n_classes)
    train, test = train_test_split(indices[splittable], test_size=n_test, stratify=y[splittable], random_state=seed)
    for label in np.unique(y[splittable]):  # a large test_size can round a small class out of training
        if not np.any(y[train] == label):
            moved = test[y[test] == label][0]
            train, test = np.append(train, moved), test[test != moved]
    return np.sort(np.concatenate([train, indices[~splittable]])), np.sort(test)


# --- protocols --------------------------------------------------------------------------------------------------

def evaluate(strategy: Strategy, images: ImageSet, backbone: Backbone, *, protocol: str = "auto", seed: int = 0,
             folds: int = 5, test_size: float = 0.25, progress: Progress = None, on_step: OnStep = None,
             unlabeled: ImageSet | None = None) -> EvaluationReport:
    """Fit clones of ``strategy`` on the training part of each split and score the held-out images.

    Every split's fit gets the pool ``unlabeled`` (default: the unlabeled images of ``images``) as its unlabeled
    images; held-out images are never part of it, and no label of theirs reaches the fit. ``on_step`` gets the
    StepLogs of every split's fit (a long fine-tuning is drawn, and can be cancelled by raising from it, before its
    first split ends).
    """
    pool = _without_labels(images.unlabeled() if unlabeled is None else unlabeled)
    images = images.labeled()
    images.check_trainable()
    classes = images.classes
    y = images.label_indices(classes)
    if protocol == "auto":
        protocol = choose_protocol(strategy, y)
    splits = list(split_indices(protocol, y, folds=folds, test_size=test_size, seed=seed))
    if not splits:
        raise DataError("no class has 2 images, so nothing can be held out. Add a second image to some classes.")
    features = pool_features = None
    if isinstance(strategy, FeatureStrategy):
        features = get_extractor(backbone).extract(images)
        if strategy.uses_unlabeled and len(pool):
            pool_features = get_extractor(backbone).extract(strategy.pool_to_extract(pool))
    tested, predicted, probabilities, split_scores = [], [], [], []
    for number, (train, test) in enumerate(splits, 1):
        split_features = None if features is None else (features[train], features[test], pool_features)
        proba = _fit_predict(strategy, backbone, classes, images.subset(train), _without_labels(images.subset(test)),
                             pool, features=split_features, on_step=on_step)
        tested.extend(test.tolist())
        predicted.extend(proba.argmax(1).tolist())
        probabilities.extend(proba.tolist())
        split_scores.append(float((proba.argmax(1).numpy() == y[test]).mean()))
        if progress:
            progress(number, len(splits))
    y_true, y_pred = y[tested], np.array(predicted)
    metrics = classification_metrics(y_true, y_pred, classes)
    if protocol != "loo" and len(split_scores) > 1:
        metrics["ci95"] = mean_ci95(np.array(split_scores))
    return EvaluationReport(protocol=protocol, classes=classes, n_test=len(tested), y_true=y_true.tolist(),
                            y_pred=y_pred.tolist(), test_indices=tested, probabilities=probabilities,
                            split_accuracies=split_scores, **metrics)


def _fit_predict(strategy: Strategy, backbone: Backbone, classes: list[str], support: ImageSet, test: ImageSet,
                 pool: ImageSet | None = None, *, features: tuple | None = None,
                 on_step: OnStep = None) -> torch.Tensor:
    """Probabilities (len(test), len(classes)) of a clone fitted on ``support`` with ``pool`` as its unlabeled
    images; classes absent from ``support`` get 0.

    ``features``: (support (n, d), test (t, d), pool (m, d) or None) for a FeatureStrategy, which then never touches
    the images; otherwise the clone is fitted on the images.
    """
    model = strategy.clone()
    if features is not None:
        support_features, test_features, pool_features = features
        model.fit_features(support_features, support.labels, backbone=backbone, unlabeled=pool_features)
        proba = model.predict_proba(test_features)
    else:
        model.fit(support, backbone=backbone, unlabeled=pool if pool is not None and len(pool) else None,
                  on_step=on_step)
        proba = model.predict_proba(test)
    full = torch.zeros(len(test), len(classes))
    full[:, [classes.index(c) for c in model.classes_]] = proba.float()
    return full


def _without_labels(images: ImageSet) -> ImageSet:
    return ImageSet(ImageRecord(r.path, r.sha256, None) for r in images.records)


def sample_episode(y: np.ndarray, n_way: int, k_shot: int, n_query: int, rng: np.random.Generator, *,
                   y_query: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Support and query indices of one N-way K-shot episode.

    With ``y_query`` (labels of a second image set with the same class indices) the queries are indices into that
    set: support from one domain, queries from another.
    """
    if y_query is None:
        eligible = np.flatnonzero(np.bincount(y) >= k_shot + n_query)
        needed = f"at least {k_shot + n_query} images"
    else:
        size = max(len(np.bincount(y)), len(np.bincount(y_query)))
        eligible = np.flatnonzero((np.bincount(y, minlength=size) >= k_shot)
                                  & (np.bincount(y_query, minlength=size) >= n_query))
        needed = f"at least {k_shot} images and {n_query} query images"
    if len(eligible) < n_way:
        raise DataError(f"{n_way}-way {k_shot}-shot with {n_query} queries needs {n_way} classes with {needed}; "
                        f"only {len(eligible)} have that many. Lower --n-way, --k-shot or --queries.")
    support, query = [], []
    for label in rng.choice(eligible, size=n_way, replace=False):
        if y_query is None:
            members = rng.choice(np.flatnonzero(y == label), size=k_shot + n_query, replace=False)
            support.extend(members[:k_shot])
            query.extend(members[k_shot:])
        else:
            support.extend(rng.choice(np.flatnonzero(y == label), size=k_shot, replace=False))
            query.extend(rng.choice(np.flatnonzero(y_query == label), size=n_query, replace=False))
    return np.array(support), np.array(query)


def sample_pool(y: np.ndarray, episode_classes: np.ndarray, exclude: np.ndarray, size: int, rng: np.random.Generator,
                *, imbalance: float | None = None, outliers: float = 0.0) -> np.ndarray:
    """Indices of ``size`` pool images, none in ``exclude``: a share ``outliers`` from classes outside the episode,
    the rest from ``episode_classes``, spread evenly or, with ``imbalance`` = alpha, by Dirichlet(alpha) proportions
    (a class with too few images left passes its surplus to the others)."""
    n_outside = int(round(outliers * size))
    available = np.ones(len(y), dtype=bool)
    available[np.asarray(exclude, dtype=np.int64)] = False
    inside = [rng.permutation(np.flatnonzero(available & (y == label))) for label in episode_classes]
    shares = rng.dirichlet(np.full(len(inside), imbalance)) if imbalance else np.full(len(inside), 1 / len(inside))
    counts = _allocate(size - n_outside, shares, np.array([len(members) for members in inside]), rng)
    outside = np.flatnonzero(available & ~np.isin(y, episode_classes))
    if n_outside > len(outside):
        raise DataError(f"{n_outside} outlier pool images need as many images of classes outside the episode; only "
                        f"{len(outside)} exist. Lower --pool or --pool-outliers.")
    chosen = [members[:count] for members, count in zip(inside, counts)]
    chosen.append(rng.choice(outside, size=n_outside, replace=False))
    return np.concatenate(chosen).astype(np.int64)


def _allocate(total: int, shares: np.ndarray, capacity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Counts per class summing to ``total``, drawn by ``shares``, none above ``capacity``."""
    if total > capacity.sum():
        raise DataError(f"a pool of {total} images of the episode's classes needs that many images besides the "
                        f"support and query images; only {int(capacity.sum())} are left. Lower --pool or --queries.")
    counts = np.minimum(rng.multinomial(total, shares), capacity)
    while counts.sum() < total:
        room = capacity - counts
        weights = shares * (room > 0)
        weights = weights / weights.sum() if weights.sum() > 0 else (room > 0) / (room > 0).sum()
        counts = np.minimum(counts + rng.multinomial(total - counts.sum(), weights), capacity)
    return counts


def evaluate_episodes(strategy: Strategy, images: ImageSet, backbone: Backbone, *, n_way: int, k_shot: int,
                      n_query: int = 15, episodes: int = 300, seed: int = 0, progress: Progress = None,
                      transductive: bool = False, pool: int = 0, pool_imbalance: float | None = None,
                      pool_outliers: float = 0.0, query_images: ImageSet | None = None) -> EpisodeReport:
    """Mean accuracy (percent) and 95% CI over seeded episodes; the same seed gives the same episodes, for every
    strategy and every pool setting (the pool is drawn from a generator of its own).

    ``transductive`` gives each episode's queries (without labels) to the fit as unlabeled images, the literature's
    protocol; ``pool`` adds that many unlabeled images that are not scored (``pool_imbalance``: Dirichlet alpha of
    their class shares; ``pool_outliers``: the share from classes outside the episode). ``query_images`` (same class
    names) supplies the queries and the pool: support from one domain, test on another.
    """
    _check_pool_settings(pool, pool_imbalance, pool_outliers)
    images = images.labeled()
    classes = images.classes
    y = images.label_indices(classes)
    target = images if query_images is None else _matching_classes(query_images.labeled(), classes)
    y_target = None if query_images is None else target.label_indices(classes)
    rng, pool_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    _check_episode_settings(y, y_target, n_way, k_shot, n_query, pool, pool_outliers, seed)  # before extraction
    features = target_features = None
    if isinstance(strategy, FeatureStrategy):
        features = get_extractor(backbone).extract(images, progress=progress is not None)
        target_features = features if query_images is None else get_extractor(backbone).extract(target)
    accuracies = []
    for number in range(1, episodes + 1):
        support, query = sample_episode(y, n_way, k_shot, n_query, rng, y_query=y_target)
        y_pool = y if y_target is None else y_target
        used = np.concatenate([query, support]) if y_target is None else query
        extra = sample_pool(y_pool, np.unique(y[support]), used, pool, pool_rng, imbalance=pool_imbalance,
                            outliers=pool_outliers) if pool else np.zeros(0, dtype=np.int64)
        unlabeled = np.concatenate([query, extra]) if transductive else extra
        episode_features = None if features is None else (
            features[support], target_features[query], target_features[unlabeled] if len(unlabeled) else None)
        proba = _fit_predict(strategy, backbone, classes, images.subset(support), _without_labels(target.subset(query)),
                             _without_labels(target.subset(unlabeled)), features=episode_features)
        accuracies.append(float((proba.argmax(1).numpy() == (y if y_target is None else y_target)[query]).mean()))
        if progress:
            progress(number, episodes)
    values = np.array(accuracies) * 100
    return EpisodeReport(n_way=n_way, k_shot=k_shot, n_query=n_query, episodes=episodes,
                         mean_accuracy=float(values.mean()), ci95=mean_ci95(values), accuracies=accuracies)


def _check_pool_settings(pool: int, imbalance: float | None, outliers: float) -> None:
    if pool < 0:
        raise ValueError(f"--pool must be 0 or more, got {pool}.")
    if imbalance is not None and imbalance <= 0:
        raise ValueError(f"--pool-imbalance is a Dirichlet alpha and must be > 0, got {imbalance} (2: mildly uneven, "
                         "0.5: very uneven).")
    if not 0 <= outliers <= 1:
        raise ValueError(f"--pool-outliers is a fraction of the pool in [0, 1], got {outliers}.")
    if (imbalance is not None or outliers > 0) and pool == 0:
        raise ValueError("--pool-imbalance and --pool-outliers shape the extra pool: add --pool N (e.g. --pool 100).")


def _check_episode_settings(y: np.ndarray, y_target: np.ndarray | None, n_way: int, k_shot: int, n_query: int,
                            pool: int, outliers: float, seed: int) -> None:
    """Raise DataError now, before features are extracted, for episodes or pools the data cannot supply."""
    sample_episode(y, n_way, k_shot, n_query, np.random.default_rng(seed), y_query=y_target)
    if not pool:
        return
    y_pool = y if y_target is None else y_target
    counts = np.bincount(y_pool, minlength=int(max(y.max(), y_pool.max())) + 1)
    taken = k_shot + n_query if y_target is None else n_query
    eligible = np.sort(counts[counts >= taken])
    inside_capacity = int((eligible[:n_way] - taken).sum())  # the n_way smallest classes an episode may draw
    n_outside = int(round(outliers * pool))
    if pool - n_outside > inside_capacity:
        raise DataError(f"a pool of {pool - n_outside} images of the episode's classes needs that many images besides "
                        f"the support and query images; the smallest classes leave only {inside_capacity}. Lower "
                        "--pool or --queries.")
    outside_capacity = int(len(y_pool) - np.sort(counts)[::-1][:n_way].sum())
    if n_outside > outside_capacity:
        raise DataError(f"{n_outside} outlier pool images need as many images of classes outside the episode; the "
                        f"largest classes leave only {outside_capacity}. Lower --pool or --pool-outliers.")


def _matching_classes(query_images: ImageSet, classes: list[str]) -> ImageSet:
    if query_images.classes != classes:
        missing = sorted(set(classes) - set(query_images.classes))
        extra = sorted(set(query_images.classes) - set(classes))
        raise DataError(f"the query data must have the same class folders as the support data; missing {missing}, "
                        f"unknown {extra}. Rename or remove folders so both match.")
    return query_images
