"""Which labels are likely wrong: rank labeled images by out-of-fold predictions, confident-learning style.

Every labeled image is predicted by a model that never saw it: refits of the strategy with leave-one-out or k-fold
(on cached features for frozen-feature strategies, through :func:`fsl_app.evaluation.evaluate`). Confident learning
(Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021) then gives
each class a threshold, the mean probability the held-out predictions give that class on the images labeled with it
(its self-confidence). An image is flagged when some class reaches its own threshold and the most probable such class
is not the given label (an off-diagonal entry of the confident joint).

Images are ranked by their self-confidence relative to their class's threshold (given-label probability divided by
the threshold): a 0.5 is alarming in a class the model usually gets at 0.95 and ordinary in one it gets at 0.4.
Flagged images are not moved to the front: benchmarks/bench_label_errors.py compares this order on planted label
flips with plain lowest-probability ranking and with flagged-first, normalized-margin ordering (benchmarks/RESULTS.md).

The store never imports this module; fronts call :func:`check_labels` and relabel through the store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from . import DEFAULT_BACKBONE
from .backbones import Backbone, load_backbone
from .dataset import DataError, ImageRecord, ImageSet
from .evaluation import choose_protocol, evaluate
from .runs import read_run
from .store import Project
from .strategies import FeatureStrategy, Strategy, create_strategy

MIN_CLASSES = 2
MIN_IMAGES_PER_CLASS = 2  # one to hold out, one to learn the class from
QUICK_STAND_IN = "linear"  # checks strategies that train the backbone in quick mode (seconds instead of minutes)
CHECK_PROTOCOLS = ("auto", "loo", "kfold")
_TOLERANCE = 1e-6  # a probability equal to its class threshold counts as reaching it despite rounding

Progress = Callable[[int, int], None] | None


@dataclass(frozen=True)
class LabelIssue:
    """One checked image: its given label, the class the held-out model prefers, and how suspicious the label is."""

    image_id: int | None  # project image id; None when checking a plain ImageSet
    file_name: str  # the original file name (the project's source name)
    sha256: str
    label: str  # the current label
    suggested_label: str  # the confident class when flagged, else the most probable other class
    score: float  # suspicion in [0, 1]: 1 - given-label probability / class threshold (0 at or above the threshold)
    flagged: bool  # confident learning counts this label as an error
    given_probability: float
    suggested_probability: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LabelCheck:
    """The result of :func:`check_labels`: every checked image, most suspicious first."""

    strategy: str
    params: dict
    backbone: str
    protocol: str
    classes: list[str]
    thresholds: dict[str, float]  # per class: mean held-out probability of the class on its own images
    issues: list[LabelIssue]
    unchecked: list[str] = field(default_factory=list)  # file names that could not be held out (a class of one)

    @property
    def flagged(self) -> list[LabelIssue]:
        """Labels confident learning counts as errors."""
        return [issue for issue in self.issues if issue.flagged]

    @property
    def review_queue(self) -> list[LabelIssue]:
        """What a person should look at, most suspicious first: the flagged labels and those where the held-out
        model prefers another class without that class reaching its threshold."""
        return [issue for issue in self.issues
                if issue.flagged or issue.suggested_probability > issue.given_probability]

    def to_dict(self) -> dict:
        return {**asdict(self), "n_flagged": len(self.flagged), "n_review": len(self.review_queue)}


@dataclass(frozen=True)
class LabelRanking:
    """Confident-learning verdicts for n images with out-of-fold probabilities over c classes."""

    order: np.ndarray  # (n,) image indices, most suspicious first (lowest relative self-confidence)
    flagged: np.ndarray  # (n,) bool: off the diagonal of the confident joint
    suggested: np.ndarray  # (n,) class index
    relative_confidence: np.ndarray  # (n,) given-label probability / its class threshold
    suspicion: np.ndarray  # (n,) in [0, 1]: 1 - relative confidence, clipped
    thresholds: np.ndarray  # (c,)


# --- the ranking (pure, on probabilities) ---------------------------------------------------------------------------

def class_thresholds(probabilities: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Per class j, the mean of probabilities[i, j] over images i labeled j, shape (c,).

    A class with no checked image gets the mean self-confidence of all images.
    """
    self_confidence = probabilities[np.arange(len(given)), given]
    thresholds = np.full(probabilities.shape[1], self_confidence.mean() if len(given) else 1.0)
    for label in np.unique(given):
        thresholds[label] = self_confidence[given == label].mean()
    return thresholds


