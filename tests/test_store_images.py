"""Images in a project: content-addressed files, duplicates, bad inputs (one test each), thumbnails, near duplicates."""

import hashlib

import numpy as np
import pytest
from PIL import Image

import fsl_app.images as image_io
from fsl_app.dataset import ImageSet
from fsl_app.store import ImageNotFoundError, similar_pairs_from_embeddings
from fsl_app.store.duplicates import near_duplicate_pairs, perceptual_hash

try:
    from tests.conftest_store import (camera, coins, digit_files, digit_png, encode, home,  # noqa: F401
                                      png_with_header_size, project)
except ModuleNotFoundError:
    from conftest_store import (camera, coins, digit_files, digit_png, encode, home,  # noqa: F401
                                png_with_header_size, project)


def test_import_keeps_original_bytes_content_addressed(project):
    report = project.import_files(digit_files(3))
    assert len(report.added) == 3 and not report.duplicates and not report.rejected
    for added, (name, data) in zip(report.added, digit_files(3), strict=True):
        image = project.get_image(added.image_id)
        sha = hashlib.sha256(data).hexdigest()
        assert image.sha256 == sha == added.sha256 and image.source_name == name
        assert image.path == project.path / "objects" / sha[:2] / f"{sha}.png"
        assert image.path.read_bytes() == data
        assert (image.width, image.height, image.size_bytes) == (32, 32, len(data))
        assert image.label is None


def test_extension_is_preserved_lowercase(project):
    report = project.import_files([("Photo.JPEG", encode(camera(), "JPEG"))])
    assert project.get_image(report.added[0].image_id).path.suffix == ".jpeg"


