"""Train-time augmentation: presets, a custom pipeline from sliders, the project's saved pipeline, seeded previews.

A pipeline is stored as ``A.to_dict(compose)`` (JSON-safe) in the project (``augment.json``) and in each run's
config, and rebuilt with :func:`build_augment`. It works on uint8 HWC arrays and is applied before the backbone's
eval preprocessing.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # imported where a pipeline is built: it takes seconds
    import albumentations as A

from .atomic import write_json_atomic
from .images import load_image, thumbnail

PRESETS = ("none", "light", "medium", "strong")
CUSTOM = "custom"
AUGMENT_FILE = "augment.json"
CROP_SIZE = (224, 224)


def preset(name: str = "light") -> A.Compose:
    """Named pipelines, from none to strong; ``light`` (no flips) is the fine-tuning default."""
    import albumentations as A  # about 1-3 s: imported when a pipeline is built, not with the module

    if name == "none":
        return A.Compose([])
    if name == "light":  # no flip: a mirrored digit, letter or asymmetric part is another class
        return A.Compose([A.Affine(scale=(0.9, 1.1), rotate=(-10, 10), translate_percent=(-0.05, 0.05), p=0.7),
                          A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1, hue=0.0, p=0.5)])
    if name == "medium":
        return A.Compose([A.HorizontalFlip(p=0.5),
                          A.Affine(scale=(0.8, 1.2), rotate=(-20, 20), translate_percent=(-0.1, 0.1), p=0.8),
                          A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.2, hue=0.02, p=0.7),
                          A.GaussianBlur(blur_limit=(3, 5), p=0.2)])
    if name == "strong":
        return A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.2),
                          A.Affine(scale=(0.7, 1.3), rotate=(-30, 30), translate_percent=(-0.15, 0.15), p=0.9),
                          A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.3, hue=0.05, p=0.8),
                          A.GaussianBlur(blur_limit=(3, 7), p=0.3), A.GaussNoise(p=0.3),
                          A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15),
                                          hole_width_range=(0.05, 0.15), p=0.3)])
    raise ValueError(f"unknown augmentation preset {name!r}; choose one of {PRESETS}.")


def to_dict(pipeline: A.Compose) -> dict:
    import albumentations as A

    return A.to_dict(pipeline)


def build_augment(spec: dict | str | None) -> A.Compose:
    """A pipeline from a preset name, an albumentations dict, or None (the ``light`` preset)."""
    import albumentations as A

    if spec is None:
        return preset("light")
    if isinstance(spec, str):
        return preset(spec)
    try:
        return A.from_dict(spec)
    except Exception as error:  # albumentations raises several types for a malformed dict
        raise ValueError(f"the augmentation pipeline cannot be rebuilt ({error}). Pick a preset instead.") from error


def seed_pipeline(pipeline: A.Compose, seed: int) -> None:
    """Make the pipeline's random draws reproducible."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if hasattr(pipeline, "set_random_seed"):
        pipeline.set_random_seed(seed)


def apply(pipeline: A.Compose, image: Image.Image) -> Image.Image:
    return Image.fromarray(pipeline(image=np.asarray(image.convert("RGB")))["image"])


def preview(pipeline: A.Compose, images: Sequence[Image.Image], copies: int = 4,
            seed: int = 0) -> list[list[Image.Image]]:
    """``copies`` augmented versions of each image, identical for the same seed: rows of the preview grid."""
    seed_pipeline(pipeline, seed)
    return [[apply(pipeline, image) for _ in range(copies)] for image in images]


def preview_paths(paths: Sequence[Path], pipeline: dict, *, copies: int = 4, seed: int = 0,
                  max_side: int = 256, shas: Sequence[str] | None = None) -> list[list[Image.Image]]:
    """Rows of ``copies`` augmented thumbnails per image file; the same seed gives the same grid. With the files'
    ``shas`` (stored images), large photos are read from their working copies (:mod:`fsl_app.working_copies`)."""
    if shas is None:
        sources = [thumbnail(load_image(path, draft=(2 * max_side, 2 * max_side)), max_side) for path in paths]
    else:
        from .working_copies import load_working

        sources = [thumbnail(load_working(path, sha, 2 * max_side), max_side) for path, sha in zip(paths, shas)]
    return preview(build_augment(pipeline), sources, copies=copies, seed=seed)


