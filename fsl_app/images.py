"""Safe image decoding: size limits, EXIF orientation, any Pillow mode to RGB, content hashing.

Every image that enters fsl_app goes through :func:`decode_image` (bytes) or :func:`load_image` (path), so a corrupt
file, a decompression bomb or an odd mode (CMYK, 16-bit, palette with transparency) is handled in one place.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
MAX_PIXELS = 64_000_000  # 8000 x 8000: above this a file is refused, not silently downscaled
MAX_BYTES = 100 * 1024 * 1024
REDUCE_FILTER = Image.Resampling.BILINEAR  # reduce_to's filter (antialiased); bundle_io.reduce_to uses the same
_READ_CHUNK = 1024 * 1024
# O_NONBLOCK: a FIFO swapped in after the type check opens at once instead of waiting for a writer
_SAFE_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)


class ImageError(ValueError):
    """An input that cannot be used as an image; the message names the file and the fix."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def decode_image(data: bytes, name: str = "<bytes>", *, max_pixels: int = MAX_PIXELS,
                 draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode bytes into an upright RGB PIL image, or raise :class:`ImageError` saying why and what to do.

    ``draft`` (width, height of the upright image): a JPEG is decoded at the smallest of 1/2, 1/4, 1/8 scale that
    keeps at least that size (DCT-domain scaling, :func:`decode_draft`); other formats decode at full size. The
    pixel limit applies to the stored size either way, so the fast path refuses what the exact path refuses.
    """
    if len(data) == 0:
        raise ImageError(f"{name}: the file is empty. Re-export or re-copy the image.")
    if len(data) > MAX_BYTES:
        raise ImageError(f"{name}: {too_large_message(len(data), MAX_BYTES)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixels(image.size, name, max_pixels)
            if draft is not None:
                decode_draft(image, draft)
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({error}). "
                         "Downscale the image below 8000 x 8000 pixels.") from error
    except UnidentifiedImageError as error:
        raise ImageError(f"{name}: not an image Pillow can read. Use JPEG, PNG, TIFF, BMP, GIF or WebP.") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name}: the image data is corrupt or truncated ({error}). "
                         "Re-export the image or remove it.") from error
    return to_rgb(_upright(image))


# EXIF orientation -> the transpose that makes the image upright (the same table as ImageOps.exif_transpose)
_ORIENTATION_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                          6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation to the pixels only.

    ``ImageOps.exif_transpose`` also re-serializes the EXIF block, which raises (struct.error, TypeError) on files
    whose other EXIF tags have an unexpected type; the pixels do not need that metadata.
    """
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: keep the stored orientation
        return image
    method = _ORIENTATION_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return image.transpose(method) if method is not None else image


def decode_draft(image: Image.Image, size: tuple[int, int]) -> None:
    """Ask a not yet loaded JPEG to decode at reduced scale, keeping at least ``size`` (upright width, height).

    An EXIF orientation that swaps the axes (5 to 8) swaps the request, since the scale applies to stored pixels.
    Other formats ignore the request.
    """
    if image.format != "JPEG":
        return
    width, height = size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: the image is used as stored (see _upright)
        orientation = 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    image.draft(image.mode, (width, height))


def load_image(path: str | Path, *, max_pixels: int = MAX_PIXELS, draft: tuple[int, int] | None = None) -> Image.Image:
    return decode_image(read_image_file(path), str(path), max_pixels=max_pixels, draft=draft)


def decode_for_model(data: bytes, name: str, side: int) -> Image.Image:
    """The image every model of fsl_app reads (training, evaluation and every export): decoded at reduced JPEG scale
    keeping at least ``side`` pixels on each axis (:func:`decode_image`'s ``draft``), then resized so that its
    shorter side is at most ``side`` (:func:`reduce_to`). ``side`` is twice the model's resize
    (:func:`fsl_app.preprocess.working_side`), so the exact resize that follows always shrinks by at least 2."""
    return reduce_to(decode_image(data, name, draft=(side, side)), side)


def load_for_model(path: str | Path, side: int) -> Image.Image:
    """:func:`decode_for_model` of a file."""
    return decode_for_model(read_image_file(path), str(path), side)


