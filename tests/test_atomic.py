"""Atomic writes: the target is the old file or the complete new one, and no temp file outlives a write."""

from __future__ import annotations

import json

import pytest

from fsl_app.atomic import TEMP_PREFIX, open_atomic, write_bytes_atomic, write_json_atomic


def test_write_json_atomic_creates_folders_and_replaces_the_file(tmp_path):
    target = tmp_path / "a" / "b" / "config.json"
    write_json_atomic(target, {"name": "zéro"})
    write_json_atomic(target, {"name": "one", "n": [1, 2]})
    assert json.loads(target.read_text(encoding="utf-8")) == {"name": "one", "n": [1, 2]}
    assert [path.name for path in target.parent.iterdir()] == ["config.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "model.bin"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with open_atomic(target, "wb") as stream:
            stream.write(b"half of the new")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(TEMP_PREFIX)]


def test_open_atomic_writes_text_and_refuses_appending(tmp_path):
    target = tmp_path / "notes.txt"
    with open_atomic(target, "w", durable=False) as stream:
        stream.write("ünïcode")
    assert target.read_text(encoding="utf-8") == "ünïcode"
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w'"):
        with open_atomic(target, "a"):
            pass


def test_a_write_is_retried_when_a_clean_up_removes_its_folder(tmp_path, monkeypatch):
    import fsl_app.atomic as atomic

    target = tmp_path / "shard" / "object.png"
    real_replace, calls = atomic.os.replace, []

    def replace_once_missing(source, destination):
        calls.append(source)
        if len(calls) == 1:
            raise FileNotFoundError(source)  # as if fsck swept the temp file between write and rename
        real_replace(source, destination)

    monkeypatch.setattr(atomic.os, "replace", replace_once_missing)
    write_bytes_atomic(target, b"png bytes")
    assert target.read_bytes() == b"png bytes" and len(calls) == 2
