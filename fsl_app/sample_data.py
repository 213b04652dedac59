"""A small bundled example project: handwritten digits from scikit-learn's own data files, made at import time.

Ten classes (``zero`` .. ``nine``) with five labeled images each plus an unlabeled pool, so a newcomer can train,
compare and try label suggestions within a minute, offline. Ten classes of five make a problem the strategies
solve differently (three easy classes gave every strategy 100 %), so the first Compare page shows a difference.
The images are the 8 x 8 UCI digits (bundled with scikit-learn, CC BY 4.0) upscaled to 96 x 96 RGB PNGs.
"""

from __future__ import annotations

import functools
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

SAMPLE_PROJECT_NAME = "Sample - handwritten digits"
SAMPLE_CLASSES = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven",
                  8: "eight", 9: "nine"}  # digit: class name
LABELED_PER_CLASS = 5
UNLABELED_PER_CLASS = 2
IMAGE_SIZE = 96


@dataclass(frozen=True)
class SampleImage:
    name: str
    data: bytes  # PNG
    label: str | None  # None: goes to the unlabeled pool
    true_label: str


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 8, 8) uint8, targets (n,)) from scikit-learn's bundled CSV, without importing sklearn.datasets."""
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if csv is not None and csv.is_file():
        table = np.loadtxt(csv, delimiter=",")
        pixels, targets = table[:, :-1], table[:, -1].astype(int)
    else:  # pragma: no cover - scikit-learn moved its data file
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels, targets = digits.data, digits.target
    images = (pixels.reshape(-1, 8, 8) / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    return images, targets


def _png(pixels: np.ndarray) -> bytes:
    image = Image.fromarray(255 - pixels).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sample_images(labeled_per_class: int = LABELED_PER_CLASS, unlabeled_per_class: int = UNLABELED_PER_CLASS, *,
                  classes: Iterable[str] | None = None) -> list[SampleImage]:
    """The example images of ``classes`` (names from SAMPLE_CLASSES; default all ten), labeled ones first;
    deterministic."""
    wanted = set(SAMPLE_CLASSES.values() if classes is None else classes)
    unknown = wanted - set(SAMPLE_CLASSES.values())
    if unknown:
        raise ValueError(f"no sample digits called {sorted(unknown)}; pick from {list(SAMPLE_CLASSES.values())}.")
    pixels, targets = _digits()
    labeled, unlabeled = [], []
    for digit, name in SAMPLE_CLASSES.items():
        if name not in wanted:
            continue
        members = np.flatnonzero(targets == digit)[:labeled_per_class + unlabeled_per_class]
        for position, index in enumerate(members):
            keep_label = position < labeled_per_class
            image = SampleImage(f"{name}-{index:04d}.png", _png(pixels[index]), name if keep_label else None, name)
            (labeled if keep_label else unlabeled).append(image)
    return labeled + unlabeled


def load_sample_project(name: str = SAMPLE_PROJECT_NAME, home: str | Path | None = None):
    """Create (or reopen and top up) the sample project; returns the open :class:`~fsl_app.store.Project`."""
    from .store import ProjectNotFoundError, create_project, open_project

    try:
        project = open_project(name, home)
    except ProjectNotFoundError:
        project = create_project(name, home)
    images = sample_images()
    for label in dict.fromkeys(image.label for image in images):
        project.import_files([(image.name, image.data) for image in images if image.label == label], label,
                             actor="sample data")
    return project