def rank_label_issues(probabilities: np.ndarray, given: np.ndarray) -> LabelRanking:
    """Rank images by how likely their given label is wrong.

    ``probabilities`` (n, c): out-of-fold class probabilities, rows summing to 1; ``given`` (n,): label indices.
    """
    proba = np.asarray(probabilities, dtype=np.float64)
    given = np.asarray(given, dtype=np.int64)
    if proba.ndim != 2 or proba.shape[0] != len(given) or proba.shape[1] < 2:
        raise ValueError(f"probabilities must be (n, c) with c >= 2 and n = len(given) = {len(given)}; "
                         f"got shape {proba.shape}.")
    rows = np.arange(len(given))
    thresholds = class_thresholds(proba, given)
    confident = proba >= thresholds - _TOLERANCE
    confident_class = np.where(confident, proba, -1.0).argmax(1)
    flagged = confident.any(1) & (confident_class != given)
    others = proba.copy()
    others[rows, given] = -np.inf
    suggested = np.where(flagged, confident_class, others.argmax(1))
    relative = proba[rows, given] / np.maximum(thresholds[given], _TOLERANCE)
    order = np.lexsort((rows, relative))  # least confident relative to the class first, ties in input order
    return LabelRanking(order=order, flagged=flagged, suggested=suggested, relative_confidence=relative,
                        suspicion=np.clip(1.0 - relative, 0.0, 1.0), thresholds=thresholds)


# --- data checks ----------------------------------------------------------------------------------------------------

def check_problem(class_counts: Mapping[str, int]) -> str | None:
    """Why labels with these counts per class cannot be checked (a sentence that names the fix), or None."""
    checkable = [name for name, count in class_counts.items() if count >= MIN_IMAGES_PER_CLASS]
    if len(checkable) >= MIN_CLASSES:
        return None
    labeled = {name: count for name, count in class_counts.items() if count > 0}
    found = (f"found {len(labeled)} class{'es' if len(labeled) != 1 else ''} with labeled images"
             + (f", {len(checkable)} of them with {MIN_IMAGES_PER_CLASS} or more" if labeled else ""))
    return (f"Checking labels needs at least {MIN_CLASSES} classes with at least {MIN_IMAGES_PER_CLASS} labeled "
            f"images each ({found}). Label more images, then check again.")


# --- out-of-fold predictions and the check --------------------------------------------------------------------------

def check_protocol(strategy: Strategy, y: np.ndarray, protocol: str = "auto") -> str:
    """The protocol that holds out every image once: leave-one-out or k-fold (never a single hold-out split)."""
    if protocol not in CHECK_PROTOCOLS:
        raise ValueError(f"checking labels needs every image held out once: protocol must be one of "
                         f"{', '.join(CHECK_PROTOCOLS)}, not {protocol!r}.")
    if protocol != "auto":
        return protocol
    counts = np.bincount(y)
    if counts[counts > 0].min() < 2:
        return "loo"  # k-fold cannot keep a class of one in training
    return choose_protocol(strategy, y) if isinstance(strategy, FeatureStrategy) else "kfold"


