"""Comparing runs honestly: one protocol for a set of strategies, groups of comparable runs, paired differences and a
recommendation that names a winner only when the data says so.

With 5-20 images per class the difference between two strategies is usually smaller than the noise of either, so two
accuracies side by side say little. Runs evaluated on the same images can be compared image by image instead: only
the images one run got right and the other got wrong carry information about which is better (McNemar), and a paired
bootstrap turns them into an interval for the difference in accuracy.

Runs are the plain dicts of :func:`fsl_app.runs.read_run` (``config``, ``metrics``, ``predictions``, ``name``,
``run_dir``). This module imports neither torch nor a strategy, so the Compare page and ``fsl-app compare`` use it
without loading a model.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterable, Sequence

import numpy as np

PROTOCOL_NAMES = {"loo": "leave-one-out", "kfold": "stratified k-fold", "holdout": "hold-out"}
COST_ORDER = ("linear", "protonet")  # cheapest first; any other strategy trains the backbone and comes after
HOLDOUT_MIN_TEST_IMAGES = 100  # a hold-out part this large tells strategies apart without k fits
FROZEN_FIT_SECONDS = 0.05  # one fit of a frozen-feature strategy on cached features
# Rough CPU defaults used when no earlier run gives a rate: seconds per image of feature extraction (frozen
# strategies) and of one fine-tuning fit (backbone-training strategies, default epochs).
DEFAULT_SECONDS_PER_IMAGE = {"frozen": 0.1, "backbone": 0.75}
BOOTSTRAP_SAMPLES = 4000
ALPHA = 0.05

TrainsBackbone = Callable[[str], bool] | Collection[str]
RUN_FILES = ("config.json", "metrics.json", "predictions.json", "metrics.jsonl")  # what read_run reads


# --- one protocol for a set of strategies -----------------------------------------------------------------------------

def shared_protocol(strategy_names: Sequence[str], y: np.ndarray, *, trains_backbone: TrainsBackbone,
                    requested: str = "auto", folds: int = 5, test_size: float = 0.25) -> tuple[str, str]:
    """The one protocol every strategy of a comparison uses, and a one-sentence reason.

    ``y``: (n_images,) integer class labels of the labeled images. ``trains_backbone``: a predicate on a strategy
    name, or the set of names whose strategies train the backbone (they are refitted on images for every split).

    ``auto`` is resolved once for the whole set, because runs evaluated on different test images cannot be compared
    image by image. When every strategy decides on frozen features, leave-one-out (or 5-fold above a few hundred
    images) is cheap and tests every image. When one trains the backbone, leave-one-out would fine-tune once per
    image, and a 25 % hold-out on few-shot data tests so few images that no paired test can tell strategies apart;
    so every strategy uses the same seeded stratified k-fold splits (k fits, every image tested once). Hold-out is
    used instead when its test part alone has at least ``HOLDOUT_MIN_TEST_IMAGES`` images (enough, with one fit), or
    when a class has a single image (k-fold cannot keep it in training). An explicit ``requested`` protocol is kept.
    """
    if requested != "auto":
        if requested not in PROTOCOL_NAMES:
            raise ValueError(f"protocol must be auto or one of {sorted(PROTOCOL_NAMES)}, got {requested!r}.")
        return requested, f"you chose {PROTOCOL_NAMES[requested]}; every strategy uses it with the same seed."
    y = np.asarray(y, dtype=int)
    if y.size == 0:
        raise ValueError("no labeled images: label some images before evaluating strategies.")
    counts = np.bincount(y)[np.bincount(y) > 0]
    trainers = [name for name in strategy_names if _trains(trains_backbone, name)]
    if not trainers:
        return _frozen_protocol(len(y), counts)
    return _backbone_protocol(trainers, len(y), counts, folds, test_size)


def _trains(trains_backbone: TrainsBackbone, name: str) -> bool:
    return bool(trains_backbone(name)) if callable(trains_backbone) else name in trains_backbone


def _frozen_protocol(n: int, counts: np.ndarray) -> tuple[str, str]:
    if counts.min() < 2 or n <= 60 or (counts.min() <= 5 and n <= 300):
        return "loo", ("every strategy decides on frozen features, so leave-one-out tests every image once at "
                       "little cost.")
    return "kfold", (f"every strategy decides on frozen features; with {n} images, stratified 5-fold tests every "
                     "image once and is as honest as leave-one-out for a fraction of the fits.")


def _backbone_protocol(trainers: list[str], n: int, counts: np.ndarray, folds: int,
                       test_size: float) -> tuple[str, str]:
    who = f"{', '.join(trainers)} {'trains' if len(trainers) == 1 else 'train'} the backbone"
    percent = round(100 * test_size)
    n_test = int(round(test_size * n))
    if counts.min() < 2:
        return "holdout", (f"{who} and a class has a single image, which rules out k-fold, so every strategy uses "
                           f"the same seeded {percent} % hold-out split (single images stay in training).")
    if n_test >= HOLDOUT_MIN_TEST_IMAGES:
        return "holdout", (f"{who}; a {percent} % hold-out tests {n_test} images, enough to tell strategies apart "
                           "with one fit, so every strategy uses the same seeded hold-out split.")
    k = min(folds, int(counts.min()))
    return "kfold", (f"{who}, so leave-one-out ({n} fits) is too slow and a {percent} % hold-out ({n_test} images) "
                     f"too small to tell strategies apart; every strategy uses the same seeded stratified {k}-fold "
                     "splits, which test every image once.")


def estimate_seconds(protocol: str, y: np.ndarray, *, trains_backbone: bool, seconds_per_image: float | None = None,
                     folds: int = 5, test_size: float = 0.25) -> float:
    """A rough estimate of the wall time of one run (evaluation splits + final fit), in seconds.

    ``seconds_per_image``: for a backbone-training strategy, seconds one image costs in one fit (every epoch
    included); for a frozen-feature strategy, seconds of feature extraction per image (the fits on cached features
    are nearly free). None: ``DEFAULT_SECONDS_PER_IMAGE``; :func:`seconds_per_image_from_runs` gives a better one.
    """
    y = np.asarray(y, dtype=int)
    kind = "backbone" if trains_backbone else "frozen"
    rate = DEFAULT_SECONDS_PER_IMAGE[kind] if seconds_per_image is None else seconds_per_image
    trained, splits = _split_workload(protocol, y, folds, test_size)
    if trains_backbone:
        return rate * (trained + len(y))
    return rate * len(y) + FROZEN_FIT_SECONDS * (splits + 1)


def _split_workload(protocol: str, y: np.ndarray, folds: int, test_size: float) -> tuple[int, int]:
    """(training images summed over the evaluation splits, number of splits), as split_indices makes them."""
    counts = np.bincount(y)
    n = len(y)
    if protocol == "loo":
        testable = int((counts[y] >= 2).sum())
        return testable * (n - 1), testable
    if protocol == "kfold":
        k = max(2, min(folds, int(counts[counts > 0].min())))
        return int(round(n * (k - 1))), k
    if protocol == "holdout":
        return n - int(round(test_size * n)), 1
    raise ValueError(f"protocol must be one of {sorted(PROTOCOL_NAMES)}, got {protocol!r}.")


def seconds_per_image_from_runs(runs: Iterable[dict], strategy: str, *, trains_backbone: bool,
                                backbone: str | None = None) -> float | None:
    """The median rate of earlier finished runs of ``strategy`` (on ``backbone`` if given), in the unit of
    :func:`estimate_seconds`; None when there is none."""
    rates = []
    for run in runs:
        config, metrics = run.get("config") or {}, run.get("metrics") or {}
        if config.get("strategy") != strategy or not metrics.get("n_images"):
            continue
        if backbone is not None and (config.get("backbone") or {}).get("name") != backbone:
            continue
        seconds = metrics.get("fit_seconds") if trains_backbone else metrics.get("train_seconds")
        if seconds is not None:
            rates.append(seconds / metrics["n_images"])
    return float(np.median(rates)) if rates else None


@dataclass
class ProtocolPlan:
    """The protocol of a comparison, why, and a rough time estimate per strategy (seconds)."""

    protocol: str
    reason: str
    seconds: dict[str, float]

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

    def text(self) -> str:
        return (f"{self.reason[:1].upper()}{self.reason[1:]} Estimated time: about "
                f"{format_duration(self.total_seconds)} in all (a rough estimate).")


def plan_comparison(strategy_names: Sequence[str], y: np.ndarray, *, trains_backbone: TrainsBackbone,
                    requested: str = "auto", past_runs: Sequence[dict] = (), backbone: str | None = None,
                    folds: int = 5, test_size: float = 0.25) -> ProtocolPlan:
    """:func:`shared_protocol` plus :func:`estimate_seconds` per strategy, rated from ``past_runs`` where possible."""
    protocol, reason = shared_protocol(strategy_names, y, trains_backbone=trains_backbone, requested=requested,
                                       folds=folds, test_size=test_size)
    seconds = {}
    for name in strategy_names:
        trains = _trains(trains_backbone, name)
        rate = seconds_per_image_from_runs(past_runs, name, trains_backbone=trains, backbone=backbone)
        seconds[name] = estimate_seconds(protocol, y, trains_backbone=trains, seconds_per_image=rate, folds=folds,
                                         test_size=test_size)
    return ProtocolPlan(protocol, reason, seconds)


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


# --- which runs can be compared ---------------------------------------------------------------------------------------

KEY_FIELDS = ("data snapshot", "class set", "protocol", "seed", "tested images")


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def snapshot_id(run: dict) -> str:
    """Hash of the run's sorted (sha256, label) pairs: the same images with the same labels, in any order."""
    data = (run.get("config") or {}).get("data") or {}
    images = data.get("images") if isinstance(data, dict) else None
    if images is None:
        return _digest(data)
    return _digest(sorted([image.get("sha256"), image.get("label")] for image in images))


