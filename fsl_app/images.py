"""Safe image decoding: size limits, EXIF orientation, any Pillow mode to RGB, content hashing.

Every image that enters fsl_app goes through :func:`decode_image` (bytes) or :func:`load_image` (path), so a corrupt
file, a decompression bomb or an odd mode (CMYK, 16-bit, palette with transparency) is handled in one place.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
MAX_PIXELS = 64_000_000  # 8000 x 8000: above this a file is refused, not silently downscaled
MAX_BYTES = 100 * 1024 * 1024


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


def decode_image(data: bytes, name: str = "<bytes>", *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode bytes into an upright RGB PIL image, or raise :class:`ImageError` saying why and what to do."""
    if len(data) == 0:
        raise ImageError(f"{name}: the file is empty. Re-export or re-copy the image.")
    if len(data) > MAX_BYTES:
        raise ImageError(f"{name}: {len(data) / 2**20:.0f} MiB is over the {MAX_BYTES // 2**20} MiB limit. "
                         "Downscale or recompress the image before adding it.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixels(image.size, name, max_pixels)
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


def load_image(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageError(f"{path}: cannot be read ({error.strerror}). Check that the file exists.") from error
    return decode_image(data, str(path), max_pixels=max_pixels)


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