def out_of_fold_probabilities(strategy: Strategy, images: ImageSet, backbone: Backbone, *, protocol: str = "auto",
                              seed: int = 0, progress: Progress = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Held-out probabilities of the labeled ``images``: ((n_tested, n_classes), tested indices (n_tested,), the
    protocol used). Classes are ``images.classes``; images of a class of one are never tested."""
    images = images.labeled()
    protocol = check_protocol(strategy, images.label_indices(), protocol)
    report = evaluate(strategy, images, backbone, protocol=protocol, seed=seed, progress=progress)
    return np.array(report.probabilities, dtype=np.float64), np.array(report.test_indices, dtype=np.int64), protocol


def check_labels(source: Project | ImageSet, *, strategy: str | Strategy = "linear", params: dict | None = None,
                 backbone: str | Backbone = DEFAULT_BACKBONE, weights: str = "auto", protocol: str = "auto",
                 seed: int = 0, progress: Progress = None) -> LabelCheck:
    """Rank the labeled images of a project (or an ImageSet) by how likely their label is wrong.

    ``strategy`` is a registered name (with ``params``) or an unfitted Strategy; ``backbone`` a name (with
    ``weights``) or a loaded Backbone. Raises :class:`DataError` when there is too little to check.
    """
    images, ids, names = _labeled_images(source)
    problem = check_problem(images.class_counts())
    if problem:
        raise DataError(problem)
    if isinstance(strategy, str):
        strategy = create_strategy(strategy, **(params or {}))
    elif params:
        raise ValueError("pass params only with a strategy name; set them on the Strategy object instead.")
    if isinstance(backbone, str):
        backbone = load_backbone(backbone, weights)
    probabilities, tested, protocol = out_of_fold_probabilities(strategy, images, backbone, protocol=protocol,
                                                                seed=seed, progress=progress)
    classes = images.classes
    given = images.label_indices(classes)[tested]
    ranking = rank_label_issues(probabilities, given)
    issues = [_issue(images[tested[i]], ids[tested[i]], names[tested[i]], classes, probabilities[i], given[i],
                     ranking, i) for i in ranking.order]
    unchecked = [names[i] for i in sorted(set(range(len(images))) - set(tested.tolist()))]
    return LabelCheck(strategy=strategy.name, params=strategy.get_params(), backbone=backbone.id, protocol=protocol,
                      classes=classes, thresholds=dict(zip(classes, ranking.thresholds.tolist())), issues=issues,
                      unchecked=unchecked)


def _issue(record: ImageRecord, image_id: int | None, name: str, classes: list[str], proba: np.ndarray, given: int,
           ranking: LabelRanking, i: int) -> LabelIssue:
    suggested = int(ranking.suggested[i])
    return LabelIssue(image_id=image_id, file_name=name, sha256=record.sha256, label=classes[given],
                      suggested_label=classes[suggested], score=float(ranking.suspicion[i]),
                      flagged=bool(ranking.flagged[i]), given_probability=float(proba[given]),
                      suggested_probability=float(proba[suggested]))


def _labeled_images(source: Project | ImageSet) -> tuple[ImageSet, list[int | None], list[str]]:
    """The labeled images, their project ids (None for an ImageSet) and original file names, in one order."""
    if isinstance(source, Project):
        stored = source.images(labeled=True)
        records = [ImageRecord(path=image.path, sha256=image.sha256, label=image.label) for image in stored]
        return ImageSet(records), [image.id for image in stored], [image.source_name for image in stored]
    if isinstance(source, ImageSet):
        labeled = source.labeled()
        return labeled, [None] * len(labeled), [record.path.name for record in labeled.records]
    raise TypeError(f"check_labels takes a Project or an ImageSet, not {type(source).__name__}.")


# --- the strategy of a run ------------------------------------------------------------------------------------------

def strategy_from_run(run_dir: str | Path, *, quick: bool = False,
                      load: Callable[[str, str], Backbone] = load_backbone) -> tuple[Strategy, Backbone]:
    """An unfitted copy of a run's strategy (same hyperparameters) and its backbone, to refit out of fold.

    With ``quick``, a strategy that trains the backbone is replaced by the ``linear`` probe on the same backbone: its
    refits take seconds, where k-fold fine-tuning takes minutes. ``load(name, weights)`` loads the backbone (a
    front may pass its cache).
    """
    config = read_run(run_dir)["config"]
    spec = config.get("backbone") or {}
    if not spec.get("name"):
        raise DataError(f"{run_dir} has no backbone in its config.json. Pass a run folder made by `fsl-app train`.")
    strategy = create_strategy(config["strategy"], **config.get("params", {}))
    if quick and not isinstance(strategy, FeatureStrategy):
        strategy = create_strategy(QUICK_STAND_IN)
    return strategy, load(spec["name"], spec.get("weights", "auto"))