def test_no_temporary_files_left_after_import(project):
    project.import_files(digit_files(5))
    leftovers = [p for p in (project.path / "objects").rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_exact_duplicate_already_in_project_is_reported_not_stored(project):
    first = project.import_files(digit_files(2), label="zero")
    again = project.import_files([("copy.png", digit_png(0)), ("new.png", digit_png(7))])
    assert [d.name for d in again.duplicates] == ["copy.png"]
    duplicate = again.duplicates[0]
    assert duplicate.image_id == first.added[0].image_id and duplicate.existing_label == "zero"
    assert [a.name for a in again.added] == ["new.png"]
    assert len(project.images()) == 3
    assert len(list((project.path / "objects").rglob("*.png"))) == 3


def test_duplicate_within_one_import_is_stored_once(project):
    report = project.import_files([("a.png", digit_png(1)), ("b.png", digit_png(1))])
    assert [a.name for a in report.added] == ["a.png"]
    assert [(d.name, d.image_id) for d in report.duplicates] == [("b.png", report.added[0].image_id)]
    assert project.stats().duplicates_skipped == 1


def test_non_image_with_image_extension_is_rejected(project):
    report = project.import_files([("notes.jpg", b"this is a text file, not a picture")])
    assert report.added == [] and report.rejected[0][0] == "notes.jpg"
    assert "not an image Pillow can read" in report.rejected[0][1]


def test_truncated_jpeg_is_rejected(project):
    jpeg = encode(camera(), "JPEG", quality=90)
    report = project.import_files([("cut.jpg", jpeg[: len(jpeg) // 2])])
    assert report.added == [] and "corrupt or truncated" in report.rejected[0][1]
    assert list((project.path / "objects").rglob("*.jpg")) == []


def test_file_over_size_limit_is_rejected(project, monkeypatch):
    monkeypatch.setattr(image_io, "MAX_BYTES", 1000)
    report = project.import_files([("big.png", encode(camera(), "PNG"))])
    assert report.added == [] and "MiB limit" in report.rejected[0][1]


def test_image_over_pixel_limit_is_rejected(project):
    report = project.import_files([("huge.png", png_with_header_size(9000, 8000))])
    assert report.added == [] and "over the limit of 64,000,000 pixels" in report.rejected[0][1]


def test_empty_file_is_rejected(project):
    report = project.import_files([("empty.png", b"")])
    assert "empty" in report.rejected[0][1]


def test_non_image_extension_is_rejected_with_supported_list(project):
    report = project.import_files([("report.pdf", b"%PDF-1.4")])
    assert ".pdf" in report.rejected[0][1] and ".png" in report.rejected[0][1]


def test_one_bad_file_does_not_stop_the_others(project):
    files = [("ok1.png", digit_png(1)), ("bad.png", b"garbage"), ("ok2.png", digit_png(2))]
    report = project.import_files(files)
    assert [a.name for a in report.added] == ["ok1.png", "ok2.png"] and len(report.rejected) == 1


def test_unexpected_decoder_exception_is_a_rejection(project, monkeypatch):
    def explode(data, name):
        raise struct_error("unpack requires a buffer of 4 bytes")

    struct_error = type("error", (Exception,), {})
    monkeypatch.setattr("fsl_app.store.importing.decode_image", explode)
    report = project.import_files(digit_files(1))
    assert report.added == [] and "could not be decoded" in report.rejected[0][1]


def test_uploaded_file_objects_are_accepted(project):
    class Upload:  # the shape of streamlit's UploadedFile
        name = "upload.png"

        def getvalue(self):
            return digit_png(3)

    assert [a.name for a in project.import_files([Upload()]).added] == ["upload.png"]


def test_odd_modes_are_stored_as_is_and_decoded(project):
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 128))
    sixteen = Image.fromarray(np.arange(200, dtype=np.uint16).reshape(10, 20) * 300)
    report = project.import_files([("rgba.png", encode(rgba, "PNG")), ("deep.png", encode(sixteen, "PNG"))])
    assert len(report.added) == 2
    assert project.image_set().load(0).mode == "RGB"


def test_thumbnail_is_created_lazily_and_cached(project):
    image_id = project.import_files([("cam.png", encode(camera(512), "PNG"))]).added[0].image_id
    assert not (project.path / "thumbs").exists()
    path = project.thumbnail_path(image_id)
    with Image.open(path) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) == 160
    mtime = path.stat().st_mtime_ns
    assert project.thumbnail_path(image_id) == path and path.stat().st_mtime_ns == mtime


def test_unknown_image_id_raises_clear_error(project):
    with pytest.raises(ImageNotFoundError, match="not in this project"):
        project.get_image(999)


def test_near_duplicates_flag_reencoded_and_resized_copies(project):
    report = project.import_files([
        ("cam.png", encode(camera(), "PNG")),
        ("cam_q40.jpg", encode(camera().convert("RGB"), "JPEG", quality=40)),
        ("cam_small.png", encode(camera(90), "PNG")),
        ("coins.png", encode(coins(), "PNG")),
    ])
    cam, cam_jpeg, cam_small, coin = report.added_ids
    pairs = project.near_duplicates()
    assert {(a, b) for a, b, _ in pairs} == {(cam, cam_jpeg), (cam, cam_small), (cam_jpeg, cam_small)}
    assert all(distance <= 6 for *_, distance in pairs)
    assert perceptual_distance(coins(), camera()) > 6  # coins is far from camera


def perceptual_distance(a: Image.Image, b: Image.Image) -> int:
    return bin(int(perceptual_hash(a), 16) ^ int(perceptual_hash(b), 16)).count("1")


def test_near_duplicate_pairs_function():
    pairs = near_duplicate_pairs([10, 20, 30], ["0f00000000000000", "0f00000000000003", "ffffffffffffffff"], 2)
    assert pairs == [(10, 20, 2)]


def _flat_images() -> list[tuple[str, bytes]]:
    """Single-colour images of different colours, formats and sizes: one perceptual hash for all of them."""
    red_gif = encode(Image.new("RGB", (40, 30), (255, 0, 0)).convert("P"), "GIF")
    cmyk = encode(Image.new("CMYK", (50, 50), (0, 0, 255, 0)), "JPEG")  # yellow
    return [("red.gif", red_gif), ("yellow_cmyk.jpg", cmyk),
            ("pixel.png", encode(Image.new("RGB", (1, 1), (0, 160, 0)), "PNG")),
            ("blue.png", encode(Image.new("RGB", (64, 64), (0, 0, 255)), "PNG")),
            ("white.bmp", encode(Image.new("RGB", (20, 20), (255, 255, 255)), "BMP"))]


def test_flat_images_of_different_colours_are_neither_identical_nor_near_duplicates(project):
    report = project.import_files(_flat_images())
    assert len(report.added) == 5
    assert project.near_duplicates() == []
    stats = project.stats()
    assert (stats.identical_pairs, stats.near_duplicate_pairs) == (0, 0)
    assert not any("near-duplicate" in warning for warning in stats.warnings)


def test_identical_means_the_same_pixels_not_the_same_hash(project):
    """The same pixels in two formats are identical; a lossy re-encoding is a near duplicate, not identical."""
    blue = Image.new("RGB", (64, 64), (0, 0, 255))
    photo = camera().convert("RGB")
    report = project.import_files([("blue.png", encode(blue, "PNG")), ("blue.bmp", encode(blue, "BMP")),
                                   ("cam.png", encode(photo, "PNG")), ("cam.tif", encode(photo, "TIFF")),
                                   ("cam.jpg", encode(photo, "JPEG", quality=40))])
    blue_png, blue_bmp, cam_png, cam_tif, cam_jpg = report.added_ids
    distances = {(a, b): distance for a, b, distance in project.near_duplicates()}
    assert distances[(blue_png, blue_bmp)] == 0 and distances[(cam_png, cam_tif)] == 0
    assert distances[(cam_png, cam_jpg)] >= 1 and distances[(cam_tif, cam_jpg)] >= 1
    assert not any(blue_png in pair or blue_bmp in pair for pair in distances if pair != (blue_png, blue_bmp))
    stats = project.stats()
    assert (stats.identical_pairs, stats.near_duplicate_pairs) == (2, 2)


def test_near_duplicates_of_older_projects_never_claim_identical_or_match_flat_hashes():
    """Hashes stored before the colour and content signature: a flat image's hash matches nothing, and an equal
    hash is only a near duplicate (its content is unknown)."""
    flat, black = "8000000000000000", "0000000000000000"
    pairs = near_duplicate_pairs([1, 2, 3, 4, 5, 6], [flat, flat, black, black, "a1b2c3d4e5f60718", "a1b2c3d4e5f60718"])
    assert pairs == [(5, 6, 1)]


def test_similar_pairs_from_embeddings():
    embeddings = np.array([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0], [0.0, 0.0]])
    pairs = similar_pairs_from_embeddings(embeddings, [5, 6, 7, 8], min_similarity=0.95)
    assert [(a, b) for a, b, _ in pairs] == [(5, 6)] and pairs[0][2] > 0.99


def test_similar_pairs_accepts_torch_tensors():
    import torch

    embeddings = torch.tensor([[1.0, 1.0], [2.0, 2.0], [1.0, -1.0]])
    assert [(a, b) for a, b, _ in similar_pairs_from_embeddings(embeddings, [3, 1, 2])] == [(1, 3)]


def test_similar_pairs_rejects_mismatched_ids():
    with pytest.raises(ValueError, match="one id per row"):
        similar_pairs_from_embeddings(np.zeros((3, 4)), [1, 2])


def test_delete_images_removes_rows_and_files(project):
    report = project.import_files(digit_files(3), label="zero")
    doomed = project.get_image(report.added_ids[0])
    assert project.delete_images([doomed.id]) == 1
    assert not doomed.path.exists() and len(project.images()) == 2
    assert not list((project.path / "deleted").iterdir())
    assert project.fsck().ok


def test_delete_unknown_image_changes_nothing(project):
    ids = project.import_files(digit_files(2)).added_ids
    with pytest.raises(ImageNotFoundError):
        project.delete_images([ids[0], 12345])
    assert len(project.images()) == 2


def test_deleted_image_file_kept_while_a_run_snapshot_uses_it(project):
    ids = project.import_files(digit_files(2), label="zero").added_ids
    run_id = project.record_run("runs/r1", {"strategy": "protonet"})
    kept = project.get_image(ids[0]).path
    project.delete_images([ids[0]])
    assert kept.is_file()
    assert project.run_snapshot(run_id).images[0].path == kept
    assert project.fsck().orphans_removed == []


def test_reimport_after_delete_works(project):
    first = project.import_files(digit_files(1)).added_ids[0]
    project.delete_images([first])
    again = project.import_files(digit_files(1))
    assert len(again.added) == 1 and project.get_image(again.added_ids[0]).path.is_file()


def test_image_set_matches_store(project):
    project.import_files(digit_files(2), label="zero")
    project.import_files(digit_files(1, start=20))
    images, ids = project.image_set_with_ids()
    assert isinstance(images, ImageSet) and len(images) == 3 and len(ids) == 3
    assert images.labels == ["zero", "zero", None]
    assert project.image_set(labeled_only=True).classes == ["zero"]
    assert images.load(0).size == (32, 32)
    assert [r.sha256 for r in images.records] == [project.get_image(i).sha256 for i in ids]
