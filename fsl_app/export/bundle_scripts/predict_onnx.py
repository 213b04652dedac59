"""Classify images with model.onnx, without torch or fsl_app: python predict_onnx.py IMAGE...

Needs onnxruntime, numpy and pillow. Class names, preprocessing and threshold come from the model's metadata; a
second output ``ood_score`` (the autoencoder's) is reported and, with ``ood_limit`` set, rejects above it.
Prints a JSON list, one object per image, like `fsl-app predict --json`. Refuses to run when model.onnx does not
match the sha256 that config.json records.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bundle_io.py ships beside this script
from bundle_io import BundleError, draft_size, load_rgb, prediction, read_checked  # noqa: E402

RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


def open_model(folder):
    """The ONNX Runtime session of the checked model.onnx and its fsl_app metadata (one JSON value per key)."""
    session = ort.InferenceSession(read_checked(folder, "model.onnx"), providers=["CPUExecutionProvider"])
    return session, {key: json.loads(value) for key, value in session.get_modelmeta().custom_metadata_map.items()}


def preprocess(image, meta):
    """timm's eval transform: resize (shorter side to size / crop_pct), center crop, normalize -> (3, H, W)."""
    _, height, width = meta["input_size"]
    crop_pct, mode, resample = meta.get("crop_pct") or 0.875, meta.get("crop_mode"), RESAMPLE[meta["interpolation"]]
    scale_h, scale_w = math.floor(height / crop_pct), math.floor(width / crop_pct)
    if mode == "squash":
        image = image.resize((scale_w, scale_h), resample)
    elif scale_h == scale_w and mode in (None, "center"):
        short, long = sorted(image.size)
        size = (scale_h, int(scale_h * long / short))
        image = image.resize(size if image.width <= image.height else size[::-1], resample)
    else:
        raise BundleError(f"crop_mode {mode} with input {height} x {width} needs timm: use predict.py")
    left, top = int(round((image.width - width) / 2.0)), int(round((image.height - height) / 2.0))
    pixels = np.asarray(image.crop((left, top, left + width, top + height)), dtype=np.float32) / 255
    return ((pixels - np.float32(meta["mean"])) / np.float32(meta["std"])).transpose(2, 0, 1)


def main(paths, top_k=3):
    session, meta = open_model(HERE)
    classes, threshold, results = meta["classes"], meta["threshold"], []
    draft = draft_size(meta)
    for path in paths:
        outputs = session.run(None, {session.get_inputs()[0].name: preprocess(load_rgb(path, draft), meta)[None]})
        logits = outputs[0][0]
        ood_score = float(outputs[1][0]) if len(outputs) > 1 else None  # the autoencoder's score, when present
        proba = np.exp(logits - logits.max())
        proba /= proba.sum()
        results.append(prediction(path, proba, classes, top_k, threshold, ood_score, meta.get("ood_limit")))
    print(json.dumps(results, ensure_ascii=False))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except BundleError as error:
        sys.exit(f"error: {error}")
