"""Q1: feature-extraction throughput of ``fsl_app.features`` on CPU, end to end and per stage.

Questions answered (all rates in images/s, measured interleaved in the same run, see ``_report.interleaved``):

1. Correctness: is the product's preprocessed batch equal to stacking timm's eval transform, and are its features
   within ``FEATURE_TOLERANCE`` of eager timm's? The verdict is computed from the largest measured differences.
2. Forward engines at one batch size: eager PyTorch (default layout, channels_last), ``torch.compile`` (optional),
   ONNX Runtime (intra-op threads with / without spinning, single thread, data-parallel single-threaded sessions).
3. Batch-size sweep of the ONNX Runtime modes and of the product's end-to-end extraction.
4. End to end (decode, resize, normalize, forward) of the product ``FeatureExtractor.extract`` versus the bare
   forward pass of the same engine on pre-made tensors (goal >= 0.9), versus a plain eager timm script (goal >= 5x),
   and versus the pipeline as it was before this benchmark's changes (reconstructed below), on 224 px PNGs and on
   1600 x 1200 JPEGs.
5. Where the time goes: single-thread CPU milliseconds per image for each stage, and what PIL's JPEG ``draft`` mode
   (the product decodes JPEGs at reduced scale down to twice the resize target) saves and changes in the features
   against decoding every pixel; its effect on few-shot accuracy is measured by ``bench_photos.py``.

Run alone: ``.venv/bin/python benchmarks/bench_extraction.py [--quick] [--compile]``.
"""

from __future__ import annotations

import argparse
import copy
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import _datasets
import _report
from fsl_app.backbones import load_backbone
from fsl_app.dataset import ImageSet
from fsl_app.features import BatchPreprocessor, FeatureCache, FeatureExtractor, cache_root, eval_transform
from fsl_app.images import load_image
from fsl_app.preprocess import draft_size
from fsl_app.onnx_engine import OnnxBackbone, cpu_session, cpu_threads, export_onnx

# "Features equal timm's eval transform": the product's preprocessed batch may differ from stacking timm's transform by
# at most BATCH_TOLERANCE (normalized pixel units), and its features from eager timm's (fp32) by at most
# FEATURE_TOLERANCE relative to the largest absolute feature (ONNX Runtime's kernels round differently from PyTorch's).
BATCH_TOLERANCE = 1e-6
FEATURE_TOLERANCE = 1e-5


def product_export(backbone) -> Path:
    """The ONNX file the product uses (made by the first FeatureExtractor)."""
    return OnnxBackbone.export_path(backbone, cache_root() / "onnx")


def previous_export(backbone) -> Path:
    """The export as it was before this change: timm's dynamic "same" padding traced into the graph."""
    path = _datasets.data_root() / "onnx-dynamic-padding" / f"{backbone.id}.onnx"
    if not path.is_file():
        example = torch.randn(2, *backbone.input_size, generator=torch.Generator().manual_seed(0))
        export_onnx(backbone.model.cpu().float(), example, path, static_padding=False)
    return path


# --- candidates -------------------------------------------------------------------------------------------------

def product_extract(extractor: FeatureExtractor, images: ImageSet) -> int:
    """The product path with an empty (memory-only) cache, so every image is decoded and forwarded."""
    extractor.cache = FeatureCache(enabled=False)
    extractor.extract(images)
    return len(images)


def bare_forward(forward, batch: torch.Tensor, count: int) -> int:
    """``forward`` on the same pre-made batch until ``count`` images went through."""
    done = 0
    while done < count:
        forward(batch)
        done += len(batch)
    return done


def eager_forward(model: torch.nn.Module, channels_last: bool = False):
    def forward(batch: torch.Tensor) -> torch.Tensor:
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return model(batch)

    return forward


def plain_timm_script(model: torch.nn.Module, transform, paths: list[Path], batch_size: int) -> int:
    """What a user writes with timm alone: PIL open, the eval transform per image, eager forward per batch."""
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[start:start + batch_size]])
            model(batch)
    return len(paths)


