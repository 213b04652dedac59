"""Export benchmark: ONNX Runtime vs eager PyTorch, and dynamic int8 vs fp32 ONNX, for the default exported model.

Setup: ``tf_efficientnet_lite0`` with its packaged ImageNet weights, the ``linear`` strategy (logistic regression on
CL2N-normalized features) trained with ``train_run`` on 30 digits (classes 0-4, 6 images each, 64 px PNGs), exported
with the product code (``prepare_export`` + ``write_onnx``) as fp32 ONNX and as ``--quantize int8`` ONNX.

Questions (speeds in images/s, measured interleaved in one process, see ``_report.interleaved``):

1. The same exported module on the same batch of 32 preprocessed held-out digits: ONNX Runtime CPU (the ``.onnx``)
   vs eager PyTorch (``Exportable.module`` under ``inference_mode``), and how far apart their probabilities are.
2. int8 vs fp32 ONNX: speed ratio (paired per round), file size, and on 100 held-out digits (20 per class) the
   accuracy of each, top-1 agreement and the largest probability difference.

Writes ``benchmarks/results_export.md``. Run alone (other jobs skew timings): ``.venv/bin/python
benchmarks/bench_export.py [--rounds 3]``; about 2-3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _report  # noqa: E402
from fsl_app.backbones import DEFAULT_BACKBONE, load_backbone  # noqa: E402
from fsl_app.dataset import ImageSet  # noqa: E402
from fsl_app.export import Exportable, prepare_export, write_onnx  # noqa: E402
from fsl_app.features import images_to_batch  # noqa: E402
from fsl_app.images import load_image  # noqa: E402
from fsl_app.onnx_engine import OnnxBackbone, cpu_session, cpu_threads  # noqa: E402
from fsl_app.runs import train_run  # noqa: E402
from fsl_app.strategies import create_strategy  # noqa: E402

RESULT_FILE = Path(__file__).resolve().parent / "results_export.md"
CLASSES = (0, 1, 2, 3, 4)
TRAIN_PER_CLASS = 6
HELD_OUT_PER_CLASS = 20
BATCH = 32


def write_digits(root: Path, first: int, count: int) -> Path:
    """scikit-learn's digits ``first .. first + count - 1`` of each class in CLASSES as 64 px RGB PNGs."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in CLASSES:
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in np.flatnonzero(digits.target == label)[first:first + count]:
            pixels = (digits.images[index] / 16 * 255).astype(np.uint8)
            Image.fromarray(pixels).resize((64, 64), Image.BILINEAR).convert("RGB").save(folder / f"{index:04d}.png")
    return root


def train_and_export(work: Path) -> tuple[Exportable, Path, Path, float]:
    """Train the linear run, export fp32 and int8 ONNX; returns (exportable, fp32 path, int8 path, seconds)."""
    started = time.perf_counter()
    images = ImageSet.from_folder(write_digits(work / "train", 0, TRAIN_PER_CLASS))
    backbone = load_backbone(DEFAULT_BACKBONE)
    run = train_run(images, create_strategy("linear"), backbone, work / "run").run_dir
    exportable = prepare_export(run)
    fp32 = write_onnx(exportable, work / "fp32.onnx")
    int8 = write_onnx(exportable, work / "int8.onnx", quantize="int8")
    return exportable, fp32, int8, time.perf_counter() - started


