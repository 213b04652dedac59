"""What keeps 100,000-image projects usable: paged and counted queries, a sampled pool for suggestions, near
duplicates remembered per image set, an embedding map that samples (timings: benchmarks/bench_scale.py)."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
from PIL import Image

from conftest import make_digits_folder
from fsl_app.store import create_project


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_digits_folder(tmp_path_factory.mktemp("large"), classes=(0, 1, 2), per_class=5, size=32)
    for index, path in enumerate(sorted(root.rglob("*.png"))[:6]):  # 6 loose copies, slightly changed: unlabeled
        image = Image.open(path).convert("RGB")
        image.putpixel((0, 0), (255, 40 * index, 0))
        image.save(root / f"loose{index}.png")
    project = create_project(f"large {uuid.uuid4().hex[:6]}")
    project.import_imagefolder(root)
    return project


def test_counts_and_pages_come_from_sql_and_agree_with_the_full_listing(project):
    everything = project.images()
    assert project.count_images() == len(everything) == 21
    assert project.count_images(labeled=False) == len(project.images(labeled=False)) == 6
    assert project.count_images(class_name="digit_1") == 5
    assert [i.id for i in project.images(limit=7, offset=7)] == [i.id for i in everything[7:14]]
    assert [i.id for i in project.images(class_name="digit_2", limit=2, offset=4)] == \
        [i.id for i in project.images(class_name="digit_2")[4:]]
    assert project.labels_by_id() == {image.id: image.label for image in everything}
    fingerprint = project.sides_fingerprint()
    first = everything[0]
    project.set_labels([first.id], None if first.label else "digit_0")
    assert project.sides_fingerprint() != fingerprint
    project.undo_last_label_change()
    assert project.sides_fingerprint() == fingerprint
    assert project.source_names() == {image.sha256: image.source_name for image in everything}


def test_a_sampled_pool_is_seeded_and_unlabeled(project):
    images, ids = project.image_set_with_ids(labeled=False, sample=4)
    again, same_ids = project.image_set_with_ids(labeled=False, sample=4)
    unlabeled = {image.id for image in project.images(labeled=False)}
    assert ids == same_ids and len(ids) == 4 and set(ids) <= unlabeled and ids == sorted(ids)
    assert [r.sha256 for r in images] == [r.sha256 for r in again]
    assert project.image_set_with_ids(labeled=False, sample=100)[1] == sorted(unlabeled)


def test_near_duplicates_are_remembered_until_the_images_change(project):
    pairs = project.near_duplicates()
    assert len(pairs) >= 6  # each loose copy and its labeled original
    cross = project.stats()
    assert cross.near_duplicate_pairs + cross.identical_pairs == len(pairs)
    buffer = io.BytesIO()
    Image.open(project.get_image(pairs[0][0]).path).convert("RGB").save(buffer, "JPEG", quality=90)
    added = project.import_files([("copy.jpg", buffer.getvalue())]).added_ids
    grown = project.near_duplicates()
    assert len(grown) > len(pairs) and any(added[0] in pair[:2] for pair in grown)
    project.delete_images(added)
    assert project.near_duplicates() == pairs


class _RandomEmbedding:
    def embed(self, images):
        import torch

        return torch.randn(len(images), 8, generator=torch.Generator().manual_seed(0))

    def map_points(self):
        return []


def test_the_embedding_map_samples_a_big_run_and_says_so(project):
    from fsl_app import inspect_run

    records = [{"path": str(image.path), "sha256": image.sha256, "label": image.label}
               for image in project.images(labeled=True)]
    run = {"config": {"data": {"images": records}},
           "predictions": [{"index": i, "true": "a", "predicted": "a"} for i in range(len(records))]}
    full = inspect_run.embedding_map(_RandomEmbedding(), run, "pca")
    assert len(full.points) == 15 and not full.note
    sampled = inspect_run.embedding_map(_RandomEmbedding(), run, "pca", max_points=6)
    assert len(sampled.points) == 6 and "6 of the run's 15" in sampled.note
    assert {p["path"] for p in sampled.points} <= {r["path"] for r in records}
    assert all(p["correct"] is True for p in sampled.points)
    assert np.isfinite([p["x"] for p in sampled.points]).all()


def test_the_shift_check_can_test_a_sample_of_a_big_pool(project, tiny_backbone):
    from fsl_app.shift_check import check_project_shift

    check = check_project_shift(project, backbone_name="test_efficientnet", permutations=50, max_pool=4)
    assert check.n_target == 4 and check.report is not None