# --- a custom pipeline from sliders ---------------------------------------------------------------------------------

@dataclass
class AugmentSettings:
    """The sliders of a custom pipeline; a probability of 0 (or a neutral value) leaves a transform out."""

    horizontal_flip: float = 0.5
    vertical_flip: float = 0.0
    rotate_degrees: int = 15
    crop_min_scale: float = 1.0  # random resized crop keeps at least this share of the image; 1.0: no crop
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.1
    hue: float = 0.0
    color_jitter: float = 0.5  # probability
    blur: float = 0.0
    noise: float = 0.0
    coarse_dropout: float = 0.0

    @classmethod
    def from_dict(cls, data: dict | None) -> "AugmentSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


def custom_pipeline(settings: AugmentSettings) -> A.Compose:
    """An albumentations Compose from the sliders (transforms with probability 0 are left out)."""
    import albumentations as A

    s = settings
    transforms = []
    if s.crop_min_scale < 1.0:
        transforms.append(A.RandomResizedCrop(size=CROP_SIZE, scale=(s.crop_min_scale, 1.0), p=1.0))
    if s.horizontal_flip > 0:
        transforms.append(A.HorizontalFlip(p=s.horizontal_flip))
    if s.vertical_flip > 0:
        transforms.append(A.VerticalFlip(p=s.vertical_flip))
    if s.rotate_degrees > 0:
        transforms.append(A.Rotate(limit=s.rotate_degrees, p=0.7))
    if s.color_jitter > 0 and max(s.brightness, s.contrast, s.saturation, s.hue) > 0:
        transforms.append(A.ColorJitter(brightness=s.brightness, contrast=s.contrast, saturation=s.saturation,
                                        hue=s.hue, p=s.color_jitter))
    if s.blur > 0:
        transforms.append(A.GaussianBlur(blur_limit=(3, 7), p=s.blur))
    if s.noise > 0:
        transforms.append(A.GaussNoise(std_range=(0.05, 0.15), p=s.noise))
    if s.coarse_dropout > 0:
        transforms.append(A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.2),
                                          hole_width_range=(0.05, 0.2), p=s.coarse_dropout))
    return A.Compose(transforms)


def pipeline_dict(choice: str, settings: AugmentSettings | None = None) -> dict:
    """albumentations' serialized dict for a preset name or ``custom`` (with its settings), as plain JSON data."""
    compose = custom_pipeline(settings or AugmentSettings()) if choice == CUSTOM else preset(choice)
    return json.loads(json.dumps(to_dict(compose)))


def describe_pipeline(pipeline: dict) -> list[str]:
    """One line per transform: 'HorizontalFlip (p=0.5)'."""
    lines = []
    for item in pipeline.get("transform", {}).get("transforms", []):
        name = item.get("__class_fullname__", "?").rsplit(".", 1)[-1]
        lines.append(f"{name} (p={item.get('p', 1.0):g})")
    return lines


# --- the pipeline saved with a project ------------------------------------------------------------------------------

@dataclass
class ProjectAugment:
    """A project's choice: a preset name or ``custom`` with its sliders, and the pipeline dict it resolves to."""

    choice: str = "light"
    settings: AugmentSettings = field(default_factory=AugmentSettings)
    pipeline: dict | None = None

    def resolved_pipeline(self) -> dict:
        return self.pipeline if self.pipeline is not None else pipeline_dict(self.choice, self.settings)


def load_project_augment(project_dir: str | Path) -> ProjectAugment:
    """The pipeline saved in a project folder (``augment.json``), else the ``light`` preset."""
    path = Path(project_dir) / AUGMENT_FILE
    if not path.is_file():
        return ProjectAugment()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ProjectAugment(data.get("choice", "light"), AugmentSettings.from_dict(data.get("settings")),
                              data.get("pipeline"))
    except (OSError, ValueError, TypeError):
        return ProjectAugment()


def save_project_augment(project_dir: str | Path, choice: str, settings: AugmentSettings) -> dict:
    """Save the pipeline in a project folder; returns the albumentations dict fine-tuning will use."""
    pipeline = pipeline_dict(choice, settings)
    build_augment(pipeline)  # refuse to save what cannot be rebuilt
    write_json_atomic(Path(project_dir) / AUGMENT_FILE,
                      {"choice": choice, "settings": asdict(settings), "pipeline": pipeline})
    return pipeline