def held_out(work: Path, data_config: dict) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Preprocessed held-out digits (n, 3, H, W), their labels (n,) and the class names."""
    images = ImageSet.from_folder(write_digits(work / "held_out", TRAIN_PER_CLASS, HELD_OUT_PER_CLASS))
    batch = images_to_batch([load_image(record.path) for record in images.records], data_config)
    return batch, images.label_indices(), images.classes


def probabilities(forward, batch: torch.Tensor) -> torch.Tensor:
    """Softmax of ``forward`` over ``batch`` (n, 3, H, W) in chunks of BATCH -> (n, C)."""
    return torch.cat([torch.softmax(forward(batch[i:i + BATCH]).float(), 1) for i in range(0, len(batch), BATCH)])


def eager(module: torch.nn.Module):
    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(batch)

    return forward


def measure(args) -> dict:
    threads = cpu_threads()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as temp:
        work = Path(temp)
        exportable, fp32_path, int8_path, setup_seconds = train_and_export(work)
        batch, labels, classes = held_out(work, exportable.info["preprocessing"])
        engines = {"onnxruntime fp32": OnnxBackbone(cpu_session(fp32_path, threads)),
                   "onnxruntime int8": OnnxBackbone(cpu_session(int8_path, threads)),
                   "torch eager fp32": eager(exportable.module)}
        speed_batch = batch[:BATCH]
        rates = _report.interleaved({name: (lambda f=f: len(f(speed_batch))) for name, f in engines.items()},
                                    rounds=args.rounds)
        fp32 = probabilities(engines["onnxruntime fp32"], batch)
        int8 = probabilities(engines["onnxruntime int8"], batch)
        torch_fp32 = probabilities(engines["torch eager fp32"], speed_batch)
        return {"threads": threads, "setup_seconds": setup_seconds, "rates": rates, "classes": classes,
                "labels": labels, "fp32": fp32, "int8": int8, "torch_vs_onnx": (torch_fp32 - fp32[:BATCH]).abs().max(),
                "size_fp32": fp32_path.stat().st_size, "size_int8": int8_path.stat().st_size,
                "n_train": len(CLASSES) * TRAIN_PER_CLASS}


def report(result: dict, info: dict, seconds: float) -> str:
    rates, labels = result["rates"], result["labels"]
    fp32_rate, int8_rate = rates["onnxruntime fp32"], rates["onnxruntime int8"]
    torch_rate = rates["torch eager fp32"]
    accuracy_fp32 = float((result["fp32"].argmax(1).numpy() == labels).mean())
    accuracy_int8 = float((result["int8"].argmax(1).numpy() == labels).mean())
    agreement = float((result["fp32"].argmax(1) == result["int8"].argmax(1)).float().mean())
    probability_gap = float((result["fp32"] - result["int8"]).abs().max())
    machine = (f"{info['nproc']} CPUs ({info['cpu']}), torch {info['torch'].split('+')[0]}, onnxruntime "
               f"{info['onnxruntime']}, load {info['load_avg_1min']}")
    speed = _report.table(
        ["date", "machine", "engine", "images/s (median)", "range", "vs torch eager (paired)"],
        [[info["date"], machine, name, _report.median(values), _report.spread(values),
          f"{_report.paired_ratio(values, torch_rate):.2f}x"] for name, values in rates.items()])
    quantized = _report.table(
        ["model", "file (MiB)", "images/s (median)", "speed vs fp32 (paired)", f"held-out accuracy (n={len(labels)})",
         "top-1 agreement with fp32", "max prob. difference"],
        [["fp32 ONNX", result["size_fp32"] / 2**20, _report.median(fp32_rate), "1.00x", f"{100 * accuracy_fp32:.1f} %",
          "100 %", "0"],
         ["int8 ONNX (dynamic)", result["size_int8"] / 2**20, _report.median(int8_rate),
          f"{_report.paired_ratio(int8_rate, fp32_rate):.2f}x", f"{100 * accuracy_int8:.1f} %",
          f"{100 * agreement:.1f} %", f"{probability_gap:.4f}"]])
    return "\n".join([
        "# Export benchmark (`.venv/bin/python benchmarks/bench_export.py`)",
        "",
        f"Model: `{DEFAULT_BACKBONE}` (packaged ImageNet weights) + `linear` strategy trained on {result['n_train']} "
        f"digits ({len(result['classes'])} classes), exported by `fsl_app.export`. Batch {BATCH} of preprocessed "
        f"held-out digits, {result['threads']} threads for both engines, interleaved rounds. Measured in "
        f"{seconds:.0f} s (training and the two exports: {result['setup_seconds']:.0f} s).",
        f"Machine: {_report.machine_line(info)}.",
        "",
        "## ONNX Runtime vs eager PyTorch (same exported module, same inputs)",
        "",
        speed,
        "",
        f"Largest probability difference between the two engines on the batch: {float(result['torch_vs_onnx']):.2e}.",
        "",
        "## Dynamic int8 quantization (`--quantize int8`) vs fp32 ONNX",
        "",
        quantized,
        "",
        quantization_verdict(_report.paired_ratio(int8_rate, fp32_rate), result["size_fp32"] / result["size_int8"],
                             agreement),
        "",
    ])


def quantization_verdict(speed_ratio: float, size_ratio: float, agreement: float) -> str:
    """One sentence on what int8 buys here, from the measured numbers."""
    speed = f"{speed_ratio:.2f}x the fp32 speed" + (" (slower)" if speed_ratio < 1 else "")
    advice = ("Dynamic quantization turns convolutions into `ConvInteger` with activations quantized at run time, "
              "and ONNX Runtime's CPU kernels for that are slower than its fused fp32 convolutions: with a "
              "convolutional backbone, export fp32 for CPU speed and use int8 only where file size matters (or for "
              "MatMul-heavy transformer backbones)." if speed_ratio < 1 else
              "int8 is faster here; check the accuracy column before deploying it.")
    return (f"int8: {size_ratio:.1f}x smaller file, {speed}, top-1 agreement with fp32 {100 * agreement:.1f} %. "
            + advice)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default: %(default)s)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    info = _report.machine_info()
    result = measure(args)
    text = report(result, info, time.perf_counter() - started)
    RESULT_FILE.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
