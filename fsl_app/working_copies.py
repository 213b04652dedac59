"""Working copies: a large photo as the models read it, decoded and reduced once, kept by content.

A 12 MP JPEG takes about 20 ms to decode even at 1/4 scale, more than a CPU forward pass of the default backbone,
and every extraction with another backbone, every fine-tuning epoch and every preview would pay it again.
:func:`fsl_app.images.decode_for_model` is a pure function of the file's bytes and the working side, so its result
is stored once under ``<cache>/working/ab/<sha256>-<side>.ppm`` (uncompressed: reading it back is a copy) and read
instead of decoding. The pixels are identical, so features, training and exports are the same with or without it.

A copy is kept for images whose stored shorter side is at least :data:`KEEP_FACTOR` times the working side
(smaller ones decode about as fast as the copy reads). Project import makes them for :data:`IMPORT_SIDE`, the
default backbone's; other sides are made on first read. The folder can be deleted at any time.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

from PIL import Image

from .atomic import write_bytes_atomic
from .images import ImageError, decode_for_model, read_image_file

log = logging.getLogger(__name__)

IMPORT_SIDE = 512  # working side of the default backbone (224 px input, crop_pct 0.875: twice the 256 px resize)
KEEP_FACTOR = 2


def cache_root() -> Path:
    """``FSL_APP_CACHE``, else the platform's user cache dir."""
    configured = os.environ.get("FSL_APP_CACHE")
    if configured:
        return Path(configured)
    import platformdirs

    return Path(platformdirs.user_cache_dir("fsl_app"))


def working_copy_path(sha256: str, side: int) -> Path:
    return cache_root() / "working" / sha256[:2] / f"{sha256}-{side}.ppm"


def load_working(path: str | Path, sha256: str, side: int, *, copies: bool = True) -> Image.Image:
    """:func:`~fsl_app.images.decode_for_model` of the file at ``path`` (whose content hash is ``sha256``), read
    from its working copy when there is one; a large image's copy is made on the way. ``copies=False``: decode the
    file without reading or making a copy (the same pixels, slower)."""
    if not copies:
        return decode_for_model(read_image_file(path), str(path), side)
    target = working_copy_path(sha256, side)
    cached = _read_copy(target)
    if cached is not None:
        return cached
    data = read_image_file(path)
    image = decode_for_model(data, str(path), side)
    if worth_keeping(data, side):
        _write_copy(target, image)
    return image


def read_working_copy(sha256: str, side: int = IMPORT_SIDE) -> Image.Image | None:
    """The working copy of the image ``sha256`` at ``side`` if one was made (None otherwise, or when damaged)."""
    return _read_copy(working_copy_path(sha256, side))


def make_working_copy(data: bytes, name: str, sha256: str, side: int = IMPORT_SIDE) -> bool:
    """Make the working copy of an image being imported if it is large enough to need one; True if one exists
    afterwards. Never raises for a cache problem (the import does not depend on it)."""
    if not worth_keeping(data, side):
        return False
    target = working_copy_path(sha256, side)
    if target.is_file():
        return True
    try:
        return _write_copy(target, decode_for_model(data, name, side))
    except ImageError:
        return False


def worth_keeping(data: bytes, side: int) -> bool:
    """Whether the stored image (read from its header) has a shorter side of at least ``KEEP_FACTOR * side``."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return min(image.size) >= KEEP_FACTOR * side
    except Exception:  # noqa: BLE001 - unreadable header: the decoder reports it properly
        return False


def _read_copy(target: Path) -> Image.Image | None:
    try:
        data = target.read_bytes()
    except OSError:
        return None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        if image.mode == "RGB":
            return image
    except Exception:  # noqa: BLE001 - a damaged copy is made again
        pass
    log.warning("working copy %s is damaged: made again from the original", target)
    target.unlink(missing_ok=True)
    return None


def _write_copy(target: Path, image: Image.Image) -> bool:
    buffer = io.BytesIO()
    image.save(buffer, format="PPM")
    try:
        write_bytes_atomic(target, buffer.getvalue(), durable=False)
    except OSError as error:  # a full or read-only cache only costs speed
        log.warning("could not keep a working copy in %s (%s)", target.parent, error)
        return False
    return True
