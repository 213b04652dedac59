"""Does an augmentation keep images in their class? Each transform of a pipeline, checked in embedding space.

For every transform of the pipeline, applied alone and always (``p=1``, seeded), :func:`check_augment` embeds
augmented copies of the labeled images with a frozen backbone and compares them with class prototypes (mean
CL2N-normalized features; each image's own class prototype leaves that image out, so an image never votes for
itself):

- ``shift``: a copy's distance to its class prototype over the class's own spread (the mean distance of the
  class's unaugmented images to their prototype). 1 = as far as a typical image of the class; the unaugmented
  images average 1 by construction.
- ``flip rate``: the share of copies whose nearest prototype differs from their original's (a rotated 6 that lands
  on the 9 prototype).
- ``margin drop``: how much class margin the copies lose against their originals (an image's margin: its distance
  to the nearest other prototype minus the distance to its own), in standard deviations of the unaugmented images'
  margins, so it is scale-free.
- ``approach``: the part of that loss that comes from nearing another class: how much nearer the nearest other
  prototype the copies are than their originals, in the same unit.
- ``error``: the share of copies nearest to another class's prototype, beside the unaugmented images' error.

A transform is flagged *harmful* when its copies lose margin (at least :data:`MARGIN_DROP_WARNING`), largely by
nearing another class (approach at least :data:`APPROACH_WARNING`), and at least :data:`FLIP_RATE_WARNING` of them
change their nearest class. Flips alone are not enough: where classes overlap in the embedding, any small change
(even brightness) flips the images near a border, both ways. Leaving the own class is not enough either: a
transform the frozen backbone is not invariant to (blur on textures) moves copies away from every class, and
training with it need not hurt. The last row is the whole pipeline at its own probabilities, as fine-tuning sees it
(two flips together are a rotation by 180 degrees). Where the backbone barely separates the classes
(:attr:`AugmentCheck.weak_embedding`), margins are noise and a harmful transform can go unflagged.

The cost is bounded: at most :data:`MAX_IMAGES_PER_CLASS` images per class and :data:`MAX_IMAGES` in all (a seeded
sample), copies per image chosen so that about :data:`COPY_BUDGET` augmented images are embedded, images shrunk to
:data:`WORK_SIDE` px before augmenting, identical copies (a flip is deterministic) embedded once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import albumentations as A
import numpy as np
from PIL import Image

from .atomic import write_json_atomic
from .augment import build_augment, load_project_augment, seed_pipeline
from .backbones import Backbone
from .dataset import ImageSet
from .features import get_extractor
from .images import load_image, thumbnail
from .intervals import wilson_interval
from .shift_check import _pick_backbone as pick_backbone  # the same backbone choice as the shift check

MIN_CLASSES = 2
MIN_IMAGES_PER_CLASS = 2  # one left out, one to make the prototype
MAX_IMAGES_PER_CLASS = 8
MAX_IMAGES = 48
COPY_BUDGET = 320  # augmented images embedded per check, about
MAX_COPIES_PER_IMAGE = 4
WORK_SIDE = 256  # the backbone sees 224 px: augmenting a 4000 px photo would only cost time
MARGIN_DROP_WARNING = 0.5
APPROACH_WARNING = 0.3
FLIP_RATE_WARNING = 0.10
WEAK_EMBEDDING_ERROR = 0.30  # unaugmented images nearer another class's prototype, from which the check is blunt
WHOLE_PIPELINE = "whole pipeline"
NO_TRANSFORM = "The pipeline has no transform, so there is nothing to check: pick a preset or add transforms."
CHECK_FILE = "augment_check.json"  # in the project folder, beside augment.json

Embed = Callable[[Sequence[Image.Image]], np.ndarray]


@dataclass(frozen=True)
class TransformCheck:
    """One row of the check: a transform applied alone (or the whole pipeline) and what its copies did."""

    name: str
    probability: float  # the transform's p in the pipeline (the check applies it with p=1)
    n_copies: int  # distinct augmented images embedded
    shift: float  # mean distance to the class prototype over the class's spread (unaugmented: 1)
    margin_drop: float  # lost class margin, in standard deviations of the unaugmented images' margins
    approach: float  # how much nearer another class than their originals, in the same unit
    flip_rate: float  # share of copies whose nearest prototype differs from their original's
    flip_low: float  # 95 % Wilson lower bound of flip_rate
    error: float  # share of copies nearest to another class's prototype
    harmful: bool
    verdict: str


@dataclass
class AugmentCheck:
    """The outcome of :func:`check_augment`; ``rows`` is empty when the check does not apply (``message`` says
    what to add)."""

    message: str
    n_images: int = 0  # labeled images used (after the caps)
    n_classes: int = 0
    baseline_error: float = 0.0  # unaugmented images nearest to another class's (leave-one-out) prototype
    backbone: str = ""
    backbone_origin: str = ""
    seconds: float = 0.0
    rows: list[TransformCheck] = field(default_factory=list)

    @property
    def applicable(self) -> bool:
        return bool(self.rows)

    @property
    def weak_embedding(self) -> bool:
        """The backbone barely separates these classes: a harmful transform can go unnoticed."""
        return self.applicable and self.baseline_error >= WEAK_EMBEDDING_ERROR

    @property
    def harmful(self) -> list[TransformCheck]:
        return [row for row in self.rows if row.harmful]

    def warning(self) -> str | None:
        """One sentence for the Augment and Train pages, or None when no transform is flagged."""
        if not self.harmful:
            return None
        names = ", ".join(f"{row.name} ({row.flip_rate:.0%} of copies change class)" for row in self.harmful)
        return (f"Harmful for these images: {names}. Augmented copies land nearer another class than their own, "
                "so fine-tuning would learn from wrongly labeled examples: lower or remove these transforms.")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["applicable"], data["harmful"] = self.applicable, [row.name for row in self.harmful]
        data["weak_embedding"] = self.weak_embedding
        return data


def pipeline_digest(pipeline: dict | str | None) -> str:
    return hashlib.sha256(json.dumps(pipeline, sort_keys=True).encode()).hexdigest()


def save_check(project_dir: str | Path, pipeline: dict | str | None, check: AugmentCheck) -> None:
    """Remember the outcome for this pipeline in the project folder (the Train page reads it back)."""
    if check.applicable:
        write_json_atomic(Path(project_dir) / CHECK_FILE, {"pipeline": pipeline_digest(pipeline),
                                                           "warning": check.warning()})


def saved_warning(project_dir: str | Path, pipeline: dict | str | None) -> str | None:
    """The warning saved by the last check of this very pipeline, else None (never checked, changed since)."""
    try:
        saved = json.loads((Path(project_dir) / CHECK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("pipeline") != pipeline_digest(pipeline):
        return None
    return saved.get("warning") or None


def check_problem(class_counts: Mapping[str, int]) -> str | None:
    """Why these labeled counts per class cannot be checked (a sentence that names the fix), or None."""
    usable = [name for name, count in class_counts.items() if count >= MIN_IMAGES_PER_CLASS]
    if len(usable) >= MIN_CLASSES:
        return None
    labeled = sum(count > 0 for count in class_counts.values())
    return (f"Checking augmentations needs at least {MIN_CLASSES} classes with at least {MIN_IMAGES_PER_CLASS} "
            f"labeled images each (found {labeled} class{'es' if labeled != 1 else ''} with images, "
            f"{len(usable)} with {MIN_IMAGES_PER_CLASS} or more). Label more images, then check again.")


def single_transforms(pipeline: dict | str | None) -> list[tuple[str, float, A.Compose]]:
    """(name, p, pipeline of that transform alone with p=1) per transform, then the whole pipeline as it is."""
    whole = build_augment(pipeline)
    singles = []
    for transform in whole.transforms:
        alone = copy.deepcopy(transform)
        alone.p = 1.0
        singles.append((type(transform).__name__, float(transform.p), A.Compose([alone])))
    if len(singles) != 1:  # one transform: its row says it all
        singles.append((WHOLE_PIPELINE, 1.0, whole))
    return singles


def sample_images(images: ImageSet, seed: int = 0) -> ImageSet:
    """At most MAX_IMAGES_PER_CLASS per class and MAX_IMAGES in all, drawn with ``seed``, classes kept balanced."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(images.labels)
    classes = sorted(set(images.labels))
    per_class = max(MIN_IMAGES_PER_CLASS, min(MAX_IMAGES_PER_CLASS, MAX_IMAGES // max(1, len(classes))))
    chosen = []
    for name in classes:
        members = np.flatnonzero(labels == name)
        chosen += sorted(rng.permutation(members)[:per_class].tolist())
    return images.subset(sorted(chosen))


def check_augment(images: ImageSet, pipeline: dict | str | None, backbone: Backbone, *, seed: int = 0,
                  copy_budget: int = COPY_BUDGET) -> AugmentCheck:
    """Check every transform of ``pipeline`` on the labeled ``images`` with the frozen ``backbone``."""
    start = time.perf_counter()
    images = images.labeled()
    counts = {name: images.labels.count(name) for name in set(images.labels)}
    problem = check_problem(counts)
    if problem:
        return AugmentCheck(message=problem)
    if not build_augment(pipeline).transforms:
        return AugmentCheck(message=NO_TRANSFORM)
    images = images.subset([i for i, label in enumerate(images.labels) if counts[label] >= MIN_IMAGES_PER_CLASS])
    images = sample_images(images, seed)
    extractor = get_extractor(backbone)
    check = measure(images, pipeline, lambda batch: extractor.extract_pil(batch).numpy(), seed=seed,
                    copy_budget=copy_budget)
    check.backbone, check.seconds = backbone.name, time.perf_counter() - start
    return check


def check_project_augment(project, pipeline: dict | str | None = None, *, backbone_name: str | None = None,
                          weights: str = "auto", seed: int = 0) -> AugmentCheck:
    """:func:`check_augment` on a project's labeled images; ``pipeline`` None: the project's saved pipeline.

    The backbone is the one asked for, else the project's latest run's, else the default (as the shift check).
    """
    problem = check_problem(project.class_counts())
    if problem:
        return AugmentCheck(message=problem)
    if pipeline is None:
        pipeline = load_project_augment(project.path).resolved_pipeline()
    backbone, origin = pick_backbone(project, backbone_name, weights)
    check = check_augment(project.image_set(labeled_only=True), pipeline, backbone, seed=seed)
    check.backbone_origin = origin
    return check


def measure(images: ImageSet, pipeline: dict | str | None, embed: Embed, *, seed: int = 0,
            copy_budget: int = COPY_BUDGET) -> AugmentCheck:
    """The check's rows for ``images`` (already sampled) with any ``embed``: PIL images -> features (n, d)."""
    sources = [thumbnail(load_image(record.path), WORK_SIDE) for record in images.records]
    labels = np.asarray([sorted(set(images.labels)).index(label) for label in images.labels])
    original = embed(sources)
    space = PrototypeSpace(original, labels)
    transforms = single_transforms(pipeline)
    copies = int(np.clip(copy_budget // max(1, len(sources) * len(transforms)), 1, MAX_COPIES_PER_IMAGE))
    baseline_error = float(np.mean(space.nearest(space.features, np.arange(len(labels))) != labels))
    rows = []
    for index, (name, probability, alone) in enumerate(transforms):
        augmented, owners = augmented_copies(alone, sources, copies, seed=seed + index)
        rows.append(space.row(name, probability, embed(augmented), owners))
    harmful = [row.name for row in rows if row.harmful]
    message = f"harmful: {', '.join(harmful)}" if harmful else "no transform moves copies into another class"
    return AugmentCheck(message=message, n_images=len(labels),
                        n_classes=int(labels.max()) + 1, baseline_error=baseline_error, rows=rows)


def augmented_copies(pipeline: A.Compose, sources: Sequence[Image.Image], copies: int, *,
                     seed: int) -> tuple[list[Image.Image], np.ndarray]:
    """``copies`` seeded augmentations of each source, identical ones kept once; returns (images, source index)."""
    seed_pipeline(pipeline, seed)
    images, owners, seen = [], [], set()
    for owner, source in enumerate(sources):
        pixels = np.asarray(source.convert("RGB"))
        for _ in range(copies):
            out = np.ascontiguousarray(pipeline(image=pixels)["image"])
            key = (owner, out.shape, hashlib.sha256(out.tobytes()).hexdigest())
            if key not in seen:
                seen.add(key)
                images.append(Image.fromarray(out))
                owners.append(owner)
    return images, np.asarray(owners)


class PrototypeSpace:
    """CL2N features of the unaugmented images, class prototypes and spreads, with leave-one-out own prototypes.

    ``features`` (n, d), ``labels`` (n,) ints 0..c-1, every class with at least 2 images.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray):
        self.center = features.mean(axis=0)
        self.labels = labels
        self.features = self.normalize(features)
        self.classes = int(labels.max()) + 1
        self.counts = np.bincount(labels, minlength=self.classes).astype(float)
        self.sums = np.stack([self.features[labels == c].sum(axis=0) for c in range(self.classes)])
        own = np.linalg.norm(self.features - self.own_prototypes(np.arange(len(labels))), axis=1)
        self.spread = np.maximum(np.bincount(labels, weights=own, minlength=self.classes) / self.counts, 1e-12)
        base = self.distances(self.features, np.arange(len(labels)))
        self.base_other = self.nearest_other(base, labels)
        self.base_margin = self.base_other - base[np.arange(len(labels)), labels]
        self.margin_spread = max(float(np.std(self.base_margin)), 1e-12)

    def normalize(self, features: np.ndarray) -> np.ndarray:
        centered = features - self.center
        return centered / np.maximum(np.linalg.norm(centered, axis=1, keepdims=True), 1e-12)

    def own_prototypes(self, owners: np.ndarray) -> np.ndarray:
        """(m, d): each owner's class prototype without the owner."""
        labels = self.labels[owners]
        return (self.sums[labels] - self.features[owners]) / (self.counts[labels] - 1)[:, None]

    def distances(self, features: np.ndarray, owners: np.ndarray) -> np.ndarray:
        """(m, c) distances of normalized ``features`` to every prototype, the owner's own class left one out."""
        prototypes = self.sums / self.counts[:, None]
        distances = np.linalg.norm(features[:, None, :] - prototypes[None], axis=2)
        own = np.linalg.norm(features - self.own_prototypes(owners), axis=1)
        distances[np.arange(len(owners)), self.labels[owners]] = own
        return distances

    @staticmethod
    def nearest_other(distances: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(m,) distance to the nearest prototype of another class than ``labels``."""
        others = distances.copy()
        others[np.arange(len(labels)), labels] = np.inf
        return others.min(axis=1)

    def nearest(self, features: np.ndarray, owners: np.ndarray) -> np.ndarray:
        """(m,) index of the nearest prototype of each normalized feature row."""
        return self.distances(features, owners).argmin(axis=1)

    def row(self, name: str, probability: float, raw: np.ndarray, owners: np.ndarray) -> TransformCheck:
        """The TransformCheck of copies with features ``raw`` (m, d), copy i made from original ``owners[i]``."""
        features = self.normalize(raw)
        distances = self.distances(features, owners)
        labels = self.labels[owners]
        shift = float(np.mean(distances[np.arange(len(owners)), labels] / self.spread[labels]))
        nearest = distances.argmin(axis=1)
        flips = int(np.sum(nearest != self.nearest(self.features[owners], owners)))
        error = float(np.mean(nearest != labels))
        other = self.nearest_other(distances, labels)
        own = distances[np.arange(len(owners)), labels]
        margin_drop = float(np.mean(self.base_margin[owners] - (other - own)) / self.margin_spread)
        approach = float(np.mean(self.base_other[owners] - other) / self.margin_spread)
        flip_low = wilson_interval(flips, len(owners))[0]
        flip_rate = flips / len(owners)
        harmful = margin_drop >= MARGIN_DROP_WARNING and approach >= APPROACH_WARNING and \
            flip_rate >= FLIP_RATE_WARNING
        return TransformCheck(name, probability, len(owners), shift, margin_drop, approach, flip_rate, flip_low,
                              error, harmful, verdict(harmful, margin_drop))


def verdict(harmful: bool, margin_drop: float) -> str:
    if harmful:
        return "harmful: copies move into other classes"
    if margin_drop >= MARGIN_DROP_WARNING:
        return "watch: copies leave their class, toward no other one"
    return "keeps the class"