def previous_pipeline(forward, transform, paths: list[Path], batch_size: int, workers: int = 4) -> int:
    """fsl_app's extraction before this change: 4 decode threads running the timm transform per image, one batch
    prefetched, the forward in ONNX Runtime with intra-op threads on all cores (spinning) on the previous export
    (dynamic padding)."""
    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(workers) as pool, ThreadPoolExecutor(1) as prefetcher:
        def prepare(batch):
            return torch.stack(list(pool.map(lambda p: transform(load_image(p)), batch)))

        pending = prefetcher.submit(prepare, batches[0])
        for index in range(len(batches)):
            tensor = pending.result()
            if index + 1 < len(batches):
                pending = prefetcher.submit(prepare, batches[index + 1])
            forward(tensor)
    return len(paths)


# --- sections ---------------------------------------------------------------------------------------------------

def correctness(backbone, extractor: FeatureExtractor, image_sets: dict[str, ImageSet]) -> tuple[str, dict]:
    """Largest differences over every image set: ``batch`` (absolute) and ``features`` (relative)."""
    transform = eval_transform(backbone.data_config)
    model = backbone.model.eval()
    rows, worst = [], {"batch": 0.0, "features": 0.0}
    for name, images in image_sets.items():
        subset = images.subset(range(min(24, len(images))))
        pil = [load_image(r.path, draft=extractor.draft) for r in subset.records]  # the product's decode
        reference_batch = torch.stack([transform(im) for im in pil])
        product_batch = extractor.preprocess(pil)
        with torch.inference_mode():
            reference = model(reference_batch)
        extractor.cache = FeatureCache(enabled=False)
        features = extractor.extract(subset)
        batch_diff = (product_batch - reference_batch).abs().max().item()
        feature_diff = (features - reference).abs().max().item()
        relative = feature_diff / reference.abs().max().item()
        worst = {"batch": max(worst["batch"], batch_diff), "features": max(worst["features"], relative)}
        rows.append([name, len(subset), f"{batch_diff:.1e}", f"{feature_diff:.1e}", f"{relative:.1e}"])
    if worst["batch"] == 0:
        batch_note = ("The preprocessed batch is bit-identical (diff 0): the resize and crop are timm's own transform "
                      "objects, and the batched ToTensor + Normalize repeat the same float32 operations.")
    else:
        batch_note = (f"The preprocessed batch differs from timm's by up to {worst['batch']:.1e} "
                      f"({'within' if worst['batch'] <= BATCH_TOLERANCE else 'above'} the {BATCH_TOLERANCE:.0e} "
                      "tolerance).")
    text = "### Correctness\n\n" + _report.table(
        ["images", "n", "max abs diff of the preprocessed batch vs stacked timm eval transform",
         "max abs diff of features vs eager timm (fp32)", "same, relative to max abs feature"], rows) + (
        f"\n\n{batch_note} Features: up to {worst['features']:.1e} of the largest feature "
        f"({'within' if worst['features'] <= FEATURE_TOLERANCE else 'above'} the {FEATURE_TOLERANCE:.0e} tolerance), "
        "the product's engine against eager PyTorch.")
    return text, worst


