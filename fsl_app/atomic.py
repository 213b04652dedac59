"""Atomic file writes: a temp file in the target's folder, flushed (and fsync'd when durable), renamed into place.

A reader, or a process killed half-way, sees either the complete old file or the complete new one, never a partial
one. Temp files start with :data:`TEMP_PREFIX`, so a clean-up (``fsl-app project fsck``) can sweep leftovers.
Torch-free and UI-free: every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

TEMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def open_atomic(target: str | Path, mode: str = "wb", *, durable: bool = True,
                suffix: str = ".tmp") -> Iterator[IO]:
    """A file to write ``target`` through: renamed onto ``target`` on a clean exit, removed on an error.

    ``mode`` is ``"wb"`` or ``"w"`` (UTF-8 text). With ``durable`` the data and the rename reach the disk before
    the block returns.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"open_atomic writes whole files: mode must be 'wb' or 'w', got {mode!r}.")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=TEMP_PREFIX, suffix=suffix)
    try:
        with os.fdopen(handle, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as stream:
            yield stream
            stream.flush()
            if durable:
                os.fsync(stream.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(target.parent)


def write_bytes_atomic(target: str | Path, data: bytes, *, durable: bool = True, attempts: int = 3) -> None:
    """Write ``data`` to ``target`` atomically.

    Retried when a concurrent clean-up removed the temp file (or its folder) between the write and the rename.
    """
    for attempt in range(attempts):
        try:
            with open_atomic(target, "wb", durable=durable) as stream:
                stream.write(data)
            return
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise


def write_json_atomic(target: str | Path, data: Any, *, indent: int | None = 2) -> None:
    """Write ``data`` as UTF-8 JSON to ``target`` atomically and durably."""
    with open_atomic(target, "w") as stream:
        json.dump(data, stream, indent=indent, ensure_ascii=False)


def fsync_path(path: str | Path) -> None:
    """Flush a file's or folder's data to disk; folders are skipped where they cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
