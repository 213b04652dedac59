"""What to label first: the unlabeled images whose labels should teach a few-shot model the most.

Two ways to pick, on frozen backbone features of the project's unlabeled pool:

- **typical** (no model needed): TypiClust (Hacohen, Dekel and Weinshall, "Active Learning on a Budget: Opposite
  Strategies Suit High and Low Budgets", ICML 2022). k-means with k = labeled images + budget clusters over the
  labeled images and the pool; then, one pick at a time, the cluster holding the fewest labeled (or already picked)
  images, largest first, gives its most typical unlabeled image. Typicality is the inverse of the mean distance to
  the image's nearest neighbours inside its cluster: a dense, central example, not an outlier.
- **margin** (a model: a trained run, or a linear probe fitted here on the labeled images): margin x diversity with
  class balance. Each image scores (1 - margin) x distance to the nearest labeled or already picked image, margin being
  top-1 minus top-2 probability (Scheffer et al. 2001); picks are greedy, and each predicted class gets a quota that
  tops up the classes with the fewest labels first.

``auto`` picks **typical** until the labeled classes hold 10 images each on average, **margin** after: on digits and
scikit-image patches typical picks beat random ones by 5 to 28 points at 1, 2 and 5 labels per class, and beat margin
picks too (benchmarks/results/label_first.md), as the paper found for tiny budgets (uncertainty wins only later).

Cost is bounded: at most ``max_pool`` pool images (default 2000, a seeded random subsample, said in the result) are
considered, k-means switches to mini-batch k-means above 5000 points or 100 clusters, and typicality inside a large
cluster is measured against at most 1000 of its images. The store never imports this module; the fronts call
:func:`suggest_first` and label the picks through the store (logged, undoable).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from threadpoolctl import threadpool_limits

from . import DEFAULT_BACKBONE
from .backbones import TEST_BACKBONES, Backbone, BackboneError, load_backbone, offering_test_backbones
from .dataset import DataError, ImageRecord, ImageSet
from .features import get_extractor
from .run_tables import project_runs
from .store import Project

METHODS = ("auto", "typical", "margin")
METHOD_LABELS = {"auto": "auto (typical images up to 10 labeled per class, then margin x diversity)",
                 "typical": "typical and diverse images (no model needed)",
                 "margin": "where the model is least sure, spread out, balanced over classes"}
DEFAULT_BUDGET = 10
MAX_POOL = 2000
MINIBATCH_ABOVE_POINTS, MINIBATCH_ABOVE_CLUSTERS = 5000, 100
CLUSTER_DIMENSIONS = 64  # k-means and typicality run on this many principal components
TYPICALITY_NEIGHBOURS = 20  # as in TypiClust
TYPICALITY_REFERENCE = 1000
SMALL_CLUSTER = 5  # TypiClust leaves clusters this small for last: their "typical" image is an outlier
MIN_MODEL_CLASSES = 2
MARGIN_FROM_PER_CLASS = 10  # auto switches from typical to margin picks here

LoadBackbone = Callable[[str, str], Backbone]


@dataclass(frozen=True)
class Pick:
    """One image to label next and why."""

    image_id: int | None
    file_name: str
    sha256: str
    method: str  # "typical" or "margin"
    reason: str
    score: float  # typicality (typical) or uncertainty x distance (margin); higher = picked earlier
    suggested_label: str | None  # margin: the model's guess; typical: the class of the nearest labeled image

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LabelFirst:
    """The result of :func:`suggest_first`: picks in the order to label them."""

    method: str
    backbone: str
    model: str  # what the margin picks came from, "" for typical picks
    pool_size: int
    considered: int  # pool images looked at (a seeded subsample when the pool is larger than max_pool)
    picks: list[Pick] = field(default_factory=list)

    @property
    def note(self) -> str:
        if self.considered < self.pool_size:
            return (f"Picked among a random {self.considered} of the {self.pool_size} unlabeled images (the cost "
                    "stays bounded on big pools).")
        return ""

    def to_dict(self) -> dict:
        return {**asdict(self), "note": self.note}


# --- picking (pure, on features) ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TypicalPicks:
    """Pool indices in pick order with their cluster's size, its labeled images and the typicality, each (budget,)."""

    order: np.ndarray
    cluster_size: np.ndarray
    labeled_in_cluster: np.ndarray
    typicality: np.ndarray