def tested_id(run: dict) -> str:
    """Hash of the sorted (index, sha256) of the run's held-out predictions: which images were tested, where."""
    return _digest(sorted([row["index"], row["sha256"]] for row in run.get("predictions") or []))


def run_protocol(run: dict) -> str | None:
    """The protocol the run was evaluated with (``auto`` resolved, from metrics.json)."""
    return (run.get("metrics") or {}).get("protocol") or (run.get("config") or {}).get("protocol")


def comparability_key(run: dict) -> tuple:
    """(data snapshot, class set, protocol, seed, tested images): runs with equal keys are compared image by image."""
    config = run.get("config") or {}
    classes = config.get("classes") or (run.get("metrics") or {}).get("classes") or []
    return snapshot_id(run), tuple(sorted(classes)), run_protocol(run), config.get("seed"), tested_id(run)


def exclusion_reason(run: dict) -> str | None:
    """Why a run cannot take part in a comparison, or None when it can."""
    if not run.get("metrics"):
        return "still training (no metrics.json yet); compare it once it has finished."
    if not run.get("predictions"):
        return ("has no per-image predictions (predictions.json), so it cannot be compared image by image; "
                "retrain it with this version.")
    return None


def group_comparable(runs: Iterable[dict]) -> list[list[dict]]:
    """Finished runs grouped by :func:`comparability_key`, largest group first; runs with an
    :func:`exclusion_reason` are left out."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        if exclusion_reason(run) is None:
            groups.setdefault(comparability_key(run), []).append(run)
    return sorted(groups.values(), key=len, reverse=True)


def key_differences(key_a: tuple, key_b: tuple) -> list[str]:
    """The names of the fields in which two comparability keys differ (e.g. ["data snapshot", "protocol"])."""
    return [name for name, a, b in zip(KEY_FIELDS, key_a, key_b) if a != b]


# --- paired differences -----------------------------------------------------------------------------------------------

@dataclass
class PairedDiff:
    """Run a minus run b on the same test images; accuracies and differences are fractions in [0, 1] / [-1, 1].

    ``ci_low``/``ci_high``: the paired bootstrap interval of the difference; ``p_value``: McNemar's exact test.
    ``only_a_right``/``only_b_right``: the images one got right and the other wrong, as rows with index, sha256,
    path, true, predicted_a and predicted_b. ``measurable``: the interval excludes 0 and p < alpha.
    """

    run_a: str
    run_b: str
    strategy_a: str
    strategy_b: str
    accuracy_a: float
    accuracy_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    only_a_right: list[dict] = field(default_factory=list)
    only_b_right: list[dict] = field(default_factory=list)
    measurable: bool = False
    verdict: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def run_label(run: dict) -> str:
    return f"{(run.get('config') or {}).get('strategy', '?')} ({run.get('name', '?')})"


def _rows_by_image(run: dict) -> dict[tuple[int, str], dict]:
    return {(row["index"], row["sha256"]): row for row in run.get("predictions") or []}


def paired_difference(run_a: dict, run_b: dict, *, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES,
                      alpha: float = ALPHA) -> PairedDiff:
    """Accuracy of ``run_a`` minus ``run_b`` on the same test images, with a seeded paired bootstrap interval and
    McNemar's exact p-value; raises ValueError for runs that are not comparable."""
    for run in (run_a, run_b):
        if exclusion_reason(run):
            raise ValueError(f"{run_label(run)} {exclusion_reason(run)}")
    differences = key_differences(comparability_key(run_a), comparability_key(run_b))
    if differences:
        raise ValueError(f"{run_label(run_a)} and {run_label(run_b)} differ in {', '.join(differences)}, so they were "
                         "not tested on the same images the same way; compare runs of one group.")
    rows_a, rows_b = _rows_by_image(run_a), _rows_by_image(run_b)
    keys = sorted(rows_a)
    right_a = np.array([rows_a[key]["true"] == rows_a[key]["predicted"] for key in keys])
    right_b = np.array([rows_b[key]["true"] == rows_b[key]["predicted"] for key in keys])
    only_a = [_pair_row(rows_a[key], rows_b[key]) for key, a, b in zip(keys, right_a, right_b) if a and not b]
    only_b = [_pair_row(rows_a[key], rows_b[key]) for key, a, b in zip(keys, right_a, right_b) if b and not a]
    low, high = paired_bootstrap_interval(len(only_a), len(only_b), len(keys), seed=seed, samples=samples,
                                          alpha=alpha)
    diff = PairedDiff(run_a=run_a.get("name", ""), run_b=run_b.get("name", ""),
                      strategy_a=run_a["config"].get("strategy", "?"), strategy_b=run_b["config"].get("strategy", "?"),
                      accuracy_a=float(right_a.mean()), accuracy_b=float(right_b.mean()),
                      difference=float(right_a.mean() - right_b.mean()), ci_low=low, ci_high=high,
                      p_value=mcnemar_exact(len(only_a), len(only_b)), n=len(keys), only_a_right=only_a,
                      only_b_right=only_b)
    diff.measurable = (low > 0 or high < 0) and diff.p_value < alpha
    diff.verdict = _verdict(diff, run_label(run_a), run_label(run_b), alpha)
    return diff


