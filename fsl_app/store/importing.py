"""Import images into a project from uploads, folders, ImageFolder trees and zip archives.

Every file is all-or-nothing: it is either added (original bytes stored, row inserted, label logged) or listed in the
report as a duplicate, as skipped (hidden and system entries) or as rejected with the reason. Only regular files are
read (:func:`fsl_app.images.read_image_file`). Files are decoded (:func:`fsl_app.images.decode_image`: size,
pixel and corruption checks), hashed and written to the object store first; their rows are inserted afterwards, in
batches, each batch one transaction. A crash therefore leaves at worst object files without rows, which
:meth:`Project.fsck` removes; never a row without its file. A large photo also gets its working copy
(:mod:`fsl_app.working_copies`) so that training never decodes it at full size again.
"""

from __future__ import annotations

import io
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Iterator

from .. import images as image_io
from ..dataset import is_hidden_or_system, skip_reason, walk_files
from ..images import IMAGE_EXTENSIONS, ImageError, decode_image, is_image_name, read_image_file, sha256_bytes
from . import _labels
from ..working_copies import make_working_copy
from .duplicates import image_signature
from .errors import ArchiveError, InvalidNameError, StoreError
from .names import name_key, printable, validate_class_name

if TYPE_CHECKING:
    from .project import Project

BATCH_FILES = 64
BATCH_BYTES = 64 * 1024 * 1024
MAX_ZIP_ENTRIES = 50_000
MAX_ZIP_TOTAL_BYTES = 8 * 1024**3  # decompressed, whole archive
_READ_CHUNK = 1024 * 1024

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class AddedImage:
    name: str
    image_id: int
    sha256: str
    label: str | None


@dataclass(frozen=True)
class DuplicateImage:
    """A file whose exact bytes are already in the project (or earlier in the same import); nothing was changed."""

    name: str
    image_id: int | None
    sha256: str
    existing_label: str | None
    requested_label: str | None = None  # the label this import asked for


@dataclass(frozen=True)
class LabelConflict:
    """An exact duplicate imported under another label than the stored image has: the stored label is kept."""

    name: str
    image_id: int | None
    existing_label: str | None  # None: the stored image is unlabeled
    requested_label: str

    def message(self) -> str:
        kept = f"keeps its label {self.existing_label!r}" if self.existing_label else "stays unlabeled"
        return (f"{self.name} is already in the project as image {self.image_id}, which {kept}; it was not labeled "
                f"{self.requested_label!r}. To change the label, relabel image {self.image_id} on the Data page "
                f"(or call Project.set_labels([{self.image_id}], {self.requested_label!r})).")


@dataclass
class ImportReport:
    added: list[AddedImage] = field(default_factory=list)
    duplicates: list[DuplicateImage] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason and fix)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (hidden or system entry, why it was left out)
    conflicts: list[LabelConflict] = field(default_factory=list)  # duplicates whose requested label was not applied

    @property
    def added_ids(self) -> list[int]:
        return [image.image_id for image in self.added]

    def extend(self, other: "ImportReport") -> None:
        """Append another import's outcome to this report."""
        self.added += other.added
        self.duplicates += other.duplicates
        self.rejected += other.rejected

    def summary(self) -> str:
        text = (f"{len(self.added)} added, {len(self.duplicates)} duplicate(s) skipped, "
                f"{len(self.rejected)} rejected")
        if self.skipped:
            text += f", {len(self.skipped)} skipped (hidden or system)"
        if self.conflicts:
            text += f", {len(self.conflicts)} label conflict(s)"
        return text

    def lines(self) -> list[tuple[str, str]]:
        """``(level, text)`` for every file not simply added, names escaped for a terminal or a page;
        level is ``info`` (duplicates, skipped entries), ``warning`` (label conflicts) or ``error`` (rejected)."""
        lines = [("info", f"duplicate: {d.name} (already image {d.image_id})") for d in self.duplicates]
        lines += [("info", f"skipped: {name}: {reason}") for name, reason in self.skipped]
        lines += [("warning", f"label conflict: {conflict.message()}") for conflict in self.conflicts]
        lines += [("error", f"rejected: {name}: {reason}") for name, reason in self.rejected]
        return [(level, printable(text)) for level, text in lines]

    @classmethod
    def combine(cls, reports: Iterable["ImportReport"]) -> "ImportReport":
        """One report listing everything of ``reports`` (e.g. several sources of one command)."""
        total = cls()
        for report in reports:
            for name in ("added", "duplicates", "rejected", "skipped", "conflicts"):
                getattr(total, name).extend(getattr(report, name))
        return total