def normalize(features: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Center on ``center`` (d,), then scale every row of ``features`` (n, d) to unit length."""
    x = np.asarray(features, dtype=np.float64) - center
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def reduce_dimensions(points: np.ndarray, dimensions: int, seed: int) -> np.ndarray:
    """The first ``dimensions`` principal components of ``points`` (n, d) (randomized PCA), or the points when they
    have no more than that; k-means in 1280 dimensions spends seconds on its initialisation alone."""
    if points.shape[1] <= dimensions or len(points) <= dimensions:
        return points
    from sklearn.decomposition import PCA

    return PCA(dimensions, svd_solver="randomized", random_state=seed).fit_transform(points)


def cluster(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means cluster of every row of ``points`` (n, d), shape (n,); mini-batch k-means on big inputs."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    k = max(1, min(k, len(points)))
    if len(points) > MINIBATCH_ABOVE_POINTS or k > MINIBATCH_ABOVE_CLUSTERS:
        model = MiniBatchKMeans(k, random_state=seed, batch_size=2048, n_init=3)
    else:
        model = KMeans(k, random_state=seed, n_init=3)
    return model.fit_predict(points)


def typicality(points: np.ndarray, candidates: np.ndarray, reference: np.ndarray, neighbours: int) -> np.ndarray:
    """1 / mean distance from each candidate row of ``points`` (n, d) to its ``neighbours`` nearest reference rows
    (itself excluded), shape (len(candidates),); ``candidates`` and ``reference`` are row indices."""
    if len(reference) < 2:
        return np.ones(len(candidates))
    k = max(1, min(neighbours, len(reference) - 1))
    squared = (points ** 2).sum(axis=1)
    values = []
    for start in range(0, len(candidates), 1024):  # bounds the (chunk, r) distance block
        rows = candidates[start:start + 1024]
        distances = np.sqrt(np.maximum(squared[rows, None] + squared[None, reference]
                                       - 2.0 * points[rows] @ points[reference].T, 0.0))
        distances[rows[:, None] == reference[None, :]] = np.inf  # not its own neighbour
        nearest = np.sort(distances, axis=1)[:, :k]
        values.append(1.0 / (nearest.mean(axis=1) + 1e-12))
    return np.concatenate(values)


def typical_picks(pool: np.ndarray, labeled: np.ndarray, budget: int, *, seed: int = 0) -> TypicalPicks:
    """TypiClust on pool features (m, d) and labeled features (n, d, n may be 0): ``min(budget, m)`` pool indices."""
    pool = np.asarray(pool, dtype=np.float64)
    labeled = np.asarray(labeled, dtype=np.float64).reshape(-1, pool.shape[1])
    budget = min(budget, len(pool))
    everything = np.concatenate([labeled, pool])
    with threadpool_limits(1):  # small dense problems: BLAS / OpenMP threads only fight each other here
        points = reduce_dimensions(normalize(everything, everything.mean(axis=0)), CLUSTER_DIMENSIONS, seed)
        assignment = cluster(points, len(labeled) + budget, seed)
    n_clusters = int(assignment.max()) + 1
    sizes = np.bincount(assignment, minlength=n_clusters)
    taken = np.bincount(assignment[:len(labeled)], minlength=n_clusters)
    queues = _typicality_queues(points, assignment, len(labeled), n_clusters, seed)
    chosen, chosen_sizes, chosen_labeled, chosen_typicality = [], [], [], []
    for _ in range(budget):
        open_clusters = [c for c in range(n_clusters) if queues[c]]
        best = min(open_clusters, key=lambda c: (taken[c], sizes[c] < SMALL_CLUSTER, -sizes[c], c))
        index, value = queues[best].pop(0)
        chosen.append(index)
        chosen_sizes.append(sizes[best])
        chosen_labeled.append(taken[best])
        chosen_typicality.append(value)
        taken[best] += 1
    return TypicalPicks(np.array(chosen, dtype=np.int64), np.array(chosen_sizes), np.array(chosen_labeled),
                        np.array(chosen_typicality))


def _typicality_queues(points: np.ndarray, assignment: np.ndarray, n_labeled: int, n_clusters: int,
                       seed: int) -> list[list[tuple[int, float]]]:
    """Per cluster, its pool images as (pool index, typicality), most typical first. ``points`` and ``assignment``
    hold the labeled rows first, then the pool rows."""
    rng = np.random.default_rng(seed)
    queues: list[list[tuple[int, float]]] = []
    for c in range(n_clusters):
        members = np.flatnonzero(assignment == c)
        candidates = members[members >= n_labeled]
        if not len(candidates):
            queues.append([])
            continue
        reference = members if len(members) <= TYPICALITY_REFERENCE else np.sort(
            rng.choice(members, TYPICALITY_REFERENCE, replace=False))
        values = typicality(points, candidates, reference, TYPICALITY_NEIGHBOURS)
        order = np.argsort(-values, kind="stable")
        queues.append([(int(candidates[i] - n_labeled), float(values[i])) for i in order])
    return queues


@dataclass(frozen=True)
class MarginPicks:
    """Pool indices in pick order with their predicted class, margin and distance to the nearest labeled or earlier
    pick, each (budget,)."""

    order: np.ndarray
    predicted: np.ndarray
    margin: np.ndarray
    distance: np.ndarray
    score: np.ndarray


def balanced_quota(labeled_counts: np.ndarray, budget: int) -> np.ndarray:
    """Picks per class (c,) that top up the classes with the fewest labeled images first (water filling)."""
    counts = np.asarray(labeled_counts, dtype=np.int64).copy()
    quota = np.zeros(len(counts), dtype=np.int64)
    for _ in range(budget):
        smallest = int(np.argmin(counts + quota))
        quota[smallest] += 1
    return quota


def margin_diversity_picks(probabilities: np.ndarray, pool: np.ndarray, labeled: np.ndarray,
                           labeled_counts: np.ndarray, budget: int) -> MarginPicks:
    """Greedy margin x diversity with class balance.

    ``probabilities`` (m, c): the model's predictions for the pool; ``pool`` (m, d) and ``labeled`` (n, d): their
    embeddings (unit length; n may be 0); ``labeled_counts`` (c,): labeled images per class. Each step picks the
    image with the highest (1 - margin) x distance to the nearest labeled or picked image among those whose
    predicted class still has quota (:func:`balanced_quota`), or among all when no such image is left.
    """
    proba = np.asarray(probabilities, dtype=np.float64)
    pool = np.asarray(pool, dtype=np.float64)
    labeled = np.asarray(labeled, dtype=np.float64).reshape(-1, pool.shape[1])
    budget = min(budget, len(pool))
    ordered = np.sort(proba, axis=1)[:, ::-1]
    margin = ordered[:, 0] - (ordered[:, 1] if proba.shape[1] > 1 else 0.0)
    predicted = proba.argmax(axis=1)
    nearest = _distances(pool, labeled).min(axis=1) if len(labeled) else np.full(len(pool), 1.0)
    quota = balanced_quota(labeled_counts, budget)
    picked = np.zeros(len(pool), dtype=bool)
    order, scores, distances = [], [], []
    for _ in range(budget):
        score = (1.0 - margin) * nearest
        allowed = ~picked & (quota[predicted] > 0)
        if not allowed.any():
            allowed = ~picked
        index = int(np.argmax(np.where(allowed, score, -np.inf)))
        order.append(index)
        scores.append(score[index])
        distances.append(nearest[index])
        picked[index] = True
        quota[predicted[index]] -= 1
        nearest = np.minimum(nearest, _distances(pool, pool[index:index + 1])[:, 0])
    order = np.array(order, dtype=np.int64)
    return MarginPicks(order, predicted[order], margin[order], np.array(distances), np.array(scores))


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b))."""
    squared = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))


