"""Open any model path for prediction with the lightest runtime that gives the same answers.

- ``.onnx`` exports and bundles (``.zip`` or unzipped folder) run their ONNX model in ONNX Runtime with numpy and
  Pillow only: no torch, no timm (:class:`OnnxRuntimePredictor`). The bundle is checked as a whole first (CRC-32,
  ``config.json``, the sha256 of both model files), like :func:`fsl_app.export.predictors.load_predictor` does.
- a run folder, or a run folder zipped as the studio downloads it (``<run>/config.json``, ``<run>/model.json``, ...),
  predicts with :class:`fsl_app.export.predictors.RunPredictor` (frozen-feature runs through the cached ONNX engine).
- TorchScript and anything this module cannot serve go to :func:`fsl_app.export.predictors.load_predictor`.

Images are read with the rule training used (twice the resize: JPEG draft, then a resize; :func:`fsl_app.images.decode_for_model`).
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from ..images import ImageError, load_for_model
from ..preprocess import eval_geometry, normalize_batch, working_side
from .formats import UNKNOWN_LABEL, ModelFileError
from .metadata import (check_archive_intact, check_checksum, check_export_info, check_model_answers, first_line,
                       info_from_onnx_metadata, parse_json_bytes, read_bundle_members, recorded_checksums)
from .threshold import is_unknown

MAX_RUN_ZIP_BYTES = 4 * 2**30  # uncompressed size of a run zip this command unpacks


class OnnxRuntimePredictor:
    """Top-k predictions of an fsl_app ONNX model (file or bundle member); numpy, Pillow and onnxruntime only.

    Same results as :class:`fsl_app.export.predictors.Predictor`: ``predict_paths`` gives one dict per image
    (image, label, probability, top_k, ood_score when the model has the autoencoder output, or error); below
    ``threshold`` or above ``ood_limit`` the label is ``"unknown"``.
    """

    def __init__(self, model: bytes | str, source: Path, info: dict | None = None):
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime raises several types for a bad file
            raise ModelFileError(f"{source} cannot be read as an ONNX model ({first_line(error)}). Pass "
                                 "a .onnx written by `fsl-app export RUN_DIR --format onnx`.") from error
        if info is None:
            info = info_from_onnx_metadata(self.session.get_modelmeta().custom_metadata_map)
        self.info = check_export_info(info, source)
        self.classes = list(self.info["classes"])
        self.data_config = self.info["preprocessing"]
        self.threshold, self.ood_limit = self.info.get("threshold"), self.info.get("ood_limit")
        self.geometry = eval_geometry(self.data_config)
        self.side = working_side(self.data_config)
        self.input_name = self.session.get_inputs()[0].name
        check_model_answers(source, lambda shape: self.logits(np.zeros(shape, dtype=np.float32)),
                            self.data_config["input_size"], len(self.classes))

    @property
    def supported(self) -> bool:
        """False for a crop mode only timm reproduces (then use the torch predictor)."""
        return self.geometry is not None

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) float32 -> (n, C)."""
        return self.scores(batch)[0]

    def scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(n, 3, H, W) float32 -> logits (n, C) and the autoencoder's OOD score (n,) when the model has one."""
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)

    def predict_images(self, images: Sequence) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (n, C) and OOD scores (n,) or None of RGB PIL images."""
        pixels = [np.asarray(self.geometry(image.convert("RGB")), dtype=np.uint8) for image in images]
        logits, ood = self.scores(normalize_batch(pixels, self.data_config["mean"], self.data_config["std"]))
        logits = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True), ood

    def predict_proba_images(self, images: Sequence) -> np.ndarray:
        """Probabilities (n, C) of RGB PIL images."""
        return self.predict_images(images)[0]

    def predict_paths(self, paths: Sequence[Path], *, top_k: int = 3, progress: bool = False,
                      batch_size: int = 32) -> list[dict]:
        results: dict[str, dict] = {}
        for start in range(0, len(paths), batch_size):
            loaded, good = [], []
            for path in paths[start:start + batch_size]:
                try:
                    loaded.append(load_for_model(path, self.side))
                    good.append(path)
                except ImageError as error:
                    results[str(path)] = {"image": str(path), "error": str(error)}
            if loaded:
                proba, ood = self.predict_images(loaded)
                ood = [None] * len(good) if ood is None else ood.tolist()
                for path, row, score in zip(good, proba, ood):
                    results[str(path)] = self._describe(str(path), row, top_k, score)
        return [results[str(path)] for path in paths]

    def _describe(self, image: str, probabilities: np.ndarray, top_k: int, ood_score: float | None = None) -> dict:
        order = np.argsort(-probabilities, kind="stable")[:min(top_k, len(self.classes))]
        top = [{"label": self.classes[i], "probability": float(probabilities[i])} for i in order]
        rejected = is_unknown(top[0]["probability"], ood_score, self.threshold, self.ood_limit)
        answer = {"image": image, "label": UNKNOWN_LABEL if rejected else top[0]["label"],
                  "probability": top[0]["probability"], "top_k": top}
        return answer if ood_score is None else {**answer, "ood_score": float(ood_score)}


def open_onnx_bundle(bundle: Path) -> OnnxRuntimePredictor:
    """The ``model.onnx`` of a bundle .zip or folder, after the checks every bundle loader makes."""
    members = read_bundle_members(bundle, ("config.json", "model.onnx", "model.safetensors"))
    info = check_export_info(parse_json_bytes(members["config.json"]), bundle)
    checksums = recorded_checksums(bundle, info)
    check_checksum(bundle, "model.onnx", members["model.onnx"], checksums)
    check_checksum(bundle, "model.safetensors", members["model.safetensors"], checksums)
    return OnnxRuntimePredictor(members["model.onnx"], bundle, info)


def run_zip_folder(path: Path) -> str | None:
    """The top folder name when ``path`` is a zipped run folder (``<run>/model.json`` and ``<run>/config.json``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    tops = {PurePosixPath(name).parts[0] for name in names if PurePosixPath(name).parts}
    if len(tops) != 1:
        return None
    top = tops.pop()
    return top if {f"{top}/model.json", f"{top}/config.json"} <= set(names) else None


def unpack_run_zip(path: Path, folder: str, target: Path) -> Path:
    """Unpack a zipped run (checked: CRC-32, member names inside the run folder, total size) under ``target``."""
    check_archive_intact(path, "run zip")
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        if sum(member.file_size for member in members) > MAX_RUN_ZIP_BYTES:
            raise ModelFileError(f"{path} unpacks to more than {MAX_RUN_ZIP_BYTES // 2**30} GiB, which no run "
                                 "folder needs. Unzip it yourself and pass the folder.")
        for member in members:
            parts = PurePosixPath(member.filename).parts
            if member.filename.startswith("/") or ".." in parts or "\\" in member.filename:
                raise ModelFileError(f"{path}: member {member.filename!r} points outside the run folder; refused. "
                                     "Download the run again from the studio.")
        archive.extractall(target)
    return target / folder


def open_predictor(path: str | Path):
    """A predictor for a model path (``predict_paths``, ``classes``, ``threshold``): see the module docstring."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist. Pass a run folder or a file written by `fsl-app export`.")
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".zip" and (folder := run_zip_folder(path)) is not None:
        from .predictors import RunPredictor

        with tempfile.TemporaryDirectory(prefix="fsl-app-run-") as temporary:  # the run loads whole, then goes
            return RunPredictor(unpack_run_zip(path, folder, Path(temporary)))
    light = None
    if path.is_file() and suffix == ".onnx":
        light = OnnxRuntimePredictor(str(path), path)
    elif (path.is_file() and suffix == ".zip") or _is_bundle_folder(path):
        light = open_onnx_bundle(path)
    if light is not None and light.supported:
        return light
    from .predictors import load_predictor

    return load_predictor(path)


def _is_bundle_folder(path: Path) -> bool:
    return path.is_dir() and not (path / "model.json").is_file() and (path / "config.json").is_file() \
        and (path / "model.safetensors").is_file()
