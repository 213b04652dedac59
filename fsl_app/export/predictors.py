"""Predict with a run folder or any export: top-k labels per image, "unknown" below the export's threshold.

A model that carries the run's autoencoder (:mod:`fsl_app.ood`) also gives each image an ``ood_score``; the answer is
"unknown" when the top probability is below the threshold or the OOD score above the export's ``ood_limit``.

Loading never unpickles arbitrary code: bundles are safetensors + JSON, TorchScript archives are opened with
``torch.jit.load`` only after their ``fsl_app.json`` extra file was found and checked, ONNX files must carry fsl_app
metadata. Every loaded model must answer one blank image with one logit per class its metadata names.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..images import ImageError, load_for_model
from ..preprocess import working_side
from .bundle_reader import load_bundle
from .formats import UNKNOWN_LABEL, ModelFileError
from .metadata import (check_export_info, check_model_answers, first_line, info_from_onnx_metadata,
                       read_torchscript_info)
from .prepare import split_outputs
from .threshold import is_unknown

__all__ = ["Predictor", "RunPredictor", "OnnxPredictor", "TorchScriptPredictor", "BundlePredictor",
           "PREDICTORS_BY_SUFFIX", "load_predictor"]


class Predictor:
    """Top-k predictions from preprocessed batches; subclasses provide ``logits(batch (n,3,H,W)) -> (n, C)``.

    With a ``threshold``, an image whose top probability is below it is labeled ``"unknown"``; with an ``ood_limit``,
    so is one whose OOD score (``scores``) is above it. Models with an autoencoder override ``scores``.
    """

    def __init__(self, classes: list[str], data_config: dict, threshold: float | None = None,
                 ood_limit: float | None = None):
        self.classes = list(classes)
        self.data_config = data_config
        self.threshold = threshold
        self.ood_limit = ood_limit

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits (n, C), OOD score (n,) or None for a model without an autoencoder)."""
        return self.logits(batch), None

    def predict_proba_images(self, images) -> torch.Tensor:
        """Probabilities (n, C) of PIL images, preprocessed with timm's eval transform of ``data_config``."""
        return self.predict_images(images)[0]

    def predict_images(self, images) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(probabilities (n, C), OOD scores (n,) or None) of PIL images (timm's eval transform of ``data_config``)."""
        from ..features import images_to_batch

        logits, ood = self.scores(images_to_batch(images, self.data_config))
        return torch.softmax(logits.float(), dim=1), (None if ood is None else ood.float())

    def predict_paths(self, paths: Sequence[Path], *, top_k: int = 3, progress: bool = False,
                      batch_size: int = 32) -> list[dict]:
        """One dict per image: image, label, probability, top_k [{label, probability}] (or error)."""
        from tqdm.auto import tqdm

        results: list[dict] = []
        bar = tqdm(total=len(paths), disable=not progress, desc="predict", unit="img", leave=False)
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            loaded, good = [], []
            for path in chunk:
                try:
                    loaded.append(load_for_model(path, working_side(self.data_config)))  # as training read it
                    good.append(path)
                except ImageError as error:
                    results.append({"image": str(path), "error": str(error)})
            if loaded:
                proba, ood = self.predict_images(loaded)
                ood = [None] * len(good) if ood is None else ood.tolist()
                results.extend(self._describe(str(path), row, top_k, score) for path, row, score in zip(good, proba, ood))
            bar.update(len(chunk))
        bar.close()
        order = {str(p): i for i, p in enumerate(paths)}
        return sorted(results, key=lambda item: order[item["image"]])

    def _describe(self, image: str, probabilities: torch.Tensor, top_k: int, ood_score: float | None = None) -> dict:
        values, indices = probabilities.topk(min(top_k, len(self.classes)))
        top = [{"label": self.classes[i], "probability": float(v)} for v, i in zip(values.tolist(), indices.tolist())]
        rejected = is_unknown(top[0]["probability"], ood_score, self.threshold, self.ood_limit)
        answer = {"image": image, "label": UNKNOWN_LABEL if rejected else top[0]["label"],
                  "probability": top[0]["probability"], "top_k": top}
        return answer if ood_score is None else {**answer, "ood_score": float(ood_score)}


class RunPredictor(Predictor):
    """Predictions with the fitted strategy of a run folder (no rejection threshold; the OOD score of the run's
    autoencoder is reported, never used to reject).

    A frozen-feature strategy on untuned weights runs its backbone through the feature extractor's engine (the
    cached ONNX export on a CPU, which needs no timm) and its head (and autoencoder) on the features; any other
    strategy runs its exported module.
    """

    def __init__(self, run_dir: str | Path):
        from ..features import get_extractor
        from ..ood import OodImageClassifier, as_image_classifier, load_autoencoder
        from ..runs import load_run
        from ..strategies import FeatureStrategy

        strategy, backbone = load_run(run_dir)
        super().__init__(strategy.classes_, backbone.data_config)
        autoencoder = load_autoencoder(run_dir)
        self._features, self._ood = None, None
        if isinstance(strategy, FeatureStrategy) and not backbone.source.startswith("tuned"):
            self._features = get_extractor(backbone).forward_tensors
            self.module = strategy.head_.eval()
            self._ood = None if autoencoder is None else autoencoder.eval()
        else:
            self.module = strategy.to_module().eval()
            classifier = as_image_classifier(self.module)
            if autoencoder is not None and classifier is not None:
                self.module = OodImageClassifier(classifier, autoencoder).eval()

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.scores(batch)[0]

    def scores(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.inference_mode():
            if self._features is None:
                return split_outputs(self.module(batch))
            features = self._features(batch)
            return self.module(features), (None if self._ood is None else self._ood(features))


class OnnxPredictor(Predictor):
    """An ``.onnx`` written by ``fsl-app export``, run by ONNX Runtime on the CPU."""

    def __init__(self, path: str | Path):
        from ..onnx_engine import OnnxBackbone

        path = Path(path)
        session = _open_onnx_session(path)
        info = check_export_info(info_from_onnx_metadata(session.get_modelmeta().custom_metadata_map), path)
        super().__init__(info["classes"], info["preprocessing"], info.get("threshold"), info.get("ood_limit"))
        self.info = info
        self.session = session
        self._run = OnnxBackbone(session)  # generic (n, 3, H, W) -> first output callable
        _check_model_answers(self, path)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self._run(batch)

    def scores(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if len(self.session.get_outputs()) < 2:
            return self.logits(batch), None
        import numpy as np

        logits, ood = self.session.run(None, {self._run.input_name: np.ascontiguousarray(batch.numpy(), np.float32)})[:2]
        return torch.from_numpy(logits), torch.from_numpy(ood)


class TorchScriptPredictor(Predictor):
    """A traced ``.pt`` written by ``fsl-app export``; its ``fsl_app.json`` is checked before ``torch.jit.load``."""

    def __init__(self, path: str | Path):
        path = Path(path)
        info = check_export_info(read_torchscript_info(path), path)
        super().__init__(info["classes"], info["preprocessing"], info.get("threshold"), info.get("ood_limit"))
        self.info = info
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in recent torch
                self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as error:  # noqa: BLE001 - any decoding failure is the same user-facing problem
            raise ModelFileError(f"{path} cannot be loaded as TorchScript ({error}). Re-export it with "
                                 "`fsl-app export RUN_DIR --format torchscript`.") from error
        _check_model_answers(self, path)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.scores(batch)[0]

    def scores(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.inference_mode():
            return split_outputs(self.module(batch))


class BundlePredictor(Predictor):
    """A bundle ``.zip`` (or its unzipped folder): safetensors weights rebuilt onto timm + fsl_app's head."""

    def __init__(self, path: str | Path):
        self.module, info = load_bundle(path)
        super().__init__(info["classes"], info["preprocessing"], info.get("threshold"), info.get("ood_limit"))
        self.info = info

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.scores(batch)[0]

    def scores(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.inference_mode():
            return split_outputs(self.module(batch))


PREDICTORS_BY_SUFFIX: dict[str, Callable[[Path], Predictor]] = {
    ".onnx": OnnxPredictor, ".pt": TorchScriptPredictor, ".ts": TorchScriptPredictor, ".zip": BundlePredictor}


def load_predictor(path: str | Path) -> Predictor:
    """A predictor for a run folder, an unzipped bundle folder, or a ``.onnx`` / ``.pt`` / ``.ts`` / ``.zip`` export."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist. Pass a run folder or a file written by `fsl-app export`.")
    if path.is_dir():
        if not (path / "model.json").is_file() and (path / "config.json").is_file() \
                and (path / "model.safetensors").is_file():
            return BundlePredictor(path)
        return RunPredictor(path)
    loader = PREDICTORS_BY_SUFFIX.get(path.suffix.lower())
    if loader is None:
        raise ValueError(f"{path.name}: unknown model format {path.suffix or '(no suffix)'!r}. Pass a run folder, "
                         f"or a {', '.join(PREDICTORS_BY_SUFFIX)} file written by `fsl-app export`.")
    return loader(path)


def _check_model_answers(predictor: Predictor, path: Path) -> None:
    check_model_answers(path, lambda shape: predictor.logits(torch.zeros(shape)), predictor.data_config["input_size"],
                        len(predictor.classes))


def _open_onnx_session(path: Path):
    from ..onnx_engine import cpu_session

    try:
        return cpu_session(path)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises several types for a bad file
        raise ModelFileError(f"{path} cannot be read as an ONNX model ({first_line(error)}). Pass "
                             "a .onnx written by `fsl-app export RUN_DIR --format onnx`.") from error
