"""Run snapshots (exactly which images and labels a run used) and project statistics / warnings."""

import pytest

from fsl_app.store import StoreError

try:
    from tests.conftest_store import camera, coins, digit_files, encode, home, project  # noqa: F401
except ModuleNotFoundError:
    from conftest_store import camera, coins, digit_files, encode, home, project  # noqa: F401


def test_record_run_snapshots_current_labels(project):
    zero = project.import_files(digit_files(2), label="zero").added_ids
    one = project.import_files(digit_files(2, start=2), label="one").added_ids
    project.import_files(digit_files(1, start=9))  # unlabeled: not part of the run
    run_id = project.record_run("runs/2024-01-01", {"strategy": "linear", "seed": 0})
    project.set_labels(zero, "one")  # later changes must not leak into the snapshot
    snapshot = project.run_snapshot(run_id)
    assert snapshot.config == {"strategy": "linear", "seed": 0} and snapshot.run_dir == "runs/2024-01-01"
    assert [(i.image_id, i.label) for i in snapshot.images] == [(zero[0], "zero"), (zero[1], "zero"),
                                                                (one[0], "one"), (one[1], "one")]
    assert snapshot.image_set().class_counts() == {"one": 2, "zero": 2}
    assert all(i.path.is_file() for i in snapshot.images)


def test_record_run_with_the_image_set_actually_used(project):
    project.import_files(digit_files(4), label="zero")
    used = project.image_set(labeled_only=True).subset([0, 2])
    run_id = project.record_run("runs/r", {"k": 1}, images=used)
    assert [i.sha256 for i in project.run_snapshot(run_id).images] == used.shas


def test_record_run_refuses_images_from_elsewhere(project, tmp_path):
    from fsl_app.dataset import ImageRecord, ImageSet

    foreign = tmp_path / "x.png"
    foreign.write_bytes(digit_files(1)[0][1])
    with pytest.raises(StoreError, match="not in this project"):
        project.record_run("r", {}, images=ImageSet([ImageRecord(foreign, "0" * 64, "a")]))
    assert project.list_runs() == []


def test_list_runs_and_unknown_run(project):
    project.import_files(digit_files(2), label="zero")
    first = project.record_run("a", {})
    project.record_run("b", {"non_json_value": object()})  # stored via str()
    assert [(r.run_id, r.n_images) for r in project.list_runs()] == [(first, 2), (first + 1, 2)]
    with pytest.raises(StoreError, match=f"Recorded run ids: \\[{first}, {first + 1}\\]"):
        project.run_snapshot(99)


def test_stats_counts_and_warnings(project):
    project.import_files(digit_files(8), label="big")
    project.import_files(digit_files(1, start=8), label="tiny")
    project.import_files(digit_files(2, start=9))
    project.import_files(digit_files(1))  # duplicate, skipped
    project.add_class("empty")
    stats = project.stats()
    assert (stats.n_images, stats.n_labeled, stats.n_unlabeled) == (11, 9, 2)
    assert stats.class_counts == {"big": 8, "empty": 0, "tiny": 1}
    assert stats.duplicates_skipped == 1
    text = " ".join(stats.warnings)
    assert "fewer than 2 images: ['empty', 'tiny']" in text
    assert "imbalanced classes: 'big' has 8 images, 'tiny' only 1" in text
    assert "2 image(s) are unlabeled" in text


def test_stats_flags_near_duplicates_across_classes(project):
    project.import_files([("cam.png", encode(camera(), "PNG"))], label="a")
    project.import_files([("cam.jpg", encode(camera().convert("RGB"), "JPEG", quality=50))], label="b")
    project.import_files([("coins.png", encode(coins(), "PNG"))], label="b")
    stats = project.stats()
    assert stats.identical_pairs + stats.near_duplicate_pairs == 1
    assert len(stats.cross_class_near_duplicates) == 1
    assert any("different labels" in warning for warning in stats.warnings)


def test_stats_of_empty_project(project):
    stats = project.stats()
    assert stats.n_images == 0 and stats.class_counts == {}
    assert any("training needs at least 2" in warning for warning in stats.warnings)
