"""Content-addressed image files: ``objects/ab/abcdef...<ext>`` holds the original bytes, written atomically.

A file is written to a temporary name in its final folder, flushed to disk and renamed into place, so a reader (or a
process killed half-way) never sees a partial image. Deleting goes through a tombstone folder (``deleted/``): the
file is moved there inside the database transaction that deletes its row, and removed after the commit, so a crash
in between can always be repaired by :meth:`ObjectStore.recover_tombstones`.
"""

from __future__ import annotations

import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from ..atomic import TEMP_PREFIX, fsync_path, write_bytes_atomic
from ..images import load_image, sha256_file, thumbnail
from ..working_copies import IMPORT_SIDE, read_working_copy

THUMBNAIL_SIZE = 160


class ObjectStore:
    """The files of one project: originals under ``objects/``, thumbnail cache under ``thumbs/``."""

    def __init__(self, project_dir: str | Path):
        self.project_dir = Path(project_dir)
        self.objects_dir = self.project_dir / "objects"
        self.thumbs_dir = self.project_dir / "thumbs"
        self.deleted_dir = self.project_dir / "deleted"

    def path(self, sha256: str, ext: str) -> Path:
        return self.objects_dir / sha256[:2] / f"{sha256}{ext}"

    def write(self, sha256: str, ext: str, data: bytes, *, durable: bool = True) -> Path:
        """Store ``data`` under its hash. An existing file is kept only if its bytes still match the hash.

        With ``durable=False`` the caller must :meth:`sync` the path before a database row points at it.
        """
        target = self.path(sha256, ext)
        if target.is_file() and sha256_file(target) == sha256:
            return target
        write_bytes_atomic(target, data, durable=durable)
        return target

    def ensure(self, sha256: str, ext: str, data: bytes) -> Path:
        """Re-write the file durably if it vanished (e.g. swept by a concurrent fsck) since :meth:`write`."""
        target = self.path(sha256, ext)
        if not target.is_file():
            write_bytes_atomic(target, data, durable=True)
        return target

    @staticmethod
    def sync(paths: list[Path]) -> None:
        """fsync many files and their folders at once: parallel calls let the file system group its journal
        commits."""
        targets = list(dict.fromkeys([*paths, *(path.parent for path in paths)]))
        if targets:
            with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
                list(pool.map(fsync_path, targets))

    def tombstone(self, sha256: str, ext: str) -> Path | None:
        """Move an object aside before its row is deleted; returns the tombstone path (None if it was missing)."""
        source = self.path(sha256, ext)
        target = self.deleted_dir / source.name
        self.deleted_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
        except FileNotFoundError:
            return None
        return target

    def recover_tombstones(self, referenced_names: set[str]) -> tuple[int, int]:
        """Put back tombstoned files still referenced (crash before commit), remove the rest.

        Returns (restored, removed).
        """
        restored = removed = 0
        for tomb in self._files_in(self.deleted_dir):
            sha256, ext = split_object_name(tomb.name)
            target = self.path(sha256, ext)
            if tomb.name in referenced_names and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tomb, target)
                restored += 1
            else:
                tomb.unlink(missing_ok=True)
                removed += 1
        return restored, removed

    def iter_objects(self) -> Iterator[Path]:
        """Every stored original (temporary files excluded)."""
        for shard in self._dirs_in(self.objects_dir):
            for path in self._files_in(shard):
                if not path.name.startswith("."):
                    yield path

    def iter_temp_files(self, *, older_than_s: float) -> Iterator[Path]:
        """Leftovers of writes interrupted by a crash (younger ones may belong to a write in progress)."""
        cutoff = time.time() - older_than_s
        for folder in [*self._dirs_in(self.objects_dir), *self._dirs_in(self.thumbs_dir)]:
            for path in self._files_in(folder):
                if path.name.startswith(TEMP_PREFIX) and _mtime(path) < cutoff:
                    yield path

    def thumbnail_path(self, sha256: str, ext: str, *, size: int = THUMBNAIL_SIZE) -> Path:
        """JPEG thumbnail of an object, created on first use and cached under ``thumbs/``."""
        target = self.thumbs_dir / sha256[:2] / f"{sha256}-{size}.jpg"
        if not target.is_file():
            source = read_working_copy(sha256) if 2 * size <= IMPORT_SIDE else None  # a photo: skip its decode
            if source is None:
                source = load_image(self.path(sha256, ext), draft=(2 * size, 2 * size))
            small = thumbnail(source, size)
            buffer = io.BytesIO()
            small.save(buffer, format="JPEG", quality=85)
            write_bytes_atomic(target, buffer.getvalue(), durable=False)
        return target

    def iter_thumbnails(self) -> Iterator[Path]:
        for shard in self._dirs_in(self.thumbs_dir):
            for path in self._files_in(shard):
                if not path.name.startswith("."):
                    yield path

    @staticmethod
    def _dirs_in(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    @staticmethod
    def _files_in(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def split_object_name(file_name: str) -> tuple[str, str]:
    """'<64 hex digits><ext>' -> (sha256, ext)."""
    return file_name[:64], file_name[64:]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")
