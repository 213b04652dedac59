"""Run snapshots: exactly which images (id, sha256) with which labels a training run used.

A run folder is immutable once finished; its snapshot lets anyone rebuild the same training set later, even after
labels changed. Object files referenced by a snapshot are kept when their image is deleted from the project.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..dataset import ImageRecord, ImageSet
from . import _labels
from .errors import StoreError

if TYPE_CHECKING:
    from .project import Project


@dataclass(frozen=True)
class SnapshotImage:
    image_id: int
    sha256: str
    label: str | None
    path: Path


@dataclass(frozen=True)
class RunSnapshot:
    run_id: int
    run_dir: str
    created_at: str
    config: dict[str, Any]
    images: list[SnapshotImage]

    def image_set(self) -> ImageSet:
        """The images and labels as they were when the run was recorded."""
        return ImageSet(ImageRecord(path=image.path, sha256=image.sha256, label=image.label) for image in self.images)


@dataclass(frozen=True)
class RunInfo:
    run_id: int
    run_dir: str
    created_at: str
    n_images: int


def record_run(project: "Project", run_dir: str | Path, config: dict[str, Any],
               images: ImageSet | None = None) -> int:
    """Store a run's config and data snapshot; returns the run id.

    ``images``: the ImageSet the run actually trained on (its labels are recorded as given). None: every image
    currently labeled in the project, read in the same transaction as the insert.
    """
    config_json = json.dumps(config, sort_keys=True, default=str)
    with project.write() as conn:
        rows = _rows_for(conn, images)
        cursor = conn.execute("INSERT INTO runs (run_dir, created_at, config) VALUES (?, ?, ?)",
                              (str(run_dir), _labels.now_iso(), config_json))
        run_id = int(cursor.lastrowid)
        conn.executemany("INSERT INTO run_images (run_id, image_id, sha256, ext, label) VALUES (?, ?, ?, ?, ?)",
                         [(run_id, *row) for row in rows])
    return run_id


def _rows_for(conn, images: ImageSet | None) -> list[tuple[int, str, str, str | None]]:
    """(image_id, sha256, ext, label) for each image of the snapshot."""
    if images is None:
        return [tuple(row) for row in conn.execute(
            "SELECT i.id, i.sha256, i.ext, c.name FROM images i JOIN classes c ON c.id = i.class_id ORDER BY i.id")]
    rows, unknown = [], []
    for record in images.records:
        found = conn.execute("SELECT id, ext FROM images WHERE sha256 = ?", (record.sha256,)).fetchone()
        if found is None:
            unknown.append(Path(record.path).name)
            continue
        rows.append((found[0], record.sha256, found[1], record.label))
    if unknown:
        raise StoreError(f"{len(unknown)} image(s) of the run are not in this project (e.g. {unknown[:3]}). "
                         "Record the run in the project its images came from.")
    return list({row[0]: row for row in rows}.values())


def run_snapshot(project: "Project", run_id: int) -> RunSnapshot:
    with project.read() as conn:
        run = conn.execute("SELECT id, run_dir, created_at, config FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if run is None:
            known = [row[0] for row in conn.execute("SELECT id FROM runs ORDER BY id")]
            raise StoreError(f"no run with id {run_id} in this project. Recorded run ids: {known or 'none'}.")
        rows = conn.execute("SELECT image_id, sha256, ext, label FROM run_images WHERE run_id = ? ORDER BY image_id",
                            (run["id"],)).fetchall()
    images = [SnapshotImage(row[0], row[1], row[3], project.objects.path(row[1], row[2])) for row in rows]
    return RunSnapshot(run["id"], run["run_dir"], run["created_at"], json.loads(run["config"]), images)


def list_runs(project: "Project") -> list[RunInfo]:
    with project.read() as conn:
        rows = conn.execute("SELECT r.id, r.run_dir, r.created_at, COUNT(ri.image_id) FROM runs r "
                            "LEFT JOIN run_images ri ON ri.run_id = r.id GROUP BY r.id ORDER BY r.id").fetchall()
    return [RunInfo(*row) for row in rows]
