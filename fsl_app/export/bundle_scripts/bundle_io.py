"""Shared by predict.py and predict_onnx.py inside an fsl_app bundle: model files checked against config.json, and
images loaded the way fsl_app loads them. Needs numpy and pillow only.
"""
import hashlib
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

CHECKSUMMED_FILES = ("model.safetensors", "model.onnx")  # the sha256 of each is in config.json["files"]


class BundleError(Exception):
    """The bundle is incomplete or was modified; the message says how to get a good one."""


def read_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def read_checked(folder: Path, name: str) -> bytes:
    """The bytes of ``folder / name`` (a model file), only if their sha256 is the one config.json records."""
    files = read_config(folder).get("files")
    missing = [n for n in CHECKSUMMED_FILES if not (isinstance(files, dict) and isinstance(files.get(n), str))]
    if missing:
        raise BundleError(f"{folder}: config.json records no checksums for {' and '.join(missing)}, so its weights "
                          "cannot be trusted (the bundle was edited). Re-export it with `fsl-app export RUN_DIR "
                          "--format bundle`.")
    data = (folder / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != files[name]:
        raise BundleError(f"{folder}: {name} was modified after export (its sha256 differs from the one in "
                          "config.json). Re-export the bundle with `fsl-app export RUN_DIR --format bundle`.")
    return data


def prediction(path, probabilities, classes: list, top_k: int, threshold, ood_score=None, ood_limit=None) -> dict:
    """One image's answer: the top_k classes, and "unknown" when the best probability is below ``threshold`` or the
    out-of-distribution score (autoencoder, when the model has one) is above ``ood_limit``."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    top = [{"label": classes[i], "probability": float(probabilities[i])}
           for i in np.argsort(-probabilities, kind="stable")[:top_k]]
    rejected = threshold is not None and top[0]["probability"] < threshold
    rejected = rejected or (ood_limit is not None and ood_score is not None and float(ood_score) > ood_limit)
    answer = {"image": str(path), "label": "unknown" if rejected else top[0]["label"],
              "probability": top[0]["probability"], "top_k": top}
    return answer if ood_score is None else {**answer, "ood_score": float(ood_score)}


def draft_size(preprocessing: dict) -> tuple:
    """(width, height) a JPEG keeps when decoded at reduced scale: twice the resize before the crop, as in fsl_app."""
    _, height, width = preprocessing["input_size"]
    crop_pct = preprocessing.get("crop_pct") or 0.875
    side = 2 * max(math.floor(height / crop_pct), math.floor(width / crop_pct))
    return side, side


def load_rgb(path, draft=None) -> Image.Image:
    """An RGB image as fsl_app sees it: EXIF orientation applied, 16/32-bit mapped to 8 bits, alpha over white.

    ``draft`` (:func:`draft_size`): a JPEG decodes at 1/2, 1/4 or 1/8 scale down to that size, then any image larger
    than it is resized to it (:func:`reduce_to`), as training read it.
    """
    image = Image.open(path)
    if draft is not None and image.format == "JPEG":
        try:
            swapped = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # the scale applies to the stored pixels
        except Exception:  # a malformed EXIF block: the stored orientation is kept below too
            swapped = False
        image.draft(image.mode, tuple(reversed(draft)) if swapped else tuple(draft))
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block: keep the stored orientation
        image.load()
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):  # 16/32-bit: map the full range, as fsl_app does
        array = np.asarray(image, dtype=np.float64)
        low, high = _value_range(image.mode, array)
        array = np.clip((array - low) / ((high - low) or 1.0) * 255 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:  # alpha over white, as fsl_app does
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    image = image.convert("RGB")
    return image if draft is None else reduce_to(image, min(draft))


def reduce_to(image: Image.Image, side: int) -> Image.Image:
    """Shorter side down to ``side`` (bilinear), the longer in proportion: fsl_app.images.reduce_to, as training."""
    short, long = sorted(image.size)
    if short <= side:
        return image
    other = int(round(long * side / short))
    return image.resize((side, other) if image.width <= image.height else (other, side), Image.BILINEAR)


def _value_range(mode: str, array: np.ndarray) -> tuple[float, float]:
    """The values that map to black and white: the 16-bit range for 16-bit data (also when stored as 32-bit)."""
    low, high = float(array.min()), float(array.max())
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and 255 < high <= 65535):
        return 0.0, 65535.0
    return low, high
