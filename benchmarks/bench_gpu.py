"""Q5: feature extraction and fine-tuning on a CUDA GPU (AMP, channels_last, pinned memory, decode workers).

Without a CUDA device this script writes a results file that says it was not run, and exits 0. With one:

1. Forward pass on pre-made tensors: fp32 (default layout, channels_last), AMP fp16 and bf16 (default layout,
   channels_last), optionally ``torch.compile``; batch sizes 32 / 64 / 128 / 256; interleaved rounds with
   ``torch.cuda.synchronize``; feature error of AMP vs fp32.
2. End to end: the product ``FeatureExtractor(device="cuda")`` (AMP + channels_last + pinned memory, decode threads
   one batch ahead) vs its bare forward, for several decode-thread counts and batch sizes, on 224 px PNGs and on
   1600 x 1200 JPEGs.
3. Fine-tuning step time of the product (AMP + GradScaler + channels_last on CUDA) vs the hand-written loop of
   bench_finetune_step.py run the same way on the GPU.

``--device cpu --tiny`` runs every code path on the CPU with tiny sizes (to check the script without a GPU; the
numbers mean nothing). Run alone: ``.venv/bin/python benchmarks/bench_gpu.py [--compile]``.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from torch import nn

import _datasets
import _report
from fsl_app.backbones import load_backbone
from fsl_app.dataset import ImageSet
from fsl_app.features import FeatureCache, FeatureExtractor
from fsl_app.strategies import create_strategy


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_variants(model: nn.Module, device: torch.device, with_compile: bool) -> dict:
    default = copy.deepcopy(model).to(device).eval()
    channels_last = copy.deepcopy(model).to(device).eval().to(memory_format=torch.channels_last)

    def make(module, layout_last: bool, dtype):
        def forward(batch: torch.Tensor) -> torch.Tensor:
            if layout_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float16,
                                                        enabled=dtype is not None):
                return module(batch).float()

        return forward

    variants = {"fp32, default layout": make(default, False, None),
                "fp32, channels_last": make(channels_last, True, None),
                "AMP fp16, default layout": make(default, False, torch.float16),
                "AMP fp16, channels_last (product)": make(channels_last, True, torch.float16)}
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        variants["AMP bf16, channels_last"] = make(channels_last, True, torch.bfloat16)
    if with_compile:
        variants["torch.compile, AMP fp16, channels_last"] = make(torch.compile(channels_last), True, torch.float16)
    return variants


def forward_section(backbone, device: torch.device, sizes: list[int], rounds: int, with_compile: bool) -> str:
    variants = forward_variants(backbone.model, device, with_compile)
    rows = []
    for size in sizes:
        batch = torch.randn(size, *backbone.input_size, generator=torch.Generator().manual_seed(0)).to(device)
        reference = variants["fp32, default layout"](batch)

        def timed(forward):
            def call() -> int:
                for _ in range(5):
                    forward(batch)
                synchronize(device)
                return 5 * size

            return call

        rates = _report.interleaved({name: timed(f) for name, f in variants.items()}, rounds)
        base = rates["fp32, default layout"]
        for name, forward in variants.items():
            error = ((forward(batch) - reference).abs().max() / reference.abs().max()).item()
            rows.append([size, name, _report.median(rates[name]), _report.paired_ratio(rates[name], base),
                         f"{error:.1e}"])
    return ("### Forward pass on pre-made tensors on the device\n\n"
            + _report.table(["batch", "variant", "img/s (median)", "x fp32 default (paired)",
                             "max abs diff vs fp32 / max abs feature"], rows))


def end_to_end_section(backbone, device: torch.device, sets: dict[str, ImageSet], sizes: list[int],
                       workers: list[int], rounds: int) -> str:
    rows = []
    for name, images in sets.items():
        for size in sizes:
            candidates, extractors = {}, {}
            for count in workers:
                extractor = FeatureExtractor(backbone, device=device, batch_size=size, num_workers=count,
                                             cache=FeatureCache(enabled=False))
                extractors[count] = extractor

                def e2e(extractor=extractor) -> int:
                    extractor.cache = FeatureCache(enabled=False)
                    extractor.extract(images)
                    synchronize(device)
                    return len(images)

                candidates[f"e2e {count}"] = e2e
            batch = torch.randn(size, *backbone.input_size)  # on the host, as the pipeline hands it over
            forward = extractors[workers[0]].forward_tensors

            def bare() -> int:
                done = 0
                while done < len(images):
                    forward(batch)
                    done += size
                synchronize(device)
                return done

            candidates["bare"] = bare
            rates = _report.interleaved(candidates, rounds)
            for count in workers:
                rows.append([name, size, count, _report.median(rates[f"e2e {count}"]),
                             _report.median(rates["bare"]), _report.paired_ratio(rates[f"e2e {count}"], rates["bare"])])
    return ("### End to end: product FeatureExtractor on the device (AMP, channels_last, pinned memory)\n\n"
            + _report.table(["images", "batch", "decode threads", "end to end img/s", "bare forward img/s "
                             "(host tensors)", "end to end / bare"], rows))


def finetune_section(backbone, device: torch.device, images: ImageSet, epochs: int, batch_size: int) -> str:
    import bench_finetune_step

    pil = [images.load(i) for i in range(len(images))]
    labels = images.label_indices().tolist()
    steps = -(-len(images) // batch_size)
    rows = []
    for mode in ("head", "full"):
        stamps = []
        strategy = create_strategy("finetune", mode=mode, epochs=epochs, batch_size=batch_size, augment="none",
                                   val_fraction=0.0, patience=epochs, seed=0)
        strategy.fit(images, backbone=backbone, on_step=lambda step: stamps.append(time.perf_counter()))
        product = _report.median(list(np.diff(stamps))) / steps
        hand = _report.median(bench_finetune_step.hand_loop(backbone, pil, labels, mode, epochs, batch_size,
                                                            device=device, amp=device.type == "cuda")[1:]) / steps
        rows.append([mode, product, hand, product / hand])
    return (f"### Fine-tuning step on the device ({len(images)} images, batch {batch_size}, {epochs} epochs, first "
            "not counted)\n\n" + _report.table(["mode", "product s / step", "hand loop s / step",
                                                 "product / hand"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, to check the code paths")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    info = _report.machine_info()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        _report.write_result("gpu", "Q5. GPU (CUDA): not run", [
            "**Not run: this machine has no CUDA device.** The script is ready for a machine with one: "
            "`.venv/bin/python benchmarks/bench_gpu.py [--compile]` measures the forward pass (fp32 vs AMP fp16/bf16, "
            "default layout vs channels_last, optional torch.compile, batch 32-256), the product's end-to-end "
            "extraction on the GPU (AMP + channels_last + pinned memory, 2-8 decode threads) vs its bare forward, "
            "and the fine-tuning step (AMP + GradScaler) vs a hand-written loop. `--device cpu --tiny` checks its code "
            "paths without a GPU."], info=info,
            goals=not_measured_goals("no CUDA device on this machine"))
        return
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    backbone = load_backbone()
    png = ImageSet.from_folder(_datasets.png224_folder())
    jpeg = ImageSet.from_folder(_datasets.photos_folder())
    if args.tiny:
        sets = {"224 px PNG": png.subset(range(8)), "JPEG 1600 x 1200": jpeg.subset(range(4))}
        sizes, workers, rounds, fwd_sizes = [4], [1, 2], 1, [2]
    else:
        sets = {"224 px PNG": png, "JPEG 1600 x 1200": jpeg}
        sizes, workers, rounds, fwd_sizes = [64, 128], [2, 4, 8], 5, [32, 64, 128, 256]
    digits = ImageSet.from_folder(_datasets.digits_folder())
    per_class = 1 if args.tiny else 6
    finetune_images = digits.subset([i for c in digits.classes[:8]
                                     for i in [j for j, r in enumerate(digits.records) if r.label == c][:per_class]])
    dry_run = device.type != "cuda" or args.tiny
    sections = [("**Dry run, not a GPU measurement.** Every code path ran on "
                 f"`{device}` with tiny sizes (1 round) to check that the script works; the numbers below say nothing "
                 "about GPU speed, and no GPU goal is measured by this file. " if dry_run else "")
                + f"Device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}. "
                "cudnn.benchmark on.",
                forward_section(backbone, device, fwd_sizes, rounds, args.compile),
                end_to_end_section(backbone, device, sets, sizes, workers, rounds),
                finetune_section(backbone, device, finetune_images, 2 if args.tiny else 4, 4 if args.tiny else 16)]
    name = "gpu_dry_run" if dry_run else "gpu"
    _report.write_result(name, f"Q5. GPU ({device.type}{', tiny dry run' if args.tiny else ''})", sections, info=info,
                         seconds=time.perf_counter() - started,
                         goals=not_measured_goals(f"dry run on {device}: code paths only") if dry_run else None)


def not_measured_goals(reason: str) -> list[list[str]]:
    """The GPU goals, each marked not run with ``reason`` (a dry run or a machine without CUDA measures none)."""
    return [["end to end >= 0.8 of the bare forward on a CUDA GPU", reason, "not run"],
            ["fine-tuning step (AMP + channels_last) <= 1.1x a hand-written loop on a CUDA GPU", reason, "not run"]]


if __name__ == "__main__":
    main()
