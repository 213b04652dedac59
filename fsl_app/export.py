"""Export a run so it runs anywhere, and predict with a run folder or any export.

Every strategy's ``to_module()`` maps a preprocessed batch (n, 3, H, W) to logits (n, n_classes); this module writes
that one module in three formats, each carrying the class names, timm's eval preprocessing and an optional
"none of these" threshold:

- ``onnx``: ``model.onnx`` (opset 18, dynamic batch), metadata in ``metadata_props`` (one JSON value per key);
  ``--quantize int8`` applies onnxruntime's dynamic int8 quantization for CPU deployment.
- ``torchscript``: a traced module with the metadata as the extra file ``fsl_app.json``.
- ``bundle``: a zip with ``model.safetensors`` (the full module state: ``backbone.*`` and ``head.*``),
  ``config.json``, a model card ``README.md``, ``predict.py`` (torch + timm only), ``model.onnx`` and
  ``predict_onnx.py`` (onnxruntime + numpy + pillow only).

Loading never unpickles arbitrary code: bundles are safetensors + JSON, TorchScript archives are opened with
``torch.jit.load`` only after their ``fsl_app.json`` extra file was found and checked, ONNX files must carry fsl_app
metadata. The rejection threshold ``auto`` is the highest max-probability that still accepts at least 95 % of the
correctly classified held-out images of the run (``predictions.json``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .export_cli import EXPORT_FORMATS, QUANTIZATIONS  # defined there: the CLI names them without importing torch
from .images import ImageError, load_image

FORMAT_SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".ts"), "bundle": (".zip",)}
EXPORT_FORMAT_VERSION = 1
MARKER_KEY = "fsl_app_export"  # present (value: format version) in every export's metadata
TORCHSCRIPT_EXTRA_FILE = "fsl_app.json"
PREPROCESSING_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
UNKNOWN_LABEL = "unknown"
THRESHOLD_KEEP = 0.95  # "auto": accept at least this fraction of correct held-out predictions
PROBABILITY_TOLERANCE = 1e-4  # an export must reproduce the PyTorch probabilities this closely
BUNDLE_FILES = ("model.safetensors", "config.json", "README.md", "predict.py", "model.onnx", "predict_onnx.py",
                "requirements.txt")
_BACKBONE_PREFIX = "backbone."


class ModelFileError(ValueError):
    """A model file is not an fsl-app export, or was modified; the message says what to do instead."""


# --- predictors ---------------------------------------------------------------------------------------------------

class Predictor:
    """Top-k predictions from preprocessed batches; subclasses provide ``logits(batch (n,3,H,W)) -> (n, C)``.

    With a ``threshold``, an image whose top probability is below it is labeled ``"unknown"``.
    """

    def __init__(self, classes: list[str], data_config: dict, threshold: float | None = None):
        self.classes = list(classes)
        self.data_config = data_config
        self.threshold = threshold

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict_proba_images(self, images) -> torch.Tensor:
        """Probabilities (n, C) of PIL images, preprocessed with timm's eval transform of ``data_config``."""
        from .features import images_to_batch

        return torch.softmax(self.logits(images_to_batch(images, self.data_config)).float(), dim=1)

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
                    loaded.append(load_image(path))
                    good.append(path)
                except ImageError as error:
                    results.append({"image": str(path), "error": str(error)})
            if loaded:
                proba = self.predict_proba_images(loaded)
                results.extend(self._describe(str(path), row, top_k) for path, row in zip(good, proba))
            bar.update(len(chunk))
        bar.close()
        order = {str(p): i for i, p in enumerate(paths)}
        return sorted(results, key=lambda item: order[item["image"]])

    def _describe(self, image: str, probabilities: torch.Tensor, top_k: int) -> dict:
        values, indices = probabilities.topk(min(top_k, len(self.classes)))
        top = [{"label": self.classes[i], "probability": float(v)} for v, i in zip(values.tolist(), indices.tolist())]
        rejected = self.threshold is not None and top[0]["probability"] < self.threshold
        return {"image": image, "label": UNKNOWN_LABEL if rejected else top[0]["label"],
                "probability": top[0]["probability"], "top_k": top}


class RunPredictor(Predictor):
    """Predictions with the fitted strategy of a run folder (no rejection threshold)."""

    def __init__(self, run_dir: str | Path):
        from .runs import load_run

        strategy, backbone = load_run(run_dir)
        super().__init__(strategy.classes_, backbone.data_config)
        self.module = strategy.to_module().eval()

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(batch)


class OnnxPredictor(Predictor):
    """An ``.onnx`` written by ``fsl-app export``, run by ONNX Runtime on the CPU."""

    def __init__(self, path: str | Path):
        from .onnx_engine import OnnxBackbone

        path = Path(path)
        session = _open_onnx_session(path)
        info = check_export_info(info_from_onnx_metadata(session.get_modelmeta().custom_metadata_map), path)
        super().__init__(info["classes"], info["preprocessing"], info.get("threshold"))
        self.info = info
        self._run = OnnxBackbone(session)  # generic (n, 3, H, W) -> first output callable
        _check_model_answers(self, path)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self._run(batch)


