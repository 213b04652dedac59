"""What every format writes: a run's fitted strategy as one CPU float module (n, 3, H, W) -> logits (n, C), plus the
metadata that travels with it (classes, preprocessing, threshold, head description)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .formats import EXPORT_FORMAT_VERSION, MARKER_KEY, PROBABILITY_TOLERANCE, UNKNOWN_LABEL
from .threshold import choose_threshold, parse_threshold, threshold_rule

__all__ = ["Exportable", "prepare_export", "portable_module", "check_same_probabilities", "make_shareable"]


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
    from ..runs import load_run, read_run

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
            "threshold": threshold, "threshold_rule": threshold_rule(threshold, automatic, run["predictions"] or []),
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
    from ..strategies.base import ImageClassifier

    if isinstance(module, ImageClassifier) and hasattr(module.head, "config"):
        return module, module.head.config()
    if hasattr(module, "get_classifier") and isinstance(getattr(module, "num_classes", None), int):
        return ImageClassifier(module, nn.Identity()), {"kind": "timm", "n_classes": module.num_classes}
    return module, None


def check_same_probabilities(logits: torch.Tensor, exportable: Exportable, name: str) -> None:
    """Fail the export when the written model does not reproduce PyTorch on a batch of 3 (another batch size)."""
    with torch.inference_mode():
        reference = torch.softmax(exportable.module(exportable.example(3)).float(), 1)
    difference = (torch.softmax(logits.float(), 1) - reference).abs().max().item()
    if not difference <= PROBABILITY_TOLERANCE:
        raise RuntimeError(f"the {name} export differs from PyTorch by {difference:.2e} in probability. Export "
                           "another format and report this model to the fsl_app maintainers.")


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
