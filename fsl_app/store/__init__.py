"""Persistent project store: SQLite per project + content-addressed image files, UI-free.

Typical use::

    from fsl_app.store import create_project, open_project
    project = create_project("leaf disease")
    report = project.import_zip("photos.zip")          # sub-folders become classes
    project.set_labels(report.added_ids[:3], "rust", create_missing_class=True)
    project.undo_last_label_change()
    images = project.image_set(labeled_only=True)       # -> fsl_app.dataset.ImageSet for training
"""

from .duplicates import NEAR_DUPLICATE_MAX_DISTANCE, near_duplicate_pairs, similar_pairs_from_embeddings
from .errors import (ArchiveError, ClassExistsError, ClassNotFoundError, ImageNotFoundError, InvalidNameError,
                     ProjectExistsError, ProjectNotFoundError, SchemaError, StoreBusyError, StoreError)
from .exporting import ExportReport
from .fsck import FsckReport
from .importing import AddedImage, DuplicateImage, ImportReport
from .names import validate_class_name, validate_project_name
from .project import LabelBatch, Project, StoredImage
from ._labels import UndoResult
from .snapshots import RunInfo, RunSnapshot, SnapshotImage
from .stats import ProjectStats
from .suggest import Suggestion, suggest_for_project, suggest_labels
from .workspace import (create_project, delete_project, empty_trash, list_projects, open_project, rename_project,
                        resolve_image_set, workspace_home)

__all__ = [
    "AddedImage", "ArchiveError", "ClassExistsError", "ClassNotFoundError", "DuplicateImage", "ExportReport",
    "FsckReport", "ImageNotFoundError", "ImportReport", "InvalidNameError", "LabelBatch",
    "NEAR_DUPLICATE_MAX_DISTANCE", "Project", "ProjectExistsError", "ProjectNotFoundError", "ProjectStats",
    "RunInfo", "RunSnapshot", "SchemaError", "SnapshotImage", "StoreBusyError", "StoreError", "StoredImage",
    "Suggestion", "UndoResult", "create_project", "delete_project", "empty_trash", "list_projects",
    "near_duplicate_pairs", "open_project", "rename_project", "resolve_image_set", "similar_pairs_from_embeddings",
    "suggest_for_project", "suggest_labels", "validate_class_name", "validate_project_name", "workspace_home",
]