class RejectedFile(Exception):
    """Raised while reading one file: it is reported as rejected and the import goes on."""


@dataclass(frozen=True)
class _Entry:
    name: str
    label: str | None
    read: Callable[[], bytes]


@dataclass
class _Pending:
    name: str
    sha256: str
    ext: str
    label: str | None
    data: bytes
    width: int
    height: int
    phash: str


class _Importer:
    """Decode, hash and write files one by one; insert their rows in batched transactions."""

    def __init__(self, project: "Project", *, actor: str | None, source: str,
                 on_progress: ProgressCallback | None = None):
        self.project = project
        self.actor = _labels.actor_name(actor)
        self.source = source
        self.on_progress = on_progress
        self.report = ImportReport()
        self.pending: list[_Pending] = []
        self.seen: dict[str, str] = {}  # sha256 -> name, within this import
        self.duplicate_names: list[tuple[str, str, str | None]] = []  # (name, sha256, requested label)
        self.label_batch_id: int | None = None
        self.uncounted_duplicates = 0
        self.processed = 0

    def run(self, entries: Iterable[_Entry]) -> ImportReport:
        for entry in entries:
            self.add(entry)
            self.processed += 1
            if self.on_progress is not None:
                self.on_progress(self.processed)
        self.flush()
        if self.uncounted_duplicates:
            with self.project.write() as conn:
                self._count_duplicates(conn)
        self._resolve_duplicates()
        return self.report

    def reject(self, name: str, reason: str) -> None:
        self.report.rejected.append((name, reason))

    def skip(self, name: str, reason: str) -> None:
        self.report.skipped.append((name, reason))

    def add(self, entry: _Entry) -> None:
        try:
            pending = self._prepare(entry)
        except RejectedFile as problem:
            self.reject(entry.name, str(problem))
            return
        if pending is None:
            return
        try:
            self.project.objects.write(pending.sha256, pending.ext, pending.data, durable=False)
        except OSError as error:
            self.flush()
            raise StoreError(f"could not write {entry.name} into the project ({error.strerror or error}). Free disk "
                             "space or check permissions, then import again; images added so far are kept.") from error
        self.seen[pending.sha256] = entry.name
        self.pending.append(pending)
        if len(self.pending) >= BATCH_FILES or sum(len(p.data) for p in self.pending) >= BATCH_BYTES:
            self.flush()

    def _prepare(self, entry: _Entry) -> _Pending | None:
        """Validate one file; None when it is a duplicate (recorded), RejectedFile when unusable."""
        if not is_image_name(entry.name):
            suffix = Path(entry.name).suffix or "no extension"
            raise RejectedFile(f"not an image file ({suffix}). Supported: {', '.join(sorted(IMAGE_EXTENSIONS))}.")
        label = _checked_label(entry.label)
        data = entry.read()
        sha256 = sha256_bytes(data)
        if sha256 in self.seen or self._stored(sha256):
            self._duplicate(entry.name, sha256, label)
            return None
        image = _decode(data, entry.name)
        make_working_copy(data, entry.name, sha256)  # a large photo: read once now as the default backbone reads it
        return _Pending(name=entry.name, sha256=sha256, ext=Path(entry.name).suffix.lower(), label=label, data=data,
                        width=image.width, height=image.height, phash=image_signature(image))

    def _stored(self, sha256: str) -> bool:
        with self.project.read() as conn:
            return conn.execute("SELECT 1 FROM images WHERE sha256 = ?", (sha256,)).fetchone() is not None

    def flush(self) -> None:
        """Make the pending files durable, then insert their rows in one transaction (re-writing any file a
        concurrent fsck swept meanwhile)."""
        if not self.pending:
            return
        added, duplicates = [], []
        objects = self.project.objects
        objects.sync([objects.path(item.sha256, item.ext) for item in self.pending])  # durable before any row
        with self.project.write() as conn:
            for item in self.pending:
                if conn.execute("SELECT 1 FROM images WHERE sha256 = ?", (item.sha256,)).fetchone():
                    duplicates.append((item.name, item.sha256, item.label))  # another process added it meanwhile
                    continue
                objects.ensure(item.sha256, item.ext, item.data)
                added.append(AddedImage(item.name, self._insert(conn, item), item.sha256, item.label))
            self._log_labels(conn, added)
            self._count_duplicates(conn, extra=len(duplicates))
        self.report.added.extend(added)
        self.duplicate_names.extend(duplicates)
        self.pending = []

    def _duplicate(self, name: str, sha256: str, label: str | None) -> None:
        self.duplicate_names.append((name, sha256, label))
        self.uncounted_duplicates += 1

    @staticmethod
    def _insert(conn, item: _Pending) -> int:
        cursor = conn.execute(
            "INSERT INTO images (sha256, ext, class_id, source_name, added_at, width, height, size_bytes, phash) "
            "VALUES (?, ?, NULL, ?, ?, ?, ?, ?, ?)",
            (item.sha256, item.ext, item.name, _labels.now_iso(), item.width, item.height, len(item.data),
             item.phash))
        return int(cursor.lastrowid)

    def _log_labels(self, conn, added: list[AddedImage]) -> None:
        """Label the new rows through the label log, so a labeled import can be undone like any label change."""
        for label in dict.fromkeys(image.label for image in added if image.label is not None):
            class_id = _labels.class_id_for(conn, label, create=True)
            states = [_labels.LabelState(image.image_id, None, None) for image in added if image.label == label]
            _, self.label_batch_id = _labels.relabel(conn, states, class_id, action=f"import from {self.source}",
                                                     actor=self.actor, batch_id=self.label_batch_id)

    def _count_duplicates(self, conn, extra: int = 0) -> None:
        """Add the duplicates seen since the last transaction to the project's running total (for stats)."""
        count, self.uncounted_duplicates = self.uncounted_duplicates + extra, 0
        if count:
            conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'duplicates_skipped'",
                         (count,))

    def _resolve_duplicates(self) -> None:
        if not self.duplicate_names:
            return
        with self.project.read() as conn:
            for name, sha256, requested in self.duplicate_names:
                row = conn.execute("SELECT i.id, c.name FROM images i LEFT JOIN classes c ON c.id = i.class_id "
                                   "WHERE i.sha256 = ?", (sha256,)).fetchone()
                image_id, label = (row[0], row[1]) if row else (None, None)
                self.report.duplicates.append(DuplicateImage(name, image_id, sha256, label, requested))
                if requested is not None and (label is None or name_key(label) != name_key(requested)):
                    self.report.conflicts.append(LabelConflict(name, image_id, label, requested))


