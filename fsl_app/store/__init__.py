"""Persistent project store: SQLite per project + content-addressed image files, UI-free.

Typical use::

    from fsl_app.store import create_project, open_project
    project = create_project("leaf disease")
    report = project.import_zip("photos.zip")          # sub-folders become classes
    project.set_labels(report.added_ids[:3], "rust", create_missing_class=True)
    project.undo_last_label_change()
    images = project.image_set(labeled_only=True)       # -> fsl_app.dataset.ImageSet for training

The names are imported from their modules on first use (PEP 562): a command that needs one of them does not load
the whole store.
"""

from __future__ import annotations

import importlib

_MODULE_OF = {
    "AddedImage": "importing",
    "ArchiveError": "errors",
    "ClassExistsError": "errors",
    "ClassNotFoundError": "errors",
    "DuplicateImage": "importing",
    "ExportReport": "exporting",
    "FsckReport": "fsck",
    "ImageNotFoundError": "errors",
    "ImportReport": "importing",
    "InvalidNameError": "errors",
    "LabelBatch": "project",
    "NEAR_DUPLICATE_MAX_DISTANCE": "duplicates",
    "Project": "project",
    "ProjectExistsError": "errors",
    "ProjectNotFoundError": "errors",
    "ProjectStats": "stats",
    "RunInfo": "snapshots",
    "RunSnapshot": "snapshots",
    "SchemaError": "errors",
    "SnapshotImage": "snapshots",
    "StoreBusyError": "errors",
    "StoreError": "errors",
    "StoredImage": "project",
    "Suggestion": "suggest",
    "UndoResult": "_labels",
    "create_project": "workspace",
    "delete_project": "workspace",
    "empty_trash": "workspace",
    "list_projects": "workspace",
    "near_duplicate_pairs": "duplicates",
    "open_project": "workspace",
    "rename_project": "workspace",
    "resolve_image_set": "workspace",
    "similar_pairs_from_embeddings": "duplicates",
    "suggest_for_project": "suggest",
    "suggest_labels": "suggest",
    "validate_class_name": "names",
    "validate_project_name": "names",
    "workspace_home": "workspace",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])
