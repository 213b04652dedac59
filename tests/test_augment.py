"""Augmentation pipelines (fsl_app.augment): presets, dict round-trip with a fixed seed (albumentations
tests/test_serialization.py style), seeded preview."""

from __future__ import annotations

import json
import random

import albumentations as A
import numpy as np
import pytest
from PIL import Image
from skimage import data

from fsl_app.augment import PRESETS, apply, build_augment, preset, preview, seed_pipeline, to_dict

AUGMENTING = [name for name in PRESETS if name != "none"]


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(data.astronaut()).resize((96, 96))


@pytest.fixture(scope="module")
def gray_photo() -> Image.Image:
    return Image.fromarray(data.camera()).resize((80, 64))  # mode L, not square


def outputs(pipeline: A.Compose, image: Image.Image, seed: int, n: int = 6) -> list[np.ndarray]:
    seed_pipeline(pipeline, seed)
    return [np.asarray(apply(pipeline, image)) for _ in range(n)]


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_and_is_json_serializable(name):
    pipeline = preset(name)
    assert isinstance(pipeline, A.Compose)
    text = json.dumps(to_dict(pipeline))  # stored as JSON in the project and in each run's config
    assert json.dumps(json.loads(text)) == text
    assert len(pipeline.transforms) == len(json.loads(text)["transform"]["transforms"])


@pytest.mark.parametrize("seed", [0, 137])
@pytest.mark.parametrize("name", PRESETS)
def test_dict_round_trip_gives_identical_outputs(name, seed, photo):
    original = preset(name)
    rebuilt = build_augment(json.loads(json.dumps(to_dict(original))))  # through JSON, as stored in a run config
    assert to_dict(rebuilt) == to_dict(original)
    for expected, actual in zip(outputs(original, photo, seed), outputs(rebuilt, photo, seed)):
        assert np.array_equal(expected, actual)


@pytest.mark.parametrize("name", AUGMENTING)
def test_presets_change_images_and_keep_their_format(name, photo, gray_photo):
    results = outputs(preset(name), photo, seed=3, n=8)
    assert any(not np.array_equal(result, np.asarray(photo)) for result in results)
    assert len({result.tobytes() for result in results}) > 1  # fresh randomness per call
    for result in results:
        assert result.shape == (96, 96, 3) and result.dtype == np.uint8
    augmented = apply(preset(name), gray_photo)
    assert augmented.mode == "RGB" and augmented.size == gray_photo.size


def test_none_preset_is_the_identity(photo):
    for result in outputs(preset("none"), photo, seed=0, n=3):
        assert np.array_equal(result, np.asarray(photo))


def test_presets_grow_stronger(photo):
    def mean_change(name):
        return np.mean([np.abs(result.astype(int) - np.asarray(photo).astype(int)).mean()
                        for result in outputs(preset(name), photo, seed=5, n=12)])

    assert mean_change("light") < mean_change("strong")


def test_default_preset_never_mirrors():
    """A mirrored digit, letter or asymmetric part can be another class: the default does not flip."""
    names = {transform.__class__.__name__ for transform in preset("light").transforms}
    assert not names & {"HorizontalFlip", "VerticalFlip", "Transpose"}


def test_build_augment_accepts_names_dicts_and_none():
    assert to_dict(build_augment(None)) == to_dict(preset("light"))
    assert to_dict(build_augment("medium")) == to_dict(preset("medium"))
    custom = A.Compose([A.RandomResizedCrop(size=(64, 64), scale=(0.5, 1.0), p=1.0), A.ToGray(p=0.5)])
    assert to_dict(build_augment(to_dict(custom))) == to_dict(custom)


def test_custom_pipeline_round_trip_gives_identical_outputs(photo):
    custom = A.Compose([A.RandomResizedCrop(size=(64, 64), scale=(0.5, 1.0), p=1.0), A.Rotate(limit=30, p=0.8),
                        A.RandomBrightnessContrast(p=0.8)])
    rebuilt = build_augment(json.loads(json.dumps(to_dict(custom))))
    for expected, actual in zip(outputs(custom, photo, 9), outputs(rebuilt, photo, 9)):
        assert expected.shape == (64, 64, 3) and np.array_equal(expected, actual)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError) as error:
        preset("extreme")
    assert "'extreme'" in str(error.value) and all(name in str(error.value) for name in PRESETS)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("spec", [{"transform": {"__class_fullname__": "NoSuchTransform"}}, {"bad": 1}])