def reduce_to(image: Image.Image, side: int) -> Image.Image:
    """``image`` resized (bilinear, antialiased) so that its shorter side is ``side``; smaller images unchanged.

    The longer side keeps the proportion, rounded to the nearest pixel. The bundle scripts repeat this rule
    (``bundle_io.reduce_to``), so a standalone export reads a photo exactly as training read it.
    """
    short, long = sorted(image.size)
    if short <= side:
        return image
    other = int(round(long * side / short))
    size = (side, other) if image.width <= image.height else (other, side)
    return image.resize(size, REDUCE_FILTER)


def read_image_file(path: str | Path, *, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (default :data:`MAX_BYTES`), or :class:`ImageError`.

    FIFOs, devices, sockets and links to them are refused from their type, before they are opened (reading one
    could wait forever or never end); the read itself stops at ``max_bytes + 1`` whatever the size on disk says.
    """
    path = Path(path)
    limit = MAX_BYTES if max_bytes is None else max_bytes
    try:
        info = os.stat(path)
        _check_regular(info.st_mode, path)
        if info.st_size > limit:
            raise ImageError(f"{path}: {too_large_message(info.st_size, limit)}")
        fd = os.open(path, _SAFE_OPEN_FLAGS)
    except OSError as error:
        raise ImageError(f"{path}: {_unreadable_reason(error, path)}") from None
    with os.fdopen(fd, "rb", buffering=0) as stream:
        _check_regular(os.fstat(stream.fileno()).st_mode, path)  # swapped between the check and the open
        data = _read_at_most(stream, limit + 1, path)
    if len(data) > limit:  # grew after the check, or its size on disk is not its content (/proc, FUSE)
        raise ImageError(f"{path}: {too_large_message(None, limit)}")
    return data


def too_large_message(size: int | None, limit: int) -> str:
    """``size`` None: only known to be above ``limit`` (the read stopped there)."""
    amount = f"{size / 2**20:.0f} MiB is" if size is not None else "the file is"
    return (f"{amount} over the {limit // 2**20} MiB limit. "
            "Downscale or recompress the image before adding it.")


def _check_regular(mode: int, path: Path) -> None:
    if not stat.S_ISREG(mode):
        raise ImageError(f"{path}: {special_file_reason(mode)}")


def special_file_reason(mode: int) -> str:
    """Why a file of this ``st_mode`` is refused: only regular files are read."""
    kinds = [(stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")]
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return (f"{kind}, not a regular file (or a link to one); refused without reading it. "
            "Copy the image itself into the folder.")


def _unreadable_reason(error: OSError, path: Path) -> str:
    if error.errno == errno.ELOOP:
        return "a symbolic link loop; refused. Point the link at an image file or remove it."
    if error.errno == errno.ENOENT and path.is_symlink():
        return "a broken symbolic link (its target is missing); refused. Fix the link or remove it."
    if error.errno == errno.ENOENT:
        return "cannot be read (no such file). Check that the file exists."
    return f"cannot be read ({error.strerror or error}). Check the file's permissions."


def _read_at_most(stream, size: int, path: Path) -> bytes:
    chunks, total = [], 0
    try:
        while total < size and (chunk := stream.read(min(_READ_CHUNK, size - total))):
            chunks.append(chunk)
            total += len(chunk)
    except OSError as error:
        raise ImageError(f"{path}: {_unreadable_reason(error, path)}") from None
    return b"".join(chunks)


def _check_pixels(size: tuple[int, int], name: str, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width} x {height} pixels is over the limit of {max_pixels:,} pixels. "
                         "Downscale the image before adding it.")
    if width == 0 or height == 0:
        raise ImageError(f"{name}: the image has no pixels ({width} x {height}).")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on white, 16/32-bit is rescaled."""
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:  # palette or tRNS colour key
        image = image.convert("RGBA")
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_to_rgb(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit and float images: map the full range of the sensor format to 0..255, not a clipped 8-bit view."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    else:
        low, high = float(array.min()), float(array.max())
        if image.mode == "I" and low >= 0 and high <= 65535 and high > 255:
            low, high = 0.0, 65535.0
    scale = (high - low) or 1.0
    scaled = np.clip((array - low) / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L").convert("RGB")


def thumbnail(image: Image.Image, size: int = 160) -> Image.Image:
    small = image.copy()
    small.thumbnail((size, size))
    return small