# --- bad input ------------------------------------------------------------------------------------------------------

def first_problem(n_pool: int, class_counts: Mapping[str, int], method: str, *, has_run: bool = False) -> str | None:
    """Why no suggestion can be made (a sentence that names the fix), or None."""
    if method not in METHODS:
        return f"the method must be one of {', '.join(METHODS)}, not {method!r}."
    if n_pool < 1:
        return ("Suggesting what to label first needs at least 1 unlabeled image (the pool is empty): add images "
                "without a class (Data page: the 'Many files or a zip' uploader; command line: `fsl-app project "
                "import PROJECT FOLDER --flat`), then ask again.")
    labeled_classes = sum(1 for count in class_counts.values() if count > 0)
    if method == "margin" and not has_run and labeled_classes < MIN_MODEL_CLASSES:
        return (f"The model-based suggestion needs a trained run or at least {MIN_MODEL_CLASSES} classes with "
                f"labeled images (found {labeled_classes}). Label an image of another class, or use the typical "
                "images (no model needed).")
    return None


def choose_method(method: str, class_counts: Mapping[str, int]) -> str:
    """``auto``: typical until the labeled classes hold MARGIN_FROM_PER_CLASS images each on average (typical picks
    beat margin picks at 1, 2 and 5 per class on digits and patches), margin after; other methods as asked."""
    if method != "auto":
        return method
    labeled = [count for count in class_counts.values() if count > 0]
    enough = len(labeled) >= MIN_MODEL_CLASSES and sum(labeled) / len(labeled) >= MARGIN_FROM_PER_CLASS
    return "margin" if enough else "typical"


