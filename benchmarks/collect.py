"""Assemble ``benchmarks/RESULTS.md`` from the latest result file of every benchmark script.

Each ``bench_*.py`` writes its own tables (``benchmarks/results/<name>.md``; the import and export benchmarks write
``benchmarks/results_import.md`` / ``results_export.md``); this script puts them in one page with the machine
description, in a fixed order, and lists what is missing. Run alone: ``.venv/bin/python benchmarks/collect.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import _report

HERE = Path(__file__).resolve().parent
SECTIONS = [  # (file, script that writes it)
    ("results/extraction.md", "bench_extraction.py"),
    ("results/latency.md", "bench_latency.py"),
    ("results/finetune_step.md", "bench_finetune_step.py"),
    ("results/easyfsl.md", "bench_easyfsl.py"),
    ("results/pool.md", "bench_pool.py"),
    ("results/fewshot_digits.md", "bench_fewshot_digits.py"),
    ("results/shift.md", "bench_shift.py"),
    ("results/base_novel.md", "bench_base_novel.py"),
    ("results/gpu.md", "bench_gpu.py"),
    ("results/label_errors.md", "bench_label_errors.py"),
    ("results/label_first.md", "bench_label_first.py"),
    ("results/forecast.md", "bench_forecast.py"),
    ("results/augment_check.md", "bench_augment_check.py"),
    ("results/startup.md", "bench_startup.py"),
    ("results/photos.md", "bench_photos.py"),
    ("results/distill.md", "bench_distill.py"),
    ("results/ood.md", "bench_ood.py"),
    ("results/scale.md", "bench_scale.py"),
    ("results/meta.md", "bench_meta.py"),
    ("results_import.md", "bench_import.py"),
    ("results_export.md", "bench_export.py"),
]

INTRO = """# Benchmark results

Every table below is written by a committed script in `benchmarks/` (named under each heading) and collected here by
`benchmarks/collect.py`. `make bench` runs the CPU set with quick settings and rebuilds this page; `make bench-full`
uses the full settings (more rounds and episodes, the fine-tuning study). Each script runs alone too:
`.venv/bin/python benchmarks/bench_<name>.py`.

**How to read the timings.** The machine is shared (other people run test suites on the same cores), so absolute
numbers move with the load (each section states the load average at its start and end). Every speed comparison is
therefore measured interleaved in one run: each round runs every candidate once, in a rotated order, and ratios are
taken within a round and summarised by their median. Compare ratios, not absolute numbers across sections.
"""


def demote(text: str) -> str:
    """Shift markdown headings one level down so a file's ``#`` title becomes a ``##`` section."""
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())


def main() -> None:
    info = _report.machine_info()
    parts = [INTRO, f"Collected {info['date']} on: {info['nproc']} CPU threads ({info['cpu']}), GPU: {info['gpu']}; "
                    f"python {info['python']}, torch {info['torch']}, onnxruntime {info['onnxruntime']}, timm "
                    f"{info['timm']}, numpy {info['numpy']}, pillow {info['pillow']}. Each section names the "
                    "date and load of its own run.\n"]
    goals = []
    for relative, _ in SECTIONS:
        path = HERE / relative.replace(".md", ".goals.json")
        if relative.startswith("results/") and path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            goals += [[data["title"].split(".")[0] if "." in data["title"][:8] else data["title"]] + row
                      for row in data["rows"]]
    if goals:
        parts.append("## Goals at a glance\n\n" + _report.table(["question", "goal", "measured", "verdict"], goals)
                     + "\n")
    missing = []
    for relative, script in SECTIONS:
        path = HERE / relative
        if not path.is_file():
            missing.append(f"`{relative}` (run `benchmarks/{script}`)")
            continue
        text = path.read_text(encoding="utf-8").strip()
        if relative.startswith("results_"):
            text = demote(text)
        parts.append(text + f"\n\n<sub>source: `benchmarks/{relative}`, written by `benchmarks/{script}`</sub>\n")
    if missing:
        parts.append("## Not measured yet\n\n" + "\n".join(f"- {item}" for item in missing) + "\n")
    (HERE / "RESULTS.md").write_text("\n".join(parts), encoding="utf-8")
    print(f"wrote {HERE / 'RESULTS.md'} ({len(SECTIONS) - len(missing)} sections, {len(missing)} missing)")


if __name__ == "__main__":
    main()
