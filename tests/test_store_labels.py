"""Classes and labels: add / rename / merge / delete classes, bulk labeling, logging and undo."""

import pytest

from fsl_app.store import ClassExistsError, ClassNotFoundError, ImageNotFoundError

try:
    from tests.conftest_store import digit_files, home, project  # noqa: F401
except ModuleNotFoundError:
    from conftest_store import digit_files, home, project  # noqa: F401


@pytest.fixture
def ids(project):
    return project.import_files(digit_files(6)).added_ids


def labels(project):
    return {image.id: image.label for image in project.images()}


def test_add_class_and_list(project):
    project.add_class("rust")
    project.add_class("Healthy")
    assert project.classes() == ["Healthy", "rust"]
    assert project.class_counts() == {"Healthy": 0, "rust": 0}


def test_add_existing_class_ignoring_case_is_refused(project):
    project.add_class("Rust")
    with pytest.raises(ClassExistsError, match="already exists as 'Rust'"):
        project.add_class("rust")


def test_set_labels_in_bulk_and_unlabel(project, ids):
    project.add_class("a")
    assert project.set_labels(ids[:4], "a") == 4
    assert project.set_labels(ids[:4], "a") == 0  # no change, nothing logged
    assert project.set_labels(ids[2:4], None) == 2
    assert [labels(project)[i] for i in ids] == ["a", "a", None, None, None, None]
    assert project.class_counts() == {"a": 2}


def test_set_labels_to_missing_class_is_refused_unless_asked(project, ids):
    project.add_class("cat")
    with pytest.raises(ClassNotFoundError, match=r"no class named 'dog'.*Existing classes: \['cat'\]"):
        project.set_labels(ids, "dog")
    assert project.set_labels(ids, "dog", create_missing_class=True) == 6
    assert project.classes() == ["cat", "dog"]


def test_set_labels_matches_class_ignoring_case(project, ids):
    project.add_class("Cat")
    project.set_labels(ids[:1], "cat")
    assert labels(project)[ids[0]] == "Cat"


def test_set_labels_with_unknown_id_changes_nothing(project, ids):
    project.add_class("a")
    with pytest.raises(ImageNotFoundError, match="999"):
        project.set_labels([ids[0], 999], "a")
    assert labels(project)[ids[0]] is None
    assert project.label_history() == []


def test_rename_class_keeps_labels(project, ids):
    project.set_labels(ids[:2], "tmp", create_missing_class=True)
    assert project.rename_class("tmp", "final name") == "final name"
    assert [labels(project)[i] for i in ids[:2]] == ["final name"] * 2


def test_rename_class_onto_existing_suggests_merge(project):
    project.add_class("a")
    project.add_class("b")
    with pytest.raises(ClassExistsError, match="merge"):
        project.rename_class("a", "B")


def test_rename_missing_class_is_refused(project):
    with pytest.raises(ClassNotFoundError):
        project.rename_class("ghost", "x")


def test_merge_classes(project, ids):
    project.set_labels(ids[:2], "husky", create_missing_class=True)
    project.set_labels(ids[2:4], "malamute", create_missing_class=True)
    project.set_labels(ids[4:5], "dog", create_missing_class=True)
    assert project.merge_classes(["husky", "malamute"], "dog") == 4
    assert project.class_counts() == {"dog": 5}


def test_merge_into_missing_class_is_refused(project, ids):
    project.set_labels(ids[:1], "a", create_missing_class=True)
    with pytest.raises(ClassNotFoundError, match="add the class first"):
        project.merge_classes("a", "b")


def test_delete_class_unlabels_but_keeps_images(project, ids):
    project.set_labels(ids[:3], "doomed", create_missing_class=True)
    assert project.delete_class("doomed") == 3
    assert project.classes() == [] and len(project.images()) == 6
    assert all(label is None for label in labels(project).values())


def test_every_change_is_logged(project, ids):
    project.set_labels(ids[:2], "a", create_missing_class=True, actor="alice")
    project.set_labels(ids[:1], "b", create_missing_class=True, actor="bob")
    history = project.label_history()
    assert [(b.actor, b.n_images) for b in history] == [("bob", 1), ("alice", 2)]
    conn = project._connection()
    events = conn.execute("SELECT image_id, old_class, new_class FROM label_events ORDER BY id").fetchall()
    assert [tuple(e) for e in events] == [(ids[0], None, "a"), (ids[1], None, "a"), (ids[0], "a", "b")]


def test_undo_reverts_last_batch_then_earlier_ones(project, ids):
    project.set_labels(ids[:3], "a", create_missing_class=True)
    project.set_labels(ids[1:3], "b", create_missing_class=True)
    undone = project.undo_last_label_change()
    assert undone.n_images == 2 and "'b'" in undone.action
    assert [labels(project)[i] for i in ids[:3]] == ["a", "a", "a"]
    project.undo_last_label_change()
    assert all(label is None for label in labels(project).values())
    assert project.undo_last_label_change() is None
    assert all(batch.undone_at for batch in project.label_history())


def test_undo_class_delete_brings_class_and_labels_back(project, ids):
    project.set_labels(ids[:3], "precious", create_missing_class=True)
    project.delete_class("precious")
    project.undo_last_label_change()
    assert project.class_counts() == {"precious": 3}


def test_undo_merge_restores_source_classes(project, ids):
    project.set_labels(ids[:2], "x", create_missing_class=True)
    project.set_labels(ids[2:3], "y", create_missing_class=True)
    project.merge_classes("x", "y")
    project.undo_last_label_change()
    assert project.class_counts() == {"x": 2, "y": 1}


def test_undo_labeled_import(project):
    project.import_files(digit_files(3), label="zero")
    assert project.class_counts() == {"zero": 3}
    assert project.undo_last_label_change().n_images == 3
    assert project.class_counts() == {"zero": 0} and len(project.images()) == 3


def test_undo_skips_batches_whose_images_were_deleted(project, ids):
    project.set_labels(ids[:1], "a", create_missing_class=True)
    project.set_labels(ids[1:2], "b", create_missing_class=True)
    project.delete_images([ids[1]])
    project.undo_last_label_change()
    assert labels(project)[ids[0]] is None


def test_labels_survive_reopen(project, ids, home):
    from fsl_app.store import open_project

    project.set_labels(ids[:2], "kept", create_missing_class=True)
    project.close()
    with open_project("test project", home=home) as again:
        assert again.class_counts() == {"kept": 2}