# --- on a project ---------------------------------------------------------------------------------------------------

def suggest_first(project: Project, *, budget: int = DEFAULT_BUDGET, method: str = "auto",
                  run_dir: str | Path | None = None, backbone: str | Backbone | None = None, weights: str = "auto",
                  seed: int = 0, max_pool: int | None = MAX_POOL, load: LoadBackbone = load_backbone) -> LabelFirst:
    """The ``budget`` unlabeled images of ``project`` to label first, in order.

    ``method``: ``auto`` (:func:`choose_method`), ``typical`` or ``margin``. ``run_dir``: a finished run whose
    fitted strategy drives the margin picks (its backbone gives the features);
    without it the margin picks come from a linear probe fitted on the labeled images. ``backbone`` (a name with
    ``weights``, or a loaded Backbone) overrides the features' backbone; default: the latest run's, else the default
    backbone (timm's tiny test model when test backbones are offered). ``load(name, weights)`` loads backbones (a
    front may pass its cache). Raises :class:`DataError` naming what is missing.
    """
    if budget < 1:
        raise DataError(f"the budget must be at least 1 image, got {budget}.")
    stored_pool = project.images(labeled=False)
    counts = project.class_counts()
    problem = first_problem(len(stored_pool), counts, method, has_run=run_dir is not None)
    if problem:
        raise DataError(problem)
    method = choose_method(method, counts)
    considered = _subsample(stored_pool, max_pool, seed)
    pool = ImageSet(ImageRecord(path=image.path, sha256=image.sha256) for image in considered)
    labeled = project.image_set(labeled_only=True)
    strategy, model = None, ""
    if method == "margin" and run_dir is not None:
        strategy, model = _run_strategy(run_dir), f"the run {Path(run_dir).name}"
        backbone = getattr(strategy, "backbone_", None) if backbone is None else backbone
    backbone = _resolve_backbone(project, backbone, weights, load)
    result = LabelFirst(method=method, backbone=backbone.name, model=model, pool_size=len(stored_pool),
                        considered=len(considered))
    if method == "typical":
        result.picks = _typical(considered, pool, labeled, backbone, budget, seed)
        return result
    if strategy is None:
        strategy = _probe(labeled, backbone, seed)
        result.model = f"a linear probe on the {len(labeled)} labeled images"
    result.picks = _margin(considered, pool, labeled, strategy, budget)
    return result


def _subsample(images: list, max_pool: int | None, seed: int) -> list:
    if max_pool is None or len(images) <= max_pool:
        return images
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), max_pool, replace=False))
    return [images[i] for i in chosen]


def _typical(stored: list, pool: ImageSet, labeled: ImageSet, backbone: Backbone, budget: int,
             seed: int) -> list[Pick]:
    extractor = get_extractor(backbone)
    pool_features = extractor.extract(pool).numpy()
    labeled_features = extractor.extract(labeled).numpy() if len(labeled) else np.zeros((0, pool_features.shape[1]))
    picks = typical_picks(pool_features, labeled_features, budget, seed=seed)
    hints = _nearest_labels(pool_features[picks.order], labeled_features, labeled.labels, pool_features)
    result = []
    for i, index in enumerate(picks.order):
        image = stored[index]
        already = (f"{picks.labeled_in_cluster[i]} of them labeled or picked before" if picks.labeled_in_cluster[i]
                   else "none of them labeled yet")
        reason = f"the most typical of a group of {picks.cluster_size[i]} similar images ({already})"
        result.append(Pick(image.id, image.source_name, image.sha256, "typical", reason, float(picks.typicality[i]),
                           hints[i]))
    return result


