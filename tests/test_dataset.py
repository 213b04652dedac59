"""ImageSet (fsl_app.dataset): ImageFolder parsing, trainability checks, label indices."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_digits_folder
from fsl_app.dataset import DataError, ImageRecord, ImageSet, drop_unreadable
from fsl_app.images import sha256_file


def write_png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, value, value)).save(path)
    return path


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """cats/ (2 images, a text file, a hidden file), dogs/ (1 image + 1 in a nested folder), a loose image,
    a loose csv, and a hidden folder full of images."""
    root = tmp_path / "data"
    write_png(root / "cats" / "c1.png", 10)
    write_png(root / "cats" / "c2.png", 20)
    (root / "cats" / "notes.txt").write_text("not an image")
    write_png(root / "cats" / ".hidden.png", 30)
    write_png(root / "dogs" / "d1.png", 40)
    write_png(root / "dogs" / "puppies" / "p1.png", 50)
    write_png(root / "loose.png", 60)
    (root / "labels.csv").write_text("a,b\n")
    write_png(root / ".ipynb_checkpoints" / "c1-checkpoint.png", 70)
    return root


def test_from_folder_reads_the_imagefolder_layout(mixed_folder):
    skipped: list[str] = []
    images = ImageSet.from_folder(mixed_folder, skipped=skipped)
    by_name = {record.path.name: record for record in images.records}
    assert set(by_name) == {"c1.png", "c2.png", "d1.png", "p1.png", "loose.png"}
    assert by_name["c1.png"].label == "cats"
    assert by_name["p1.png"].label == "dogs"  # nested folders belong to their top-level class
    assert by_name["loose.png"].label is None  # loose files are unlabeled
    assert images.classes == ["cats", "dogs"]
    assert images.class_counts() == {"cats": 2, "dogs": 2}
    assert sorted(skipped) == sorted([f"{Path('cats', 'notes.txt')}: not an image extension",
                                      "labels.csv: not an image extension"])
    for record in images.records:
        assert record.sha256 == sha256_file(record.path)


def test_hidden_folders_are_not_classes(mixed_folder):
    images = ImageSet.from_folder(mixed_folder)
    assert ".ipynb_checkpoints" not in images.classes
    assert all(".ipynb_checkpoints" not in record.path.parts for record in images.records)


def test_from_folder_order_is_deterministic(tmp_path):
    root = make_digits_folder(tmp_path / "digits", per_class=3)
    first = ImageSet.from_folder(root)
    second = ImageSet.from_folder(root)
    assert [r.path for r in first.records] == [r.path for r in second.records]
    assert [r.path for r in first.records] == sorted(r.path for r in first.records)


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_symlinked_class_folders_are_followed(tmp_path):
    """torchvision's ImageFolder follows symlinked class folders; a dataset assembled with links must not lose
    its classes silently."""
    elsewhere = make_digits_folder(tmp_path / "elsewhere", classes=(0, 1), per_class=2)
    root = tmp_path / "data"
    root.mkdir()
    (root / "zero").symlink_to(elsewhere / "digit_0", target_is_directory=True)
    (root / "one").symlink_to(elsewhere / "digit_1", target_is_directory=True)
    write_png(root / "two" / "t.png")
    images = ImageSet.from_folder(root)
    assert images.class_counts() == {"one": 2, "two": 1, "zero": 2}


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_symlink_loop_terminates(tmp_path):
    root = tmp_path / "data"
    write_png(root / "a" / "1.png")
    write_png(root / "b" / "2.png")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    images = ImageSet.from_folder(root)
    assert images.class_counts() == {"a": 1, "b": 1}


def test_not_a_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="is not a folder.*one sub-folder of images per class"):
        ImageSet.from_folder(tmp_path / "missing")
    file = write_png(tmp_path / "single.png")
    with pytest.raises(DataError, match="is not a folder"):
        ImageSet.from_folder(file)


def test_folder_without_images_is_a_data_error(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "readme.md").write_text("x")
    with pytest.raises(DataError, match="holds no images.*ImageFolder"):
        ImageSet.from_folder(tmp_path)


# --- trainability -------------------------------------------------------------------------------------------------

def _set(labels) -> ImageSet:
    return ImageSet(ImageRecord(path=Path(f"/nowhere/{i}.png"), sha256=f"{i:064x}", label=label)
                    for i, label in enumerate(labels))


def test_check_trainable_refuses_one_class():
    with pytest.raises(DataError) as error:
        _set(["cat", "cat", "cat", None]).check_trainable()
    message = str(error.value)
    assert "at least 2 classes" in message and "found 1" in message and "'cat'" in message
    assert "Add images for another class" in message


def test_check_trainable_refuses_no_labels_at_all():
    with pytest.raises(DataError, match="found 0"):
        _set([None, None]).check_trainable()


def test_check_trainable_names_the_class_with_too_few_images():
    images = _set(["cat", "cat", "dog", "fox", "fox"])
    images.check_trainable()  # min_per_class=1: fine
    with pytest.raises(DataError) as error:
        images.check_trainable(min_per_class=2)
    message = str(error.value)
    assert "['dog']" in message and "fewer than 2" in message and "Add images" in message


def test_unlabeled_images_do_not_count_as_a_class(digits_set):
    extra = ImageSet(list(digits_set.subset([0]).records)
                     + [ImageRecord(path=Path("/x.png"), sha256="0" * 64, label=None)])
    with pytest.raises(DataError, match="found 1"):
        extra.check_trainable()


# --- label indices and views ---------------------------------------------------------------------------------------

def test_label_indices_follow_sorted_classes_by_default():
    images = _set(["dog", "cat", "emu", "cat"])
    assert images.classes == ["cat", "dog", "emu"]
    assert images.label_indices().tolist() == [1, 0, 2, 0]
    assert images.label_indices().dtype == np.int64


def test_label_indices_with_explicit_class_order():
    images = _set(["dog", "cat"])
    assert images.label_indices(["emu", "dog", "cat"]).tolist() == [1, 2]


def test_label_indices_unknown_label_is_a_data_error():
    with pytest.raises(DataError, match="'emu' is not one of the classes"):
        _set(["cat", "emu"]).label_indices(["cat", "dog"])


def test_label_indices_on_unlabeled_images_is_a_data_error():
    with pytest.raises(DataError, match="None is not one of the classes"):
        _set(["cat", None]).label_indices()


def test_views_labeled_unlabeled_subset():
    images = _set(["cat", None, "dog", None, "cat"])
    assert len(images.labeled()) == 3 and len(images.unlabeled()) == 2
    assert images.subset(np.array([4, 0])).labels == ["cat", "cat"]
    assert images.subset([2]).shas == [images[2].sha256]
    assert images.labeled().classes == images.classes == ["cat", "dog"]


def test_load_returns_rgb_pixels(digits_set):
    image = digits_set.load(0)
    assert image.mode == "RGB" and image.size == (64, 64)
    assert np.asarray(image).std() > 10  # a real digit, not a blank page


def test_drop_unreadable_keeps_good_images_and_reports_bad_ones(tmp_path):
    root = make_digits_folder(tmp_path / "digits", classes=(0, 1), per_class=2)
    bad = root / "digit_1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    kept, problems = drop_unreadable(ImageSet.from_folder(root))
    assert len(kept) == 4 and all(record.path != bad for record in kept.records)
    assert len(problems) == 1 and "broken.png" in problems[0]


def test_from_folder_on_a_copy_keeps_the_same_hashes(tmp_path, digits_dir):
    copy = shutil.copytree(digits_dir, tmp_path / "copy")
    assert sorted(ImageSet.from_folder(copy).shas) == sorted(ImageSet.from_folder(digits_dir).shas)
