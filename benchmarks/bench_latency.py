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

Cache states: ``cold`` = empty feature cache (ONNX export present), ``fully cold`` = empty cache root (ONNX export
made during the run), ``warm`` = features cached on disk by an earlier process. ``fsl-app train`` wall time as a
whole process is measured too.

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
    target = _datasets.data_root() / f"digits-{per_class}-per-class"
    if not (target / ".complete").is_file():
        shutil.rmtree(target, ignore_errors=True)
        for folder in sorted(p for p in source.iterdir() if p.is_dir()):
            (target / folder.name).mkdir(parents=True)
            for path in sorted(folder.iterdir())[:per_class]:
                shutil.copy2(path, target / folder.name / path.name)
        (target / ".complete").write_text("ok\n")
    return target


def child(data: str, strategy_name: str, out: str) -> None:
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
    mark = time.perf_counter()
    result = train_run(images, create_strategy(strategy_name, **STRATEGIES[strategy_name]), backbone,
                       Path(out) / "first")
    timings["train"] = time.perf_counter() - mark
    timings["evaluation"] = result.metrics["evaluation_seconds"]
    timings["protocol"] = result.metrics["protocol"]
    timings["accuracy"] = result.metrics["accuracy"]
    mark = time.perf_counter()
    train_run(images, create_strategy(strategy_name, **STRATEGIES[strategy_name]), backbone, Path(out) / "second")
    timings["train again"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - start
    print(json.dumps(timings))


def run_child(data: Path, strategy: str, cache: Path, out: Path) -> dict:
    completed = subprocess.run([sys.executable, __file__, "--child", str(data), strategy, str(out)],
                               env=_report.bench_environment(cache), capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-3000:])
    return json.loads(completed.stdout.strip().splitlines()[-1])


def cli_train(data: Path, strategy: str, cache: Path, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fsl_app.cli", "train", str(data), "--strategy", strategy, "--out",
                    str(out), "--json"], env=_report.bench_environment(cache), capture_output=True, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition instead of three")
    parser.add_argument("--child", nargs=3, metavar=("DATA", "STRATEGY", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    started = time.perf_counter()
    info = _report.machine_info()
    data = small_folder()
    repeats = 1 if args.quick else 3
    from fsl_app.features import cache_root

    onnx_source = cache_root() / "onnx"
    work = Path(tempfile.mkdtemp(prefix="fsl-bench-latency-"))
    rows, cli_rows = [], []
    try:
        for strategy in STRATEGIES:
            results: dict[str, list[dict]] = {"fully cold": [], "cold": [], "warm": []}
            for repeat in range(repeats):
                for state in results:  # interleaved: cold, fully cold and warm alternate
                    cache = work / f"cache-{strategy}-{repeat}-{state}"
                    if state == "cold" and onnx_source.is_dir():
                        shutil.copytree(onnx_source, cache / "onnx")
                    if state == "warm":
                        cache = work / f"cache-{strategy}-{repeat}-cold"  # filled by the cold run just before
                    results[state].append(run_child(data, strategy, cache, work / f"out-{strategy}-{repeat}-{state}"))
            for state, measured in results.items():
                def med(key):
                    return _report.median([m[key] for m in measured])

                rows.append([strategy, state, med("load backbone"), med("open data"), med("engine"), med("train"),
                             med("evaluation"), med("train again"), med("total"),
                             f"{100 * measured[0]['accuracy']:.0f}% ({measured[0]['protocol']})"])
            warm_cache = work / f"cache-{strategy}-0-cold"
            cli_rows.append([strategy, _report.median([cli_train(data, strategy, warm_cache,
                                                                 work / f"cli-{strategy}-{i}") for i in range(repeats)])])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = _report.table(["strategy", "feature cache", "load backbone s", "open data s", "engine s",
                          "train s (evaluate + fit + save)", "of which evaluation s",
                          "train again, same process s", "process total s", "accuracy"], rows)
    _report.write_result("latency", "Q2. Interactive latency: train -> result, 10 classes x 10 images", [
        f"Medians over {repeats} fresh processes per cell; cold, fully cold and warm runs interleaved. "
        "Goal: `train` < 1 s with a warm cache (the UI keeps backbone and engine in memory, so `train again` is "
        "what a user waits for after the first click).",
        text,
        "`fsl-app train` as a whole process with a warm cache (includes Python start, imports, backbone load): "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in cli_rows) + ".",
    ], info=info, seconds=time.perf_counter() - started)


if __name__ == "__main__":
    main()