def forward_engines(backbone, batch_size: int, rounds: int, with_compile: bool) -> str:
    path, previous = product_export(backbone), previous_export(backbone)
    threads = cpu_threads()
    batch = torch.randn(batch_size, *backbone.input_size, generator=torch.Generator().manual_seed(0))
    default_model = copy.deepcopy(backbone.model).eval()
    channels_last_model = copy.deepcopy(backbone.model).eval().to(memory_format=torch.channels_last)
    engines = {
        "eager PyTorch, default layout": eager_forward(default_model),
        "eager PyTorch, channels_last": eager_forward(channels_last_model, channels_last=True),
        f"ONNX Runtime, intra-op {threads} threads, spinning": OnnxBackbone(cpu_session(path, threads)),
        f"ONNX Runtime, intra-op {threads} threads, no spinning":
            OnnxBackbone(cpu_session(path, threads, spinning=False)),
        "ONNX Runtime, 1 thread": OnnxBackbone(cpu_session(path, 1)),
        f"ONNX Runtime, data-parallel {threads} x 1 thread, slices of {OnnxBackbone.chunk_size} (product)":
            OnnxBackbone(cpu_session(path, 1), workers=threads),
        f"previous export (dynamic padding), intra-op {threads} threads, spinning (before)":
            OnnxBackbone(cpu_session(previous, threads)),
        f"previous export (dynamic padding), data-parallel {threads} x 1":
            OnnxBackbone(cpu_session(previous, 1), workers=threads),
    }
    notes = []
    if with_compile:
        started = time.perf_counter()
        compiled = torch.compile(copy.deepcopy(channels_last_model))
        eager_forward(compiled, channels_last=True)(batch)
        notes.append(f"`torch.compile` (inductor, channels_last) took {time.perf_counter() - started:.0f} s to "
                     "compile and run the first batch (a later run reuses the on-disk inductor cache).")
        engines["torch.compile, channels_last"] = eager_forward(compiled, channels_last=True)
    else:
        notes.append("`torch.compile` not measured in this run (pass `--compile`).")
    candidates = {name: (lambda f=forward: bare_forward(f, batch, batch_size)) for name, forward in engines.items()}
    rates = _report.interleaved(candidates, rounds)
    eager = rates["eager PyTorch, default layout"]
    rows = [[name, _report.median(values), _report.spread(values), _report.paired_ratio(values, eager)]
            for name, values in rates.items()]
    with torch.inference_mode():
        reference = default_model(batch)
    errors = {name: (forward(batch) - reference).abs().max().item() for name, forward in engines.items()}
    for row in rows:
        row.append(f"{errors[row[0]]:.1e}")
    text = (f"### Forward pass only, batch {batch_size}, pre-made tensors ({rounds} interleaved rounds)\n\n"
            + _report.table(["engine", "img/s (median)", "range", "x eager default (paired)",
                             "max abs diff vs eager"], rows)
            + "\n\n" + " ".join(notes))
    return text, {name: _report.median(values) for name, values in rates.items()}


def batch_sweep(backbone, images: ImageSet, slices: list[int], batches: list[int], rounds: int, count: int) -> str:
    """Bare forward: data-parallel by slice size and intra-op by batch size; product end to end by batch size."""
    path = product_export(backbone)
    threads = cpu_threads()
    session = cpu_session(path, 1)
    intra = OnnxBackbone(cpu_session(path, threads))
    candidates = {}
    for size in slices:
        data = OnnxBackbone(session, workers=threads)
        data.chunk_size = size
        batch = torch.randn(max(size * threads, 8), *backbone.input_size)
        candidates[f"data slice {size}"] = lambda f=data, b=batch: bare_forward(f, b, count)
    for size in batches:
        batch = torch.randn(size, *backbone.input_size)
        extractor = FeatureExtractor(backbone, batch_size=size, cache=FeatureCache(enabled=False))
        candidates[f"intra {size}"] = lambda b=batch: bare_forward(intra, b, count)
        candidates[f"bare {size}"] = lambda e=extractor, b=batch: bare_forward(e.forward_tensors, b, count)
        candidates[f"e2e {size}"] = lambda e=extractor: product_extract(e, images.subset(range(count)))
    rates = _report.interleaved(candidates, rounds)
    slice_rows = [[size, _report.median(rates[f"data slice {size}"])] for size in slices]
    batch_rows = [[size, _report.median(rates[f"intra {size}"]), _report.median(rates[f"bare {size}"]),
                   _report.median(rates[f"e2e {size}"]), _report.paired_ratio(rates[f"e2e {size}"],
                                                                               rates[f"bare {size}"])]
                  for size in batches]
    return (f"### Slice and batch sizes ({count} images per measurement, {rounds} interleaved rounds)\n\n"
            + _report.table([f"images per run, data-parallel {threads} x 1", "img/s (bare forward)"], slice_rows)
            + "\n\n"
            + _report.table(["batch", f"ORT intra-op {threads} threads, one run per batch (img/s)",
                             "product engine bare forward (img/s)", "product end to end, 224 px PNG (img/s)",
                             "end to end / bare (paired)"], batch_rows))


