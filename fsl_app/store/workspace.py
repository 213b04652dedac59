"""The workspace: a folder of projects. Create, list, open, rename and delete projects by display name.

Layout::

    <home>/projects/<slug>-<hash>/project.db   one SQLite database per project (display name in its meta table)
                                 /objects/     content-addressed originals
                                 /thumbs/      thumbnail cache
    <home>/.trash/                             deleted projects, until :func:`empty_trash`
    <home>/.workspace.lock                     SQLite lock serialising create / rename / delete

``home`` is the ``home`` argument, else ``$FSL_APP_HOME``, else ``platformdirs.user_data_dir("fsl_app")``.
A project folder never changes name (a rename only changes the display name), so a project open in another
process keeps working.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Iterator

from ..dataset import ImageSet
from ._db import BUSY_TIMEOUT_MS, connect, migrate, write_transaction
from .errors import ProjectExistsError, ProjectNotFoundError, StoreError
from .names import name_key, normalize_name, project_folder_name, validate_project_name
from .project import DB_FILE, Project, new_project_meta

HOME_ENV = "FSL_APP_HOME"
PROJECTS_DIR = "projects"
TRASH_DIR = ".trash"
_CREATING_PREFIX = ".creating-"

log = logging.getLogger(__name__)


def workspace_home(home: str | Path | None = None) -> Path:
    """The workspace folder (created if missing): ``home``, else $FSL_APP_HOME, else the user data folder."""
    if home is None:
        home = os.environ.get(HOME_ENV) or _user_data_dir()
    path = Path(home).expanduser()
    (path / PROJECTS_DIR).mkdir(parents=True, exist_ok=True)
    return path


def _user_data_dir() -> str:
    import platformdirs

    return platformdirs.user_data_dir("fsl_app", appauthor=False)


@contextlib.contextmanager
def _workspace_lock(home: Path) -> Iterator[None]:
    """Cross-process mutex for create / rename / delete, released by the OS even if the holder is killed."""
    conn = sqlite3.connect(str(home / ".workspace.lock"), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        with write_transaction(conn):
            yield
    finally:
        conn.close()


def _project_dirs(home: Path) -> list[Path]:
    root = home / PROJECTS_DIR
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / DB_FILE).is_file())


def _read_name(project_dir: Path) -> str | None:
    """Display name stored in a project's database; None if the database cannot be read."""
    try:
        conn = connect(project_dir / DB_FILE)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'name'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as error:
        log.warning("skipping project folder %s: its database cannot be read (%s)", project_dir, error)
        return None
    return row[0] if row else None


def _projects_by_key(home: Path) -> dict[str, tuple[str, Path]]:
    """name key -> (display name, folder) for every readable project."""
    found = {}
    for folder in _project_dirs(home):
        name = _read_name(folder)
        if name is not None:
            found[name_key(name)] = (name, folder)
    return found


def _find_project_dir(name: str, home: Path) -> tuple[str, Path]:
    """Locate a project by name (ignoring case); fast path through the folder derived from the name."""
    key = name_key(name)
    guess = home / PROJECTS_DIR / project_folder_name(name)
    if (guess / DB_FILE).is_file():
        stored = _read_name(guess)
        if stored is not None and name_key(stored) == key:
            return stored, guess
    projects = _projects_by_key(home)
    if key in projects:
        return projects[key]
    names = sorted((display for display, _ in projects.values()), key=str.casefold)
    raise ProjectNotFoundError(
        f"no project named {normalize_name(name)!r} in {home}. "
        + (f"Existing projects: {', '.join(map(repr, names))}." if names else "There are no projects yet.")
        + f" Create it with `fsl-app project create {normalize_name(name)!r}` (create_project in Python).")


def list_projects(home: str | Path | None = None) -> list[str]:
    """Display names of the projects in the workspace, sorted ignoring case."""
    home = workspace_home(home)
    return sorted((display for display, _ in _projects_by_key(home).values()), key=str.casefold)


