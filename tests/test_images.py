"""Safe image decoding (fsl_app.images): one test per bad input, every Pillow mode to upright 8-bit RGB, hashing.

Every refusal is an :class:`ImageError` whose message names the file and says what to do next.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fsl_app import images
from fsl_app.images import ImageError, decode_image, is_image_name, load_image, sha256_bytes, sha256_file, to_rgb


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise_jpeg(size=(64, 48)) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=90)


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming ``width`` x ``height`` 1-bit pixels and an empty IDAT: a few dozen
    bytes that would need gigabytes once decoded (the shape of a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def assert_names_file_and_fix(error: pytest.ExceptionInfo, name: str, *fix_words: str) -> None:
    message = str(error.value)
    assert name in message, message
    for word in fix_words:
        assert word.lower() in message.lower(), message


# --- hashing --------------------------------------------------------------------------------------------------------

def test_sha256_matches_the_standard_test_vector():
    assert sha256_bytes(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_sha256_file_is_stable_and_equals_the_hash_of_the_bytes(tmp_path):
    data = noise_jpeg()
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    first = sha256_file(path)
    assert first == sha256_file(path) == sha256_bytes(data) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit differs
    assert sha256_file(path) != first


def test_sha256_file_reads_large_files_in_chunks(tmp_path):
    data = bytes(range(256)) * 9000  # > 2 MiB: several 1 MiB chunks
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_is_image_name_ignores_case_and_rejects_other_files():
    assert is_image_name("IMG_0001.JPG") and is_image_name("scan.tiff") and is_image_name("a.b.webp")
    assert not is_image_name("notes.txt") and not is_image_name("archive.zip") and not is_image_name("jpg")


# --- refused inputs: one test each ------------------------------------------------------------------------------

def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError) as error:
        load_image(path)
    assert_names_file_and_fix(error, "empty.jpg", "empty", "re-export")


def test_text_with_a_jpg_name_is_refused(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are meeting notes, not a photo\n")
    with pytest.raises(ImageError) as error:
        load_image(path)
    assert_names_file_and_fix(error, "notes.jpg", "not an image", "JPEG", "PNG")


def test_truncated_jpeg_is_refused(tmp_path):
    data = noise_jpeg()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as error:
        load_image(path)
    assert_names_file_and_fix(error, "cut.jpg", "truncated", "re-export")


def test_truncated_png_is_refused():
    data = encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)))
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(data[: len(data) - 40], "cut.png")


def test_image_over_max_pixels_is_refused_before_decoding():
    data = png_header_only(9000, 9000)  # 81 M pixels > MAX_PIXELS (64 M), below Pillow's own bomb limit
    assert len(data) < 100
    with pytest.raises(ImageError) as error:
        decode_image(data, "huge.png")
    assert_names_file_and_fix(error, "huge.png", "9000 x 9000", "downscale")


def test_decompression_bomb_is_refused():
    data = png_header_only(50_000, 50_000)  # 2.5 G pixels: Pillow itself calls it a bomb
    with pytest.raises(ImageError) as error:
        decode_image(data, "bomb.png")
    assert_names_file_and_fix(error, "bomb.png", "downscale")


def test_pillow_bomb_warning_is_an_error_not_a_warning(monkeypatch):
    """Between Pillow's warning and error thresholds Pillow only warns; decode_image must still refuse."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = encode(Image.new("RGB", (40, 40)))  # 1600 px: over 1000 (warning), under 2000 (Pillow's error)
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image(data, "warned.png", max_pixels=10_000)


def test_max_pixels_boundary():
    data = encode(Image.new("RGB", (10, 10), (1, 2, 3)))
    assert decode_image(data, max_pixels=100).size == (10, 10)
    with pytest.raises(ImageError, match="over the limit of 99 pixels"):
        decode_image(data, "ten.png", max_pixels=99)


def test_file_over_max_bytes_is_refused(monkeypatch):
    monkeypatch.setattr(images, "MAX_BYTES", 100)
    with pytest.raises(ImageError) as error:
        decode_image(noise_jpeg(), "heavy.jpg")
    assert_names_file_and_fix(error, "heavy.jpg", "limit", "recompress")


