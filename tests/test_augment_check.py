"""The augmentation check in embedding space (fsl_app.augment_check) and the webcam import (fsl_app.camera).

The rule is tested twice: with a hand-made embedding whose answer is known (a flip that swaps two classes), and with
the real default backbone (tf_efficientnet_lite0, packaged offline weights, about 5 s) on hand-written 6s and 9s:
turning the images upside down (a horizontal plus a vertical flip, a rotation by 180 degrees) is flagged,
brightness is not. The tiny random test backbone cannot tell a 6 from a 9, so it cannot test the rule.
"""

from __future__ import annotations

import uuid

import albumentations as A
import numpy as np
import pytest
from PIL import Image

from fsl_app import augment, augment_check, camera
from fsl_app.augment_check import AugmentCheck, TransformCheck
from fsl_app.dataset import ImageSet
from fsl_app.store import create_project

try:
    from tests.conftest import make_digits_folder
except ModuleNotFoundError:
    from conftest import make_digits_folder

BRIGHTNESS = A.ColorJitter(brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0, p=1.0)


def half_bright_images(root, per_class: int = 6) -> ImageSet:
    """Class ``left``: the left half is the bright one; class ``right``: the right half. Random levels per image."""
    rng = np.random.default_rng(0)
    for label in ("left", "right"):
        (root / label).mkdir(parents=True)
        for index in range(per_class):
            pixels = np.full((32, 32, 3), rng.integers(10, 60), np.uint8)
            bright = slice(0, 16) if label == "left" else slice(16, 32)
            pixels[:, bright] = rng.integers(150, 230)
            pixels[rng.integers(0, 32), :] = rng.integers(60, 120)  # a stripe, so images differ in more than level
            Image.fromarray(pixels).save(root / label / f"{index}.png")
    return ImageSet.from_folder(root)


def halves_embedding(images) -> np.ndarray:
    """(n, 2): the left and the top half's share of the image's light (brightness scales both halves alike)."""
    arrays = [np.asarray(image.convert("L").resize((32, 32)), dtype=float) + 1 for image in images]
    return np.asarray([[a[:, :16].sum() / a.sum(), a[:16].sum() / a.sum()] for a in arrays])


def rows_by_name(check: AugmentCheck) -> dict[str, TransformCheck]:
    return {row.name: row for row in check.rows}


def test_a_flip_that_swaps_two_classes_is_harmful_and_brightness_is_not(tmp_path):
    images = half_bright_images(tmp_path)
    pipeline = A.to_dict(A.Compose([A.HorizontalFlip(p=0.5), BRIGHTNESS]))
    check = augment_check.measure(images, pipeline, halves_embedding, seed=0)
    rows = rows_by_name(check)
    assert list(rows) == ["HorizontalFlip", "ColorJitter", augment_check.WHOLE_PIPELINE]
    flip, brightness = rows["HorizontalFlip"], rows["ColorJitter"]
    assert flip.probability == 0.5 and flip.n_copies == 12  # applied with p=1; a flip is deterministic: one copy each
    assert flip.flip_rate == 1.0 and flip.harmful and flip.shift > 2
    assert brightness.flip_rate == 0.0 and not brightness.harmful and brightness.verdict == "keeps the class"
    assert check.baseline_error == 0.0 and not check.weak_embedding
    assert "HorizontalFlip (100% of copies change class)" in check.warning()


def test_the_same_seed_gives_the_same_rows(tmp_path):
    images = half_bright_images(tmp_path)
    pipeline = A.to_dict(A.Compose([A.Rotate(limit=90, p=0.7), BRIGHTNESS]))
    first, second = (augment_check.measure(images, pipeline, halves_embedding, seed=3) for _ in range(2))
    assert first.rows == second.rows


@pytest.fixture(scope="module")
def sixes_and_nines(tmp_path_factory) -> ImageSet:
    return ImageSet.from_folder(make_digits_folder(tmp_path_factory.mktemp("69"), classes=(6, 9), per_class=8,
                                                   size=224))


@pytest.fixture(scope="module")
def lite0():
    from fsl_app.backbones import DEFAULT_BACKBONE, load_backbone

    return load_backbone(DEFAULT_BACKBONE)