def end_to_end(backbone, name: str, images: ImageSet, batch_size: int, rounds: int) -> tuple[str, dict]:
    threads = cpu_threads()
    paths = [r.path for r in images.records]
    transform = eval_transform(backbone.data_config)
    batch = torch.randn(batch_size, *backbone.input_size)
    product = FeatureExtractor(backbone, batch_size=batch_size, cache=FeatureCache(enabled=False))
    intra = FeatureExtractor(backbone, batch_size=batch_size, cache=FeatureCache(enabled=False), parallel="intra")
    previous_engine = OnnxBackbone(cpu_session(previous_export(backbone), threads))
    eager_model = copy.deepcopy(backbone.model).eval()
    n = len(images)
    pairs = {
        "product extract (default: data-parallel ORT)": (lambda: product_extract(product, images),
                                                         lambda: bare_forward(product.forward_tensors, batch, n)),
        "product extract, parallel='intra'": (lambda: product_extract(intra, images),
                                              lambda: bare_forward(intra.forward_tensors, batch, n)),
        "previous pipeline (before this change)": (
            lambda: previous_pipeline(previous_engine, transform, paths, batch_size),
            lambda: bare_forward(previous_engine, batch, n)),
        "plain eager timm script": (lambda: plain_timm_script(eager_model, transform, paths, batch_size),
                                    lambda: bare_forward(eager_forward(eager_model), batch, n)),
    }
    candidates = {}
    for label, (e2e, bare) in pairs.items():
        candidates[f"{label}|e2e"], candidates[f"{label}|bare"] = e2e, bare
    rates = _report.interleaved(candidates, rounds)
    labels = list(pairs)
    product_rates = rates[f"{labels[0]}|e2e"]
    rows = []
    for label in labels:
        e2e, bare = rates[f"{label}|e2e"], rates[f"{label}|bare"]
        rows.append([label, _report.median(e2e), _report.spread(e2e), _report.median(bare),
                     _report.paired_ratio(e2e, bare), _report.paired_ratio(product_rates, e2e)])
    summary = {"e2e_over_bare": _report.paired_ratio(product_rates, rates[f"{labels[0]}|bare"]),
               "over_eager_script": _report.paired_ratio(product_rates, rates[f"{labels[3]}|e2e"]),
               "over_eager_forward": _report.paired_ratio(product_rates, rates[f"{labels[3]}|bare"]),
               "over_previous": _report.paired_ratio(product_rates, rates[f"{labels[2]}|e2e"]),
               "over_previous_rounds": [a / b for a, b in zip(product_rates, rates[f"{labels[2]}|e2e"])],
               "product": _report.median(product_rates)}
    text = (f"### End to end, {name} ({n} images, batch {batch_size}, {rounds} interleaved rounds)\n\n"
            + _report.table(["pipeline", "end to end img/s (median)", "range", "bare forward img/s",
                             "end to end / its bare forward (goal >= 0.9)", "product / this (paired)"], rows)
            + f"\n\nProduct end to end vs plain eager timm forward on pre-made tensors: "
              f"{summary['over_eager_forward']:.1f}x (goal >= 5x).")
    return text, summary


