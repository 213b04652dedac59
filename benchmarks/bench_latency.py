"""Q2: interactive latency, the time from "train" to a result for frozen-feature strategies (goal < 1 s warm, CPU).

Data: 10 classes x 10 images (the first 10 digits of each class, 224 px PNG). Each measurement runs in a fresh
Python process (``--child``) that times its phases separately:

- ``load backbone``: ``load_backbone()`` (timm model + packaged weights + weights hash);
- ``open data``: ``ImageSet.from_folder`` (lists and hashes the files);
- ``engine``: the first ``get_extractor`` (ONNX Runtime session, checked against torch; export when missing);
- ``train``: ``runs.train_run`` (evaluation with the automatic protocol, here leave-one-out over 100 images, fit
  on all, run folder written) — the "train" button;
- ``train again``: the same call again in the same process (what the UI does on the next click: backbone,
  session and features stay in memory).

Cache states: ``cold`` = empty feature cache (ONNX export present), ``warm`` = features cached on disk by an earlier
process. Variants: the automatic protocol (the product) and leave-one-out. ``fsl-app train`` wall time as a whole
process is measured too, and one ``fit_features``.

Run alone: ``.venv/bin/python benchmarks/bench_latency.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _datasets
import _report

STRATEGIES = {"linear": {}, "protonet": {}}


def small_folder(per_class: int = 10) -> Path:
    """The first ``per_class`` digits of each class, as their own ImageFolder."""
    source = _datasets.digits_folder()
    target = _datasets.data_root() / f"{source.name}-{per_class}-per-class"
    if not (target / ".complete").is_file():
        shutil.rmtree(target, ignore_errors=True)
        for folder in sorted(p for p in source.iterdir() if p.is_dir()):
            (target / folder.name).mkdir(parents=True)
            for path in sorted(folder.iterdir())[:per_class]:
                shutil.copy2(path, target / folder.name / path.name)
        (target / ".complete").write_text("ok\n")
    return target


VARIANTS = {  # train_run's protocol: the product's automatic choice, and leave-one-out for comparison
    "auto protocol (product)": "auto",
    "leave-one-out": "loo",
}


def child(data: str, strategy_name: str, out: str, variant: str) -> None:
    """One measurement in this process; prints a JSON line of phase timings."""
    timings = {}
    start = time.perf_counter()
    from fsl_app.backbones import load_backbone
    from fsl_app.dataset import ImageSet
    from fsl_app.features import get_extractor
    from fsl_app.runs import train_run
    from fsl_app.strategies import create_strategy

    timings["import"] = time.perf_counter() - start
    mark = time.perf_counter()
    backbone = load_backbone()
    timings["load backbone"] = time.perf_counter() - mark
    mark = time.perf_counter()
    images = ImageSet.from_folder(data)
    timings["open data"] = time.perf_counter() - mark
    mark = time.perf_counter()
    get_extractor(backbone)
    timings["engine"] = time.perf_counter() - mark
    for phase in ("train", "train again"):
        mark = time.perf_counter()
        result = train_run(images, create_strategy(strategy_name, **STRATEGIES[strategy_name]), backbone,
                           Path(out) / phase.replace(" ", "-"), protocol=VARIANTS[variant])
        timings[phase] = time.perf_counter() - mark
        timings[f"{phase} evaluation"] = result.metrics["evaluation_seconds"]
    timings["protocol"] = result.metrics["protocol"]
    timings["accuracy"] = result.metrics["accuracy"]
    timings["total"] = time.perf_counter() - start
    print(json.dumps(timings))


def run_child(data: Path, strategy: str, cache: Path, out: Path, variant: str, timeout: float) -> dict | None:
    try:
        completed = subprocess.run([sys.executable, __file__, "--child", str(data), strategy, str(out), variant],
                                   env=_report.bench_environment(cache), capture_output=True, text=True,
                                   timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-3000:])
    return json.loads(completed.stdout.strip().splitlines()[-1])


def cli_train(data: Path, strategy: str, cache: Path, out: Path, timeout: float) -> float:
    started = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "fsl_app.cli", "train", str(data), "--strategy", strategy, "--out",
                        str(out), "--json"], env=_report.bench_environment(cache), capture_output=True, check=True,
                       timeout=timeout)
    except subprocess.TimeoutExpired:
        return float("inf")
    return time.perf_counter() - started


def fit_only(strategy: str, repeats: int) -> list:
    """One ``fit_features`` on the 100 cached features (median of ``repeats``), in this process."""
    from fsl_app.backbones import load_backbone
    from fsl_app.dataset import ImageSet
    from fsl_app.features import get_extractor
    from fsl_app.strategies import create_strategy

    images = ImageSet.from_folder(small_folder())
    features = get_extractor(load_backbone()).extract(images)
    times = []
    for _ in range(repeats):
        mark = time.perf_counter()
        create_strategy(strategy, **STRATEGIES[strategy]).fit_features(features, images.labels)
        times.append(time.perf_counter() - mark)
    return [strategy, 1000 * _report.median(times), 1000 * min(times)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition instead of three")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds before a measurement is given up (default 60 with --quick, else 600)")
    parser.add_argument("--child", nargs=4, metavar=("DATA", "STRATEGY", "OUT", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    started = time.perf_counter()
    info = _report.machine_info()
    data = small_folder()
    repeats = 1 if args.quick else 3
    args.timeout = args.timeout or (60 if args.quick else 600)
    from fsl_app.features import cache_root

    onnx_source = cache_root() / "onnx"
    work = Path(tempfile.mkdtemp(prefix="fsl-bench-latency-"))
    rows, cli_rows, fit_rows, goals = [], [], [], []
    try:
        for strategy in STRATEGIES:
            fit_rows.append(fit_only(strategy, 5 if args.quick else 15))
            cells: dict[tuple[str, str], list[dict | None]] = {}
            for repeat in range(repeats):
                for variant in (list(VARIANTS)[:1] if args.quick else VARIANTS):
                    cache = work / f"cache-{strategy}-{repeat}-{variant}"
                    if onnx_source.is_dir():
                        shutil.copytree(onnx_source, cache / "onnx")
                    for state in ("cold", "warm"):  # warm: a new process on the cache the cold run filled
                        out = work / f"out-{strategy}-{repeat}-{variant}-{state}"
                        cells.setdefault((variant, state), []).append(
                            run_child(data, strategy, cache, out, variant, args.timeout))
            for (variant, state), measured in cells.items():
                done = [m for m in measured if m is not None]
                if not done:
                    rows.append([strategy, variant, state] + [f"> {args.timeout:.0f} s (timed out)"] + [""] * 5)
                    continue

                def med(key):
                    return _report.median([m[key] for m in done])

                rows.append([strategy, variant, state, med("train"), med("train evaluation"), med("train again"),
                             med("load backbone") + med("engine"), med("total"),
                             f"{100 * done[0]['accuracy']:.0f}% ({done[0]['protocol']})"])
                if variant == next(iter(VARIANTS)) and state == "warm":
                    worst = max(med("train"), med("train again"))
                    goals.append([f"{strategy}: train -> result < 1 s, warm cache (10 classes x 10 images)",
                                  f"{med('train'):.2f} s (new process), {med('train again'):.2f} s (same process)",
                                  "met" if worst < 1 else "not met"])
                if variant == next(iter(VARIANTS)) and state == "cold":
                    goals.append([f"{strategy}: train -> result, cold feature cache", f"{med('train'):.2f} s",
                                  "(no goal)"])
            warm_cache = work / f"cache-{strategy}-0-{next(iter(VARIANTS))}"
            cli_rows.append([strategy, _report.median([cli_train(data, strategy, warm_cache, work / f"cli-{strategy}-{i}",
                                                                 args.timeout) for i in range(repeats)])])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = _report.table(["strategy", "variant", "feature cache", "train s (evaluate + fit + save)",
                          "of which evaluation s", "train again, same process s", "backbone load + engine s",
                          "process total s", "accuracy"], rows)
    fits = _report.table(["strategy", "one fit_features on 100 features, median (ms)", "best (ms)"], fit_rows)
    _report.write_result("latency", "Q2. Interactive latency: train -> result, 10 classes x 10 images", [
        f"Medians over {repeats} fresh process(es) per cell. `cold`: empty feature cache (ONNX export present); "
        "`warm`: a new process on the filled cache. `train again`: the same call in the same process (what the UI "
        "does on the next click: backbone, session and features stay in memory). Goal: < 1 s warm.",
        "Variants: the product's automatic protocol (5-fold for 100 images with 10 per class) and leave-one-out "
        "(100 fits) for comparison. Head fits run with one BLAS/OpenMP thread (`FeatureStrategy.fit_features`).",
        text,
        "One `fit_features` on the 100 cached features:\n\n" + fits,
        "`fsl-app train` as a whole process with a warm cache (includes Python start, imports, backbone load): "
        + ", ".join(f"{name} {seconds:.1f} s" if seconds != float("inf") else f"{name} > {args.timeout:.0f} s"
                    for name, seconds in cli_rows) + ".",
    ], info=info, seconds=time.perf_counter() - started, goals=goals)


if __name__ == "__main__":
    main()