def test_malformed_dict_is_a_value_error_with_the_fix(spec):
    with pytest.raises(ValueError, match="cannot be rebuilt.*Pick a preset"):
        build_augment(spec)


def test_preview_is_deterministic_for_a_seed(photo, gray_photo):
    pipeline = preset("strong")

    def grid(seed):
        rows = preview(pipeline, [photo, gray_photo], copies=3, seed=seed)
        return [[np.asarray(image) for image in row] for row in rows]

    first = grid(seed=1)
    random.random(), np.random.rand()  # unrelated draws in between must not matter
    second = grid(seed=1)
    other = grid(seed=2)
    assert len(first) == 2 and all(len(row) == 3 for row in first)
    assert all(np.array_equal(a, b) for row_a, row_b in zip(first, second) for a, b in zip(row_a, row_b))
    assert any(not np.array_equal(a, b) for row_a, row_b in zip(first, other) for a, b in zip(row_a, row_b))


def test_preview_of_a_rebuilt_pipeline_matches_the_original(photo):
    original = preset("medium")
    rebuilt = build_augment(to_dict(original))
    for a, b in zip(preview(original, [photo], copies=4, seed=7)[0], preview(rebuilt, [photo], copies=4, seed=7)[0]):
        assert np.array_equal(np.asarray(a), np.asarray(b))


# --- the custom pipeline and the project's saved pipeline (the Augment page) ----------------------------------------

def test_custom_pipeline_leaves_out_disabled_transforms_and_round_trips():
    from fsl_app.augment import AugmentSettings, describe_pipeline, pipeline_dict

    settings = AugmentSettings(horizontal_flip=0.0, rotate_degrees=30, crop_min_scale=0.6, blur=0.3, noise=0.2,
                               coarse_dropout=0.1, color_jitter=0.0)
    pipeline = pipeline_dict("custom", settings)
    names = [line.split(" ")[0] for line in describe_pipeline(pipeline)]
    assert names == ["RandomResizedCrop", "Rotate", "GaussianBlur", "GaussNoise", "CoarseDropout"]
    assert json.loads(json.dumps(pipeline)) == pipeline  # plain JSON data
    assert json.loads(json.dumps(to_dict(build_augment(pipeline)))) == pipeline  # rebuilt as it was saved


def test_project_augment_is_saved_in_the_project_folder_and_previews_are_seeded(tmp_path):
    from fsl_app.augment import (AUGMENT_FILE, AugmentSettings, load_project_augment, preview_paths,
                                 save_project_augment)

    assert load_project_augment(tmp_path).choice == "light"
    settings = AugmentSettings(rotate_degrees=45, noise=0.5)
    pipeline = save_project_augment(tmp_path, "custom", settings)
    saved = json.loads((tmp_path / AUGMENT_FILE).read_text())
    assert saved["pipeline"] == pipeline and saved["choice"] == "custom"
    loaded = load_project_augment(tmp_path)
    assert loaded.settings == settings and loaded.resolved_pipeline() == pipeline
    paths = []
    for index, image in enumerate((data.astronaut(), data.coffee())):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(image).save(paths[-1])
    first = preview_paths(paths, pipeline, copies=3, seed=4)
    second = preview_paths(paths, pipeline, copies=3, seed=4)
    assert len(first) == 2 and len(first[0]) == 3
    assert [np.asarray(im).tolist() for im in first[0]] == [np.asarray(im).tolist() for im in second[0]]
    stored = preview_paths(paths, pipeline, copies=3, seed=4, shas=["a" * 64, "b" * 64])  # through working copies
    assert [np.asarray(im).tolist() for im in stored[1]] == [np.asarray(im).tolist() for im in first[1]]


def test_a_damaged_augment_file_falls_back_to_the_light_preset(tmp_path):
    from fsl_app.augment import AUGMENT_FILE, load_project_augment

    (tmp_path / AUGMENT_FILE).write_text("{not json")
    assert load_project_augment(tmp_path).choice == "light"
