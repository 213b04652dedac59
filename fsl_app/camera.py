"""Webcam shots into a project, through the same import path as browser uploads.

A browser camera widget hands over one JPEG/PNG per shot, always under the same name; :func:`add_camera_shot` gives
it a time-stamped name (the original file name the Data page and ``check-labels`` show) and imports it with
:meth:`Project.import_uploads`: the same decoding checks, content hashing, de-duplication and atomic writes as a
dropped file.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from .images import is_image_name

CAMERA_PREFIX = "camera"


def camera_shot_name(upload_name: str | None = None, now: datetime | None = None) -> str:
    """``camera-20261130-081502-123456.jpg``: the shot's time (UTC), the extension of what the browser sent."""
    suffix = Path(upload_name or "").suffix.lower()
    if not is_image_name(f"x{suffix}"):
        suffix = ".jpg"
    moment = now or datetime.now(timezone.utc)
    return f"{CAMERA_PREFIX}-{moment:%Y%m%d-%H%M%S-%f}{suffix}"


def add_camera_shot(project, data: bytes, label: str | None, *, upload_name: str | None = None,
                    actor: str | None = None):
    """Import one camera shot into class ``label`` (None: the unlabeled pool; a new name creates the class, as for
    uploads); returns the ImportReport (a shot that cannot be decoded is reported as rejected, never raised)."""
    return project.import_uploads([(camera_shot_name(upload_name), bytes(data))], label, actor=actor)