def create_project(name: str, home: str | Path | None = None) -> Project:
    """Create an empty project and return it open. Raises :class:`ProjectExistsError` if the name is taken."""
    name = validate_project_name(name)
    home = workspace_home(home)
    with _workspace_lock(home):
        _remove_interrupted_creations(home)
        existing = _projects_by_key(home).get(name_key(name))
        if existing is not None:
            raise ProjectExistsError(f"a project named {existing[0]!r} already exists in {home}. "
                                     "Open it, or choose another name.")
        target = home / PROJECTS_DIR / project_folder_name(name)
        if target.exists():  # the folder of a project renamed away from this name
            target = target.with_name(f"{target.name}-{secrets.token_hex(3)}")
        staging = home / PROJECTS_DIR / f"{_CREATING_PREFIX}{secrets.token_hex(6)}"
        staging.mkdir()
        conn = connect(staging / DB_FILE)
        try:
            migrate(conn)
            new_project_meta(conn, name)
        finally:
            conn.close()
        os.replace(staging, target)
    return Project(target, home=home)


def _remove_interrupted_creations(home: Path) -> None:
    """Staging folders left by a create that crashed (safe: we hold the workspace lock)."""
    for folder in (home / PROJECTS_DIR).glob(f"{_CREATING_PREFIX}*"):
        shutil.rmtree(folder, ignore_errors=True)


def open_project(name: str, home: str | Path | None = None) -> Project:
    """Open a project by display name (ignoring case); the error lists existing projects when it is missing."""
    home = workspace_home(home)
    _, folder = _find_project_dir(name, home)
    return Project(folder, home=home)


def rename_project(old_name: str, new_name: str, home: str | Path | None = None) -> str:
    """Change a project's display name (its folder stays). Returns the normalised new name."""
    new_name = validate_project_name(new_name)
    home = workspace_home(home)
    with _workspace_lock(home):
        _, folder = _find_project_dir(old_name, home)
        clash = _projects_by_key(home).get(name_key(new_name))
        if clash is not None and clash[1] != folder:
            raise ProjectExistsError(f"a project named {clash[0]!r} already exists. Choose another name.")
        conn = connect(folder / DB_FILE)
        try:
            with write_transaction(conn):
                conn.execute("UPDATE meta SET value = ? WHERE key = 'name'", (new_name,))
        finally:
            conn.close()
    return new_name


def delete_project(name: str, confirm_name: str, home: str | Path | None = None) -> Path:
    """Move a project to ``<home>/.trash/`` (recoverable until :func:`empty_trash`). Returns its trash folder.

    ``confirm_name`` must repeat the project's name exactly, as a guard against deleting the wrong project.
    """
    home = workspace_home(home)
    with _workspace_lock(home):
        display, folder = _find_project_dir(name, home)
        if normalize_name(confirm_name) != display:
            raise StoreError(f"confirmation {confirm_name!r} does not match the project name {display!r}. "
                             "Type the project name exactly to delete it.")
        trash = home / TRASH_DIR
        trash.mkdir(exist_ok=True)
        target = trash / f"{folder.name}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
        os.replace(folder, target)
    return target


def empty_trash(home: str | Path | None = None) -> int:
    """Permanently remove deleted projects; returns how many were removed."""
    home = workspace_home(home)
    trash = home / TRASH_DIR
    if not trash.is_dir():
        return 0
    with _workspace_lock(home):
        folders = [p for p in trash.iterdir() if p.is_dir()]
        for folder in folders:
            shutil.rmtree(folder)
    return len(folders)


def resolve_image_set(name_or_path: str | Path, home: str | Path | None = None, *,
                      labeled_only: bool = False) -> ImageSet:
    """An existing folder -> :meth:`ImageSet.from_folder`; otherwise the project of that name."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        images = ImageSet.from_folder(candidate)
        return images.labeled() if labeled_only else images
    try:
        project = open_project(str(name_or_path), home)
    except ProjectNotFoundError as error:
        raise StoreError(f"{str(name_or_path)!r} is neither an existing folder nor a project. {error}") from None
    with project:
        return project.image_set(labeled_only=labeled_only)
