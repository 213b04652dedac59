"""Export labeled images as an ImageFolder zip (``<class>/<file>``), the ecosystem's interchange format."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from ..atomic import open_atomic
from .names import safe_file_name

if TYPE_CHECKING:
    from .project import Project, StoredImage


@dataclass
class ExportReport:
    n_images: int = 0
    folders: dict[str, str] = field(default_factory=dict)  # class name -> folder name in the zip
    missing: list[int] = field(default_factory=list)  # image ids whose file was missing (run fsck)


def export_imagefolder_zip(project: "Project", destination: str | Path | BinaryIO) -> ExportReport:
    """Write every labeled image to a zip, one folder per class; folder names are safe on every file system.

    ``destination``: a path (written atomically: complete or absent) or a writable binary buffer.
    """
    images = project.images(labeled=True)
    if isinstance(destination, (str, Path)):
        return _export_to_path(Path(destination), images)
    return _write_zip(destination, images)


def _export_to_path(target: Path, images: list["StoredImage"]) -> ExportReport:
    with open_atomic(target, "wb", suffix=".zip") as temp:
        return _write_zip(temp, images)


def _write_zip(buffer: BinaryIO | io.BytesIO, images: list["StoredImage"]) -> ExportReport:
    report = ExportReport()
    report.folders = class_folder_names(sorted({image.label for image in images}, key=str.casefold))
    used_names: set[str] = set()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for image in images:
            if not image.path.is_file():
                report.missing.append(image.id)
                continue
            member = _member_name(report.folders[image.label], image, used_names)
            archive.write(image.path, member)
            report.n_images += 1
    return report


def class_folder_names(class_names: list[str]) -> dict[str, str]:
    """Map class names to folder names that are valid everywhere and distinct even ignoring case."""
    folders, taken = {}, set()
    for name in class_names:
        folder = base = safe_file_name(name, fallback="class")
        counter = 2
        while folder.casefold() in taken:
            folder, counter = f"{base}_{counter}", counter + 1
        folders[name] = folder
        taken.add(folder.casefold())
    return folders


def _member_name(folder: str, image: "StoredImage", used_names: set[str]) -> str:
    """``<folder>/<original file name>``, suffixed with the hash prefix if two files share a name."""
    stem = safe_file_name(PurePosixPath(image.source_name.replace("\\", "/")).stem, fallback="image")
    member = f"{folder}/{stem}{image.ext}"
    if member.casefold() in used_names:
        member = f"{folder}/{stem}-{image.sha256[:12]}{image.ext}"
    used_names.add(member.casefold())
    return member
