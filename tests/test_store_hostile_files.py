"""Hostile entries in an import folder (FIFOs, devices, links to /dev/zero, link loops, unreadable files, hidden
folders), names that would garble a terminal, and exact duplicates imported under another label."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fsl_app.images as image_io
from fsl_app.store import importing
from fsl_app.store.names import printable

try:
    from tests.conftest_store import digit_files, digit_png, home, make_zip, project, write_imagefolder  # noqa: F401
except ModuleNotFoundError:
    from conftest_store import digit_files, digit_png, home, make_zip, project, write_imagefolder  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
POSIX_SPECIAL_FILES = pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(),
                                         reason="needs FIFOs and /dev/zero (POSIX)")

# A child process with its memory capped, so a regression (reading /dev/zero until memory runs out) fails fast
# instead of starving the machine; `timeout` catches a hang on the FIFO.
_IMPORT_IN_A_CHILD = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
    from fsl_app.store import create_project
    with create_project("hostile", home=sys.argv[1]) as project:
        report = project.import_imagefolder(sys.argv[2])
        print(json.dumps({"added": sorted(image.name for image in report.added), "rejected": report.rejected,
                          "labels": {image.source_name: image.label for image in project.images()}}))
""")


@contextlib.contextmanager
def _fails_instead_of_hanging(seconds: int = 60):
    """A regression that opens a FIFO blocks forever: turn that into a test failure (POSIX main thread)."""
    def give_up(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s: a FIFO was opened for reading")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _special_folder(root: Path) -> Path:
    write_imagefolder(root, {"cat": digit_files(2), "dog": digit_files(1, start=2)})
    os.mkfifo(root / "cat" / "pipe.png")
    (root / "dog" / "zero.png").symlink_to("/dev/zero")
    (root / "dog" / "loop.png").symlink_to(root / "dog" / "loop.png")
    (root / "dog" / "dangling.png").symlink_to(root / "nowhere.png")
    return root


@POSIX_SPECIAL_FILES
def test_fifo_and_link_to_dev_zero_are_rejected_and_the_valid_images_added(tmp_path):
    folder = _special_folder(tmp_path / "incoming")
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(["timeout", "120", sys.executable, "-c", _IMPORT_IN_A_CHILD, str(tmp_path / "home"),
                           str(folder)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["added"] == ["cat/digit_0000.png", "cat/digit_0001.png", "dog/digit_0002.png"]
    assert result["labels"] == {"cat/digit_0000.png": "cat", "cat/digit_0001.png": "cat", "dog/digit_0002.png": "dog"}
    reasons = dict(map(tuple, result["rejected"]))
    assert set(reasons) == {"cat/pipe.png", "dog/zero.png", "dog/loop.png", "dog/dangling.png"}
    assert "named pipe" in reasons["cat/pipe.png"]
    assert "device" in reasons["dog/zero.png"]
    assert "loop" in reasons["dog/loop.png"]
    assert "broken" in reasons["dog/dangling.png"]
    for reason in reasons.values():
        assert "regular file" in reason or "link" in reason


@POSIX_SPECIAL_FILES
def test_special_files_are_never_opened(project, tmp_path, monkeypatch):
    folder = _special_folder(tmp_path / "incoming")
    opened = []
    real_open = os.open

    def recording_open(path, *args, **kwargs):
        if str(path).startswith(str(folder)):
            opened.append(Path(path).name)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(image_io.os, "open", recording_open)
    monkeypatch.setattr(image_io, "MAX_BYTES", 2**20)  # a regression reads /dev/zero up to here, not forever
    with _fails_instead_of_hanging():
        report = project.import_imagefolder(folder)
    assert len(report.added) == 3 and len(report.rejected) == 4
    assert sorted(opened) == ["digit_0000.png", "digit_0001.png", "digit_0002.png"]


def test_every_read_is_capped_whatever_stat_says(tmp_path, monkeypatch):
    """A file that grows after its size was checked (or a /proc-like file reporting 0 bytes) is still refused."""
    big = tmp_path / "growing.png"
    big.write_bytes(b"\0" * 5000)
    monkeypatch.setattr(image_io, "MAX_BYTES", 4096)
    real_stat = os.stat

    class LyingStat:
        def __init__(self, result):
            self.st_mode, self.st_size = result.st_mode, 0

    monkeypatch.setattr(image_io.os, "stat", lambda path, *a, **kw: LyingStat(real_stat(path, *a, **kw)))
    with pytest.raises(image_io.ImageError, match="over the"):
        image_io.read_image_file(big)
    with pytest.raises(importing.RejectedFile, match="over the"):
        importing._read_file(big)


def test_unreadable_file_is_reported_and_the_rest_imported(project, tmp_path, monkeypatch):
    folder = write_imagefolder(tmp_path / "incoming", {"cat": digit_files(2)})
    real_open = os.open

    def deny(path, *args, **kwargs):
        if Path(path).name == "digit_0001.png":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(image_io.os, "open", deny)
    report = project.import_imagefolder(folder)
    assert [image.name for image in report.added] == ["cat/digit_0000.png"]
    assert report.rejected == [("cat/digit_0001.png", "cannot be read (Permission denied). Check the file's "
                                                      "permissions.")]


def test_unreadable_folder_is_reported(project, tmp_path, monkeypatch):
    folder = write_imagefolder(tmp_path / "incoming", {"cat": digit_files(1), "locked": digit_files(1, start=1)})
    real_scandir = os.scandir

    def deny(path="."):  # what a folder without read permission does (root would ignore a chmod)
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", deny)
    report = project.import_imagefolder(folder)
    assert [image.name for image in report.added] == ["cat/digit_0000.png"]
    assert [name for name, _ in report.rejected] == ["locked"] and "Permission denied" in report.rejected[0][1]


@POSIX_SPECIAL_FILES
def test_load_image_refuses_a_fifo_without_hanging(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with _fails_instead_of_hanging(), pytest.raises(image_io.ImageError, match="named pipe"):
        image_io.load_image(tmp_path / "pipe.png")


# -- hidden entries and printable names ------------------------------------------------------------------------------

def test_hidden_and_system_entries_are_listed_as_skipped(project, tmp_path):
    root = write_imagefolder(tmp_path / "data", {"cat": digit_files(1), "...": digit_files(1, start=1),
                                                 ".hidden": digit_files(1, start=2)})
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0")
    (root / "cat" / ".secret.png").write_bytes(digit_png(3))
    (root / "Thumbs.db").write_bytes(b"\0")
    report = project.import_imagefolder(root)
    assert [image.name for image in report.added] == ["cat/digit_0000.png"]
    assert report.rejected == []
    skipped = dict(report.skipped)
    assert set(skipped) == {"...", ".hidden", "cat/.DS_Store", "cat/.secret.png", "Thumbs.db"}
    assert "hidden folder" in skipped["..."] and "rename" in skipped["..."].lower()
    assert "hidden file" in skipped["cat/.secret.png"]
    assert "system file" in skipped["Thumbs.db"]
    assert "5 skipped" in report.summary()


def test_zip_junk_folders_are_listed_once_as_skipped(project):
    data = make_zip([("cat/a.png", digit_png(0)), ("__MACOSX/cat/._a.png", b"\0"), ("__MACOSX/._cat", b"\0"),
                     ("cat/.hidden.png", digit_png(1))])
    report = project.import_zip(data)
    assert len(report.added) == 1
    assert [name for name, _ in report.skipped] == ["__MACOSX/", "cat/.hidden.png"]


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain name.png", "plain name.png"),
    ("ünïcödé 猫.png", "ünïcödé 猫.png"),
    ("two\nlines.png", "two\\nlines.png"),
    ("bell\x07\x1b[31mred.png", "bell\\x07\\x1b[31mred.png"),
    ("evil\u202egnp.exe", "evil\\u202egnp.exe"),
    ("isolate\u2066x\u2069.png", "isolate\\u2066x\\u2069.png"),
    ("zero\u200bwidth.png", "zero\\u200bwidth.png"),
    ("line\u2028sep.png", "line\\u2028sep.png"),
    ("bad-utf8-\udcff.png", "bad-utf8-\\udcff.png"),
])
def test_printable_escapes_control_bidi_and_undecodable_characters(raw, shown):
    assert printable(raw) == shown
    printable(raw).encode("utf-8")  # never raises on a terminal


def test_report_lines_escape_names(project):
    report = project.import_files([("bad\u202e\n.png", b"not an image"), ("ok.png", digit_png(0))])
    lines = [text for _, text in report.lines()]
    assert any("bad\\u202e\\n.png" in line for line in lines)
    assert all("\u202e" not in line and "\n" not in line for line in lines)


# -- exact duplicates under another label -----------------------------------------------------------------------------

def test_exact_duplicate_under_another_label_reports_the_conflict(project):
    first = project.import_files([("a.png", digit_png(0))], label="cat").added[0]
    report = project.import_files([("copy.png", digit_png(0)), ("b.png", digit_png(1))], label="dog")
    assert len(report.added) == 1 and len(report.duplicates) == 1
    [conflict] = report.conflicts
    assert (conflict.name, conflict.image_id, conflict.existing_label, conflict.requested_label) == \
        ("copy.png", first.image_id, "cat", "dog")
    assert project.get_image(first.image_id).label == "cat"  # nothing changed silently
    message = conflict.message()
    assert "'cat'" in message and "'dog'" in message and "Data page" in message and str(first.image_id) in message
    assert any(level == "warning" and "copy.png" in text for level, text in report.lines())


def test_duplicate_with_the_same_label_or_no_label_is_no_conflict(project):
    project.import_files([("a.png", digit_png(0))], label="Cat")
    assert project.import_files([("a.png", digit_png(0))], label="cat").conflicts == []  # same class, other case
    assert project.import_files([("a.png", digit_png(0))]).conflicts == []


def test_unlabeled_image_imported_again_with_a_label_is_a_conflict(project):
    project.import_files([("a.png", digit_png(0))])
    [conflict] = project.import_files([("a.png", digit_png(0))], label="cat").conflicts
    assert conflict.existing_label is None and conflict.requested_label == "cat"
    assert "unlabeled" in conflict.message()


def test_same_bytes_in_two_class_folders_of_one_import_is_a_conflict(project, tmp_path):
    root = write_imagefolder(tmp_path / "data", {"cat": [("x.png", digit_png(0))], "dog": [("y.png", digit_png(0))]})
    report = project.import_imagefolder(root)
    assert [(c.name, c.existing_label, c.requested_label) for c in report.conflicts] == [("dog/y.png", "cat", "dog")]


def test_cli_import_prints_conflicts_and_skipped_entries(home, tmp_path, capsys):
    from fsl_app.cli.store import main

    root = write_imagefolder(tmp_path / "data", {"cat": [("x.png", digit_png(0))], "dog": [("y\x1b.png", digit_png(0))],
                                                 ".cache": digit_files(1, start=1)})
    assert main(["project", "create", "p", "--home", str(home)]) == 0
    code = main(["project", "import", "p", str(root), "--home", str(home)])
    out, err = capsys.readouterr()
    assert code == 0
    assert "dog/y\\x1b.png" in err and "'cat'" in err and "'dog'" in err and "\x1b" not in out + err
    assert "skipped: .cache" in out


def test_cli_predict_escapes_file_names(tmp_path, digits_set, tiny_backbone, capsys):
    from fsl_app.cli import main
    from fsl_app.runs import train_run
    from fsl_app.strategies import create_strategy

    run = train_run(digits_set, create_strategy("protonet"), tiny_backbone, tmp_path / "run").run_dir
    hostile = tmp_path / "in" / "evil\u202e\x1b[2Jgnp.png"
    hostile.parent.mkdir()
    hostile.write_bytes(digits_set[0].path.read_bytes())
    assert main(["predict", str(run), str(hostile.parent)]) == 0
    out = capsys.readouterr().out
    assert "evil\\u202e\\x1b[2Jgnp.png" in out and "\u202e" not in out and "\x1b" not in out