def stage_costs(backbone, image_sets: dict[str, ImageSet], batch_size: int) -> str:
    """Single-thread CPU time per image of each stage (thread_time, best of 3)."""
    transform = eval_transform(backbone.data_config)
    preprocessor = BatchPreprocessor.from_transform(transform)
    session = OnnxBackbone(cpu_session(product_export(backbone), 1))

    def best(function, repeats: int = 3) -> float:
        times = []
        for _ in range(repeats):
            start = time.thread_time()
            function()
            times.append(time.thread_time() - start)
        return min(times)

    rows, draft_note, shares = [], "", {}
    for name, images in image_sets.items():
        paths = [r.path for r in images.records][:batch_size]
        pil = [load_image(p) for p in paths]
        geometric = [preprocessor.to_array(im) for im in pil]
        resized = [transform.transforms[1](transform.transforms[0](im)) for im in pil]
        tensors = [transform.transforms[2](im) for im in resized]
        batch = preprocessor.stack(geometric)
        stages = {
            "read + decode (`load_image`)": lambda: [load_image(p) for p in paths],
            "resize + center crop (PIL bicubic)": lambda: [preprocessor.to_array(im) for im in pil],
            "ToTensor + Normalize per image (timm, before)": lambda: [transform.transforms[3](
                transform.transforms[2](im)) for im in resized],
            "batched ToTensor + Normalize (numpy, now)": lambda: preprocessor.stack(geometric),
            "forward, ORT 1 thread": lambda: session(batch),
        }
        del tensors
        costs = {stage: 1000 * best(function) / len(paths) for stage, function in stages.items()}
        if name.startswith("JPEG"):
            target = draft_size(backbone.data_config)

            def drafted():
                return [preprocessor.to_array(load_image(p, draft=target)) for p in paths]

            costs["decode with JPEG `draft` (the product) + resize + crop"] = 1000 * best(drafted) / len(paths)
            exact = session(preprocessor.stack(geometric))
            approximate = session(preprocessor.stack(drafted()))
            draft_error = (exact - approximate).abs().max().item() / exact.abs().max().item()
            draft_note = (f"\n\nJPEG `draft` (DCT-domain downscaling while decoding, here to at least {target}, "
                          "twice the resize target) changes the features by up to "
                          f"{draft_error:.1e} relative to their largest value against decoding every pixel; the "
                          "product uses it (few-shot accuracy within the interval: benchmarks/results/photos.md).")
        rows.extend([[name, stage, cost] for stage, cost in costs.items()])
        preprocessing = sum(cost for stage, cost in costs.items() if stage.startswith(("read", "resize", "batched")))
        shares[name] = preprocessing / (preprocessing + costs["forward, ORT 1 thread"])
    note = ("\n\nOn a machine whose cores all run the forward pass, decoding can only use CPU time the forward pass "
            "gives up, so end to end / bare forward is bounded by about 1 - (preprocessing share of the per-image CPU "
            "time): " + ", ".join(f"{name} {1 - share:.2f}" for name, share in shares.items()) + ".")
    return ("### Where the time goes (single-thread CPU ms per image, best of 3)\n\n"
            + _report.table(["images", "stage", "CPU ms / image"], rows) + draft_note + note), shares


def features_verdict(differences: dict) -> str:
    """'met' when both differences are within their tolerance, else which one is not."""
    failed = [f"{name} {differences[name]:.1e} > {tolerance:.0e}" for name, tolerance in
              (("batch", BATCH_TOLERANCE), ("features", FEATURE_TOLERANCE)) if differences[name] > tolerance]
    return "met" if not failed else "not met: " + ", ".join(failed)


