"""What an export is called and what it carries: formats, file suffixes, metadata keys, bundle members.

Torch-free, so the command line names the formats and a caller checks a path without loading a model library.
"""

from __future__ import annotations

EXPORT_FORMATS = ("onnx", "torchscript", "bundle")
QUANTIZATIONS = ("int8",)  # static QDQ int8, calibrated on the run's images
FORMAT_SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".ts"), "bundle": (".zip",)}
EXPORT_FORMAT_VERSION = 1
MARKER_KEY = "fsl_app_export"  # present (value: format version) in every export's metadata
TORCHSCRIPT_EXTRA_FILE = "fsl_app.json"
PREPROCESSING_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
UNKNOWN_LABEL = "unknown"
THRESHOLD_KEEP = 0.95  # "auto": accept at least this fraction of correct held-out predictions
OOD_OUTPUT = "ood_score"  # second output of a model that carries the run's autoencoder (fsl_app.ood)
OOD_TOLERANCE = 1e-3  # an export must reproduce the PyTorch OOD score this closely (relative to the limit, 1.0)
MIN_CALIBRATION_IMAGES = 10  # --quantize int8 with fewer calibration images falls back to fp32
PROBABILITY_TOLERANCE = 1e-4  # an export must reproduce the PyTorch probabilities this closely
BUNDLE_SCRIPTS = ("predict.py", "predict_onnx.py", "bundle_io.py")  # copied from fsl_app/export/bundle_scripts/
CHECKSUMMED_FILES = ("model.safetensors", "model.onnx")  # sha256 in config.json["files"], checked by every loader
BUNDLE_FILES = ("model.safetensors", "config.json", "README.md", "predict.py", "model.onnx", "predict_onnx.py",
                "bundle_io.py", "requirements.txt")


class ModelFileError(ValueError):
    """A model file is not an fsl-app export, was modified or is damaged; the message says what to do instead."""