def _checked_label(label: str | None) -> str | None:
    if label is None:
        return None
    try:
        return validate_class_name(label)
    except InvalidNameError as error:
        raise RejectedFile(f"its folder cannot be a class name: {error}") from None


def _decode(data: bytes, name: str):
    try:
        return decode_image(data, name)
    except ImageError as error:
        raise RejectedFile(str(error).removeprefix(f"{name}: ")) from None
    except Exception as error:  # a hostile file must never abort the whole import
        raise RejectedFile(f"could not be decoded ({type(error).__name__}: {error}). "
                           "Re-export the image or remove it.") from None


# -- sources -----------------------------------------------------------------------------------------------------------

def import_files(project: "Project", files: Iterable, label: str | None = None, *, actor: str | None = None,
                 on_progress: ProgressCallback | None = None) -> ImportReport:
    """Import uploads: ``(name, bytes)`` pairs or objects with ``.name`` and ``.getvalue()`` (browser uploads)."""
    label = validate_class_name(label) if label is not None else None
    entries = (_upload_entry(item, label) for item in files)
    return _Importer(project, actor=actor, source="upload", on_progress=on_progress).run(entries)


def _upload_entry(item, label: str | None) -> _Entry:
    name, data = _upload_name_and_bytes(item)
    return _Entry(name=name, label=label, read=lambda: _capped_bytes(data))


