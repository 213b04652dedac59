"""Offline benchmark data sets written as ImageFolder trees (one sub-folder per class), built once and reused.

- ``digits``: scikit-learn's bundled 8x8 hand-written digits (1797 images, 10 classes), gray levels 0..16 mapped to
  0..255, upscaled (bilinear) to 224 x 224 and saved as 3-channel PNG.
- ``patches``: scikit-image's bundled photographs and textures (no download needed), each cut into a grid of
  non-overlapping square patches; the class is the source image (texture / scene recognition, 16 classes).
- ``digits-shifted`` / ``patches-sobel``: domain-shift twins of the two sets above (same classes and file
  names, each image transformed: thickened and inverted digits, Sobel edge maps of the patches), see ``SHIFT_PAIRS``.
- ``photos``: large JPEGs (default 1600 x 1200) made from the same bundled images, to measure decoding and resizing
  of camera-sized files.

Everything lands under ``$FSL_BENCH_DATA`` (default: ``<fsl_app cache root>/bench-data``); a ``.complete`` marker
makes an interrupted build start over instead of being reused half-written.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from fsl_app.features import cache_root

# 8 px -> 224 px with the resampling of the plain-script reference that bench_fewshot_digits.py compares with.
DIGITS_RESAMPLE = Image.Resampling.BILINEAR
SKIMAGE_CLASSES = ("astronaut", "brick", "camera", "cat", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
                   "immunohistochemistry", "moon", "retina", "rocket", "horse", "clock", "cell")


def data_root() -> Path:
    configured = os.environ.get("FSL_BENCH_DATA")
    return Path(configured) if configured else cache_root() / "bench-data"


def _build(name: str, writer) -> Path:
    root = data_root() / name
    if (root / ".complete").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    writer(root)
    (root / ".complete").write_text("ok\n")
    return root


def digits_folder(size: int = 224, resample: Image.Resampling = DIGITS_RESAMPLE) -> Path:
    """sklearn digits as an ImageFolder of ``size`` px RGB PNGs; class folders ``0`` .. ``9``."""
    from sklearn.datasets import load_digits

    def write(root: Path) -> None:
        digits = load_digits()
        for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
            gray = Image.fromarray(np.round(pixels * 255.0 / 16.0).astype(np.uint8), mode="L")
            image = gray.resize((size, size), resample).convert("RGB")
            folder = root / str(label)
            folder.mkdir(exist_ok=True)
            image.save(folder / f"{index:04d}.png")

    return _build(f"digits-{size}-{resample.name.lower()}", write)


def _skimage_rgb(name: str) -> np.ndarray:
    import skimage.data

    array = getattr(skimage.data, name)()
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        array = (255 * (array - array.min()) / max(1e-9, float(array.max() - array.min()))).astype(np.uint8)
    return array[..., :3]


def patches_folder(patch: int = 64, per_class: int = 40) -> Path:
    """Non-overlapping ``patch`` px squares of bundled scikit-image pictures; at most ``per_class`` per class.

    Classes with fewer than 20 patches (5 shots + 15 queries) are left out, so every protocol can sample them.
    """

    def write(root: Path) -> None:
        rng = np.random.default_rng(0)
        for name in SKIMAGE_CLASSES:
            array = _skimage_rgb(name)
            rows, cols = array.shape[0] // patch, array.shape[1] // patch
            cells = [(r, c) for r in range(rows) for c in range(cols)]
            if len(cells) < 20:
                continue
            chosen = rng.permutation(len(cells))[:per_class]
            folder = root / name
            folder.mkdir()
            for number, cell in enumerate(chosen):
                r, c = cells[cell]
                tile = array[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch]
                Image.fromarray(np.ascontiguousarray(tile)).save(folder / f"{number:03d}.png")

    return _build(f"patches-{patch}-{per_class}", write)


def photos_folder(count: int = 64, size: tuple[int, int] = (1600, 1200), quality: int = 90) -> Path:
    """``count`` camera-sized JPEGs (bicubic upscales of bundled pictures), two classes, for decode benchmarks."""

    def write(root: Path) -> None:
        names = [n for n in SKIMAGE_CLASSES if _skimage_rgb(n).shape[0] >= 300]
        for index in range(count):
            name = names[index % len(names)]
            image = Image.fromarray(_skimage_rgb(name)).resize(size, Image.Resampling.BICUBIC)
            folder = root / f"class{index % 2}"
            folder.mkdir(exist_ok=True)
            image.rotate(index * 7 % 360).save(folder / f"{index:03d}.jpg", quality=quality)

    return _build(f"photos-{count}-{size[0]}x{size[1]}", write)


def png224_folder(count: int = 256) -> Path:
    """``count`` 224 x 224 RGB PNGs (patches of the bundled pictures, upscaled): the typical small-upload case."""

    def write(root: Path) -> None:
        rng = np.random.default_rng(0)
        sources = [_skimage_rgb(n) for n in SKIMAGE_CLASSES]
        for index in range(count):
            array = sources[index % len(sources)]
            side = int(rng.integers(96, min(array.shape[:2]) + 1))
            top = int(rng.integers(0, array.shape[0] - side + 1))
            left = int(rng.integers(0, array.shape[1] - side + 1))
            tile = Image.fromarray(np.ascontiguousarray(array[top:top + side, left:left + side]))
            folder = root / f"class{index % 4}"
            folder.mkdir(exist_ok=True)
            tile.resize((224, 224), Image.Resampling.BICUBIC).save(folder / f"{index:04d}.png")

    return _build(f"png224-{count}", write)


# --- domain-shift pairs: a second folder with the same class names and file names, each image transformed ---

DIGITS_DILATION_RADIUS = 8  # px at 224 px, where one 8 x 8 source pixel is 28 px wide


def _derived_folder(name: str, source: Path, transform) -> Path:
    """Apply ``transform`` (PIL RGB -> PIL RGB) to every image of ``source``, keeping class folders and file names."""

    def write(root: Path) -> None:
        for path in sorted(source.glob("*/*.png")):
            folder = root / path.parent.name
            folder.mkdir(exist_ok=True)
            with Image.open(path) as image:
                transform(image.convert("RGB")).save(folder / path.name)

    return _build(name, write)


def digits_shifted_folder(radius: int = DIGITS_DILATION_RADIUS) -> Path:
    """The ``digits_folder()`` images with thicker strokes (gray dilation, disk of ``radius`` px) and inverted
    (dark strokes on white): the same ten classes in another "domain", file for file."""
    from skimage.morphology import dilation, disk

    def thicken_and_invert(image: Image.Image) -> Image.Image:
        gray = np.asarray(image.convert("L"))
        thick = dilation(gray, disk(radius))
        return Image.fromarray((255 - thick).astype(np.uint8), mode="L").convert("RGB")

    return _derived_folder(f"digits-shifted-dilate{radius}-invert", digits_folder(), thicken_and_invert)


def patches_edges_folder(patch: int = 64, per_class: int = 40) -> Path:
    """The ``patches_folder()`` patches replaced by their Sobel edge magnitude (gray, rescaled to 0..255 per patch):
    the same texture classes seen as edge maps, file for file."""
    from skimage.filters import sobel

    def edge_map(image: Image.Image) -> Image.Image:
        edges = sobel(np.asarray(image.convert("L"), dtype=np.float64) / 255.0)
        scale = max(float(edges.max()), 1e-9)
        return Image.fromarray(np.round(255 * edges / scale).astype(np.uint8), mode="L").convert("RGB")

    return _derived_folder(f"patches-{patch}-{per_class}-sobel", patches_folder(patch, per_class), edge_map)


SHIFT_PAIRS = {  # name: (domain A folder builder, domain B folder builder, description of B)
    "digits": (digits_folder, digits_shifted_folder, "strokes dilated (disk r=8 px at 224 px) and inverted"),
    "patches": (patches_folder, patches_edges_folder, "Sobel edge magnitude of the same patches"),
}
