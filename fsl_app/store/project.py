"""A project: one SQLite database plus content-addressed image files, in one folder of the workspace.

Open one with :func:`fsl_app.store.open_project`. A :class:`Project` is safe to share between threads (one
connection behind a lock) and between processes (SQLite ``BEGIN IMMEDIATE`` + busy timeout + retries). Every label
change is a single transaction, logged in ``label_events`` so the last change can be undone.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..dataset import ImageRecord, ImageSet
from . import _labels
from ._db import connect, migrate, read_transaction, write_transaction
from ._labels import UndoResult, chunks, now_iso
from .duplicates import NEAR_DUPLICATE_MAX_DISTANCE, load_pairs, near_duplicate_pairs, pairs_key, save_pairs
from .errors import ClassExistsError, ImageNotFoundError, StoreError
from .exporting import ExportReport, export_imagefolder_zip
from .fsck import FsckReport, check_project
from .importing import ImportReport, import_files, import_folder, import_imagefolder, import_uploads, import_zip
from .names import name_key, validate_class_name
from .objects import ObjectStore
from .snapshots import RunInfo, RunSnapshot, list_runs, record_run, run_snapshot
from .stats import ProjectStats, project_stats

DB_FILE = "project.db"
NEAR_DUPLICATES_FILE = "cache/near_duplicates.json"  # the last search's pairs, keyed by the signatures searched

_IMAGE_COLUMNS = ("i.id, i.sha256, i.ext, c.name AS label, i.source_name, i.added_at, i.width, i.height, "
                  "i.size_bytes, i.phash")


@dataclass(frozen=True)
class StoredImage:
    """One image of a project; ``path`` is its content-addressed original file."""

    id: int
    sha256: str
    ext: str
    label: str | None
    source_name: str
    added_at: str
    width: int
    height: int
    size_bytes: int
    phash: str | None
    path: Path


@dataclass(frozen=True)
class LabelBatch:
    """One logged label change (a set_labels call, a class merge or delete, a labeled import)."""

    id: int
    at: str
    actor: str
    action: str
    n_images: int
    undone_at: str | None


class Project:
    """A labeled image collection stored on disk. Create or open it through the workspace functions."""

    def __init__(self, path: str | Path, *, home: str | Path | None = None):
        self.path = Path(path)
        self.home = Path(home) if home is not None else self.path.parent.parent
        self.db_path = self.path / DB_FILE
        if not self.db_path.is_file():
            raise StoreError(f"{self.path} is not a project folder (no {DB_FILE}). "
                             "Open projects by name with open_project(name).")
        self.objects = ObjectStore(self.path)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._conn_pid: int | None = None
        self._connections = 0  # connections opened so far: a new one has its own data_version
        self._writes = 0  # write transactions through this object (SQLite's data_version does not see them)
        self._near_duplicates: tuple = (None, None, [])  # (change marker, key, pairs) of the last answer
        with self._lock:
            migrate(self._connection())
        self._recover_interrupted_deletes()

    def _recover_interrupted_deletes(self) -> None:
        """A delete killed between moving a file aside and committing leaves a row whose file is in ``deleted/``:
        put such files back (cheap: that folder is normally empty)."""
        if not any(self.objects.deleted_dir.glob("*")):
            return
        with self.write() as conn:
            referenced = {sha + ext for sha, ext in conn.execute(
                "SELECT sha256, ext FROM images UNION SELECT sha256, ext FROM run_images")}
            self.objects.recover_tombstones(referenced)

    # -- connection and transactions -------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._conn_pid != os.getpid():  # never reuse a connection across fork
            self._conn, self._conn_pid = connect(self.db_path), os.getpid()
            self._connections += 1
        return self._conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``, retried while another process writes) under the lock."""
        with self._lock:
            try:
                with write_transaction(self._connection()) as conn:
                    yield conn
            finally:
                self._writes += 1

    def _change_marker(self, conn: sqlite3.Connection) -> tuple[int, int, int]:
        """Differs from the last call's whenever the database may have changed in between: a commit by any other
        connection moves SQLite's ``data_version``, this object's own writes move its write count."""
        return self._connections, self._writes, conn.execute("PRAGMA data_version").fetchone()[0]

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One consistent read transaction under the lock."""
        with self._lock, read_transaction(self._connection()) as conn:
            yield conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._conn_pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> "Project":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Project({self.name!r}, path={str(self.path)!r})"

    # -- identity -------------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """Display name (read from the database, so a rename by another process shows up)."""
        with self.read() as conn:
            return conn.execute("SELECT value FROM meta WHERE key = 'name'").fetchone()[0]

    # -- classes --------------------------------------------------------------------------------------------------

    def classes(self) -> list[str]:
        """Class names, sorted ignoring case."""
        with self.read() as conn:
            return [row[0] for row in conn.execute("SELECT name FROM classes ORDER BY name_key, id")]

    def class_counts(self) -> dict[str, int]:
        """Images per class, including empty classes."""
        with self.read() as conn:
            rows = conn.execute("SELECT c.name, COUNT(i.id) FROM classes c LEFT JOIN images i ON i.class_id = c.id "
                                "GROUP BY c.id ORDER BY c.name_key, c.id")
            return {name: count for name, count in rows}

    def add_class(self, name: str) -> str:
        """Create an empty class and return its normalised name."""
        with self.write() as conn:
            class_id = _labels.insert_class(conn, name)
            return conn.execute("SELECT name FROM classes WHERE id = ?", (class_id,)).fetchone()[0]

    def rename_class(self, old_name: str, new_name: str) -> str:
        """Rename a class (labels follow, since images point at the class id). Returns the new name."""
        new_name = validate_class_name(new_name)
        with self.write() as conn:
            old = _labels.require_class(conn, old_name)
            clash = _labels.find_class(conn, new_name)
            if clash is not None and clash["id"] != old["id"]:
                raise ClassExistsError(f"class {clash['name']!r} already exists. To put the images of "
                                       f"{old['name']!r} into it, merge the classes instead of renaming.")
            conn.execute("UPDATE classes SET name = ?, name_key = ? WHERE id = ?",
                         (new_name, name_key(new_name), old["id"]))
        return new_name

    def merge_classes(self, sources: str | Sequence[str], into: str, *, actor: str | None = None) -> int:
        """Move every image of ``sources`` into the existing class ``into`` and delete the sources (undoable)."""
        sources = [sources] if isinstance(sources, str) else list(sources)
        with self.write() as conn:
            target = _labels.require_class(conn, into)
            source_rows = [_labels.require_class(conn, name) for name in sources]
            source_ids = sorted({row["id"] for row in source_rows} - {target["id"]})
            states = self._states_of_classes(conn, source_ids)
            names = ", ".join(repr(row["name"]) for row in source_rows if row["id"] in source_ids)
            moved, _ = _labels.relabel(conn, states, target["id"], action=f"merge {names} into {target['name']!r}",
                                       actor=_labels.actor_name(actor))
            conn.executemany("DELETE FROM classes WHERE id = ?", [(class_id,) for class_id in source_ids])
        return moved

    def delete_class(self, name: str, *, actor: str | None = None) -> int:
        """Delete a class; its images become unlabeled (never deleted). Returns how many were unlabeled; undoable."""
        with self.write() as conn:
            row = _labels.require_class(conn, name)
            states = self._states_of_classes(conn, [row["id"]])
            unlabeled, _ = _labels.relabel(conn, states, None, action=f"delete class {row['name']!r}",
                                           actor=_labels.actor_name(actor))
            conn.execute("DELETE FROM classes WHERE id = ?", (row["id"],))
        return unlabeled

    @staticmethod
    def _states_of_classes(conn: sqlite3.Connection, class_ids: Sequence[int]) -> list[_labels.LabelState]:
        states = []
        for class_id in class_ids:
            rows = conn.execute("SELECT i.id, i.class_id, c.name FROM images i JOIN classes c ON c.id = i.class_id "
                                "WHERE i.class_id = ? ORDER BY i.id", (class_id,))
            states.extend(_labels.LabelState(*row) for row in rows)
        return states

    # -- labels ---------------------------------------------------------------------------------------------------

    def set_labels(self, image_ids: Iterable[int], class_name: str | None, *, create_missing_class: bool = False,
                   actor: str | None = None) -> int:
        """Label, relabel (``class_name``) or unlabel (``None``) images in one undoable transaction.

        All ids must exist, otherwise nothing changes. Returns the number of images whose label changed.
        """
        ids = list(dict.fromkeys(int(image_id) for image_id in image_ids))
        if not ids:
            return 0
        with self.write() as conn:
            states = _labels.current_labels(conn, ids)
            class_id = None
            if class_name is not None:
                class_id = _labels.class_id_for(conn, class_name, create=create_missing_class)
            target = "unlabeled" if class_name is None else repr(validate_class_name(class_name))
            changed, _ = _labels.relabel(conn, states, class_id, action=f"set {len(ids)} image(s) to {target}",
                                         actor=_labels.actor_name(actor))
        return changed

    def undo_last_label_change(self) -> UndoResult | None:
        """Revert the most recent label batch not yet undone; repeated calls go further back. None: nothing to undo."""
        with self.write() as conn:
            return _labels.undo_last_batch(conn)

    def label_history(self, limit: int = 50) -> list[LabelBatch]:
        """Most recent label batches first."""
        with self.read() as conn:
            rows = conn.execute(
                "SELECT b.id, b.at, b.actor, b.action, COUNT(e.id), b.undone_at FROM label_batches b "
                "LEFT JOIN label_events e ON e.batch_id = b.id GROUP BY b.id ORDER BY b.id DESC LIMIT ?", (limit,))
            return [LabelBatch(*row) for row in rows]

    # -- images ---------------------------------------------------------------------------------------------------

    def images(self, *, labeled: bool | None = None, class_name: str | None = None, limit: int | None = None,
               offset: int = 0) -> list[StoredImage]:
        """Images in id order; ``labeled`` True/False filters labeled/unlabeled, ``class_name`` one class;
        ``limit`` / ``offset`` give one page of them."""
        where, params = self._image_filter(labeled, class_name)
        page = ""
        if limit is not None:
            page = " LIMIT ? OFFSET ?"
            params += [int(limit), int(offset)]
        with self.read() as conn:
            rows = conn.execute(f"SELECT {_IMAGE_COLUMNS} FROM images i LEFT JOIN classes c ON c.id = i.class_id "
                                f"{where} ORDER BY i.id{page}", params).fetchall()
        return [self._stored_image(row) for row in rows]

    def count_images(self, *, labeled: bool | None = None, class_name: str | None = None) -> int:
        """How many images :meth:`images` would list with the same filters (one SQL count)."""
        where, params = self._image_filter(labeled, class_name)
        with self.read() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM images i LEFT JOIN classes c ON c.id = i.class_id {where}",
                                    params).fetchone()[0])

    @staticmethod
    def _image_filter(labeled: bool | None, class_name: str | None) -> tuple[str, list]:
        conditions, params = [], []
        if labeled is not None:
            conditions.append("i.class_id IS NOT NULL" if labeled else "i.class_id IS NULL")
        if class_name is not None:
            conditions.append("c.name_key = ?")
            params.append(name_key(class_name))
        return (f"WHERE {' AND '.join(conditions)}" if conditions else ""), params

    def source_names(self, sha256s: Iterable[str] | None = None) -> dict[str, str]:
        """sha256 -> the file name each image was imported as, for labels on plots: of every image, or of those in
        ``sha256s`` (unknown ones left out)."""
        with self.read() as conn:
            if sha256s is None:
                return dict(conn.execute("SELECT sha256, source_name FROM images").fetchall())
            names = {}
            for part in chunks(sorted(set(sha256s))):
                names.update(conn.execute(f"SELECT sha256, source_name FROM images WHERE sha256 IN "
                                          f"({','.join('?' * len(part))})", part).fetchall())
            return names

    def sides_fingerprint(self) -> str:
        """Changes whenever an image is added, deleted, labeled or unlabeled (ids are never reused): counts and id
        totals of the labeled and the unlabeled images, from one aggregate query."""
        with self.read() as conn:
            row = conn.execute("SELECT COUNT(*), TOTAL(id), MAX(id), COUNT(class_id), "
                               "TOTAL(CASE WHEN class_id IS NULL THEN id END) FROM images").fetchone()
        return "-".join(str(value) for value in row)

    def labels_by_id(self, image_ids: Iterable[int] | None = None) -> dict[int, str | None]:
        """image id -> class name (None: unlabeled), for every image or for ``image_ids`` (unknown ids left out)."""
        query = "SELECT i.id, c.name FROM images i LEFT JOIN classes c ON c.id = i.class_id"
        with self.read() as conn:
            if image_ids is None:
                return dict(conn.execute(query).fetchall())
            labels = {}
            for part in chunks(sorted({int(image_id) for image_id in image_ids})):
                labels.update(conn.execute(f"{query} WHERE i.id IN ({','.join('?' * len(part))})", part).fetchall())
            return labels

    def get_image(self, image_id: int) -> StoredImage:
        with self.read() as conn:
            row = conn.execute(f"SELECT {_IMAGE_COLUMNS} FROM images i LEFT JOIN classes c ON c.id = i.class_id "
                               "WHERE i.id = ?", (int(image_id),)).fetchone()
        if row is None:
            raise ImageNotFoundError(f"image {image_id} is not in this project. Refresh the image list.")
        return self._stored_image(row)

    def find_by_sha256(self, sha256: str) -> StoredImage | None:
        with self.read() as conn:
            row = conn.execute(f"SELECT {_IMAGE_COLUMNS} FROM images i LEFT JOIN classes c ON c.id = i.class_id "
                               "WHERE i.sha256 = ?", (sha256,)).fetchone()
        return None if row is None else self._stored_image(row)

    def image_path(self, image_id: int) -> Path:
        return self.get_image(image_id).path

    def thumbnail_path(self, image_id: int) -> Path:
        """Path of a cached ~160 px JPEG thumbnail, created on first request."""
        image = self.get_image(image_id)
        return self.objects.thumbnail_path(image.sha256, image.ext)

    def _stored_image(self, row: sqlite3.Row) -> StoredImage:
        return StoredImage(*row, path=self.objects.path(row["sha256"], row["ext"]))

    def image_set(self, labeled_only: bool = False) -> ImageSet:
        """The project as an :class:`~fsl_app.dataset.ImageSet` (object file paths, sha256, label or None)."""
        return self.image_set_with_ids(labeled=True if labeled_only else None)[0]

    def image_set_with_ids(self, *, labeled: bool | None = None,
                           sample: int | None = None) -> tuple[ImageSet, list[int]]:
        """An ImageSet and the image id of each record, from one consistent read. ``sample``: at most that many
        images, a seeded random draw (the same for the same images), in id order."""
        images = self.images(labeled=labeled) if sample is None else self.sample_images(labeled=labeled, size=sample)
        records = [ImageRecord(path=image.path, sha256=image.sha256, label=image.label) for image in images]
        return ImageSet(records), [image.id for image in images]

    def sample_images(self, *, labeled: bool | None = None, size: int) -> list[StoredImage]:
        """At most ``size`` images, in id order: all of them when there are no more, else a random draw seeded by
        their number (the same draw while the images stay the same)."""
        import numpy as np

        where, params = self._image_filter(labeled, None)
        with self.read() as conn:
            ids = np.array([row[0] for row in conn.execute(f"SELECT i.id FROM images i {where}", params)], np.int64)
            if len(ids) > size:
                ids = np.sort(np.random.default_rng(len(ids)).choice(ids, size=size, replace=False))
            rows = []
            for part in chunks(ids.tolist()):
                rows += conn.execute(f"SELECT {_IMAGE_COLUMNS} FROM images i LEFT JOIN classes c ON "
                                     f"c.id = i.class_id WHERE i.id IN ({','.join('?' * len(part))}) ORDER BY i.id",
                                     part).fetchall()
        return [self._stored_image(row) for row in rows]

    def delete_images(self, image_ids: Iterable[int]) -> int:
        """Delete images (rows and label history). A file is removed only when no run snapshot still uses it."""
        ids = list(dict.fromkeys(int(image_id) for image_id in image_ids))
        if not ids:
            return 0
        tombstones = []
        with self.write() as conn:
            _labels.current_labels(conn, ids)  # raises, changing nothing, if any id is unknown
            rows = []
            for part in chunks(ids):
                marks = ",".join("?" * len(part))
                rows += conn.execute(f"SELECT id, sha256, ext FROM images WHERE id IN ({marks})", part).fetchall()
                conn.execute(f"DELETE FROM images WHERE id IN ({marks})", part)
            for row in rows:
                if not self._is_referenced(conn, row["sha256"], row["ext"]):
                    tombstones.append(self.objects.tombstone(row["sha256"], row["ext"]))
        for tomb in tombstones:
            if tomb is not None:
                tomb.unlink(missing_ok=True)
        return len(rows)

    @staticmethod
    def _is_referenced(conn: sqlite3.Connection, sha256: str, ext: str) -> bool:
        return bool(conn.execute("SELECT 1 FROM images WHERE sha256 = ? AND ext = ? UNION ALL "
                                 "SELECT 1 FROM run_images WHERE sha256 = ? AND ext = ? LIMIT 1",
                                 (sha256, ext, sha256, ext)).fetchone())

    def near_duplicates(self, max_distance: int = NEAR_DUPLICATE_MAX_DISTANCE) -> list[tuple[int, int, int]]:
        """Pairs ``(image_id_a, image_id_b, phash hamming distance)`` with distance <= ``max_distance``.

        The search runs once per set of stored signatures: its answer is kept, under a digest of every image id and
        signature (:func:`~.duplicates.pairs_key`), in this object and in ``cache/near_duplicates.json``, so the
        pages that show it on every rerun, other sessions and a restarted server read it instead of searching a
        100,000-image project again. Any import or delete changes the digest, and the next call searches again;
        while nothing at all is written to the database (:meth:`_change_marker`), not even the digest is computed.
        """
        with self.read() as conn:
            marker = (*self._change_marker(conn), max_distance)  # before the rows: a later commit moves it
            if self._near_duplicates[0] == marker:  # nothing written since the last answer
                return list(self._near_duplicates[2])
            rows = conn.execute("SELECT id, phash FROM images WHERE phash IS NOT NULL ORDER BY id").fetchall()
        ids, hashes = [row[0] for row in rows], [row[1] for row in rows]
        key = pairs_key(ids, hashes, max_distance)
        with self._lock:
            pairs = self._near_duplicates[2] if self._near_duplicates[1] == key else None
        if pairs is None:
            saved = self.path / NEAR_DUPLICATES_FILE
            pairs = load_pairs(saved, key)
            if pairs is None:
                pairs = near_duplicate_pairs(ids, hashes, max_distance)
                save_pairs(saved, key, pairs)
        with self._lock:
            self._near_duplicates = (marker, key, pairs)
        return list(pairs)

    # -- import / export / runs / stats / fsck (implemented in their own modules) -----------------------------------

    def import_files(self, files, label: str | None = None, *, actor: str | None = None,
                     on_progress=None) -> ImportReport:
        """Import uploads: ``(file name, bytes)`` pairs or objects with ``.name`` and ``.getvalue()``."""
        return import_files(self, files, label=label, actor=actor, on_progress=on_progress)

    def import_folder(self, folder: str | Path, label: str | None = None, *, actor: str | None = None,
                      on_progress=None) -> ImportReport:
        """Import every image under ``folder`` (recursively), all labeled ``label`` (default: unlabeled)."""
        return import_folder(self, folder, label=label, actor=actor, on_progress=on_progress)

    def import_imagefolder(self, folder: str | Path, *, actor: str | None = None, on_progress=None) -> ImportReport:
        """Import an ImageFolder tree: each sub-folder is a class, loose files are unlabeled."""
        return import_imagefolder(self, folder, actor=actor, on_progress=on_progress)

    def import_zip(self, source, label: str | None = None, *, folders_as_classes: bool = True,
                   actor: str | None = None, on_progress=None) -> ImportReport:
        """Import a zip (path, bytes or binary file); with ``folders_as_classes`` its folders are classes."""
        return import_zip(self, source, label=label, folders_as_classes=folders_as_classes, actor=actor,
                          on_progress=on_progress)

    def import_uploads(self, uploads, label: str | None = None, *, actor: str | None = None) -> ImportReport:
        """Import browser uploads, images and zips mixed, into one report (see :func:`~.importing.import_uploads`)."""
        return import_uploads(self, uploads, label, actor=actor)

    def export_imagefolder_zip(self, destination) -> ExportReport:
        """Write the labeled images as an ImageFolder zip (one folder per class) to a path or binary buffer."""
        return export_imagefolder_zip(self, destination)

    def record_run(self, run_dir: str | Path, config: dict, images: ImageSet | None = None) -> int:
        """Snapshot the images and labels a run used (default: all labeled images now); returns the run id."""
        return record_run(self, run_dir, config, images)

    def run_snapshot(self, run_id: int) -> RunSnapshot:
        return run_snapshot(self, run_id)

    def list_runs(self) -> list[RunInfo]:
        return list_runs(self)

    def stats(self) -> ProjectStats:
        """Counts per class, unlabeled, duplicates, near duplicates and data warnings."""
        return project_stats(self)

    def fsck(self, *, remove_orphans: bool = True, verify_hashes: bool = False,
             temp_age_s: float | None = None) -> FsckReport:
        """Check and repair the project folder after a crash (see :mod:`fsl_app.store.fsck`)."""
        kwargs = {} if temp_age_s is None else {"temp_age_s": temp_age_s}
        return check_project(self, remove_orphans=remove_orphans, verify_hashes=verify_hashes, **kwargs)


def new_project_meta(conn: sqlite3.Connection, name: str) -> None:
    """Fill ``meta`` for a freshly created project database."""
    with write_transaction(conn):
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                         [("name", name), ("created_at", now_iso()), ("duplicates_skipped", "0")])
