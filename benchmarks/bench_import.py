"""Benchmark: import N small real images into a fresh project and report images/s and size on disk.

The images are scikit-learn's handwritten digits (8x8) upscaled to ``--size`` pixels and saved as PNG in an
ImageFolder tree (one folder per digit). The same files are imported three ways, each into a fresh project of a
temporary workspace: from the folder, from a zip of it, and as in-memory uploads. A markdown table row per way
is appended to ``benchmarks/results_import.md``.

    python benchmarks/bench_import.py [--n 2000] [--size 64] [--no-write]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sqlite3
import sys
import tempfile
import time
import zipfile
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fsl_app.store import create_project  # noqa: E402

RESULTS = Path(__file__).with_name("results_import.md")
HEADER = ("| date | machine | source | images | seconds (median of runs) | images/s | store files (MiB) | "
          "allocated on disk (MiB) | KiB/image on disk | originals (MiB) |\n"
          "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")


def digit_pngs(count: int, size: int) -> list[tuple[str, str, bytes]]:
    """(class, file name, PNG bytes) for ``count`` distinct digits; beyond 1,797 they are mirrored copies."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images * (255 / 16)).astype(np.uint8)
    files = []
    for index in range(count):
        source = index % len(pixels)
        array = pixels[source] if index < len(pixels) else pixels[source][:, ::-1]
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).resize((size, size), Image.Resampling.BILINEAR).save(buffer, "PNG")
        files.append((str(digits.target[source]), f"digit_{index:05d}.png", buffer.getvalue()))
    return files


def folder_size(path: Path) -> tuple[int, int]:
    """(sum of file sizes, bytes actually allocated: small files round up to a file-system block)."""
    stats = [p.stat() for p in path.rglob("*") if p.is_file()]
    allocated = sum(getattr(s, "st_blocks", 0) * 512 for s in stats) or sum(s.st_size for s in stats)
    return sum(s.st_size for s in stats), allocated


def machine() -> str:
    model = _cpu_model() or platform.processor() or platform.machine()
    load = f", load {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (f"{platform.system()} {platform.machine()}, {model}, {os.cpu_count()} CPUs{load}, "
            f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def run_one(workspace: Path, source: str, importer) -> dict:
    project = create_project(f"bench {source}", home=workspace)
    start = time.perf_counter()
    report = importer(project)
    seconds = time.perf_counter() - start
    assert not report.rejected and not report.duplicates, report.summary()
    originals = sum(image.size_bytes for image in project.images())
    project.fsck()  # also checks the store is consistent
    project.close()
    size, allocated = folder_size(project.path)
    added = len(report.added)
    return {"source": source, "images": added, "seconds": seconds, "rate": added / seconds,
            "size_mib": size / 2**20, "allocated_mib": allocated / 2**20, "kib_per_image": allocated / added / 1024,
            "originals_mib": originals / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="fresh projects per source; the median is reported")
    parser.add_argument("--no-write", action="store_true", help="print only, do not append to results_import.md")
    args = parser.parse_args(argv)

    files = digit_pngs(args.n, args.size)
    with tempfile.TemporaryDirectory(prefix="fsl-bench-") as scratch:
        scratch = Path(scratch)
        tree = scratch / "digits"
        for label, name, data in files:
            (tree / label).mkdir(parents=True, exist_ok=True)
            (tree / label / name).write_bytes(data)
        archive = scratch / "digits.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for label, name, data in files:
                zipped.writestr(f"digits/{label}/{name}", data)
        uploads = [(name, data) for _, name, data in files]
        if hasattr(os, "sync"):
            os.sync()  # do not charge the write-back of the inputs to the first import
        load = machine()
        sources = {"ImageFolder tree": lambda p: p.import_imagefolder(tree),
                   "zip": lambda p: p.import_zip(archive),
                   "uploads (bytes)": lambda p: p.import_files(uploads, label="digits")}
        results = [median_run(scratch, source, importer, args.repeats) for source, importer in sources.items()]
    rows = [_row(result, args.size, load) for result in results]
    for result in results:
        print(f"{result['source']:<18} {result['images']} images in {result['seconds']:.2f} s = "
              f"{result['rate']:.0f} images/s; store {result['size_mib']:.1f} MiB in files, "
              f"{result['allocated_mib']:.1f} MiB allocated ({result['kib_per_image']:.1f} KiB/image), "
              f"originals {result['originals_mib']:.1f} MiB")
    if not args.no_write:
        if not RESULTS.exists():
            RESULTS.write_text("# Import benchmark (`python benchmarks/bench_import.py`)\n\n" + HEADER)
        with RESULTS.open("a") as handle:
            handle.writelines(rows)
        print(f"appended {len(rows)} rows to {RESULTS}")
    return 0


def median_run(scratch: Path, source: str, importer, repeats: int) -> dict:
    runs = [run_one(scratch / f"home-{index}", source, importer) for index in range(repeats)]
    return sorted(runs, key=lambda result: result["seconds"])[len(runs) // 2]


def _row(result: dict, size: int, machine_text: str) -> str:
    return (f"| {date.today().isoformat()} | {machine_text} | {result['source']}, {size} px PNG digits | "
            f"{result['images']} | {result['seconds']:.2f} | {result['rate']:.0f} | {result['size_mib']:.1f} | "
            f"{result['allocated_mib']:.1f} | {result['kib_per_image']:.1f} | {result['originals_mib']:.1f} |\n")


if __name__ == "__main__":
    raise SystemExit(main())