def _capped_bytes(data: bytes) -> bytes:
    if len(data) > image_io.MAX_BYTES:
        raise RejectedFile(f"{len(data) / 2**20:.0f} MiB is over the {image_io.MAX_BYTES // 2**20} MiB "
                           "limit. Downscale or recompress the image before adding it.")
    return data


def import_folder(project: "Project", folder: str | Path, label: str | None = None, *, actor: str | None = None,
                  on_progress: ProgressCallback | None = None) -> ImportReport:
    """Import every image under ``folder`` (recursively, hidden files skipped), all labeled ``label`` or unlabeled."""
    root = _existing_folder(folder)
    label = validate_class_name(label) if label is not None else None
    importer = _Importer(project, actor=actor, source=f"folder {root.name}", on_progress=on_progress)
    return importer.run(_file_entry(root, path, label) for path in _walk_files(root, importer))


def import_imagefolder(project: "Project", folder: str | Path, *, actor: str | None = None,
                       on_progress: ProgressCallback | None = None) -> ImportReport:
    """Import the ImageFolder layout: each sub-folder of ``folder`` is a class, loose files are unlabeled."""
    root = _existing_folder(folder)
    importer = _Importer(project, actor=actor, source=f"folder {root.name}", on_progress=on_progress)
    return importer.run(_file_entry(root, path, _folder_label(path.relative_to(root).parts))
                        for path in _walk_files(root, importer))


def import_paths(project: "Project", paths: Iterable[str | Path], label: str | None = None, *,
                 actor: str | None = None, on_progress: ProgressCallback | None = None) -> ImportReport:
    """Import single image files given by path (named by their file name), read with the same checks as folders."""
    label = validate_class_name(label) if label is not None else None
    entries = (_Entry(name=Path(path).name, label=label, read=lambda path=path: _read_file(Path(path)))
               for path in paths)
    return _Importer(project, actor=actor, source="files", on_progress=on_progress).run(entries)


def _existing_folder(folder: str | Path) -> Path:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise StoreError(f"{root} is not a folder. Pass a folder of images (sub-folders become classes).")
    return root


def _walk_files(root: Path, importer: _Importer) -> Iterator[Path]:
    """Files under ``root`` in a stable order; hidden and system entries and unlistable folders are reported to
    ``importer``."""
    def relative(path: str | Path) -> str:
        return Path(path).relative_to(root).as_posix()

    def unlistable(error: OSError) -> None:
        reason = (f"folder cannot be read ({error.strerror or error}). Check its permissions; its images were "
                  "not imported.")
        importer.reject(relative(error.filename or root), reason)

    return walk_files(root, on_skip=lambda path, reason: importer.skip(relative(path), reason), on_error=unlistable)


def _folder_label(parts: tuple[str, ...] | list[str]) -> str | None:
    return parts[0] if len(parts) > 1 else None


def _file_entry(root: Path, path: Path, label: str | None) -> _Entry:
    name = path.relative_to(root).as_posix()
    return _Entry(name=name, label=label, read=lambda: _read_file(path))


