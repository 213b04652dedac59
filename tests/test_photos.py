"""Camera-sized photos: torch-free eval preprocessing equal to timm's, JPEG draft decoding close to the exact path,
and bad input through the fast path (100 MP, progressive, CMYK, big palette PNG, EXIF-rotated) answered like the
exact path or refused with a clear error."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from fsl_app.features import BatchPreprocessor, eval_transform
from fsl_app.images import MAX_PIXELS, ImageError, decode_image
from fsl_app.preprocess import draft_size, eval_geometry

CONFIG = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
          "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center"}
CONFIGS = [CONFIG,
           {**CONFIG, "interpolation": "bilinear", "crop_pct": 1.0, "input_size": (3, 192, 192)},
           {**CONFIG, "crop_mode": "squash", "crop_pct": 0.95, "input_size": (3, 160, 224)},
           {**CONFIG, "crop_pct": 0.9, "input_size": (3, 240, 240), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}]


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """scikit-image's astronaut upscaled to a 2400 x 1800 camera-like photo."""
    import skimage.data

    return Image.fromarray(skimage.data.astronaut()).resize((2400, 1800), Image.Resampling.BICUBIC)


def preprocessed(image: Image.Image, config: dict = CONFIG) -> np.ndarray:
    return np.asarray(eval_geometry(config)(image), dtype=np.float64)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c['crop_mode']}-{c['input_size'][1]}")
@pytest.mark.parametrize("size", [(300, 200), (180, 260), (100, 100)])
def test_torch_free_preprocessing_equals_timms_eval_transform(config, size):
    pixels = np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    images = [Image.fromarray(pixels), Image.fromarray(pixels[::-1].copy())]
    expected = torch.stack([eval_transform(config)(image) for image in images])
    assert torch.equal(BatchPreprocessor.from_data_config(config)(images), expected)


def test_other_crop_modes_are_left_to_timm():
    assert eval_geometry({**CONFIG, "crop_mode": "border"}) is None
    assert BatchPreprocessor.from_data_config({**CONFIG, "crop_mode": "border"}) is None


def test_jpeg_draft_keeps_twice_the_resize_and_changes_pixels_by_a_few_levels(photo):
    data = encode(photo, quality=90)
    exact, fast = decode_image(data), decode_image(data, draft=draft_size(CONFIG))
    assert exact.size == (2400, 1800)
    assert fast.size == (1200, 900)  # 1/2 scale: 1/4 would leave 450 < 2 x 256 pixels on the short side
    difference = np.abs(preprocessed(exact) - preprocessed(fast))
    assert difference.mean() < 1.0 and difference.max() <= 16


def test_small_jpegs_and_other_formats_decode_at_full_size(photo):
    small = photo.resize((900, 700))
    assert decode_image(encode(small), draft=draft_size(CONFIG)).size == (900, 700)
    large_png = encode(photo.resize((1200, 1100)), "PNG", compress_level=1)
    assert decode_image(large_png, draft=draft_size(CONFIG)).size == (1200, 1100)


def test_100_megapixel_jpeg_is_refused_by_both_paths():
    data = encode(Image.new("L", (10_000, 10_000), 128), quality=20)
    for draft in (None, draft_size(CONFIG)):
        with pytest.raises(ImageError, match="over the limit|decompression bomb") as error:
            decode_image(data, "big.jpg", draft=draft)
        assert "big.jpg" in str(error.value) and "Downscale" in str(error.value)
    assert 10_000 * 10_000 > MAX_PIXELS


def test_progressive_jpeg_through_the_fast_path(photo):
    data = encode(photo, quality=90, progressive=True)
    fast = decode_image(data, draft=draft_size(CONFIG))
    assert fast.size == (1200, 900) and fast.mode == "RGB"
    assert np.abs(preprocessed(decode_image(data)) - preprocessed(fast)).mean() < 1.0


def test_cmyk_jpeg_through_the_fast_path(photo):
    data = encode(photo.convert("CMYK"), quality=90)
    exact, fast = decode_image(data), decode_image(data, draft=draft_size(CONFIG))
    assert fast.mode == "RGB" and fast.size == (1200, 900)
    assert np.abs(preprocessed(exact) - preprocessed(fast)).mean() < 1.0


def test_png_with_a_full_palette_is_identical_on_both_paths(photo):
    data = encode(photo.resize((1100, 1100)).quantize(256, method=Image.Quantize.FASTOCTREE), "PNG")
    exact, fast = decode_image(data), decode_image(data, draft=draft_size(CONFIG))
    assert np.array_equal(np.asarray(exact), np.asarray(fast))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_through_the_fast_path(photo, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(photo, quality=90, exif=exif.tobytes())
    exact, fast = decode_image(data), decode_image(data, draft=draft_size(CONFIG))
    assert exact.size == ((1800, 2400) if orientation in (6, 8) else (2400, 1800))
    assert fast.size == (exact.width // 2, exact.height // 2)
    assert np.abs(preprocessed(exact) - preprocessed(fast)).mean() < 1.0
