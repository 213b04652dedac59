"""SQLite plumbing for a project: connection settings, schema migrations, write transactions that retry.

One database per project, in WAL mode so readers never block the writer. Every write runs in ``BEGIN IMMEDIATE``:
the write lock is taken up front, so two processes never both read, then both write (no lost update), and a busy
project is waited for (``busy_timeout``) and retried a few times before the user sees :class:`StoreBusyError`.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from pathlib import Path
from typing import Callable, Iterator

from .errors import SchemaError, StoreBusyError

BUSY_TIMEOUT_MS = 10_000
BEGIN_ATTEMPTS = 6

# Each migration is (version it produces, statements). Append only; never edit a released migration.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE meta (
               key TEXT PRIMARY KEY,
               value TEXT NOT NULL)""",
        """CREATE TABLE classes (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               name TEXT NOT NULL,
               name_key TEXT NOT NULL UNIQUE,
               created_at TEXT NOT NULL)""",
        """CREATE TABLE images (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               sha256 TEXT NOT NULL UNIQUE,
               ext TEXT NOT NULL,
               class_id INTEGER REFERENCES classes(id) ON DELETE SET NULL,
               source_name TEXT NOT NULL,
               added_at TEXT NOT NULL,
               width INTEGER NOT NULL,
               height INTEGER NOT NULL,
               size_bytes INTEGER NOT NULL,
               phash TEXT)""",
        "CREATE INDEX images_class ON images(class_id)",
        """CREATE TABLE label_batches (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               at TEXT NOT NULL,
               actor TEXT NOT NULL,
               action TEXT NOT NULL,
               undone_at TEXT)""",
        """CREATE TABLE label_events (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               batch_id INTEGER NOT NULL REFERENCES label_batches(id) ON DELETE CASCADE,
               image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
               old_class_id INTEGER,
               old_class TEXT,
               new_class_id INTEGER,
               new_class TEXT)""",
        "CREATE INDEX label_events_batch ON label_events(batch_id)",
        "CREATE INDEX label_events_image ON label_events(image_id)",
        """CREATE TABLE runs (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               run_dir TEXT NOT NULL,
               created_at TEXT NOT NULL,
               config TEXT NOT NULL)""",
        """CREATE TABLE run_images (
               run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
               image_id INTEGER NOT NULL,
               sha256 TEXT NOT NULL,
               ext TEXT NOT NULL,
               label TEXT,
               PRIMARY KEY (run_id, image_id))""",
        "CREATE INDEX run_images_sha ON run_images(sha256)",
    ]),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def connect(db_path: str | Path) -> sqlite3.Connection:
    """Open a project database with the store's settings (WAL, foreign keys, busy timeout, manual transactions)."""
    conn = sqlite3.connect(str(db_path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    _retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL"))
    conn.execute("PRAGMA synchronous = FULL")  # a committed label survives a power cut, not only a crash
    return conn


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception; waits for and retries a busy database."""
    _retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    _retry_busy(lambda: conn.execute("COMMIT"))


@contextlib.contextmanager
def read_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A consistent snapshot for several SELECTs (WAL readers never block writers)."""
    _retry_busy(lambda: conn.execute("BEGIN DEFERRED"))
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


def _retry_busy(operation: Callable[[], object], attempts: int = BEGIN_ATTEMPTS) -> object:
    """Run ``operation``; on 'database is locked/busy' (after busy_timeout) back off and retry, then give up clearly."""
    for attempt in range(attempts):
        try:
            return operation()
        except sqlite3.OperationalError as error:
            if not is_busy_error(error) or attempt == attempts - 1:
                if is_busy_error(error):
                    raise StoreBusyError(
                        "the project is busy: another fsl_app process has been writing to it for over "
                        f"{attempts * BUSY_TIMEOUT_MS // 1000} s. Wait for it to finish (or close it) and try again."
                    ) from error
                raise
            time.sleep(0.05 * (attempt + 1) + random.random() * 0.05)
    raise AssertionError("unreachable")


def is_busy_error(error: sqlite3.OperationalError) -> bool:
    message = str(error).lower()
    return "locked" in message or "busy" in message


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the database to :data:`SCHEMA_VERSION`; each migration is one transaction, safe under concurrency."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise SchemaError(f"this project was written by a newer fsl_app (schema {current}, this one knows up to "
                          f"{SCHEMA_VERSION}). Upgrade fsl_app to open it.")
    for version, statements in MIGRATIONS:
        if version <= current:
            continue
        with write_transaction(conn):
            if conn.execute("PRAGMA user_version").fetchone()[0] >= version:
                continue  # another process migrated while we waited for the lock
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
