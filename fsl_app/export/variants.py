"""Every exported variant of a run side by side: file size, speed on this machine, top-1 agreement with the run.

A variant is one ``export_run`` output: ONNX fp32, ONNX int8, TorchScript or the bundle (its PyTorch model rebuilt
from safetensors). :func:`export_variants` writes the missing files into a folder (``<run>.onnx``,
``<run>-int8.onnx``, ``<run>.pt``, ``<run>.zip``: the same names the Export page downloads) and
:func:`measure_variants` loads each with the loader ``fsl-app predict`` uses and runs it on a few of the project's
images. Speeds are measured interleaved: every round runs every variant once on the same preprocessed batch, in a
rotated order, and the median round counts, so a busy machine slows every variant alike. Agreement is the share of
those images whose top-1 class equals the run's own fitted model's (PyTorch) answer.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..images import load_for_model
from ..preprocess import working_side
from .predictors import PREDICTORS_BY_SUFFIX, Predictor, RunPredictor
from .writers import export_run

__all__ = ["VARIANTS", "Variant", "VariantReport", "variant_path", "export_variants", "measure_variants",
           "pick_images"]


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    export_format: str
    quantize: str | None
    suffix: str


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("onnx", "ONNX fp32", "onnx", None, ".onnx"),
    Variant("onnx-int8", "ONNX int8", "onnx", "int8", "-int8.onnx"),
    Variant("torchscript", "TorchScript", "torchscript", None, ".pt"),
    Variant("bundle", "Bundle (PyTorch from safetensors)", "bundle", None, ".zip"),
)}
RUN_ROW = "run"  # the reference row: the run's fitted model in PyTorch


@dataclass
class VariantReport:
    """One row of the table; ``error`` says why a variant could not be exported or run (then no figures)."""

    variant: str
    label: str
    path: str | None
    size_mb: float | None
    images_per_s: float | None
    speed_vs_run: float | None
    agreement: float | None
    n_images: int
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def variant_path(folder: str | Path, run_dir: str | Path, variant: str) -> Path:
    return Path(folder) / f"{Path(run_dir).name}{VARIANTS[variant].suffix}"


def export_variants(run_dir: str | Path, folder: str | Path, variants: Sequence[str] = tuple(VARIANTS), *,
                    on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Path | str]:
    """Write each variant not yet in ``folder`` (runs are immutable, so an existing file is current).

    Returns variant -> path, or variant -> error text for one that could not be exported (the others still are).
    """
    written: dict[str, Path | str] = {}
    for number, name in enumerate(variants):
        if on_progress:
            on_progress(f"exporting {VARIANTS[name].label}", number, len(variants))
        out = variant_path(folder, run_dir, name)
        if out.is_file():
            written[name] = out
            continue
        try:
            written[name] = Path(export_run(run_dir, VARIANTS[name].export_format, out,
                                            quantize=VARIANTS[name].quantize))
        except Exception as error:  # noqa: BLE001 - one failing format must not hide the others
            written[name] = f"{VARIANTS[name].label} export failed: {_first_line(error)}"
    return written


def measure_variants(run_dir: str | Path, paths: dict[str, Path | str], image_paths: Sequence[str | Path], *,
                     rounds: int = 5, on_progress: Callable[[str, int, int], None] | None = None
                     ) -> list[VariantReport]:
    """Size, images/s and agreement with the run for each variant in ``paths`` (see :func:`export_variants`).

    ``image_paths``: the images to run (a few suffice: 8-32); the run's own model is the first row (agreement 1).
    """
    reference = RunPredictor(run_dir)
    batch = _batch(image_paths, reference.data_config)
    predictors: dict[str, Predictor] = {RUN_ROW: reference}
    reports: dict[str, VariantReport] = {}
    for name, path in paths.items():
        if isinstance(path, str):
            reports[name] = _failed(name, None, path, len(batch))
            continue
        try:
            predictors[name] = PREDICTORS_BY_SUFFIX[path.suffix.lower()](path)
        except Exception as error:  # noqa: BLE001 - shown in the table, the others still measured
            reports[name] = _failed(name, path, f"cannot load: {_first_line(error)}", len(batch))
    seconds, top1 = _interleaved_timing(predictors, batch, rounds, on_progress)
    base_speed = float(len(batch) / np.median(seconds[RUN_ROW]))
    rows = [VariantReport(RUN_ROW, "Run (PyTorch, the reference)", str(run_dir), None, base_speed, 1.0, 1.0,
                          len(batch))]  # no size: a run folder holds the head, its backbone loads from elsewhere
    for name in paths:
        if name in reports:
            rows.append(reports[name])
            continue
        speed = float(len(batch) / np.median(seconds[name]))
        rows.append(VariantReport(name, VARIANTS[name].label, str(paths[name]), paths[name].stat().st_size / 2**20,
                                  speed, speed / base_speed, float((top1[name] == top1[RUN_ROW]).mean()),
                                  len(batch)))
    return rows


def _interleaved_timing(predictors: dict[str, Predictor], batch: torch.Tensor, rounds: int, on_progress
                        ) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Seconds per round of each predictor on ``batch`` (order rotated each round) and its top-1 classes."""
    names = list(predictors)
    seconds = {name: [] for name in names}
    top1 = {name: predictors[name].logits(batch).argmax(1).numpy() for name in names}  # the first warm-up run
    for name in names:  # a second one: TorchScript's profiling executor optimises the graph on its second call
        predictors[name].logits(batch)
    for number in range(rounds):
        if on_progress:
            on_progress("timing every variant", number, rounds)
        for name in names[number % len(names):] + names[:number % len(names)]:
            started = time.perf_counter()
            predictors[name].logits(batch)
            seconds[name].append(time.perf_counter() - started)
    return seconds, top1


def _batch(image_paths: Sequence[str | Path], data_config: dict) -> torch.Tensor:
    from ..features import images_to_batch

    if not image_paths:
        raise ValueError("no images to measure the variants on. Add images to the project.")
    side = working_side(data_config)  # read as training and every predictor read them
    return images_to_batch([load_for_model(Path(path), side) for path in image_paths], data_config)


def _failed(name: str, path: Path | None, error: str, n_images: int) -> VariantReport:
    size = path.stat().st_size / 2**20 if path is not None and path.is_file() else None
    return VariantReport(name, VARIANTS[name].label, str(path) if path else None, size, None, None, None, n_images,
                         error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def pick_images(paths: Sequence[str | Path], count: int) -> list[Path]:
    """``count`` of ``paths`` spread evenly over the list (every class of a sorted project gets some)."""
    paths = list(paths)
    if len(paths) <= count:
        return [Path(path) for path in paths]
    return [Path(paths[int(i)]) for i in np.linspace(0, len(paths) - 1, count)]
