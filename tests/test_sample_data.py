"""The sample project (fsl_app.sample_data): small labeled digits and an unlabeled pool, loadable twice."""

from __future__ import annotations

import uuid
from pathlib import Path

from fsl_app import sample_data
from fsl_app.store import create_project


def test_sample_images_are_small_labeled_pngs_with_an_unlabeled_pool():
    images = sample_data.sample_images()
    labeled = [image for image in images if image.label]
    assert len(labeled) == 24 and len(images) == 30
    assert {image.label for image in labeled} == {"zero", "one", "seven"}
    assert all(image.data.startswith(b"\x89PNG") for image in images)


def test_sample_project_can_be_loaded_twice():
    home = Path(create_project(f"probe {uuid.uuid4().hex[:6]}").home)
    name = f"Sample {uuid.uuid4().hex[:6]}"
    first = sample_data.load_sample_project(name, home)
    second = sample_data.load_sample_project(name, home)
    assert first.stats().n_images == second.stats().n_images == 30
    assert second.stats().n_labeled == 24
