"""Large photos are read once as the models read them (fsl_app.images.decode_for_model) and kept as working copies:
the same pixels with or without a copy, in training and in every export, made at import, rebuilt when damaged."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsl_app import working_copies
from fsl_app.images import decode_for_model, load_for_model
from fsl_app.preprocess import working_side

SIDE = 512
SCRIPTS = Path(__file__).resolve().parents[1] / "fsl_app" / "export" / "bundle_scripts"


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """scikit-image's astronaut upscaled to a 2400 x 1800 camera-like photo."""
    import skimage.data

    return Image.fromarray(skimage.data.astronaut()).resize((2400, 1800), Image.Resampling.BICUBIC)


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FSL_APP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def test_models_read_twice_the_resize_whatever_the_stored_size(photo):
    assert working_side({"input_size": (3, 224, 224), "crop_pct": 0.875}) == SIDE == working_copies.IMPORT_SIDE
    for size, expected in [((2400, 1800), (683, 512)), ((1800, 2400), (512, 683)), ((900, 700), (658, 512)),
                           ((600, 500), (600, 500))]:
        buffer = io.BytesIO()
        photo.resize(size).save(buffer, "JPEG", quality=90)
        assert decode_for_model(buffer.getvalue(), "p.jpg", SIDE).size == expected


def test_a_large_photo_is_kept_and_read_back_with_the_same_pixels(photo, cache, tmp_path):
    path = save(photo, tmp_path / "photo.jpg", quality=90)
    original = path.read_bytes()
    first = working_copies.load_working(path, "ab" * 32, SIDE)
    copy = working_copies.working_copy_path("ab" * 32, SIDE)
    assert copy.is_file() and str(copy).startswith(str(cache))
    path.unlink()  # the second read needs only the copy
    again = working_copies.load_working(path, "ab" * 32, SIDE)
    assert np.array_equal(pixels(first), pixels(again))
    assert np.array_equal(pixels(first), pixels(decode_for_model(original, "photo.jpg", SIDE)))


def test_small_images_get_no_copy(photo, cache, tmp_path):
    path = save(photo.resize((1000, 750)), tmp_path / "small.jpg", quality=90)  # 750 < 2 x 512
    image = working_copies.load_working(path, "cd" * 32, SIDE)
    assert image.size == (683, 512)
    assert not working_copies.working_copy_path("cd" * 32, SIDE).exists()


def test_a_damaged_copy_is_made_again_from_the_original(photo, cache, tmp_path):
    path = save(photo, tmp_path / "photo.jpg", quality=90)
    expected = pixels(working_copies.load_working(path, "ef" * 32, SIDE))
    copy = working_copies.working_copy_path("ef" * 32, SIDE)
    copy.write_bytes(copy.read_bytes()[:5000])  # truncated, as a full disk would leave it without atomic writes
    assert np.array_equal(pixels(working_copies.load_working(path, "ef" * 32, SIDE)), expected)
    assert copy.stat().st_size > 5000


def test_an_unwritable_cache_costs_speed_not_the_answer(photo, tmp_path, monkeypatch):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("FSL_APP_CACHE", str(blocked))
    path = save(photo, tmp_path / "photo.jpg", quality=90)
    assert working_copies.load_working(path, "01" * 32, SIDE).size == (683, 512)


@pytest.mark.parametrize("kind", ["plain", "exif-rotated", "cmyk", "progressive", "png"])
def test_standalone_bundle_scripts_read_photos_exactly_as_training(kind, photo, tmp_path):
    spec = importlib.util.spec_from_file_location("bundle_io_photos", SCRIPTS / "bundle_io.py")
    bundle_io = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle_io)
    options = {"quality": 90}
    image = photo
    if kind == "exif-rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        options["exif"] = exif.tobytes()
    elif kind == "cmyk":
        image = photo.convert("CMYK")
    elif kind == "progressive":
        options["progressive"] = True
    suffix = ".png" if kind == "png" else ".jpg"
    path = save(image, tmp_path / f"photo{suffix}", **({} if kind == "png" else options))
    config = {"input_size": (3, 224, 224), "crop_pct": 0.875}
    expected = pixels(load_for_model(path, working_side(config)))
    got = pixels(bundle_io.load_rgb(path, bundle_io.draft_size(config)))
    assert got.shape == expected.shape and np.array_equal(got, expected)


def test_import_makes_the_copy_of_a_large_photo_only(photo, cache, tmp_path, monkeypatch):
    from fsl_app.store import create_project

    monkeypatch.setenv("FSL_APP_HOME", str(tmp_path / "home"))
    folder = tmp_path / "photos" / "astronaut"
    folder.mkdir(parents=True)
    save(photo, folder / "large.jpg", quality=90)
    save(photo.resize((400, 300)), folder / "small.jpg", quality=90)
    with create_project("photos") as project:
        project.import_imagefolder(tmp_path / "photos")
        images = project.image_set()
    kept = {record.path.name: working_copies.working_copy_path(record.sha256, SIDE).is_file()
            for record in images.records}
    assert sorted(kept.values()) == [False, True]
    large = next(r for r in images.records if working_copies.working_copy_path(r.sha256, SIDE).is_file())
    assert np.array_equal(pixels(images.load(images.records.index(large), side=SIDE)),
                          pixels(decode_for_model(large.path.read_bytes(), "large.jpg", SIDE)))


def test_a_photos_thumbnail_is_made_from_its_working_copy(photo, cache, tmp_path, monkeypatch):
    from fsl_app.store import create_project

    monkeypatch.setenv("FSL_APP_HOME", str(tmp_path / "home"))
    with create_project("thumbs") as project:
        report = project.import_files([("large.jpg", _jpeg(photo))])
        image = project.images()[0]
        image.path.unlink()  # only the working copy is left to read
        with Image.open(project.thumbnail_path(report.added_ids[0])) as thumbnail:
            assert max(thumbnail.size) == 160


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
