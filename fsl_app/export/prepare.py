"""What every format writes: a run's fitted strategy as one CPU float module (n, 3, H, W) -> logits (n, C), plus the
metadata that travels with it (classes, preprocessing, threshold, head description).

A run with an out-of-distribution autoencoder (``ood.safetensors``, see :mod:`fsl_app.ood`) exports as
(n, 3, H, W) -> (logits (n, C), OOD score (n,)); ``info["ood"]`` describes it and ``info["ood_limit"]`` says when the
score makes an answer ``unknown`` (None: reported only)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .formats import EXPORT_FORMAT_VERSION, MARKER_KEY, OOD_OUTPUT, OOD_TOLERANCE, PROBABILITY_TOLERANCE, UNKNOWN_LABEL
from .threshold import choose_threshold, ood_rule, parse_ood_limit, parse_threshold, threshold_rule

__all__ = ["Exportable", "prepare_export", "portable_module", "check_same_probabilities", "make_shareable",
           "split_outputs"]


@dataclass
class Exportable:
    """What every format writes: the module (n, 3, H, W) -> logits (n, C), its metadata, and the run's data."""

    module: nn.Module
    info: dict
    run: dict
    calibration: list[str] = field(default_factory=list)  # image paths for int8 calibration (labeled + pool)

    def example(self, batch: int = 2) -> torch.Tensor:
        """A fixed random batch (batch, 3, H, W) for tracing and checking."""
        size = self.info["preprocessing"]["input_size"]
        return torch.randn(batch, *size, generator=torch.Generator().manual_seed(0))


def prepare_export(run_dir: str | Path, *, threshold: str | float | None = None, ood: str | float | None = None,
                   calibration_images: list | None = None) -> Exportable:
    """Load a run folder's fitted strategy as one CPU float module and describe it for export.

    ``ood``: the limit on the OOD score (``"auto"``, ``"none"``/None, or a number; see ``parse_ood_limit``); the score
    itself travels whenever the run has an autoencoder. ``calibration_images``: extra image paths (e.g. the project's
    unlabeled pool) for int8 calibration, beside the run's labeled images that still exist.
    """
    from ..ood import OodImageClassifier, load_autoencoder
    from ..runs import load_run, read_run
    from ..strategies.base import ImageClassifier

    run_dir = Path(run_dir)
    run = read_run(run_dir)
    strategy, _ = load_run(run_dir)
    module, head = portable_module(strategy.to_module())
    autoencoder = load_autoencoder(run_dir) if isinstance(module, ImageClassifier) else None
    ood_limit = parse_ood_limit(ood)
    if ood_limit is not None and autoencoder is None:
        raise ValueError(f"run {run_dir.name} has no out-of-distribution autoencoder (ood.safetensors): it was trained "
                         "before fsl_app had one, or on fewer than 4 images. Retrain it, or export with --ood none.")
    if autoencoder is not None:
        module = OodImageClassifier(module, autoencoder)
    threshold = parse_threshold(threshold)
    automatic = threshold == "auto"
    if automatic:
        threshold = choose_threshold(run["predictions"] or [])
    classes = list(strategy.classes_)
    if (threshold is not None or ood_limit is not None) and UNKNOWN_LABEL in classes:
        raise ValueError(f"the run has a class named {UNKNOWN_LABEL!r}, the label of rejected images. Rename the "
                         "class and retrain, or export with --threshold none.")
    config = run["config"]
    info = {MARKER_KEY: EXPORT_FORMAT_VERSION, "fsl_app_version": _fsl_app_version(), "run": run["name"],
            "classes": classes, "preprocessing": _jsonable(config["backbone"]["data_config"]),
            "threshold": threshold, "threshold_rule": threshold_rule(threshold, automatic, run["predictions"] or []),
            "strategy": strategy.name, "params": _jsonable(strategy.get_params()),
            "backbone": _backbone_summary(config["backbone"]),
            "head": head, "quantization": None,
            "ood": None if autoencoder is None else {**autoencoder.config(), "output": OOD_OUTPUT},
            "ood_limit": ood_limit, "ood_rule": None if autoencoder is None else ood_rule(ood_limit,
                                                                                          autoencoder.quantile)}
    calibration = [*_existing_image_paths(config.get("data")), *map(str, calibration_images or [])]
    return Exportable(module=module.cpu().float().eval(), info=info, run=run, calibration=calibration)


