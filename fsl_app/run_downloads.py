"""Files a user downloads from a run: the run folder as a zip, and exported models kept in the project folder."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

EXPORTS_FOLDER = "exports"


def run_zip_bytes(run_dir: str | Path) -> bytes:
    """The run folder as a zip (config, metrics, predictions, model.safetensors + model.json)."""
    run_dir = Path(run_dir)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(run_dir.rglob("*")):
            if path.is_file():
                archive.write(path, f"{run_dir.name}/{path.relative_to(run_dir)}")
    return buffer.getvalue()


def export_once(project_dir: str | Path, run_dir: str | Path, format: str) -> Path:
    """Export a run into the project's ``exports/`` folder, or return the file an earlier call wrote there.

    Runs are immutable, so an export of the same run and format never goes stale.
    """
    from . import export

    run_dir = Path(run_dir)
    out = Path(project_dir) / EXPORTS_FOLDER / f"{run_dir.name}{export.FORMAT_SUFFIXES[format][0]}"
    if out.is_file():
        return out
    return Path(export.export_run(run_dir, format, out))