def test_upside_down_digits_are_flagged_with_the_real_backbone(sixes_and_nines, lite0):
    pipeline = A.to_dict(A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), BRIGHTNESS]))
    check = augment_check.check_augment(sixes_and_nines, pipeline, lite0, seed=0, copy_budget=128)
    rows = rows_by_name(check)
    assert check.n_images == 16 and check.backbone == lite0.name and not check.weak_embedding
    assert not rows["ColorJitter"].harmful, rows["ColorJitter"]
    assert rows["VerticalFlip"].harmful, rows["VerticalFlip"]  # a 6 upside down and mirrored: a 9
    assert rows["ColorJitter"].margin_drop < augment_check.MARGIN_DROP_WARNING < rows["VerticalFlip"].margin_drop
    assert "VerticalFlip" in check.warning()


def test_a_rotation_by_180_degrees_is_flagged_and_brightness_alone_is_quiet(sixes_and_nines, lite0):
    rotation = augment_check.check_augment(sixes_and_nines, A.to_dict(A.Compose([A.Rotate(limit=(180, 180))])),
                                           lite0, seed=1)
    [row] = rotation.rows  # one transform: no separate whole-pipeline row
    assert row.harmful and row.flip_rate >= augment_check.FLIP_RATE_WARNING, row
    brightness = augment_check.check_augment(sixes_and_nines, A.to_dict(A.Compose([BRIGHTNESS])), lite0, seed=1,
                                             copy_budget=32)
    assert not brightness.harmful and brightness.warning() is None


@pytest.mark.parametrize("counts, found", [({"only": 5}, "found 1 class with images, 1 with 2 or more"),
                                           ({"a": 1, "b": 1}, "found 2 classes with images, 0 with 2 or more"),
                                           ({}, "found 0 classes")])
def test_too_few_images_get_a_sentence_that_says_what_to_add(counts, found):
    message = augment_check.check_problem(counts)
    assert message.startswith("Checking augmentations needs at least 2 classes with at least 2 labeled images")
    assert found in message and "Label more images" in message


def test_one_image_per_class_returns_the_message_without_loading_anything(tmp_path):
    images = half_bright_images(tmp_path, per_class=1)
    check = augment_check.check_augment(images, "light", backbone=None)
    assert not check.applicable and "needs at least 2 classes" in check.message


def test_a_pipeline_without_transforms_says_so(tmp_path):
    check = augment_check.check_augment(half_bright_images(tmp_path), "none", backbone=None)
    assert not check.applicable and check.message == augment_check.NO_TRANSFORM


def test_the_saved_warning_belongs_to_one_pipeline(tmp_path):
    harmful = TransformCheck("VerticalFlip", 0.5, 16, 1.1, 0.9, 0.6, 0.4, 0.2, 0.5, True, "harmful")
    check = AugmentCheck(message="", rows=[harmful])
    pipeline = augment.pipeline_dict("strong")
    assert augment_check.saved_warning(tmp_path, pipeline) is None  # never checked
    augment_check.save_check(tmp_path, pipeline, check)
    assert "VerticalFlip (40% of copies change class)" in augment_check.saved_warning(tmp_path, pipeline)
    assert augment_check.saved_warning(tmp_path, augment.pipeline_dict("light")) is None  # another pipeline
    (tmp_path / augment_check.CHECK_FILE).write_text("{not json")
    assert augment_check.saved_warning(tmp_path, pipeline) is None


# --- webcam -----------------------------------------------------------------------------------------------------

def jpeg_bytes(level: int = 90) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), level, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_a_camera_shot_is_imported_like_an_upload():
    project = create_project(f"camera {uuid.uuid4().hex[:8]}")
    project.add_class("cats")
    report = camera.add_camera_shot(project, jpeg_bytes(), "cats", upload_name="image.jpg")
    assert len(report.added) == 1 and project.class_counts() == {"cats": 1}
    [image] = project.images(class_name="cats")
    assert image.source_name.startswith("camera-") and image.source_name.endswith(".jpg")
    again = camera.add_camera_shot(project, jpeg_bytes(), "cats")  # the same picture: a duplicate, not a new image
    assert not again.added and project.class_counts() == {"cats": 1}
    broken = camera.add_camera_shot(project, b"not an image", "cats")
    assert not broken.added and broken.rejected and project.class_counts() == {"cats": 1}
    new_class = camera.add_camera_shot(project, jpeg_bytes(30), "dogs")  # as an upload: the class is created
    assert len(new_class.added) == 1 and project.class_counts() == {"cats": 1, "dogs": 1}


def test_camera_shot_names_keep_an_image_extension():
    assert camera.camera_shot_name("image.png").endswith(".png")
    assert camera.camera_shot_name(None).endswith(".jpg")
    assert camera.camera_shot_name("shot.exe").endswith(".jpg")