def _nearest_labels(chosen: np.ndarray, labeled: np.ndarray, labels: list, pool: np.ndarray) -> list[str | None]:
    """The class of the nearest labeled image to each chosen row (a hint for the label box), None without labels."""
    if not len(labeled):
        return [None] * len(chosen)
    everything = np.concatenate([labeled, pool])
    center = everything.mean(axis=0)
    nearest = _distances(normalize(chosen, center), normalize(labeled, center)).argmin(axis=1)
    return [labels[i] for i in nearest]


def _margin(stored: list, pool: ImageSet, labeled: ImageSet, strategy, budget: int) -> list[Pick]:
    classes = list(strategy.classes_)
    known = labeled.subset([i for i, label in enumerate(labeled.labels) if label in classes])
    pool_embedding = _unit(_as_numpy(strategy.embed(pool)))
    labeled_embedding = (_unit(_as_numpy(strategy.embed(known))) if len(known)
                         else np.zeros((0, pool_embedding.shape[1])))
    proba = _as_numpy(strategy.predict_proba(pool))
    counts = np.array([known.labels.count(name) for name in classes])
    picks = margin_diversity_picks(proba, pool_embedding, labeled_embedding, counts, budget)
    return [_margin_pick(stored[index], classes, proba[index], picks, i) for i, index in enumerate(picks.order)]


def probe_margin_picks(labeled_features, labels: list[str], pool_features, budget: int, *,
                       seed: int = 0) -> tuple[MarginPicks, np.ndarray, list[str]]:
    """Margin x diversity picks from a linear probe fitted on labeled features (n, d) with ``labels``; returns the
    picks, the probe's pool probabilities (m, c) and its classes. The embedding is the probe's normalized space."""
    import torch

    from .strategies import create_strategy

    probe = create_strategy("linear", seed=seed).fit_features(torch.as_tensor(labeled_features), list(labels))
    pool_features = torch.as_tensor(pool_features).float()
    with torch.no_grad():
        pool_embedding = _unit(_as_numpy(probe.head_.normalizer(pool_features)))
        labeled_embedding = _unit(_as_numpy(probe.head_.normalizer(torch.as_tensor(labeled_features).float())))
    proba = _as_numpy(probe.predict_proba(pool_features))
    counts = np.array([list(labels).count(name) for name in probe.classes_])
    picks = margin_diversity_picks(proba, pool_embedding, labeled_embedding, counts, budget)
    return picks, proba, list(probe.classes_)


def _margin_pick(image, classes: list[str], proba: np.ndarray, picks: MarginPicks, i: int) -> Pick:
    first, second = (np.argsort(-proba)[:2].tolist() + [0])[:2] if len(classes) > 1 else (0, 0)
    reason = (f"the model hesitates between {classes[first]} ({proba[first]:.0%}) and {classes[second]} "
              f"({proba[second]:.0%}); distance to the nearest labeled or picked image {picks.distance[i]:.2f}")
    return Pick(image.id, image.source_name, image.sha256, "margin", reason, float(picks.score[i]),
                classes[int(picks.predicted[i])])


def _as_numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _probe(labeled: ImageSet, backbone: Backbone, seed: int):
    from .strategies import create_strategy

    return create_strategy("linear", seed=seed).fit(labeled, backbone=backbone)


def _run_strategy(run_dir: str | Path):
    from .inspect_run import fitted_strategy

    if not Path(run_dir).is_dir():
        raise DataError(f"run folder {run_dir} does not exist. Pass the --out folder of `fsl-app train`, or a run of "
                        "the project.")
    return fitted_strategy(run_dir)


def default_backbone() -> tuple[str, str]:
    """(name, weights) when the project has no run: the offline default, or timm's tiny test model in test mode."""
    if offering_test_backbones():
        return TEST_BACKBONES[0], "random"
    return DEFAULT_BACKBONE, "auto"


def _resolve_backbone(project: Project, backbone: str | Backbone | None, weights: str,
                      load: LoadBackbone) -> Backbone:
    """The backbone asked for, else the latest run's, else :func:`default_backbone`."""
    if isinstance(backbone, Backbone):
        return backbone
    if backbone is not None:
        return load(backbone, "random" if weights == "auto" and backbone in TEST_BACKBONES else weights)
    runs = project_runs(project.path)
    spec = (runs[0]["config"].get("backbone") or {}) if runs else {}
    if spec.get("name"):
        try:
            return load(spec["name"], spec.get("weights", "auto"))
        except BackboneError:
            pass  # that run's weights are gone from this machine: any backbone gives features to pick with
    return load(*default_backbone())