def _existing_image_paths(data) -> list[str]:
    """The paths of the run's data snapshot that are still readable files."""
    images = data.get("images") if isinstance(data, dict) else None
    return [item["path"] for item in images or [] if isinstance(item, dict) and item.get("path")
            and Path(item["path"]).is_file()]


def split_outputs(outputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits (n, C), OOD score (n,) or None) from a module's output: a tensor, or a (logits, score) tuple."""
    if isinstance(outputs, (tuple, list)):
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)
    return outputs, None


def portable_module(module: nn.Module) -> tuple[nn.Module, dict | None]:
    """The module as ``ImageClassifier(backbone, head)`` plus a JSON head spec, so a bundle can rebuild it.

    Frozen-feature strategies already give ``ImageClassifier`` with a head that has ``config()``; a fine-tuned timm
    model keeps its own classifier (head kind ``timm``). Any other module exports to ONNX / TorchScript only
    (spec None).
    """
    from ..strategies.base import ImageClassifier

    if isinstance(module, ImageClassifier) and hasattr(module.head, "config"):
        return module, module.head.config()
    if hasattr(module, "get_classifier") and isinstance(getattr(module, "num_classes", None), int):
        return ImageClassifier(module, nn.Identity()), {"kind": "timm", "n_classes": module.num_classes}
    return module, None


def check_same_probabilities(outputs, exportable: Exportable, name: str, *, tolerance: float | None = None) -> None:
    """Fail the export when the written model does not reproduce PyTorch on a batch of 3 (another batch size).

    ``outputs``: the written model's logits, or (logits, OOD score); the OOD score is checked too when present.
    """
    logits, ood = split_outputs(outputs)
    with torch.inference_mode():
        reference_logits, reference_ood = split_outputs(exportable.module(exportable.example(3)))
        reference = torch.softmax(reference_logits.float(), 1)
    difference = (torch.softmax(logits.float(), 1) - reference).abs().max().item()
    if not difference <= (tolerance or PROBABILITY_TOLERANCE):
        raise RuntimeError(f"the {name} export differs from PyTorch by {difference:.2e} in probability. Export "
                           "another format and report this model to the fsl_app maintainers.")
    if reference_ood is not None and ood is not None:
        gap = ((torch.as_tensor(ood).float() - reference_ood.float()).abs() / reference_ood.float().abs().clamp_min(1)
               ).max().item()
        if not gap <= (tolerance or OOD_TOLERANCE):
            raise RuntimeError(f"the {name} export's OOD score differs from PyTorch by {gap:.2e}. Export with another "
                               "format and report this model to the fsl_app maintainers.")


def make_shareable(path: Path) -> None:
    """Temporary files are private (0600); an export is meant to be copied and shared (0644)."""
    path.chmod(0o644)


def _backbone_summary(spec: dict) -> dict:
    """Name, weights, source and id of the run's backbone; a local checkpoint path is cut to its file name."""
    from ..backbones import WEIGHT_SOURCES

    summary = {key: spec.get(key) for key in ("name", "weights", "source", "id")}
    if summary["weights"] not in WEIGHT_SOURCES:
        summary["weights"] = Path(str(summary["weights"])).name
    if str(summary["source"]).startswith("file:"):
        summary["source"] = "file:" + Path(str(summary["source"])[len("file:"):]).name
    return summary


def _fsl_app_version() -> str:
    from .. import __version__

    return __version__


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))
