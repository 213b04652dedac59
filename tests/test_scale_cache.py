"""The near-duplicate search runs once per set of stored signatures: its answer is saved in the project and read by
later opens, and never shown stale after an import or a delete (timings: benchmarks/bench_scale.py ``pages``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fsl_app.store import open_project
from fsl_app.store import project as project_module
from fsl_app.store.project import NEAR_DUPLICATES_FILE

try:
    from tests.conftest_store import camera, coins, encode, home, project  # noqa: F401
except ImportError:
    from conftest_store import camera, coins, encode, home, project  # noqa: F401

APP = Path(__file__).resolve().parents[1] / "fsl_app" / "app.py"
CAMERA_PAIR = [("cam.png", encode(camera(), "PNG")), ("cam.jpg", encode(camera().convert("RGB"), "JPEG", quality=60))]
COINS_PNG = ("coins.png", encode(coins(), "PNG"))
COINS_JPG = ("coins.jpg", encode(coins().convert("RGB"), "JPEG", quality=60))


def _no_search(*args, **kwargs):
    raise AssertionError("searched again although the saved answer was valid")


def _reopen(project):
    return open_project(project.name, project.home)


def test_a_later_open_reads_the_saved_answer_instead_of_searching(project, monkeypatch):
    ids = project.import_files([*CAMERA_PAIR, COINS_PNG]).added_ids
    pairs = project.near_duplicates()
    assert [pair[:2] for pair in pairs] == [(ids[0], ids[1])]
    assert (project.path / NEAR_DUPLICATES_FILE).is_file()
    monkeypatch.setattr(project_module, "near_duplicate_pairs", _no_search)
    with _reopen(project) as again:  # another session, or the server restarted: nothing changed
        assert again.near_duplicates() == pairs
        assert again.stats().near_duplicate_pairs + again.stats().identical_pairs == 1


def test_an_import_or_delete_elsewhere_is_never_answered_from_the_saved_answer(project):
    project.import_files([*CAMERA_PAIR, COINS_PNG])
    before = project.near_duplicates()
    with _reopen(project) as other:  # another process (the CLI, another server) changes the images
        added = other.import_files([COINS_JPG]).added_ids
        assert any(added[0] in pair[:2] for pair in project.near_duplicates()), "stale answer after an import"
        with _reopen(project) as fresh:
            assert fresh.near_duplicates() == project.near_duplicates()
        other.delete_images(added)
    assert project.near_duplicates() == before, "stale answer after a delete"
    camera_ids = {image_id for pair in before for image_id in pair[:2]}
    project.delete_images([min(camera_ids)])
    assert project.near_duplicates() == []
    with _reopen(project) as fresh:
        assert fresh.near_duplicates() == []


def test_an_answer_saved_for_other_images_with_the_same_ids_is_not_used(home):
    from fsl_app.store import create_project

    with create_project("a", home=home) as first, create_project("b", home=home) as second:
        first.import_files(CAMERA_PAIR)  # ids 1 and 2: one pair
        second.import_files([COINS_PNG, ("cam.png", CAMERA_PAIR[0][1])])  # ids 1 and 2: no pair
        assert first.near_duplicates()
        (second.path / NEAR_DUPLICATES_FILE).parent.mkdir(parents=True, exist_ok=True)
        (second.path / NEAR_DUPLICATES_FILE).write_bytes((first.path / NEAR_DUPLICATES_FILE).read_bytes())
        assert second.near_duplicates() == []


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"key": 3}', b'{"key": null, "pairs": [[1]]}'])
def test_an_unreadable_saved_answer_is_searched_again_and_replaced(project, content):
    project.import_files(CAMERA_PAIR)
    pairs = project.near_duplicates()
    (project.path / NEAR_DUPLICATES_FILE).write_bytes(content)
    with _reopen(project) as again:
        assert again.near_duplicates() == pairs
    assert json.loads((project.path / NEAR_DUPLICATES_FILE).read_text())["pairs"] == [list(pair) for pair in pairs]


def test_home_shows_the_new_count_after_an_import_by_another_process(project, monkeypatch):
    from streamlit.testing.v1 import AppTest

    project.import_files([*CAMERA_PAIR, COINS_PNG])
    project.near_duplicates()
    monkeypatch.setenv("FSL_APP_HOME", str(project.home))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state["project"] = project.name
    at.run()
    assert any("1 near-duplicate pair(s)" in warning.value for warning in at.warning)
    with _reopen(project) as other:
        other.import_files([COINS_JPG])
    at.run()
    assert any("2 near-duplicate pair(s)" in warning.value for warning in at.warning), \
        [warning.value for warning in at.warning]


def test_nothing_written_means_not_even_the_digest_is_recomputed(project, monkeypatch):
    project.import_files([*CAMERA_PAIR, COINS_PNG])
    keys = []
    real_key = project_module.pairs_key
    monkeypatch.setattr(project_module, "pairs_key", lambda *args: keys.append(1) or real_key(*args))
    pairs = project.near_duplicates()
    assert project.near_duplicates() == pairs and len(keys) == 1
    project.set_labels([pairs[0][0]], "a", create_missing_class=True)  # a write through this object
    assert project.near_duplicates() == pairs and len(keys) == 2
    with _reopen(project) as other:  # a write through another connection
        other.set_labels([pairs[0][1]], "a")
    assert project.near_duplicates() == pairs and len(keys) == 3
    assert project.near_duplicates() == pairs and len(keys) == 3


def test_source_names_of_some_images(project):
    project.import_files([*CAMERA_PAIR, COINS_PNG])
    everything = project.source_names()
    some = sorted(everything)[:2]
    assert project.source_names([*some, "f" * 64]) == {sha: everything[sha] for sha in some}
    assert project.source_names([]) == {}


def test_the_comparison_key_follows_the_run_files(tmp_path):
    import os

    from fsl_app.comparison import runs_key

    folders = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        for file in ("config.json", "metrics.json", "predictions.json"):
            (folder / file).write_text("{}")
        folders.append({"run_dir": str(folder), "name": name})
    key = runs_key(folders)
    assert runs_key(folders) == key and runs_key(folders[::-1]) != key
    metrics = tmp_path / "a" / "metrics.json"
    metrics.write_text('{"accuracy": 1}')
    assert runs_key(folders) != key
    changed = runs_key(folders)
    os.utime(metrics, ns=(0, 0))
    assert runs_key(folders) != changed
    assert runs_key([{"name": "in memory", "metrics": {"accuracy": 1}}]) != \
        runs_key([{"name": "in memory", "metrics": {"accuracy": 0}}])