def _read_file(path: Path) -> bytes:
    """A regular file's bytes, capped at the size limit; FIFOs, devices and links to them are never opened."""
    try:
        return read_image_file(path)
    except ImageError as error:
        raise RejectedFile(str(error).removeprefix(f"{path}: ")) from None


# -- zip archives ------------------------------------------------------------------------------------------------------

def import_zip(project: "Project", source: str | Path | bytes | BinaryIO, label: str | None = None, *,
               folders_as_classes: bool = True, actor: str | None = None,
               on_progress: ProgressCallback | None = None) -> ImportReport:
    """Import a zip archive given as a path, bytes or a binary file object.

    With ``folders_as_classes`` the archive may use the ImageFolder layout (optionally inside one top folder);
    ``label`` instead labels every image. Unsafe entries (``../``, absolute paths, symlinks, encrypted, oversized
    or lying about their size) are rejected one by one; an archive with too many entries or too many decompressed
    bytes is refused as a whole with :class:`ArchiveError`.
    """
    label = validate_class_name(label) if label is not None else None
    archive_name = Path(source).name if isinstance(source, (str, Path)) else "archive"
    with _open_zip(source, archive_name) as archive:
        infos = _checked_infos(archive, archive_name)
        importer = _Importer(project, actor=actor, source=f"zip {archive_name}", on_progress=on_progress)
        return importer.run(_zip_entries(archive, infos, importer, label, folders_as_classes))


def import_uploads(project: "Project", uploads: Iterable, label: str | None = None, *,
                   actor: str | None = None) -> ImportReport:
    """Import browser uploads, images and zips mixed, into one report.

    ``uploads``: objects with ``.name`` and ``.getvalue()``, or ``(name, bytes)`` pairs. ``label`` labels every
    image; with None, loose images stay unlabeled and a zip's folders become classes. What would stop an import
    (a zip refused as a whole, a ``label`` that is not a class name) is reported as rejected instead of raised.
    """
    entries = [_upload_name_and_bytes(upload) for upload in uploads]
    images = [(name, data) for name, data in entries if not name.lower().endswith(".zip")]
    zips = [(name, data) for name, data in entries if name.lower().endswith(".zip")]
    report = ImportReport()
    if images:
        _import_or_reject(report, [name for name, _ in images],
                          lambda: import_files(project, images, label, actor=actor))
    for name, data in zips:
        _import_or_reject(report, [name], lambda: import_zip(project, data, label, actor=actor))
    return report


def _import_or_reject(report: ImportReport, names: list[str], run: Callable[[], ImportReport]) -> None:
    try:
        report.extend(run())
    except StoreError as error:
        report.rejected += [(name, str(error)) for name in names]


def _upload_name_and_bytes(upload) -> tuple[str, bytes]:
    if hasattr(upload, "getvalue"):
        return str(upload.name), upload.getvalue()
    name, data = upload
    return str(name), bytes(data)


def _open_zip(source, archive_name: str) -> zipfile.ZipFile:
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)) and not Path(source).is_file():
        raise StoreError(f"{source} does not exist. Check the path of the zip file.")
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as error:
        raise ArchiveError(f"{archive_name} is not a readable zip archive ({error}). Re-create the zip "
                           "(e.g. 'Compress' in your file manager) and try again.") from error


