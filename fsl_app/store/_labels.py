"""Label changes inside a write transaction: every change is one logged event in a batch that can be undone.

The functions here take an open connection already inside ``BEGIN IMMEDIATE``; :class:`~fsl_app.store.Project`
owns the transactions. Events keep both the class id and the class name at the time, so undoing the deletion or
merge of a class can bring that class back.
"""

from __future__ import annotations

import getpass
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Sequence

from .errors import ClassExistsError, ClassNotFoundError, ImageNotFoundError
from .names import name_key, validate_class_name

SQL_CHUNK = 500  # well under SQLite's limit on bound variables


@dataclass(frozen=True)
class LabelState:
    image_id: int
    class_id: int | None
    class_name: str | None


@dataclass(frozen=True)
class UndoResult:
    """What :meth:`Project.undo_last_label_change` reverted."""

    batch_id: int
    action: str
    n_images: int


def actor_name(actor: str | None) -> str:
    """Who a label change is logged for: ``actor`` when given, else the user logged in here."""
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def chunks(items: Sequence, size: int = SQL_CHUNK) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def find_class(conn: sqlite3.Connection, name: str) -> sqlite3.Row | None:
    return conn.execute("SELECT id, name FROM classes WHERE name_key = ?", (name_key(name),)).fetchone()


def require_class(conn: sqlite3.Connection, name: str) -> sqlite3.Row:
    row = find_class(conn, name)
    if row is None:
        existing = [r["name"] for r in conn.execute("SELECT name FROM classes ORDER BY name_key")]
        raise ClassNotFoundError(f"no class named {name!r}. Existing classes: {existing or 'none'}. "
                                 "Check the spelling or add the class first.")
    return row


def insert_class(conn: sqlite3.Connection, name: str) -> int:
    """Create a class; raises :class:`ClassExistsError` if the name (ignoring case) is taken."""
    name = validate_class_name(name)
    existing = find_class(conn, name)
    if existing is not None:
        raise ClassExistsError(f"class {name!r} already exists as {existing['name']!r} (names ignore case). "
                               "Pick another name, or use the existing class.")
    cursor = conn.execute("INSERT INTO classes (name, name_key, created_at) VALUES (?, ?, ?)",
                          (name, name_key(name), now_iso()))
    return int(cursor.lastrowid)


def class_id_for(conn: sqlite3.Connection, name: str, *, create: bool) -> int:
    """Id of the class called ``name`` (ignoring case); created when missing and ``create`` is true."""
    row = find_class(conn, validate_class_name(name))
    if row is not None:
        return int(row["id"])
    if not create:
        require_class(conn, name)
    return insert_class(conn, name)


def current_labels(conn: sqlite3.Connection, image_ids: Sequence[int]) -> list[LabelState]:
    """Label state of each id, in the given order; raises :class:`ImageNotFoundError` naming any unknown id."""
    found: dict[int, LabelState] = {}
    for part in chunks(list(image_ids)):
        marks = ",".join("?" * len(part))
        query = (f"SELECT i.id, i.class_id, c.name FROM images i LEFT JOIN classes c ON c.id = i.class_id "
                 f"WHERE i.id IN ({marks})")
        for row in conn.execute(query, list(part)):
            found[row[0]] = LabelState(row[0], row[1], row[2])
    missing = [image_id for image_id in image_ids if image_id not in found]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise ImageNotFoundError(f"{len(missing)} image id(s) are not in this project: {shown}. "
                                 "Refresh the image list; they may have been deleted.")
    return [found[image_id] for image_id in image_ids]


def relabel(conn: sqlite3.Connection, states: Sequence[LabelState], new_class_id: int | None, *,
            action: str, actor: str, batch_id: int | None = None) -> tuple[int, int | None]:
    """Give every image in ``states`` the class ``new_class_id`` (None: unlabeled) and log one event per change.

    Returns ``(number changed, batch id)``; no batch is created when nothing changes, unless ``batch_id`` is given.
    """
    changed = [state for state in states if state.class_id != new_class_id]
    if not changed:
        return 0, batch_id
    new_name = None
    if new_class_id is not None:
        new_name = conn.execute("SELECT name FROM classes WHERE id = ?", (new_class_id,)).fetchone()[0]
    if batch_id is None:
        batch_id = new_batch(conn, action=action, actor=actor)
    conn.executemany("UPDATE images SET class_id = ? WHERE id = ?",
                     [(new_class_id, state.image_id) for state in changed])
    conn.executemany(
        "INSERT INTO label_events (batch_id, image_id, old_class_id, old_class, new_class_id, new_class) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(batch_id, s.image_id, s.class_id, s.class_name, new_class_id, new_name) for s in changed])
    return len(changed), batch_id


def new_batch(conn: sqlite3.Connection, *, action: str, actor: str) -> int:
    cursor = conn.execute("INSERT INTO label_batches (at, actor, action) VALUES (?, ?, ?)",
                          (now_iso(), actor, action))
    return int(cursor.lastrowid)


def undo_last_batch(conn: sqlite3.Connection) -> UndoResult | None:
    """Revert the newest batch not yet undone (that still has events) and mark it undone."""
    batch = conn.execute(
        "SELECT b.id, b.action FROM label_batches b WHERE b.undone_at IS NULL "
        "AND EXISTS (SELECT 1 FROM label_events e WHERE e.batch_id = b.id) ORDER BY b.id DESC LIMIT 1").fetchone()
    if batch is None:
        return None
    events = conn.execute("SELECT image_id, old_class_id, old_class FROM label_events WHERE batch_id = ? "
                          "ORDER BY id DESC", (batch["id"],)).fetchall()
    for event in events:
        class_id = restore_class(conn, event["old_class_id"], event["old_class"])
        conn.execute("UPDATE images SET class_id = ? WHERE id = ?", (class_id, event["image_id"]))
    conn.execute("UPDATE label_batches SET undone_at = ? WHERE id = ?", (now_iso(), batch["id"]))
    return UndoResult(batch_id=batch["id"], action=batch["action"], n_images=len({e["image_id"] for e in events}))


def restore_class(conn: sqlite3.Connection, class_id: int | None, name: str | None) -> int | None:
    """The class an event pointed to; recreated (same id) if it was deleted since, e.g. by a merge."""
    if class_id is None:
        return None
    if conn.execute("SELECT 1 FROM classes WHERE id = ?", (class_id,)).fetchone():
        return class_id
    existing = find_class(conn, name)
    if existing is not None:
        return int(existing["id"])
    conn.execute("INSERT INTO classes (id, name, name_key, created_at) VALUES (?, ?, ?, ?)",
                 (class_id, name, name_key(name), now_iso()))
    return class_id
