"""Fixtures and small real images for the project-store tests (imported by tests/test_store_*.py).

Every project lives under ``tmp_path``; nothing touches the real user data folder.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsl_app.store import create_project


@functools.lru_cache(maxsize=1)
def _digits():
    """scikit-learn's 1,797 8x8 digits as uint8 images + targets (read from its bundled CSV: importing
    sklearn.datasets costs seconds; falls back to load_digits if the file moved)."""
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if csv is not None and csv.is_file():
        table = np.loadtxt(csv, delimiter=",")
        pixels, target = table[:, :-1], table[:, -1].astype(int)
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels, target = digits.data, digits.target
    return (pixels.reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8), target


def digit_image(index: int, size: int = 32) -> Image.Image:
    """A real 8x8 handwritten digit from scikit-learn, upscaled to ``size`` pixels (grayscale)."""
    images, _ = _digits()
    return Image.fromarray(images[index]).resize((size, size), Image.Resampling.NEAREST)


def digit_target(index: int) -> int:
    return int(_digits()[1][index])


@functools.lru_cache(maxsize=4096)
def digit_png(index: int, size: int = 32) -> bytes:
    return encode(digit_image(index, size), "PNG")


def digit_files(count: int, start: int = 0, size: int = 32) -> list[tuple[str, bytes]]:
    """``count`` distinct digit PNGs as (file name, bytes), the form browser uploads take."""
    return [(f"digit_{index:04d}.png", digit_png(index, size)) for index in range(start, start + count)]


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def camera(size: int = 128) -> Image.Image:
    """scikit-image's 'camera' photograph (bundled with the package, no download)."""
    import skimage.data

    return Image.fromarray(skimage.data.camera()).resize((size, size))


def coins(size: int = 128) -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.coins()).resize((size, size))


def png_with_header_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (for pixel-limit tests without the memory)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr_start = 8 + 4  # signature, then the IHDR chunk length
    body = b"IHDR" + struct.pack(">II", width, height) + bytes(data[ihdr_start + 12:ihdr_start + 17])
    data[ihdr_start:ihdr_start + 17] = body
    data[ihdr_start + 17:ihdr_start + 21] = struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    return bytes(data)


def make_zip(entries: list[tuple[str, bytes]] | list, *, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """A zip in memory; an entry is (name, bytes) or a ready zipfile.ZipInfo paired with its bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def write_imagefolder(root: Path, layout: dict[str | None, list[tuple[str, bytes]]]) -> Path:
    """Write ``{class folder or None for loose files: [(file name, bytes)]}`` under ``root``."""
    for folder, files in layout.items():
        target = root / folder if folder else root
        target.mkdir(parents=True, exist_ok=True)
        for name, data in files:
            (target / name).write_bytes(data)
    return root


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh workspace; FSL_APP_HOME points elsewhere so a forgotten ``home=`` cannot leak into it."""
    monkeypatch.setenv("FSL_APP_HOME", str(tmp_path / "env-home-should-stay-empty"))
    return tmp_path / "home"


@pytest.fixture
def project(home):
    with create_project("test project", home=home) as created:
        yield created
