"""Train-time augmentation: albumentations presets, (de)serialization with albumentations' own dict format, preview.

A pipeline is stored as ``A.to_dict(compose)`` (JSON-safe) in the project and in each run's config, and rebuilt
with :func:`build_augment`. It works on uint8 HWC arrays and is applied before the backbone's eval preprocessing.
"""

from __future__ import annotations

import random
from typing import Sequence

import albumentations as A
import numpy as np
from PIL import Image

PRESETS = ("none", "light", "medium", "strong")


def preset(name: str = "light") -> A.Compose:
    """Named pipelines, from none to strong; ``light`` (no flips) is the fine-tuning default."""
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
    return A.to_dict(pipeline)


def build_augment(spec: dict | str | None) -> A.Compose:
    """A pipeline from a preset name, an albumentations dict, or None (the ``light`` preset)."""
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


def preview(pipeline: A.Compose, images: Sequence[Image.Image], copies: int = 4, seed: int = 0) -> list[list[Image.Image]]:
    """``copies`` augmented versions of each image, identical for the same seed: rows of the preview grid."""
    seed_pipeline(pipeline, seed)
    return [[apply(pipeline, image) for _ in range(copies)] for image in images]
