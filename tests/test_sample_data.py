"""The sample project (fsl_app.sample_data): ten digit classes of five labeled images and an unlabeled pool,
loadable twice."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from fsl_app import sample_data
from fsl_app.store import create_project

N_CLASSES = 10


def test_sample_images_are_small_labeled_pngs_with_an_unlabeled_pool():
    images = sample_data.sample_images()
    labeled = [image for image in images if image.label]
    assert len(labeled) == 5 * N_CLASSES and len(images) == 7 * N_CLASSES
    assert {image.label for image in labeled} == {"zero", "one", "two", "three", "four", "five", "six", "seven",
                                                  "eight", "nine"}
    assert {image.true_label for image in images if image.label is None} == {image.label for image in labeled}
    assert all(image.data.startswith(b"\x89PNG") for image in images)
    assert len({image.data for image in images}) == len(images)  # no duplicate pictures (the store would skip them)


def test_sample_images_of_some_classes():
    images = sample_data.sample_images(2, 1, classes=["one", "seven"])
    assert [image.label for image in images] == ["one", "one", "seven", "seven", None, None]
    with pytest.raises(ValueError, match="eleven"):
        sample_data.sample_images(classes=["eleven"])


def test_sample_project_can_be_loaded_twice():
    home = Path(create_project(f"probe {uuid.uuid4().hex[:6]}").home)
    name = f"Sample {uuid.uuid4().hex[:6]}"
    first = sample_data.load_sample_project(name, home)
    second = sample_data.load_sample_project(name, home)
    assert first.stats().n_images == second.stats().n_images == 7 * N_CLASSES
    assert second.stats().n_labeled == 5 * N_CLASSES
    assert len(second.classes()) == N_CLASSES