def test_missing_file_is_an_image_error(tmp_path):
    with pytest.raises(ImageError) as error:
        load_image(tmp_path / "gone.png")
    assert_names_file_and_fix(error, "gone.png", "cannot be read", "exists")


# --- modes: everything becomes 8-bit RGB ---------------------------------------------------------------------------

def _gradient16() -> np.ndarray:
    return np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)


MODE_SAMPLES = {
    "RGB": lambda: Image.new("RGB", (20, 10), (10, 20, 30)),
    "L": lambda: Image.new("L", (20, 10), 77),
    "1": lambda: Image.new("1", (20, 10), 1),
    "P": lambda: Image.new("RGB", (20, 10), (200, 10, 10)).convert("P"),
    "LA": lambda: Image.new("LA", (20, 10), (50, 128)),
    "RGBA": lambda: Image.new("RGBA", (20, 10), (0, 0, 255, 10)),
    "I;16": lambda: Image.fromarray(np.full((10, 20), 40000, dtype=np.uint16)),
    "I": lambda: Image.fromarray(np.full((10, 20), 3000, dtype=np.int32)),
    "F": lambda: Image.fromarray(np.linspace(0, 1, 200, dtype=np.float32).reshape(10, 20)),
    "CMYK": lambda: Image.new("CMYK", (20, 10), (0, 255, 255, 0)),
    "YCbCr": lambda: Image.new("RGB", (20, 10), (0, 128, 0)).convert("YCbCr"),
}


@pytest.mark.parametrize("mode", sorted(MODE_SAMPLES))
def test_every_mode_becomes_rgb_of_the_same_size(mode):
    image = MODE_SAMPLES[mode]()
    assert image.mode == mode
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (20, 10)
    assert np.asarray(rgb).dtype == np.uint8


def test_cmyk_jpeg_decodes_to_the_right_colour():
    data = encode(Image.new("CMYK", (32, 32), (255, 0, 0, 0)), "JPEG", quality=95)  # pure cyan ink
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    pixel = np.asarray(decode_image(data, "cmyk.jpg"))[16, 16].astype(int)
    assert pixel[0] < 40 and pixel[1] > 215 and pixel[2] > 215, pixel


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_keeps_its_full_range(fmt):
    data = encode(Image.fromarray(_gradient16()), fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    pixels = np.asarray(decode_image(data, f"depth.{fmt.lower()}"))[..., 0].astype(int)
    assert pixels.min() == 0 and pixels.max() == 255
    assert np.all(np.diff(pixels.ravel()) >= 0)  # the gradient stays monotonic
    assert 120 <= pixels[32, 32] <= 136  # the middle of 0..65535 is mid-gray, not white
    assert (pixels == 255).mean() < 0.01  # a clipped 8-bit view would make almost everything white


def test_dark_16_bit_values_are_scaled_not_clipped():
    data = encode(Image.fromarray(np.full((8, 8), 1000, dtype=np.uint16)))
    value = int(np.asarray(decode_image(data))[0, 0, 0])
    assert value == round(1000 / 65535 * 255)  # 4: dark, as the sensor recorded it


def test_palette_png_with_transparency_is_composited_on_white():
    palette_image = Image.new("P", (16, 16), 0)
    palette_image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette_image.putpixel((3, 3), 1)
    data = encode(palette_image, transparency=0)  # index 0 (black) is transparent
    pixels = np.asarray(decode_image(data, "icon.png"))
    assert tuple(pixels[0, 0]) == (255, 255, 255)  # transparent -> white, not black
    assert tuple(pixels[3, 3]) == (255, 0, 0)  # opaque pixels keep their colour


@pytest.mark.parametrize("mode, transparent, half, opaque", [
    ("LA", (0, 0), (0, 128), (90, 255)),
    ("RGBA", (0, 0, 0, 0), (0, 0, 0, 128), (10, 200, 30, 255)),
])
def test_alpha_is_composited_on_white(mode, transparent, half, opaque):
    image = Image.new(mode, (3, 1))
    for x, value in enumerate((transparent, half, opaque)):
        image.putpixel((x, 0), value)
    pixels = np.asarray(decode_image(encode(image), f"alpha_{mode}.png")).astype(int)
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert np.all(np.abs(pixels[0, 1] - 127) <= 2)  # 50% black over white
    expected = (90, 90, 90) if mode == "LA" else (10, 200, 30)
    assert tuple(pixels[0, 2]) == expected


@pytest.mark.parametrize("mode, key", [("L", 0), ("RGB", (0, 0, 0))])
def test_png_colour_key_transparency_is_composited_on_white(mode, key):
    image = Image.new(mode, (4, 4), key)
    image.putpixel((1, 1), 5 if mode == "L" else (5, 5, 5))
    data = encode(image, transparency=key)  # tRNS colour key: pixels equal to ``key`` are transparent
    assert "transparency" in Image.open(io.BytesIO(data)).info
    pixels = np.asarray(decode_image(data, "keyed.png"))
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[1, 1]) == (5, 5, 5)


