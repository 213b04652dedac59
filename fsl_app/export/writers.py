"""``export_run``: one entry point that checks the options, prepares the run once and hands it to the format's writer.

Every strategy's ``to_module()`` maps a preprocessed batch (n, 3, H, W) to logits (n, n_classes); each format
carries that one module with the class names, timm's eval preprocessing and an optional "none of these" threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .bundle_writer import write_bundle
from .formats import EXPORT_FORMATS, FORMAT_SUFFIXES, QUANTIZATIONS
from .metadata import info_from_onnx_metadata, read_bundle_json, read_torchscript_info
from .onnx_writer import write_onnx
from .prepare import prepare_export
from .threshold import parse_ood_limit, parse_threshold
from .torchscript_writer import write_torchscript

__all__ = ["WRITERS", "export_run", "export_path", "exported_info"]

WRITERS: dict[str, Callable[..., Path]] = {"onnx": write_onnx, "torchscript": write_torchscript,
                                           "bundle": write_bundle}


def export_run(run_dir: str | Path, export_format: str, out: str | Path | None = None, *,
               threshold: str | float | None = None, quantize: str | None = None, ood: str | float | None = None,
               calibration_images: list | None = None) -> Path:
    """Export a run folder as ``export_format`` (onnx, torchscript, bundle) to ``out`` (default: next to the run).

    ``threshold``: ``"auto"``, ``"none"``/None or a probability; ``quantize``: None or ``"int8"`` (ONNX formats,
    static int8 calibrated on the run's labeled images plus ``calibration_images``, e.g. the unlabeled pool);
    ``ood``: ``"auto"``, ``"none"``/None or a limit on the autoencoder's OOD score (the score travels either way).
    """
    run_dir = Path(run_dir)
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {export_format!r}. Pick one of: {', '.join(EXPORT_FORMATS)}.")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantize!r}. Pick one of: {', '.join(QUANTIZATIONS)}.")
    if quantize and export_format == "torchscript":
        raise ValueError("--quantize applies to ONNX models. Use --format onnx or bundle, or drop --quantize.")
    parse_threshold(threshold)
    parse_ood_limit(ood)
    if not (run_dir / "model.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished run folder (no model.json). Pass a folder written by "
                                "`fsl-app train`.")
    out = export_path(run_dir, export_format, out)
    exportable = prepare_export(run_dir, threshold=threshold, ood=ood, calibration_images=calibration_images)
    return WRITERS[export_format](exportable, out, quantize=quantize)


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
    return read_bundle_json(out, "config.json")