class TorchScriptPredictor(Predictor):
    """A traced ``.pt`` written by ``fsl-app export``; its ``fsl_app.json`` is checked before ``torch.jit.load``."""

    def __init__(self, path: str | Path):
        path = Path(path)
        info = check_export_info(read_torchscript_info(path), path)
        super().__init__(info["classes"], info["preprocessing"], info.get("threshold"))
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
        with torch.inference_mode():
            return self.module(batch)


class BundlePredictor(Predictor):
    """A bundle ``.zip`` (or its unzipped folder): safetensors weights rebuilt onto timm + fsl_app's head."""

    def __init__(self, path: str | Path):
        self.module, info = load_bundle(path)
        super().__init__(info["classes"], info["preprocessing"], info.get("threshold"))
        self.info = info

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(batch)


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
    """One blank image of the metadata's input size must give one logit per class named in the metadata."""
    blank = torch.zeros(1, *predictor.data_config["input_size"])
    try:
        logits = predictor.logits(blank)
    except Exception as error:  # noqa: BLE001 - the runtimes raise many types for a model that does not fit
        raise ModelFileError(f"{path}: the model does not accept the input size in its metadata "
                             f"{tuple(blank.shape)} ({_first_line(error)}). The file was modified; re-export it with "
                             "`fsl-app export`.") from error
    if logits.ndim != 2 or logits.shape[1] != len(predictor.classes):
        raise ModelFileError(f"{path}: the model outputs {tuple(logits.shape)} for one image but its metadata names "
                             f"{len(predictor.classes)} classes. The file was modified; re-export it with `fsl-app "
                             "export`.")


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


# --- export metadata ------------------------------------------------------------------------------------------------

def check_export_info(info: dict | None, source: Path) -> dict:
    """Validate the metadata of an export (classes, preprocessing, threshold, head); raise :class:`ModelFileError`."""
    if not isinstance(info, dict) or MARKER_KEY not in info:
        raise ModelFileError(f"{source} was not exported by fsl-app (no fsl_app metadata found). Export a run with "
                             "`fsl-app export RUN_DIR --format onnx|torchscript|bundle`, or pass a run folder.")
    if not isinstance(info[MARKER_KEY], int) or info[MARKER_KEY] > EXPORT_FORMAT_VERSION:
        raise ModelFileError(f"{source} uses export format {info[MARKER_KEY]!r}, newer than this fsl_app "
                             f"understands ({EXPORT_FORMAT_VERSION}). Upgrade fsl_app.")
    classes = info.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise ModelFileError(f"{source}: the fsl_app metadata lists no valid class names. Re-export the run.")
    _check_preprocessing(info.get("preprocessing"), source)
    threshold = info.get("threshold")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
        raise ModelFileError(f"{source}: threshold {threshold!r} is not a probability in [0, 1]. Re-export the run.")
    return info


def _check_preprocessing(preprocessing, source: Path) -> None:
    required = ("input_size", "interpolation", "mean", "std")
    if not isinstance(preprocessing, dict) or any(key not in preprocessing for key in required):
        raise ModelFileError(f"{source}: the preprocessing metadata needs {', '.join(required)}. Re-export the run.")
    size = preprocessing["input_size"]
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ModelFileError(f"{source}: input_size {size!r} is not [channels, height, width]. Re-export the run.")


def onnx_metadata(info: dict) -> dict[str, str]:
    """ONNX ``metadata_props``: every info key, preprocessing keys flattened, each value as JSON text."""
    flat = {key: value for key, value in info.items() if key != "preprocessing"}
    flat.update({key: info["preprocessing"].get(key) for key in PREPROCESSING_KEYS})
    return {key: json.dumps(value, ensure_ascii=False) for key, value in flat.items()}


def info_from_onnx_metadata(props: dict[str, str]) -> dict | None:
    """Inverse of :func:`onnx_metadata`; None when the properties are not fsl_app's."""
    if MARKER_KEY not in props:
        return None
    try:
        values = {key: json.loads(value) for key, value in props.items()}
    except json.JSONDecodeError:
        return None
    info = {key: value for key, value in values.items() if key not in PREPROCESSING_KEYS}
    info["preprocessing"] = {key: values[key] for key in PREPROCESSING_KEYS if key in values}
    return info