# --- orientation ------------------------------------------------------------------------------------------------

def _two_colour_image() -> Image.Image:
    """40 x 20: left half red, right half blue (big blocks survive JPEG)."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    return image


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def test_exif_orientation_6_jpeg_is_rotated_upright():
    data = encode(_two_colour_image(), "JPEG", quality=95, exif=_exif(6))
    assert Image.open(io.BytesIO(data)).size == (40, 20)
    upright = decode_image(data, "phone.jpg")
    assert upright.size == (20, 40)  # width and height transposed
    pixels = np.asarray(upright).astype(int)
    # orientation 6 = "rotate 90 degrees clockwise to display": the left (red) half ends up on top
    assert pixels[5, 10, 0] > 200 and pixels[5, 10, 2] < 60
    assert pixels[35, 10, 2] > 200 and pixels[35, 10, 0] < 60


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow_exif_transpose(orientation):
    from PIL import ImageOps

    data = encode(_two_colour_image(), "PNG", exif=_exif(orientation))
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    decoded = decode_image(data)
    assert decoded.size == ((20, 40) if orientation >= 5 else (40, 20))
    assert np.array_equal(np.asarray(decoded), np.asarray(expected))


def test_malformed_exif_tag_does_not_break_decoding():
    """An EXIF block whose RowsPerStrip tag holds text (seen from some cameras/editors) next to orientation 6.

    Pillow's exif_transpose re-serializes the whole block and raises struct.error on it; the pixels still decode.
    """
    entries = (struct.pack(">HHI", 0x0112, 3, 1) + struct.pack(">HH", 6, 0)  # Orientation SHORT 6
               + struct.pack(">HHI", 0x0116, 2, 4) + b"EOS\x00")  # RowsPerStrip as ASCII (should be LONG)
    exif = b"Exif\x00\x00MM\x00\x2a" + struct.pack(">IH", 8, 2) + entries + struct.pack(">I", 0)
    data = encode(_two_colour_image(), "JPEG", quality=95, exif=exif)
    upright = decode_image(data, "odd_exif.jpg")
    assert upright.mode == "RGB" and upright.size == (20, 40)


# --- names --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["猫の写真.png", "ñandú é.jpg", "фото 1.png", "emoji_🙂.png"])
def test_unicode_file_names_load(tmp_path, name):
    path = tmp_path / name
    Image.new("RGB", (12, 8), (5, 6, 7)).save(path, "PNG" if name.endswith(".png") else "JPEG")
    image = load_image(path)
    assert image.size == (12, 8) and image.mode == "RGB"


def test_unicode_file_name_appears_in_the_error(tmp_path):
    path = tmp_path / "照片_broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0garbage")
    with pytest.raises(ImageError) as error:
        load_image(path)
    assert "照片_broken.jpg" in str(error.value)


def test_decoded_image_is_detached_from_the_input_bytes():
    data = bytearray(encode(Image.new("RGB", (8, 8), (9, 9, 9))))
    image = decode_image(bytes(data))
    data[:] = b"\x00" * len(data)
    assert np.asarray(image)[0, 0].tolist() == [9, 9, 9]
