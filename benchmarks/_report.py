"""Shared benchmark plumbing: machine description, interleaved timing, markdown tables, result files.

Timings on a shared machine are noisy, so every comparison here is measured *interleaved*: each round runs every
candidate once, in an order rotated from round to round, and the tables report medians over rounds plus ratios taken
within the same round (paired), never ratios of numbers from different runs.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


def machine_info() -> dict:
    import numpy
    import PIL
    import timm
    import torch

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "not installed"
    from fsl_app.onnx_engine import cpu_threads

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "nproc": cpu_threads(),
            "cpu": cpu_model(), "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": ort_version, "timm": timm.__version__, "numpy": numpy.__version__,
            "pillow": PIL.__version__, "torch_threads": torch.get_num_threads(),
            "load_avg_1min": round(os.getloadavg()[0], 2)}


def machine_line(info: dict | None = None) -> str:
    info = info or machine_info()
    return (f"{info['date']}; {info['nproc']} CPU threads ({info['cpu']}), GPU: {info['gpu']}; python "
            f"{info['python']}, torch {info['torch']}, onnxruntime {info['onnxruntime']}, timm {info['timm']}, "
            f"pillow {info['pillow']}; 1-min load average at start {info['load_avg_1min']}")


def interleaved(candidates: dict[str, Callable[[], int]], rounds: int, *, warmup: bool = True,
                timer: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Rates (items per second) of every candidate, per round; each call returns how many items it processed.

    Round r runs the candidates starting at index r (rotation), so no candidate always runs first or last.
    """
    names = list(candidates)
    if warmup:
        for name in names:
            candidates[name]()
    rates: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            start = timer()
            items = candidates[name]()
            rates[name].append(items / max(timer() - start, 1e-9))
    return rates


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of numerator[r] / denominator[r] (both measured in the same round)."""
    return median([a / b for a, b in zip(numerator, denominator) if b > 0])


def spread(values: Sequence[float]) -> str:
    return f"{min(values):.1f}–{max(values):.1f}" if values else ""


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, title: str, sections: Sequence[str], *, info: dict | None = None,
                 seconds: float | None = None, goals: Sequence[Sequence] | None = None) -> Path:
    """Write ``results/<name>.md``: title, how it was produced, machine line, then the sections.

    ``goals``: rows (goal, measured, verdict) that ``collect.py`` puts in the "goals at a glance" table
    (``results/<name>.goals.json``).
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    script = Path(sys.argv[0]).name
    arguments = " ".join(sys.argv[1:])
    header = [f"## {title}", "",
              f"Produced by `.venv/bin/python benchmarks/{script}{(' ' + arguments) if arguments else ''}`"
              + (f" in {seconds:.0f} s" if seconds is not None else "") + ".",
              f"Machine: {machine_line(info)}; at the end {os.getloadavg()[0]:.2f}.", ""]
    goals_path = RESULTS_DIR / f"{name}.goals.json"
    if goals is not None:
        goals_path.write_text(json.dumps({"title": title, "date": (info or {}).get("date"),
                                          "rows": [[str(cell) for cell in row] for row in goals]}, indent=1),
                              encoding="utf-8")
    else:
        goals_path.unlink(missing_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    path.write_text("\n".join(header) + "\n\n".join(section.strip() for section in sections) + "\n",
                    encoding="utf-8")
    print(path.read_text(encoding="utf-8"))
    return path


def bench_environment(root: Path | None = None) -> dict:
    """Environment for benchmark subprocesses: the repository on sys.path, offline hub, optional cache root."""
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    if root is not None:
        env["FSL_APP_CACHE"] = str(root)
    return env
