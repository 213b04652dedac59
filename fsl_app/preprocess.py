"""timm's evaluation preprocessing with numpy and Pillow only, and how small a JPEG may be decoded for it.

:func:`eval_geometry` reproduces the resize + center crop of ``timm.data.create_transform(**data_config,
is_training=False)`` for its ``center`` and ``squash`` crop modes (the same Pillow calls with the same sizes, so the
pixels are identical; tests/test_preprocess.py checks it against timm), and :func:`normalize_batch` its
``ToTensor`` + ``Normalize`` in float32. Prediction from an ``.onnx`` or a bundle uses them without importing torch.

:func:`working_side` is the size a model reads an image at before its own resize: twice that resize. JPEGs are
decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (Pillow's ``Image.draft``, :func:`draft_size`) down to that
size, and anything larger is then resized to it (:func:`fsl_app.images.decode_for_model`); the exact resize of
the eval transform follows. Training, evaluation and every export read images through the same rule, so an
exported model sees what training saw; :mod:`fsl_app.working_copies` keeps the result of the rule for large
photos so that it is computed once.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from PIL import Image

DRAFT_FACTOR = 2  # decode at least this many times the resize target (per side) before the exact resize
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
            "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}


def scale_size(data_config: dict) -> tuple[int, int]:
    """(height, width) the eval transform resizes to before cropping: the input size divided by ``crop_pct``."""
    _, height, width = data_config["input_size"]
    crop_pct = data_config.get("crop_pct") or 0.875
    return math.floor(height / crop_pct), math.floor(width / crop_pct)


def working_side(data_config: dict) -> int:
    """The shorter side of the image a model of this preprocessing reads (:func:`fsl_app.images.decode_for_model`):
    twice the resize before the crop."""
    height, width = scale_size(data_config)
    return DRAFT_FACTOR * max(height, width)


def draft_size(data_config: dict) -> tuple[int, int]:
    """(width, height) a JPEG must at least keep when decoded at reduced scale for this preprocessing."""
    side = working_side(data_config)
    return side, side


def eval_geometry(data_config: dict) -> Callable[[Image.Image], Image.Image] | None:
    """The resize + center crop of timm's eval transform as a PIL -> PIL function, or None for another crop mode."""
    _, height, width = data_config["input_size"]
    resample = RESAMPLE.get(str(data_config.get("interpolation", "bilinear")))
    mode = data_config.get("crop_mode") or "center"
    scale_h, scale_w = scale_size(data_config)
    if resample is None or mode not in ("center", "squash") or (mode == "center" and scale_h != scale_w):
        return None

    def geometry(image: Image.Image) -> Image.Image:
        if mode == "squash":
            size = (scale_w, scale_h)
        else:  # shorter side to the scale size, the longer one in proportion (torchvision's Resize(int))
            short, long = sorted(image.size)
            other = int(scale_h * long / short)
            size = (scale_h, other) if image.width <= image.height else (other, scale_h)
        if image.size != size:
            image = image.resize(size, resample)
        return center_crop(image, height, width)

    return geometry


def center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """torchvision's CenterCrop on a PIL image (padded with black where the image is smaller)."""
    if image.width < width or image.height < height:
        padded = Image.new(image.mode, (max(width, image.width), max(height, image.height)))
        padded.paste(image, ((padded.width - image.width) // 2, (padded.height - image.height) // 2))
        image = padded
    top, left = int(round((image.height - height) / 2.0)), int(round((image.width - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def normalize_batch(pixels: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 images (H, W, 3) -> float32 batch (n, 3, H, W): ``/ 255`` then ``(x - mean) / std``, in float32."""
    stacked = np.stack(pixels)
    batch = np.empty((stacked.shape[0], stacked.shape[3], stacked.shape[1], stacked.shape[2]), dtype=np.float32)
    np.copyto(batch, stacked.transpose(0, 3, 1, 2))
    batch /= np.float32(255)
    batch -= np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    batch /= np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return batch
