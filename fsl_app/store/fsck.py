"""Check and repair a project folder: database integrity, rows without files, files without rows, crash leftovers.

Rows are never deleted here: a row whose file is missing is reported (its label is knowledge worth keeping; re-import
the file to heal it). Files without rows are the normal leftovers of an interrupted import and are removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..images import sha256_file
from .objects import split_object_name

if TYPE_CHECKING:
    from .project import Project

TEMP_FILE_AGE_S = 600.0  # younger temporary files may belong to an import running in another process


@dataclass
class FsckReport:
    integrity: list[str]  # ['ok'] when SQLite finds nothing wrong
    foreign_key_problems: int = 0
    missing_files: list[int] = field(default_factory=list)  # image ids whose file is gone
    corrupt_files: list[int] = field(default_factory=list)  # image ids whose bytes no longer match the hash
    orphans_removed: list[str] = field(default_factory=list)  # object file names without a row
    orphans_found: list[str] = field(default_factory=list)
    temp_files_removed: int = 0
    tombstones_restored: int = 0
    tombstones_removed: int = 0
    thumbnails_removed: int = 0

    @property
    def ok(self) -> bool:
        """True when the database is sound and every image row has its intact file."""
        return (self.integrity == ["ok"] and not self.foreign_key_problems and not self.missing_files
                and not self.corrupt_files)

    def summary(self) -> str:
        state = "ok" if self.ok else "PROBLEMS"
        return (f"{state}: integrity={'; '.join(self.integrity)}, missing files={len(self.missing_files)}, "
                f"corrupt files={len(self.corrupt_files)}, orphans removed={len(self.orphans_removed)}, "
                f"temp files removed={self.temp_files_removed}, tombstones restored={self.tombstones_restored}")


def check_project(project: "Project", *, remove_orphans: bool = True, verify_hashes: bool = False,
                  temp_age_s: float = TEMP_FILE_AGE_S) -> FsckReport:
    """Run every check; with ``remove_orphans`` delete files no row or run snapshot references."""
    objects = project.objects
    with project.write() as conn:  # holds the write lock: no import can insert a row while files are swept
        report = FsckReport(integrity=[row[0] for row in conn.execute("PRAGMA integrity_check")])
        report.foreign_key_problems = len(conn.execute("PRAGMA foreign_key_check").fetchall())
        rows = conn.execute("SELECT id, sha256, ext FROM images ORDER BY id").fetchall()
        referenced = {f"{row['sha256']}{row['ext']}" for row in rows}
        referenced |= {f"{sha}{ext}" for sha, ext in conn.execute("SELECT DISTINCT sha256, ext FROM run_images")}
        report.tombstones_restored, report.tombstones_removed = objects.recover_tombstones(referenced)
        report.missing_files = [row["id"] for row in rows if not objects.path(row["sha256"], row["ext"]).is_file()]
        for path in objects.iter_objects():
            if path.name not in referenced:
                report.orphans_found.append(path.name)
                if remove_orphans:
                    path.unlink(missing_ok=True)
                    report.orphans_removed.append(path.name)
        report.temp_files_removed = _remove_all(objects.iter_temp_files(older_than_s=temp_age_s))
        referenced_shas = {split_object_name(name)[0] for name in referenced}
        stale = (thumb for thumb in objects.iter_thumbnails() if thumb.name[:64] not in referenced_shas)
        report.thumbnails_removed = _remove_all(stale)
    if verify_hashes:
        report.corrupt_files = [row["id"] for row in rows if row["id"] not in report.missing_files
                                and sha256_file(objects.path(row["sha256"], row["ext"])) != row["sha256"]]
    return report


def _remove_all(paths) -> int:
    count = 0
    for path in list(paths):
        path.unlink(missing_ok=True)
        count += 1
    return count