def _pair_row(row_a: dict, row_b: dict) -> dict:
    return {"index": row_a["index"], "sha256": row_a["sha256"], "path": row_a.get("path"), "true": row_a["true"],
            "predicted_a": row_a["predicted"], "predicted_b": row_b["predicted"]}


def mcnemar_exact(only_a_right: int, only_b_right: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs against 1/2 (1.0 when none)."""
    from scipy.stats import binomtest

    discordant = only_a_right + only_b_right
    return float(binomtest(only_a_right, discordant, 0.5).pvalue) if discordant else 1.0


def paired_bootstrap_interval(only_a_right: int, only_b_right: int, n: int, *, seed: int = 0,
                              samples: int = BOOTSTRAP_SAMPLES, alpha: float = ALPHA) -> tuple[float, float]:
    """Percentile interval of accuracy(a) - accuracy(b) over ``samples`` resamplings of the n test images.

    Resampling n images with replacement and counting the discordant ones is a multinomial draw over (only a right,
    only b right, agree), so the bootstrap needs no per-image arrays.
    """
    if n == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    p_a, p_b = only_a_right / n, only_b_right / n
    draws = rng.multinomial(n, [p_a, p_b, max(0.0, 1.0 - p_a - p_b)], size=samples)
    differences = (draws[:, 0] - draws[:, 1]) / n
    low, high = np.quantile(differences, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _verdict(diff: PairedDiff, label_a: str, label_b: str, alpha: float) -> str:
    interval = f"{100 * diff.ci_low:+.1f} to {100 * diff.ci_high:+.1f} points"
    confidence = round(100 * (1 - alpha))
    if diff.measurable:
        better, worse = (label_a, label_b) if diff.difference > 0 else (label_b, label_a)
        return (f"{better} is better than {worse} by {100 * abs(diff.difference):.1f} points ({confidence} % paired "
                f"interval of a - b: {interval}; McNemar p = {diff.p_value:.2g}).")
    detail = f"{confidence} % paired interval {interval}"
    if not (diff.ci_low <= 0 <= diff.ci_high):
        detail += f", but McNemar's exact test does not confirm it: p = {diff.p_value:.2g}"
    return (f"no measurable difference between {label_a} and {label_b} ({detail}; {len(diff.only_a_right)} vs "
            f"{len(diff.only_b_right)} images only one of them got right).")


# --- recommendation ---------------------------------------------------------------------------------------------------

@dataclass
class Recommendation:
    """``kind``: winner | cheapest | nothing_to_compare | not_comparable; ``run``: the recommended run's name."""

    kind: str
    text: str
    run: str | None = None
    strategy: str | None = None
    within_noise: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def fit_seconds(run: dict) -> float | None:
    """Seconds of the run's final fit on every image (train_seconds for runs that do not record it).

    The final fit is what choosing a strategy costs from then on; train_seconds also holds the feature extraction,
    which only the first frozen-feature run on a cold cache pays.
    """
    metrics = run.get("metrics") or {}
    seconds = metrics.get("fit_seconds", metrics.get("train_seconds"))
    return None if seconds is None else float(seconds)


def cost_key(run: dict) -> tuple[float, int, float]:
    """Cheapest first: whole seconds of :func:`fit_seconds` (a sub-second difference is timing noise, not cost), then
    linear < protonet < strategies that train the backbone."""
    seconds = fit_seconds(run)
    strategy = (run.get("config") or {}).get("strategy")
    rank = COST_ORDER.index(strategy) if strategy in COST_ORDER else len(COST_ORDER)
    if seconds is None:
        return math.inf, rank, math.inf
    return float(math.ceil(seconds)), rank, seconds


def rank_runs(runs: Iterable[dict]) -> list[dict]:
    """Most accurate first; equal accuracy: cheapest first."""
    return sorted(runs, key=lambda run: (-float(run["metrics"].get("accuracy", 0.0)), cost_key(run)))


def recommend(runs: Sequence[dict], *, seed: int = 0, alpha: float = ALPHA) -> Recommendation:
    """A winner only when the most accurate run beats every other comparable run by more than the noise (a
    measurable paired difference against each); otherwise the cheapest run within the noise of the best."""
    finished = [run for run in runs if exclusion_reason(run) is None]
    if len(finished) < 2:
        return Recommendation("nothing_to_compare", "Nothing to compare yet: train another strategy on the same "
                              "images (Evaluate every strategy) to compare it with this one."
                              if finished else "Nothing to compare yet: no finished run.")
    groups = group_comparable(finished)
    if len(groups) > 1:
        return Recommendation("not_comparable", "No recommendation: these runs were not evaluated the same way ("
                              f"{_group_differences(groups)} differ), so none is ranked against another. Compare runs "
                              "of one group, or evaluate every strategy again with one protocol and seed.")
    ranked = rank_runs(finished)
    best = ranked[0]
    pairs = [paired_difference(best, other, seed=seed, alpha=alpha) for other in ranked[1:]]
    if all(pair.measurable and pair.difference > 0 for pair in pairs):
        closest = min(pairs, key=lambda pair: pair.ci_low)
        return Recommendation("winner", f"{run_label(best)} wins: it beats every other run by more than the noise "
                              f"(closest: {100 * closest.difference:.1f} points ahead of {closest.strategy_b}, "
                              f"paired interval {100 * closest.ci_low:+.1f} to {100 * closest.ci_high:+.1f}).",
                              best["name"], best["config"].get("strategy"))
    noisy = [other for other, pair in zip(ranked[1:], pairs) if not pair.measurable]
    return _cheapest_within_noise(best, [best, *noisy])


def _cheapest_within_noise(best: dict, within: list[dict]) -> Recommendation:
    choice = min(within, key=cost_key)
    names = [run["name"] for run in within]
    others = ", ".join(run_label(run) for run in within if run is not choice)
    seconds = fit_seconds(choice)
    cost = f" ({seconds:.1f} s to fit)" if seconds is not None else ""
    if choice is best:
        text = (f"{run_label(choice)} is recommended: it is the most accurate and the cheapest{cost}, but "
                f"{others} {'is' if len(within) == 2 else 'are'} within the noise of it, so no winner is claimed.")
    else:
        text = (f"No run wins by more than the noise: {run_label(choice)} is within the noise of the most accurate "
                f"({run_label(best)}, {100 * best['metrics']['accuracy']:.1f} %) and the cheapest of those{cost}, "
                "so it is recommended.")
    return Recommendation("cheapest", text, choice["name"], choice["config"].get("strategy"), names)


def _group_differences(groups: list[list[dict]]) -> str:
    keys = [comparability_key(group[0]) for group in groups]
    fields = [name for index, name in enumerate(KEY_FIELDS) if len({key[index] for key in keys}) > 1]
    return ", ".join(fields)


# --- a whole comparison (what the CLI and the Compare page show) ------------------------------------------------------

@dataclass
class Standing:
    """One run of a group against the most accurate one: its accuracy with a 95 % interval (fractions), and whether
    it is the earned winner, tied with the best (the paired difference is within the noise) or measurably behind."""

    run: str
    strategy: str
    accuracy: float
    ci_low: float
    ci_high: float
    status: str  # "winner" | "best" (most accurate, but tied with another) | "tied" | "behind"
    difference: float = 0.0  # accuracy minus the best's
    diff_low: float = 0.0
    diff_high: float = 0.0

    def text(self) -> str:
        """How the Compare page's table marks this run."""
        if self.status == "winner":
            return "winner"
        if self.status == "best":
            return "most accurate, tied within the interval"
        gap = (f"{100 * self.difference:+.1f} pts (paired 95 % interval {100 * self.diff_low:+.1f} to "
               f"{100 * self.diff_high:+.1f})")
        return f"tied with the best: {gap}" if self.status == "tied" else f"behind: {gap}"

    def to_dict(self) -> dict:
        return asdict(self)


def run_interval(run: dict) -> tuple[float, float]:
    """The 95 % interval of a run's accuracy: the one in metrics.json, else Wilson's on its test images."""
    from .intervals import accuracy_interval

    metrics = run.get("metrics") or {}
    if metrics.get("ci_low") is not None and metrics.get("ci_high") is not None:
        return float(metrics["ci_low"]), float(metrics["ci_high"])
    return accuracy_interval(float(metrics.get("accuracy", float("nan"))), len(run.get("predictions") or []))


def standings(ranked: Sequence[dict], pairs_from_best: Sequence[PairedDiff], recommendation: Recommendation
              ) -> list[Standing]:
    """One :class:`Standing` per run of ``ranked`` (most accurate first); ``pairs_from_best``: best minus each other."""
    if not ranked:
        return []
    ties = [not pair.measurable or pair.difference <= 0 for pair in pairs_from_best]
    best_status = "winner" if recommendation.kind == "winner" else ("best" if any(ties) else "winner")
    rows = [Standing(ranked[0]["name"], ranked[0]["config"].get("strategy", "?"),
                     float(ranked[0]["metrics"].get("accuracy", 0.0)), *run_interval(ranked[0]), best_status)]
    for run, pair, tied in zip(ranked[1:], pairs_from_best, ties):
        rows.append(Standing(run["name"], run["config"].get("strategy", "?"), float(run["metrics"].get("accuracy", 0.0)),
                             *run_interval(run), "tied" if tied else "behind", 0.0 - pair.difference,
                             0.0 - pair.ci_high, 0.0 - pair.ci_low))  # 0.0 - x: never a "-0.0" bound
    return rows


def headline(rows: Sequence[Standing]) -> str:
    """One sentence naming the winner for this project with its 95 % interval, or the runs tied with the best."""
    if len(rows) < 2:
        return ""
    best = rows[0]
    accuracy = f"{100 * best.accuracy:.1f} % (95 % interval {100 * best.ci_low:.1f}-{100 * best.ci_high:.1f})"
    if best.status == "winner":
        return (f"Winner for this project: {best.strategy} ({best.run}), {accuracy}; every other run is measurably "
                "behind it.")
    tied = [row for row in rows[1:] if row.status == "tied"]
    names = ", ".join(f"{row.strategy} ({100 * row.accuracy:.1f} %)" for row in tied)
    return (f"No single winner: the most accurate, {best.strategy} ({best.run}) at {accuracy}, is tied within the "
            f"95 % interval with {names}.")


@dataclass
class GroupComparison:
    """Comparable runs (most accurate first), every pair's paired difference, the group's recommendation and each
    run's standing against the best."""

    description: str
    runs: list[dict]
    pairs: list[PairedDiff]
    recommendation: Recommendation
    standings: list[Standing] = field(default_factory=list)

    @property
    def headline(self) -> str:
        return headline(self.standings)

    def rows(self) -> list[dict]:
        return [{"run": run["name"], "run_dir": run.get("run_dir"), "strategy": run["config"].get("strategy"),
                 "accuracy": run["metrics"].get("accuracy"), "n_test": len(run["predictions"]),
                 "train_seconds": run["metrics"].get("train_seconds"), "fit_seconds": fit_seconds(run)}
                for run in self.runs]

    def to_dict(self) -> dict:
        return {"description": self.description, "runs": self.rows(), "pairs": [pair.to_dict() for pair in self.pairs],
                "recommendation": self.recommendation.to_dict(), "headline": self.headline,
                "standings": [row.to_dict() for row in self.standings]}


@dataclass
class Comparison:
    """Every group of comparable runs, the runs left out (with why) and a message about the whole set."""

    groups: list[GroupComparison]
    excluded: list[dict]
    message: str

    @property
    def comparable(self) -> bool:
        """True when at least one group holds two runs or more."""
        return any(len(group.runs) > 1 for group in self.groups)

    def to_dict(self) -> dict:
        return {"comparable": self.comparable, "message": self.message,
                "groups": [group.to_dict() for group in self.groups], "excluded": self.excluded}


def compare_runs(runs: Sequence[dict], *, seed: int = 0, alpha: float = ALPHA) -> Comparison:
    """Group ``runs``, compare every pair within each group and recommend per group; never across groups."""
    excluded = [{"run": run.get("name"), "run_dir": run.get("run_dir"), "reason": exclusion_reason(run)}
                for run in runs if exclusion_reason(run)]
    groups = []
    for group in group_comparable(runs):
        ranked = rank_runs(group)
        pairs = [paired_difference(a, b, seed=seed, alpha=alpha)
                 for i, a in enumerate(ranked) for b in ranked[i + 1:]]
        recommendation = recommend(ranked, seed=seed, alpha=alpha)
        from_best = pairs[:len(ranked) - 1]  # (best, other) for every other run, in rank order
        groups.append(GroupComparison(describe_group(ranked), ranked, pairs, recommendation,
                                      standings(ranked, from_best, recommendation)))
    return Comparison(groups, excluded, _overall_message(groups, len(runs) - len(excluded)))


def runs_key(runs: Sequence[dict]) -> str:
    """A cache key for :func:`compare_runs` of ``runs``, in order: per run, its folder and the size and modification
    time of every file :func:`fsl_app.runs.read_run` reads (the same unchanged files make the same run dict); a run
    without a readable folder is hashed whole. A stat per file instead of hashing every prediction of every run."""
    parts = []
    for run in runs:
        folder = Path(run["run_dir"]) if run.get("run_dir") else None
        if folder is not None and (folder / "config.json").is_file():
            parts.append([str(folder), run.get("name"), [_file_state(folder / name) for name in RUN_FILES]])
        else:
            parts.append(hashlib.sha256(json.dumps(run, sort_keys=True, default=str).encode()).hexdigest())
    return _digest(parts)


def _file_state(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def describe_group(runs: Sequence[dict]) -> str:
    snapshot, classes, protocol, seed, _ = comparability_key(runs[0])
    return (f"{PROTOCOL_NAMES.get(protocol, protocol)}, seed {seed}, {len(runs[0]['predictions'])} test images, "
            f"{len(classes)} classes, data {snapshot[:8]}")


def _overall_message(groups: list[GroupComparison], finished: int) -> str:
    if finished == 0:
        return "Nothing to compare: none of these is a finished run."
    if finished == 1:
        return "Nothing to compare yet: only one finished run."
    if len(groups) == 1:
        return f"{finished} comparable runs: the same images, classes, protocol and seed."
    fields = _group_differences([group.runs for group in groups])
    ranked = " Each group is ranked on its own, never against another." if any(len(g.runs) > 1 for g in groups) \
        else " Nothing can be compared: every run is alone in its group."
    return f"These runs fall into {len(groups)} groups that were evaluated differently ({fields} differ).{ranked}"
