"""Labeled image sets: the one in-memory type every strategy, evaluation protocol and front end passes around.

An :class:`ImageSet` is a list of image files with their sha256 and label. It comes from an ImageFolder tree
(:meth:`ImageSet.from_folder`) or from a project in the store; strategies read pixels through :meth:`ImageSet.load`.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from .images import ImageError, is_image_name, load_image, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    sha256: str
    label: str | None = None  # None: unlabeled


class DataError(ValueError):
    """The data cannot be used for the requested operation; the message says what to add or change."""


class ImageSet:
    """An ordered collection of image files with optional labels."""

    def __init__(self, records: Iterable[ImageRecord]):
        self.records: list[ImageRecord] = list(records)

    @classmethod
    def from_folder(cls, root: str | Path, *, skipped: list[str] | None = None) -> "ImageSet":
        """Read the torchvision ImageFolder layout: one sub-folder per class; loose files are unlabeled.

        Files that are not images are skipped and listed in ``skipped`` (name: reason) when given.
        """
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root} is not a folder. Pass a folder with one sub-folder of images per class.")
        records = []
        for path in sorted(walk_files(root)):
            if not path.is_file():
                continue
            relative = path.relative_to(root)
            label = relative.parts[0] if len(relative.parts) > 1 else None
            if not is_image_name(path.name):
                if skipped is not None:
                    skipped.append(f"{relative}: not an image extension")
                continue
            records.append(ImageRecord(path=path, sha256=sha256_file(path), label=label))
        if not records:
            raise DataError(f"{root} holds no images. Put images in one sub-folder per class (ImageFolder layout).")
        return cls(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> ImageRecord:
        return self.records[index]

    @property
    def labels(self) -> list[str | None]:
        return [record.label for record in self.records]

    @property
    def classes(self) -> list[str]:
        return sorted({record.label for record in self.records if record.label is not None})

    @property
    def shas(self) -> list[str]:
        return [record.sha256 for record in self.records]

    def class_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.label for r in self.records if r.label is not None).items()))

    def labeled(self) -> "ImageSet":
        return ImageSet(r for r in self.records if r.label is not None)

    def unlabeled(self) -> "ImageSet":
        return ImageSet(r for r in self.records if r.label is None)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ImageSet":
        return ImageSet(self.records[int(i)] for i in indices)

    def label_indices(self, classes: Sequence[str] | None = None) -> np.ndarray:
        """Labels as integer indices into ``classes`` (default: this set's sorted classes), shape (n,)."""
        classes = list(classes if classes is not None else self.classes)
        lookup = {name: index for index, name in enumerate(classes)}
        try:
            return np.array([lookup[r.label] for r in self.records], dtype=np.int64)
        except KeyError as error:
            raise DataError(f"label {error.args[0]!r} is not one of the classes {classes}.") from None

    def load(self, index: int, *, side: int | None = None) -> Image.Image:
        """Image ``index`` as upright RGB: every pixel, or with ``side`` as the models read it
        (:func:`fsl_app.images.decode_for_model`, from its working copy when it has one)."""
        record = self.records[index]
        if side is None:
            return load_image(record.path)
        from .working_copies import load_working

        return load_working(record.path, record.sha256, side)

    def check_trainable(self, *, min_per_class: int = 1) -> None:
        """Raise :class:`DataError` unless there are two classes with ``min_per_class`` images each."""
        counts = self.class_counts()
        if len(counts) < 2:
            raise DataError(f"training needs at least 2 classes, found {len(counts)} ({list(counts)}). "
                            "Add images for another class.")
        small = [name for name, count in counts.items() if count < min_per_class]
        if small:
            raise DataError(f"classes {small} have fewer than {min_per_class} images. "
                            f"Add images to them or remove them.")


def training_warnings(images: ImageSet) -> list[str]:
    """Problems with the labeled images that do not stop training but make its evaluation say less; the fronts
    show them before training starts."""
    return class_count_warnings(images.labeled().class_counts())


def class_count_warnings(class_counts: dict[str, int]) -> list[str]:
    """:func:`training_warnings` from the number of labeled images per class."""
    singles = [name for name, count in class_counts.items() if count == 1]
    if not singles:
        return []
    return [f"class(es) {', '.join(map(repr, singles))} have a single image: it has to stay in training, so they "
            "will never be tested and the evaluation reports them as untested. Add a second image to each."]


SYSTEM_FILE_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})  # lower case
OnSkip = Callable[[Path, str], None] | None


def walk_files(root: str | Path, *, on_skip: OnSkip = None,
               on_error: Callable[[OSError], None] | None = None) -> Iterator[Path]:
    """Every file under ``root`` in a stable order, skipping hidden and system files and folders (``.git``,
    ``__MACOSX``, ``Thumbs.db``). Symlinked folders are followed, as torchvision's ImageFolder does, but no folder
    is visited twice (symlink loops). ``on_skip(path, reason)`` hears of every entry left out, ``on_error`` of
    every folder that cannot be listed."""
    visited: set[str] = set()
    for folder, subfolders, files in os.walk(root, followlinks=True, onerror=on_error):
        real = os.path.realpath(folder)
        if real in visited:
            subfolders[:] = []
            if on_skip:
                on_skip(Path(folder), "links back to a folder already imported (a symbolic link loop or a second "
                                      "link to it); its images are imported once.")
            continue
        visited.add(real)
        for name in sorted(subfolders):
            if on_skip and is_hidden_or_system(name):
                on_skip(Path(folder) / name, skip_reason(name, folder=True))
        subfolders[:] = sorted(name for name in subfolders if not is_hidden_or_system(name))
        for name in sorted(files):
            if not is_hidden_or_system(name):
                yield Path(folder) / name
            elif on_skip:
                on_skip(Path(folder) / name, skip_reason(name, folder=False))


def is_hidden_or_system(name: str) -> bool:
    """A dot file or folder, or an operating system's by-product (never an image of the data set)."""
    return name.startswith(".") or name.lower() in SYSTEM_FILE_NAMES


def skip_reason(name: str, *, folder: bool) -> str:
    """Why a hidden or system entry is left out, and how to include it."""
    kind = "folder" if folder else "file"
    if name.startswith("."):
        what = "its images were not imported" if folder else "not imported"
        return (f"hidden {kind} (the name starts with a dot): {what}. Rename it without the leading dot to "
                "import it.")
    return f"system {kind} ({name}) made by the operating system, not an image: not imported."


def drop_unreadable(images: ImageSet) -> tuple[ImageSet, list[str]]:
    """Return the readable images and 'path: reason' for each one that failed to decode."""
    kept, problems = [], []
    for record in images.records:
        try:
            load_image(record.path)
            kept.append(record)
        except ImageError as error:
            problems.append(str(error))
    return ImageSet(kept), problems