def read_torchscript_info(path: Path) -> dict | None:
    """The ``fsl_app.json`` extra file of a TorchScript archive, read with zipfile (nothing is unpickled)."""
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} is not a TorchScript archive. Export one with `fsl-app export RUN_DIR "
                             "--format torchscript`.")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        extra = [n for n in names if n.count("/") == 2 and n.endswith(f"/extra/{TORCHSCRIPT_EXTRA_FILE}")]
        if not any("/code/" in n for n in names):
            raise ModelFileError(f"{path} is a pickled checkpoint, not TorchScript, and was not exported by fsl-app; "
                                 "fsl-app never unpickles such files. Export a run with `fsl-app export RUN_DIR "
                                 "--format torchscript`.")
        if len(extra) != 1:
            return None
        try:
            return json.loads(archive.read(extra[0]).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None


def _open_onnx_session(path: Path):
    from .onnx_engine import cpu_session

    try:
        return cpu_session(path)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises several types for a bad file
        raise ModelFileError(f"{path} cannot be read as an ONNX model ({_first_line(error)}). Pass "
                             "a .onnx written by `fsl-app export RUN_DIR --format onnx`.") from error


# --- bundles: safetensors state <-> module --------------------------------------------------------------------------

def load_bundle(path: str | Path) -> tuple[nn.Module, dict]:
    """The module (n, 3, H, W) -> logits (n, C) and the ``config.json`` of a bundle .zip or unzipped folder.

    Only JSON and safetensors are read; the weights must match the config's names, shapes and checksum.
    """
    path = Path(path)
    info = check_export_info(_read_bundle_json(path, "config.json"), path)
    return build_bundle_module(info, read_bundle_state(path, info)).eval(), info


def _read_bundle_bytes(bundle: Path, name: str) -> bytes:
    """One member of a bundle .zip, or one file of an unzipped bundle folder."""
    if bundle.is_dir():
        member = bundle / name
        if not member.is_file():
            raise ModelFileError(f"{bundle} lacks {name}: it is not a complete fsl-app bundle. Re-export it.")
        return member.read_bytes()
    if not zipfile.is_zipfile(bundle):
        raise ModelFileError(f"{bundle} is not a zip file, so not a bundle written by `fsl-app export --format "
                             "bundle`.")
    with zipfile.ZipFile(bundle) as archive:
        try:
            return archive.read(name)
        except KeyError:
            raise ModelFileError(f"{bundle} lacks {name}: it was not exported by fsl-app or is incomplete. "
                                 "Re-export it with `fsl-app export RUN_DIR --format bundle`.") from None


def _read_bundle_json(bundle: Path, name: str) -> dict | None:
    try:
        return json.loads(_read_bundle_bytes(bundle, name).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def read_bundle_state(bundle: Path, info: dict) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors``, checked against ``config.json`` (names, shapes, then sha256)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = _read_bundle_bytes(bundle, "model.safetensors")
    try:
        state = load(data)
    except (SafetensorError, ValueError, OSError) as error:
        raise ModelFileError(f"{bundle}: model.safetensors is not a valid safetensors file ({error}). Re-export "
                             "the bundle.") from error
    problems = _state_problems(state, expected_state_shapes(info))
    if problems:
        raise ModelFileError(f"{bundle}: model.safetensors does not match config.json: {'; '.join(problems[:3])}"
                             f"{' ...' if len(problems) > 3 else ''}. The bundle was edited or mixes files of two "
                             "exports; re-export it with `fsl-app export RUN_DIR --format bundle`.")
    files = info.get("files") if isinstance(info.get("files"), dict) else {}
    expected_sha = files.get("model.safetensors")
    if expected_sha and hashlib.sha256(data).hexdigest() != expected_sha:
        raise ModelFileError(f"{bundle}: model.safetensors was modified after export (its sha256 differs from the "
                             "one in config.json). Re-export the bundle with `fsl-app export`.")
    return state


def _state_problems(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> list[str]:
    problems = [f"{key} has shape {tuple(state[key].shape)} but config.json describes {shape}"
                for key, shape in expected.items() if key in state and tuple(state[key].shape) != shape]
    problems += [f"tensor {key} is missing" for key in expected if key not in state]
    problems += [f"unexpected tensor {key}" for key in state if key not in expected]
    return problems


def expected_state_shapes(info: dict) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the module ``config.json`` describes (timm skeleton on the meta device + head)."""
    head = _checked_head_spec(info)
    with torch.device("meta"):
        backbone = _create_timm_backbone(info, head)
    shapes = {_BACKBONE_PREFIX + key: tuple(value.shape) for key, value in backbone.state_dict().items()}
    shapes.update({"head." + key: shape for key, shape in head_state_shapes(head).items()})
    return shapes


def head_state_shapes(head: dict) -> dict[str, tuple[int, ...]]:
    """Shapes of a head's tensors: C classes, d features, n support points (RBF)."""
    classes, features = head["n_classes"], head.get("in_features")
    if head["kind"] == "timm":
        return {}
    shapes = {"normalizer.center": (features,)}
    if head["kind"] == "linear":
        return {**shapes, "linear.weight": (classes, features), "linear.bias": (classes,)}
    return {**shapes, "support": (head.get("n_support"), features), "coef": (head.get("n_support"), classes),
            "intercept": (classes,)}


def _checked_head_spec(info: dict) -> dict:
    head = info.get("head")
    if not isinstance(head, dict) or head.get("kind") not in ("linear", "rbf", "timm"):
        raise ModelFileError(f"config.json describes an unknown head {head!r}: the bundle is from a newer fsl_app "
                             "(upgrade it) or was edited (re-export it).")
    if head.get("n_classes") != len(info["classes"]):
        raise ModelFileError(f"config.json lists {len(info['classes'])} classes but its head has "
                             f"{head.get('n_classes')} outputs. The bundle was edited; re-export it.")
    return head


def _create_timm_backbone(info: dict, head: dict) -> nn.Module:
    import timm

    name = info.get("backbone", {}).get("name")
    try:
        return timm.create_model(name, pretrained=False, num_classes=head["n_classes"] if head["kind"] == "timm" else 0)
    except (RuntimeError, TypeError, ValueError, AttributeError) as error:
        raise ModelFileError(f"config.json names the backbone {name!r}, which this timm ({timm.__version__}) cannot "
                             "build. Upgrade timm to the version in requirements.txt.") from error


def build_bundle_module(info: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """The exported module (n, 3, H, W) -> logits (n, C) from ``config.json`` and the checked safetensors state."""
    from .strategies._heads import head_from_config
    from .strategies.base import ImageClassifier

    head_spec = _checked_head_spec(info)
    backbone = _create_timm_backbone(info, head_spec)
    head_state = {key.removeprefix("head."): value for key, value in state.items() if key.startswith("head.")}
    head = nn.Identity() if head_spec["kind"] == "timm" else head_from_config(head_spec, head_state)
    module = ImageClassifier(backbone, head)
    module.load_state_dict(state)
    return module.eval()


# --- rejection threshold --------------------------------------------------------------------------------------------

def choose_threshold(predictions: list[dict], keep: float = THRESHOLD_KEEP) -> float:
    """The highest max-probability threshold that accepts at least ``keep`` of the correct held-out predictions.

    ``predictions`` is a run's ``predictions.json`` (one dict per held-out image with ``true``, ``predicted`` and
    ``probabilities``). The result is floored to 4 decimals so every accepted image stays accepted.
    """
    confidences = sorted(max(item["probabilities"].values()) for item in predictions
                         if item["true"] == item["predicted"])
    if not confidences:
        raise ValueError("--threshold auto needs correct held-out predictions and the run has none. Pass "
                         "--threshold FLOAT (e.g. 0.5) or --threshold none.")
    must_accept = math.ceil(keep * len(confidences) - 1e-9)
    return math.floor(confidences[len(confidences) - must_accept] * 1e4) / 1e4


def parse_threshold(value: str | float | None) -> str | float | None:
    """``"auto"``, None (``"none"``) or a probability in [0, 1]; raise ValueError with the accepted forms."""
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    if isinstance(value, str) and value.lower() == "auto":
        return "auto"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"--threshold {value!r} must be auto, none or a probability between 0 and 1 (e.g. 0.6).")
    return number


def _threshold_rule(threshold: float | None, automatic: bool, predictions: list[dict]) -> str:
    if threshold is None:
        return "none: the top class is always reported"
    if not automatic:
        return "fixed by the user: images whose top probability is below it are reported as 'unknown'"
    correct = sum(item["true"] == item["predicted"] for item in predictions)
    return (f"auto: the highest threshold that accepts at least {THRESHOLD_KEEP:.0%} of the {correct} correctly "
            "classified held-out images; images whose top probability is below it are reported as 'unknown'")


# --- preparing an export --------------------------------------------------------------------------------------------

@dataclass
class Exportable:
    """What every format writes: the module (n, 3, H, W) -> logits (n, C), its metadata, and the run's data."""

    module: nn.Module
    info: dict
    run: dict

    def example(self, batch: int = 2) -> torch.Tensor:
        """A fixed random batch (batch, 3, H, W) for tracing and checking."""
        size = self.info["preprocessing"]["input_size"]
        return torch.randn(batch, *size, generator=torch.Generator().manual_seed(0))


def prepare_export(run_dir: str | Path, *, threshold: str | float | None = None) -> Exportable:
    """Load a run folder's fitted strategy as one CPU float module and describe it for export."""
    from .runs import load_run, read_run

    run_dir = Path(run_dir)
    run = read_run(run_dir)
    strategy, _ = load_run(run_dir)
    module, head = portable_module(strategy.to_module())
    threshold = parse_threshold(threshold)
    automatic = threshold == "auto"
    if automatic:
        threshold = choose_threshold(run["predictions"] or [])
    classes = list(strategy.classes_)
    if threshold is not None and UNKNOWN_LABEL in classes:
        raise ValueError(f"the run has a class named {UNKNOWN_LABEL!r}, the label of rejected images. Rename the "
                         "class and retrain, or export with --threshold none.")
    config = run["config"]
    info = {MARKER_KEY: EXPORT_FORMAT_VERSION, "fsl_app_version": _fsl_app_version(), "run": run["name"],
            "classes": classes, "preprocessing": _jsonable(config["backbone"]["data_config"]),
            "threshold": threshold, "threshold_rule": _threshold_rule(threshold, automatic, run["predictions"] or []),
            "strategy": strategy.name, "params": _jsonable(strategy.get_params()),
            "backbone": _backbone_summary(config["backbone"]),
            "head": head, "quantization": None}
    return Exportable(module=module.cpu().float().eval(), info=info, run=run)


def portable_module(module: nn.Module) -> tuple[nn.Module, dict | None]:
    """The module as ``ImageClassifier(backbone, head)`` plus a JSON head spec, so a bundle can rebuild it.

    Frozen-feature strategies already give ``ImageClassifier`` with a head that has ``config()``; a fine-tuned timm
    model keeps its own classifier (head kind ``timm``). Any other module exports to ONNX / TorchScript only
    (spec None).
    """
    from .strategies.base import ImageClassifier

    if isinstance(module, ImageClassifier) and hasattr(module.head, "config"):
        return module, module.head.config()
    if hasattr(module, "get_classifier") and isinstance(getattr(module, "num_classes", None), int):
        return ImageClassifier(module, nn.Identity()), {"kind": "timm", "n_classes": module.num_classes}
    return module, None


def _backbone_summary(spec: dict) -> dict:
    """Name, weights, source and id of the run's backbone; a local checkpoint path is cut to its file name."""
    from .backbones import WEIGHT_SOURCES

    summary = {key: spec.get(key) for key in ("name", "weights", "source", "id")}
    if summary["weights"] not in WEIGHT_SOURCES:
        summary["weights"] = Path(str(summary["weights"])).name
    if str(summary["source"]).startswith("file:"):
        summary["source"] = "file:" + Path(str(summary["source"])[len("file:"):]).name
    return summary


def _fsl_app_version() -> str:
    from . import __version__

    return __version__


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


# --- writers ------------------------------------------------------------------------------------------------------

def write_onnx(exportable: Exportable, out: Path, *, quantize: str | None = None) -> Path:
    """``out``: ONNX (dynamic batch, checked against PyTorch) with fsl_app metadata; int8 if ``quantize``."""
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as temp:
        model_path = _export_checked_onnx(exportable, Path(temp) / "model.onnx")
        if quantize:
            model_path = quantize_int8(model_path, Path(temp) / "model.int8.onnx")
        info = {**exportable.info, "quantization": quantize}
        attach_onnx_metadata(model_path, info)
        _make_shareable(model_path)
        os.replace(model_path, out)
    return out


def _export_checked_onnx(exportable: Exportable, path: Path) -> Path:
    from .onnx_engine import OnnxBackbone, cpu_session, export_onnx

    example = exportable.example()
    export_onnx(exportable.module, example, path, input_name="images", output_name="logits")
    exported = OnnxBackbone(cpu_session(path))(exportable.example(3))
    _check_same_probabilities(exported, exportable, "ONNX")
    return path


def _check_same_probabilities(logits: torch.Tensor, exportable: Exportable, name: str) -> None:
    """Fail the export when the written model does not reproduce PyTorch on a batch of 3 (another batch size)."""
    with torch.inference_mode():
        reference = torch.softmax(exportable.module(exportable.example(3)).float(), 1)
    difference = (torch.softmax(logits.float(), 1) - reference).abs().max().item()
    if not difference <= PROBABILITY_TOLERANCE:
        raise RuntimeError(f"the {name} export differs from PyTorch by {difference:.2e} in probability. Export "
                           "another format and report this model to the fsl_app maintainers.")


def quantize_int8(source: Path, out: Path) -> Path:
    """Dynamic int8 quantization for CPU deployment (onnxruntime ``quantize_dynamic``): a ~3x smaller file.

    Weights are stored as uint8 and activations quantized at run time. The first convolution (it sees the raw
    pixels) and depthwise convolutions stay float: quantizing them cost the most accuracy and speed for few weights
    (benchmarks/results_export.md has the measured drop and speed ratio).
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # onnxruntime logs shape-inference chatter on the root logger
    try:
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QUInt8,
                         nodes_to_exclude=_convolutions_kept_float(source))
    finally:
        logging.disable(logging.NOTSET)
    return out


def _convolutions_kept_float(path: Path) -> list[str]:
    """Names of the first Conv node (graph order is topological) and of every depthwise (grouped) Conv."""
    import onnx

    convolutions = [node for node in onnx.load(str(path)).graph.node if node.op_type == "Conv"]
    grouped = [node.name for node in convolutions if any(a.name == "group" and a.i > 1 for a in node.attribute)]
    return ([convolutions[0].name] if convolutions else []) + grouped


def attach_onnx_metadata(path: Path, info: dict) -> None:
    """Replace the model's ``metadata_props`` with fsl_app's (see :func:`onnx_metadata`)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, onnx_metadata(info))
    model.doc_string = f"fsl_app export of run {info['run']}: {info['strategy']} on {info['backbone']['name']}, " \
                       f"classes {', '.join(info['classes'])}"
    onnx.save(model, str(path))


def _make_shareable(path: Path) -> None:
    """Temporary files are private (0600); an export is meant to be copied and shared (0644)."""
    path.chmod(0o644)


def write_torchscript(exportable: Exportable, out: Path, *, quantize: str | None = None) -> Path:
    """``out``: the traced module (dynamic batch, checked) with metadata in the extra file ``fsl_app.json``."""
    if quantize:
        raise ValueError("--quantize applies to ONNX models. Use --format onnx or bundle, or drop --quantize.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's FutureWarning and tracer warnings
        traced = torch.jit.trace(exportable.module, exportable.example(), check_trace=False)
        with torch.inference_mode():
            _check_same_probabilities(traced(exportable.example(3)), exportable, "TorchScript")
        handle, temp = tempfile.mkstemp(dir=out.parent, suffix=".pt.tmp")
        os.close(handle)
        try:
            torch.jit.save(traced, temp, _extra_files={TORCHSCRIPT_EXTRA_FILE: json.dumps(exportable.info)})
            _make_shareable(Path(temp))
            os.replace(temp, out)
        finally:
            Path(temp).unlink(missing_ok=True)
    return out


def write_bundle(exportable: Exportable, out: Path, *, quantize: str | None = None) -> Path:
    """``out``: a zip that runs without fsl_app (see the module docstring); ``quantize`` applies to model.onnx."""
    if exportable.info["head"] is None:
        raise ValueError(f"the {exportable.info['strategy']} strategy's module has no head description, so it cannot "
                         "be bundled as safetensors. Use --format onnx or torchscript.")
    from safetensors.torch import save

    weights = save({key: value.detach().cpu().contiguous().clone()
                    for key, value in exportable.module.state_dict().items()})
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as temp:
        onnx_path = write_onnx(exportable, Path(temp) / "model.onnx", quantize=quantize)
        onnx_bytes = onnx_path.read_bytes()
        config = bundle_config(exportable, {"model.safetensors": weights, "model.onnx": onnx_bytes}, quantize)
        members = {"model.safetensors": weights, "config.json": json.dumps(config, indent=2, ensure_ascii=False),
                   "README.md": model_card(exportable, quantize), "predict.py": PREDICT_SCRIPT,
                   "model.onnx": onnx_bytes, "predict_onnx.py": PREDICT_ONNX_SCRIPT,
                   "requirements.txt": _requirements()}
        archive_path = Path(temp) / "bundle.zip"
        with zipfile.ZipFile(archive_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in BUNDLE_FILES:
                archive.writestr(name, members[name])
        os.replace(archive_path, out)
    return out


def bundle_config(exportable: Exportable, files: dict[str, bytes], quantize: str | None) -> dict:
    """config.json: the export metadata plus the run's augmentation, metrics, data snapshot and file checksums."""
    config, metrics = exportable.run["config"], exportable.run["metrics"] or {}
    return {**exportable.info, "onnx_quantization": quantize,
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
            "augment": augment_dict(exportable), "protocol": metrics.get("protocol", config.get("protocol")),
            "seed": config.get("seed"),
            "class_counts": config.get("class_counts"), "trained_at": config.get("created_at"),
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"torch": torch.__version__, "timm": _timm_version(),
                         "trained_with_torch": config.get("torch")},
            "metrics": {key: value for key, value in metrics.items() if not key.endswith("_seconds")},
            "data": _data_snapshot(config.get("data"))}


def augment_dict(exportable: Exportable) -> dict | None:
    """The albumentations dict the run trained with: the run's ``augment``, else the strategy's ``augment`` param."""
    spec = exportable.run["config"].get("augment") or exportable.info["params"].get("augment")
    if spec is None or isinstance(spec, dict):
        return spec
    from .augment import build_augment, to_dict

    return to_dict(build_augment(spec))


def _data_snapshot(data):
    """The run's data snapshot without local folder paths (only file names), so a shared bundle leaks nothing."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        return data
    images = [{**{k: v for k, v in item.items() if k != "path"}, "name": Path(item.get("path", "")).name}
              for item in data["images"]]
    return {**data, "images": images}


def _timm_version() -> str:
    import timm

    return timm.__version__


def _requirements() -> str:
    import onnxruntime

    return (f"# predict.py (exported with torch {torch.__version__.split('+')[0]}, timm {_timm_version()})\n"
            f"torch>=2.0\ntimm>=1.0\n"
            f"# predict_onnx.py needs only these (exported with onnxruntime {onnxruntime.__version__}):\n"
            "# onnxruntime\n# numpy\n# pillow\n")


# --- model card -----------------------------------------------------------------------------------------------------

def model_card(exportable: Exportable, quantize: str | None = None) -> str:
    """README.md of a bundle: what the model was trained on, how well it did, how to run it, and its limits."""
    info, run = exportable.info, exportable.run
    config, metrics = run["config"], run["metrics"] or {}
    counts = config.get("class_counts") or {}
    per_class = metrics.get("per_class_accuracy") or {}
    rows = "\n".join(f"| {name} | {counts.get(name, '?')} | {_percent(per_class.get(name))} |"
                     for name in info["classes"])
    threshold = "none" if info["threshold"] is None else f"{info['threshold']:.4f} ({info['threshold_rule']})"
    return "\n".join([
        f"# {run['name']}: few-shot image classifier",
        "",
        f"Sorts images into {len(info['classes'])} classes: {', '.join(info['classes'])}. Made with fsl_app "
        f"{info['fsl_app_version']} from run `{run['name']}` ({config.get('created_at', 'unknown date')}).",
        "",
        "## Training data and accuracy",
        "",
        "| class | training images | held-out accuracy |",
        "| --- | --- | --- |",
        rows,
        "",
        f"- Evaluation: {metrics.get('protocol', '?')} on {metrics.get('n_test', '?')} held-out predictions, accuracy "
        f"{_percent(metrics.get('accuracy'))} ± {_percent(metrics.get('ci95'))} (95 % CI), balanced accuracy "
        f"{_percent(metrics.get('balanced_accuracy'))}, macro F1 {_number(metrics.get('macro_f1'))}.",
        f"- Backbone: `{info['backbone']['name']}` ({info['backbone']['source']} weights); strategy: "
        f"`{info['strategy']}` with {json.dumps(info['params'])}.",
        f"- Augmentation: {_describe_augment(config.get('augment') or info['params'].get('augment'))}; "
        f"images: {sum(counts.values()) if counts else '?'} (sha256 list in config.json).",
        f"- Preprocessing: {_describe_preprocessing(info['preprocessing'])}.",
        f"- Rejection threshold on the top probability: {threshold}.",
        "",
        "## Intended use",
        "",
        "Labeling images that look like the training images (same kind of camera, framing and subject) into the "
        "classes above, with a person checking the results that matter. Re-measure accuracy on your own images "
        "before relying on it.",
        "",
        "## Limits",
        "",
        *_card_limits(info, sum(counts.values()), quantize),
        "",
        "## Run it",
        "",
        "```bash",
        "pip install torch timm && python predict.py photo.jpg               # PyTorch, no fsl_app",
        "pip install onnxruntime pillow && python predict_onnx.py photo.jpg  # ONNX Runtime only",
        "fsl-app predict this_bundle.zip photo.jpg --json                    # with fsl_app",
        "```",
        "",
        "Files: `model.safetensors` (all weights: `backbone.*` for the timm model, `head.*` for the classifier), "
        "`config.json` (classes, preprocessing, threshold, metrics, data snapshot, checksums), `model.onnx` "
        "(metadata in its `metadata_props`).",
        "",
    ])


def _card_limits(info: dict, n_images: int, quantize: str | None) -> list[str]:
    """The model card's "Limits" bullets."""
    limits = [f"- Trained on {n_images or 'few'} images: the accuracy above is an estimate with a wide confidence "
              "interval, not a guarantee.",
              "- Closed set: every image gets one of the classes"
              + (" unless its top probability is below the threshold (then `unknown`); a probability threshold "
                 "catches many, not all, unfamiliar images." if info["threshold"] is not None else
                 "; re-export with `--threshold auto` to report unfamiliar images as `unknown`."),
              "- Images unlike the training data (other lighting, devices, subjects) can be confidently wrong."]
    if str(info["backbone"]["source"]).startswith("random"):
        limits.append("- The backbone had random weights (no pretraining): expect poor accuracy.")
    if quantize:
        limits.append(f"- model.onnx is {quantize}-quantized (about 3x smaller): its probabilities differ from "
                      "model.safetensors and can change the top class of borderline images.")
    return limits


def _describe_augment(spec) -> str:
    if spec is None:
        return "none (frozen features)"
    if isinstance(spec, str):
        return f"albumentations preset `{spec}` (full dict in config.json)"
    return "custom albumentations pipeline (dict in config.json)"


def _percent(value) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, (int, float)) else "n/a"


def _number(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"


def _describe_preprocessing(preprocessing: dict) -> str:
    _, height, width = preprocessing["input_size"]
    return (f"RGB, {preprocessing.get('interpolation')} resize and center crop to {height} x {width} "
            f"(crop_pct {preprocessing.get('crop_pct')}), normalized with mean {preprocessing.get('mean')} and std "
            f"{preprocessing.get('std')} (timm's eval transform)")


# --- entry points ---------------------------------------------------------------------------------------------------

WRITERS: dict[str, Callable[..., Path]] = {"onnx": write_onnx, "torchscript": write_torchscript,
                                           "bundle": write_bundle}


def export_run(run_dir: str | Path, export_format: str, out: str | Path | None = None, *,
               threshold: str | float | None = None, quantize: str | None = None) -> Path:
    """Export a run folder as ``export_format`` (onnx, torchscript, bundle) to ``out`` (default: next to the run).

    ``threshold``: ``"auto"``, ``"none"``/None or a probability; ``quantize``: None or ``"int8"`` (ONNX formats).
    """
    run_dir = Path(run_dir)
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {export_format!r}. Pick one of: {', '.join(EXPORT_FORMATS)}.")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantize!r}. Pick one of: {', '.join(QUANTIZATIONS)}.")
    if quantize and export_format == "torchscript":
        raise ValueError("--quantize applies to ONNX models. Use --format onnx or bundle, or drop --quantize.")
    parse_threshold(threshold)
    if not (run_dir / "model.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished run folder (no model.json). Pass a folder written by "
                                "`fsl-app train`.")
    out = export_path(run_dir, export_format, out)
    return WRITERS[export_format](prepare_export(run_dir, threshold=threshold), out, quantize=quantize)


def export_path(run_dir: Path, export_format: str, out: str | Path | None) -> Path:
    """``out`` checked for the format's suffix, or ``<run folder><suffix>`` next to the run (runs are immutable)."""
    suffixes = FORMAT_SUFFIXES[export_format]
    out = Path(out) if out is not None else run_dir.parent / (run_dir.name + suffixes[0])
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"--out {out} must end in {' or '.join(suffixes)} for --format {export_format}, so `fsl-app "
                         f"predict` can tell the format. Use --out {out.with_suffix(suffixes[0])}.")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder. Pass a file path such as {out / ('model' + suffixes[0])}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def exported_info(out: Path, export_format: str) -> dict:
    """The fsl_app metadata (classes, threshold, ...) stored inside an exported file."""
    if export_format == "onnx":
        import onnx

        return info_from_onnx_metadata({p.key: p.value for p in onnx.load(str(out)).metadata_props})
    if export_format == "torchscript":
        return read_torchscript_info(out)
    return _read_bundle_json(out, "config.json")


# --- scripts shipped in a bundle ------------------------------------------------------------------------------------

PREDICT_SCRIPT = r'''"""Classify images with this bundle, without fsl_app: python predict.py IMAGE [IMAGE ...]

Needs only torch and timm (pip install torch timm). Prints a JSON list, one object per image, like
`fsl-app predict --json`; below the threshold in config.json an image is labeled "unknown".
"""
import json
import sys
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
CONFIG = json.loads((HERE / "config.json").read_text(encoding="utf-8"))
STATE = load_file(str(HERE / "model.safetensors"))  # backbone.* (timm model) and head.* (fsl_app head)
HEAD = CONFIG["head"]


def backbone():
    """The timm model: (n, 3, H, W) -> features (n, d), or logits (n, C) for head kind "timm" (fine-tuned)."""
    classes = HEAD["n_classes"] if HEAD["kind"] == "timm" else 0
    model = timm.create_model(CONFIG["backbone"]["name"], num_classes=classes)
    model.load_state_dict({k[len("backbone."):]: v for k, v in STATE.items() if k.startswith("backbone.")})
    return model.eval()


def head(x):
    """fsl_app's head, features (n, d) -> logits (n, C): CL2N/L2 normalization, then linear or RBF-kernel layer."""
    if HEAD["kind"] == "timm":
        return x
    if HEAD["normalizer"]["subtract_center"]:
        x = x - STATE["head.normalizer.center"]
    if HEAD["normalizer"]["l2"]:
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if HEAD["kind"] == "linear":
        return torch.nn.functional.linear(x, STATE["head.linear.weight"], STATE["head.linear.bias"])
    support = STATE["head.support"]
    squared = (x * x).sum(1, keepdim=True) - 2 * x @ support.T + (support ** 2).sum(1)[None, :]
    return torch.exp(-HEAD["gamma"] * squared.clamp_min(0)) @ STATE["head.coef"] + STATE["head.intercept"]


def load_rgb(path):
    image = Image.open(path)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block: keep the stored orientation
        image.load()
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):  # 16/32-bit: map the full range, as fsl_app does
        array = np.asarray(image, dtype=np.float64)
        low, high = (0.0, 65535.0) if image.mode.startswith("I;16") else (float(array.min()), float(array.max()))
        array = np.clip((array - low) / ((high - low) or 1.0) * 255 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:  # alpha over white, as fsl_app does
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return image.convert("RGB")


def main(paths, top_k=3):
    model, transform = backbone(), timm.data.create_transform(**CONFIG["preprocessing"])
    classes, threshold, results = CONFIG["classes"], CONFIG["threshold"], []
    for path in paths:
        with torch.inference_mode():
            proba = torch.softmax(head(model(transform(load_rgb(path))[None])).float(), 1)[0]
        values, indices = proba.topk(min(top_k, len(classes)))
        top = [{"label": classes[i], "probability": float(v)} for v, i in zip(values.tolist(), indices.tolist())]
        rejected = threshold is not None and top[0]["probability"] < threshold
        results.append({"image": path, "label": "unknown" if rejected else top[0]["label"],
                        "probability": top[0]["probability"], "top_k": top})
    print(json.dumps(results, ensure_ascii=False))


if __name__ == "__main__":
    main(sys.argv[1:])
'''

PREDICT_ONNX_SCRIPT = r'''"""Classify images with model.onnx, without torch or fsl_app: python predict_onnx.py IMAGE...

Needs onnxruntime, numpy and pillow. Class names, preprocessing and threshold come from the model's metadata.
Prints a JSON list, one object per image, like `fsl-app predict --json`.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

SESSION = ort.InferenceSession(str(Path(__file__).resolve().parent / "model.onnx"), providers=["CPUExecutionProvider"])
META = {key: json.loads(value) for key, value in SESSION.get_modelmeta().custom_metadata_map.items()}
RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


def load_rgb(path):
    image = Image.open(path)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block: keep the stored orientation
        image.load()
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):  # 16/32-bit: map the full range, as fsl_app does
        array = np.asarray(image, dtype=np.float64)
        low, high = (0.0, 65535.0) if image.mode.startswith("I;16") else (float(array.min()), float(array.max()))
        array = np.clip((array - low) / ((high - low) or 1.0) * 255 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:  # alpha over white, as fsl_app does
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return image.convert("RGB")


def preprocess(image):
    """timm's eval transform: resize (shorter side to size / crop_pct), center crop, normalize -> (3, H, W)."""
    _, height, width = META["input_size"]
    crop_pct, mode, resample = META.get("crop_pct") or 0.875, META.get("crop_mode"), RESAMPLE[META["interpolation"]]
    scale_h, scale_w = math.floor(height / crop_pct), math.floor(width / crop_pct)
    if mode == "squash":
        image = image.resize((scale_w, scale_h), resample)
    elif scale_h == scale_w and mode in (None, "center"):
        short, long = sorted(image.size)
        size = (scale_h, int(scale_h * long / short))
        image = image.resize(size if image.width <= image.height else size[::-1], resample)
    else:
        sys.exit(f"crop_mode {mode} with input {height} x {width} needs timm: use predict.py")
    left, top = int(round((image.width - width) / 2.0)), int(round((image.height - height) / 2.0))
    pixels = np.asarray(image.crop((left, top, left + width, top + height)), dtype=np.float32) / 255
    return ((pixels - np.float32(META["mean"])) / np.float32(META["std"])).transpose(2, 0, 1)


def main(paths, top_k=3):
    classes, threshold, results = META["classes"], META["threshold"], []
    for path in paths:
        logits = SESSION.run(None, {SESSION.get_inputs()[0].name: preprocess(load_rgb(path))[None]})[0][0]
        proba = np.exp(logits - logits.max())
        proba /= proba.sum()
        top = [{"label": classes[i], "probability": float(proba[i])} for i in np.argsort(-proba)[:top_k]]
        rejected = threshold is not None and top[0]["probability"] < threshold
        results.append({"image": path, "label": "unknown" if rejected else top[0]["label"],
                        "probability": top[0]["probability"], "top_k": top})
    print(json.dumps(results, ensure_ascii=False))


if __name__ == "__main__":
    main(sys.argv[1:])
'''