def _checked_infos(archive: zipfile.ZipFile, archive_name: str) -> list[zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_ENTRIES:
        raise ArchiveError(f"{archive_name} has {len(infos):,} entries; the limit is {MAX_ZIP_ENTRIES:,}. "
                           "Split it into several smaller zips.")
    declared = sum(info.file_size for info in infos)
    if declared > MAX_ZIP_TOTAL_BYTES:
        raise ArchiveError(f"{archive_name} declares {declared / 2**30:.1f} GiB once decompressed; the limit is "
                           f"{MAX_ZIP_TOTAL_BYTES / 2**30:.1f} GiB. Split it into smaller zips.")
    return sorted(infos, key=lambda info: info.filename)


def _zip_entries(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], importer: _Importer,
                 label: str | None, folders_as_classes: bool) -> Iterator[_Entry]:
    """Safe file entries of the archive with their labels; unsafe ones are reported as rejected."""
    safe: list[tuple[zipfile.ZipInfo, list[str]]] = []
    skipped_folders: set[str] = set()
    for info in infos:
        if info.is_dir():
            continue
        problem = _entry_problem(info)  # before the junk filter: '..' also starts with a dot
        if problem:
            importer.reject(info.filename, problem)
            continue
        parts = _entry_parts(info.filename)
        junk = next((index for index, part in enumerate(parts) if is_hidden_or_system(part)), None)
        if junk is None:
            safe.append((info, parts))
        elif junk == len(parts) - 1:
            importer.skip(info.filename, skip_reason(parts[junk], folder=False))
        elif (folder := "/".join(parts[:junk + 1]) + "/") not in skipped_folders:
            skipped_folders.add(folder)
            importer.skip(folder, skip_reason(parts[junk], folder=True))
    strip_top = _has_single_top_folder([parts for _, parts in safe])
    budget = _DecompressionBudget(MAX_ZIP_TOTAL_BYTES)
    for info, parts in safe:
        parts = parts[1:] if strip_top else parts
        entry_label = label if label is not None else (_folder_label(parts) if folders_as_classes else None)
        yield _Entry(name=info.filename, label=entry_label,
                     read=lambda info=info: _read_zip_entry(archive, info, budget))


def _entry_parts(filename: str) -> list[str]:
    return [part for part in filename.replace("\\", "/").split("/") if part not in ("", ".")]


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why an entry is unsafe to import, or None."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path inside the zip; refused. Re-create the zip from relative paths."
    if ".." in name.split("/"):
        return "path contains '..' (it would escape the archive); refused. Re-create the zip without '..'."
    if any(ord(char) < 32 for char in name):
        return "file name contains control characters; refused. Rename the file and re-create the zip."
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link inside the zip; refused. Put the image itself in the zip, not a link to it."
    if info.flag_bits & 0x1:
        return "the entry is password-protected; refused. Re-create the zip without encryption."
    if info.file_size > image_io.MAX_BYTES:
        return (f"declares {info.file_size / 2**20:.0f} MiB once decompressed, over the "
                f"{image_io.MAX_BYTES // 2**20} MiB per-file limit. Downscale the image or leave it out.")
    return None


def _has_single_top_folder(all_parts: list[list[str]]) -> bool:
    """True when all files share one top folder that holds class sub-folders: ``data/cats/a.jpg`` -> strip ``data``.

    A single folder of loose files (``cats/a.jpg`` only) is kept: there the folder is the class.
    """
    if not all_parts or any(len(parts) < 2 for parts in all_parts):
        return False
    if len({parts[0] for parts in all_parts}) != 1:
        return False
    return any(len(parts) > 2 for parts in all_parts)


@dataclass
class _DecompressionBudget:
    remaining: int


def _read_zip_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _DecompressionBudget) -> bytes:
    """Stream-decompress one entry, refusing it as soon as it exceeds the per-file or whole-archive limit."""
    limit = min(image_io.MAX_BYTES, budget.remaining)
    chunks, total = [], 0
    try:
        with archive.open(info) as stream:
            while chunk := stream.read(_READ_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise RejectedFile(_bomb_message(info, limit))
                chunks.append(chunk)
    except RejectedFile:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, ValueError) as error:
        raise RejectedFile(f"cannot be extracted ({error}). The zip is damaged or uses an unsupported "
                           "compression; re-create it with standard (deflate) compression.") from None
    budget.remaining -= total
    return b"".join(chunks)


def _bomb_message(info: zipfile.ZipInfo, limit: int) -> str:
    return (f"decompresses to more than {limit / 2**20:.0f} MiB although it declares {info.file_size:,} bytes; "
            "refused as a possible zip bomb. Re-create the zip from the original images.")
