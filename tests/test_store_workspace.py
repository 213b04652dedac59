"""Workspace: where projects live, create / list / open / rename / delete, schema versioning, resolve_image_set."""

import sqlite3

import pytest

from fsl_app.dataset import DataError
from fsl_app.store import (ProjectExistsError, ProjectNotFoundError, SchemaError, StoreError, create_project,
                           delete_project, empty_trash, list_projects, open_project, rename_project,
                           resolve_image_set, workspace_home)
from fsl_app.store._db import SCHEMA_VERSION
from fsl_app.store.project import Project

try:
    from tests.conftest_store import digit_files, home, project, write_imagefolder  # noqa: F401
except ModuleNotFoundError:
    from conftest_store import digit_files, home, project, write_imagefolder  # noqa: F401


def test_home_comes_from_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_APP_HOME", str(tmp_path / "from-env"))
    create_project("env project").close()
    assert list_projects() == ["env project"]
    assert (tmp_path / "from-env" / "projects").is_dir()


def test_home_defaults_to_platformdirs(monkeypatch, tmp_path):
    monkeypatch.delenv("FSL_APP_HOME", raising=False)
    monkeypatch.setattr("platformdirs.user_data_dir", lambda *a, **k: str(tmp_path / "userdata"))
    assert workspace_home() == tmp_path / "userdata"


def test_create_list_open(home):
    create_project("Birds", home=home).close()
    create_project("ants", home=home).close()
    assert list_projects(home) == ["ants", "Birds"]
    with open_project("birds", home=home) as project:  # names ignore case
        assert project.name == "Birds"
        assert project.path.parent == home / "projects"


def test_open_missing_project_names_existing_ones(home):
    create_project("Birds", home=home).close()
    with pytest.raises(ProjectNotFoundError, match=r"no project named 'Bees'.*Existing projects: 'Birds'"):
        open_project("Bees", home=home)


def test_open_in_empty_workspace_says_how_to_create(home):
    with pytest.raises(ProjectNotFoundError, match="no projects yet.*create"):
        open_project("anything", home=home)


def test_duplicate_name_ignoring_case_is_refused(home):
    create_project("Birds", home=home).close()
    with pytest.raises(ProjectExistsError, match="already exists"):
        create_project("BIRDS", home=home)


def test_unicode_project_name_gets_safe_folder(home):
    with create_project("植物 病気", home=home) as project:
        assert project.path.name.isascii()
        assert project.name == "植物 病気"


def test_rename_keeps_folder_and_data(home):
    with create_project("old", home=home) as project:
        project.import_files(digit_files(2))
        folder = project.path
    assert rename_project("old", "new name", home=home) == "new name"
    assert list_projects(home) == ["new name"]
    with open_project("new name", home=home) as project:
        assert project.path == folder and len(project.images()) == 2
    with pytest.raises(ProjectNotFoundError):
        open_project("old", home=home)


def test_create_old_name_after_rename_gets_its_own_folder(home):
    create_project("alpha", home=home).close()
    rename_project("alpha", "beta", home=home)
    with create_project("alpha", home=home) as again:
        assert again.name == "alpha"
    assert list_projects(home) == ["alpha", "beta"]
    assert open_project("beta", home=home).path != open_project("alpha", home=home).path


def test_rename_onto_existing_name_is_refused(home):
    create_project("a", home=home).close()
    create_project("b", home=home).close()
    with pytest.raises(ProjectExistsError):
        rename_project("a", "B", home=home)


def test_rename_case_only_is_allowed(home):
    create_project("birds", home=home).close()
    rename_project("birds", "Birds", home=home)
    assert list_projects(home) == ["Birds"]


def test_delete_requires_matching_confirmation(home):
    create_project("precious", home=home).close()
    with pytest.raises(StoreError, match="does not match"):
        delete_project("precious", "precio", home=home)
    assert list_projects(home) == ["precious"]


def test_delete_moves_to_trash_then_empty_trash(home):
    with create_project("gone", home=home) as project:
        project.import_files(digit_files(1))
    trash_folder = delete_project("gone", "gone", home=home)
    assert trash_folder.parent == home / ".trash" and (trash_folder / "project.db").is_file()
    assert list_projects(home) == []
    assert empty_trash(home) == 1
    assert not trash_folder.exists()


def test_schema_version_and_pragmas(project):
    conn = sqlite3.connect(project.db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    live = project._connection()
    assert live.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert live.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000


def test_newer_schema_is_refused_clearly(project):
    conn = sqlite3.connect(project.db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    project.close()
    with pytest.raises(SchemaError, match="newer fsl_app"):
        Project(project.path)


def test_opening_a_folder_without_database_fails_clearly(tmp_path):
    with pytest.raises(StoreError, match="not a project folder"):
        Project(tmp_path)


def test_interrupted_creation_is_cleaned_up(home):
    create_project("first", home=home).close()
    leftover = home / "projects" / ".creating-deadbeef"
    leftover.mkdir()
    create_project("second", home=home).close()
    assert not leftover.exists()
    assert list_projects(home) == ["first", "second"]


def test_resolve_image_set_from_folder(tmp_path, home):
    root = write_imagefolder(tmp_path / "data", {"a": digit_files(2), "b": digit_files(1, start=5)})
    images = resolve_image_set(root, home=home)
    assert images.classes == ["a", "b"] and len(images) == 3


def test_resolve_image_set_from_project(project, home):
    project.import_files(digit_files(3), label="zero")
    project.import_files(digit_files(2, start=10))
    assert resolve_image_set("test project", home=home).labels.count(None) == 2
    labeled = resolve_image_set("test project", home=home, labeled_only=True)
    assert labeled.labels == ["zero"] * 3
    assert all(record.path.is_file() for record in labeled.records)


def test_resolve_image_set_neither_folder_nor_project(home):
    with pytest.raises(StoreError, match="neither an existing folder nor a project"):
        resolve_image_set("nope", home=home)


def test_resolve_image_set_empty_folder_raises_data_error(tmp_path, home):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        resolve_image_set(tmp_path / "empty", home=home)


def test_env_home_untouched_by_tests_with_explicit_home(project, tmp_path):
    assert not (tmp_path / "env-home-should-stay-empty").exists()