def speed_verdict(ratios_by_images: dict[str, list[float]]) -> str:
    """'met' when the product was faster (ratio > 1) in every paired round on every image set; otherwise the image
    sets where it was not, as 'slower' (every round < 1) or 'no clear difference' (rounds on both sides)."""
    problems = []
    for name, ratios in ratios_by_images.items():
        if min(ratios) > 1:
            continue
        problems.append(f"{name} {'slower' if max(ratios) < 1 else 'no clear difference'} "
                        f"({min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} rounds)")
    return "met" if not problems else "not met: " + "; ".join(problems)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (for `make bench`)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes to compile)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    started = time.perf_counter()
    info = _report.machine_info()
    rounds = 3 if args.quick else 5
    backbone = load_backbone()
    png = ImageSet.from_folder(_datasets.png224_folder())
    jpeg = ImageSet.from_folder(_datasets.photos_folder())
    product = FeatureExtractor(backbone, batch_size=args.batch_size, cache=FeatureCache(enabled=False))
    sets = {"224 px PNG": png, "JPEG 1600 x 1200": jpeg}
    correctness_text, differences = correctness(backbone, product, sets)
    sections = [
        f"Backbone `{backbone.name}` ({backbone.id}), product engine `{product.engine}`, parallel "
        f"`{product.parallel}`, {product.num_workers} workers, default batch {args.batch_size}.",
        correctness_text,
    ]
    png_text, png_summary = end_to_end(backbone, "224 px PNG", png.subset(range(64 if args.quick else 128)),
                                       args.batch_size, rounds)
    jpeg_text, jpeg_summary = end_to_end(backbone, "JPEG 1600 x 1200", jpeg.subset(range(16 if args.quick else 32)),
                                         min(args.batch_size, 16 if args.quick else 32), rounds)
    sections.insert(1, "**Summary** (224 px PNG): product end to end "
                    f"{png_summary['product']:.1f} img/s = {png_summary['e2e_over_bare']:.2f} of its bare forward "
                    f"(goal >= 0.9), {png_summary['over_eager_script']:.1f}x a plain eager timm script and "
                    f"{png_summary['over_eager_forward']:.1f}x eager timm's bare forward (goal >= 5x), "
                    f"{png_summary['over_previous']:.2f}x the previous pipeline. JPEG 1600 x 1200: "
                    f"{jpeg_summary['product']:.1f} img/s, {jpeg_summary['e2e_over_bare']:.2f} of bare forward, "
                    f"{jpeg_summary['over_previous']:.2f}x the previous pipeline.")
    engines_text, engine_rates = forward_engines(backbone, args.batch_size, rounds, args.compile)
    stages_text, shares = stage_costs(backbone, sets, 16)
    sections += [png_text, jpeg_text, engines_text,
                 batch_sweep(backbone, png, [1, 2, 4, 8, 16, 32] if not args.quick else [1, 2, 4, 16],
                             [1, 8, 32, 64] if not args.quick else [8, 32], rounds, 32 if args.quick else 64),
                 stages_text]
    product_name = next(name for name in engine_rates if name.endswith("(product)"))
    others = {name: rate for name, rate in engine_rates.items() if name != product_name}
    best_other = max(others, key=others.get)
    ratio = png_summary["e2e_over_bare"]
    goals = [
        ["224 px PNG end to end / bare forward of the same engine >= 0.9", f"{ratio:.2f}",
         "met" if ratio >= 0.9 else f"not met: bounded by ~{1 - shares['224 px PNG']:.2f} (decode + resize are "
                                    f"{100 * shares['224 px PNG']:.0f}% of the per-image CPU time, exact pixels kept)"],
        ["product end to end >= 5x plain eager timm (224 px PNG)",
         f"{png_summary['over_eager_script']:.1f}x the script, {png_summary['over_eager_forward']:.1f}x its bare "
         "forward", "met" if png_summary["over_eager_script"] >= 5 else "not met"],
        ["fastest correct engine is the CPU default", f"{engine_rates[product_name]:.0f} img/s vs next best "
         f"{others[best_other]:.0f} ({best_other})",
         "met" if engine_rates[product_name] >= others[best_other] else "not met in this run"],
        [f"features equal timm's eval transform (batch within {BATCH_TOLERANCE:.0e}, features within "
         f"{FEATURE_TOLERANCE:.0e} relative)", f"batch max diff {differences['batch']:.1e}, features "
         f"{differences['features']:.1e} relative", features_verdict(differences)],
        ["end to end faster than the previous pipeline (in every paired round)",
         f"{png_summary['over_previous']:.2f}x (224 px PNG), {jpeg_summary['over_previous']:.2f}x (JPEG 1600 x 1200), "
         "median of paired rounds", speed_verdict({"224 px PNG": png_summary["over_previous_rounds"],
                                                   "JPEG 1600 x 1200": jpeg_summary["over_previous_rounds"]})],
    ]
    _report.write_result("extraction", "Q1. Feature extraction throughput (CPU)", sections, info=info,
                         seconds=time.perf_counter() - started, goals=goals)


if __name__ == "__main__":
    main()
