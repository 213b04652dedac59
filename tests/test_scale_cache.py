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
