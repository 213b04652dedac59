"""`fsl-app project ...` and `fsl-app suggest ...`: exit codes, output, and clear errors without tracebacks."""

import argparse
import json
import sys
import types
import zipfile

import numpy as np
import pytest

from fsl_app.store import open_project
from fsl_app.cli.store import add_store_commands, main

try:
    from tests.conftest_store import digit_files, digit_png, home, make_zip, write_imagefolder  # noqa: F401
except ModuleNotFoundError:
    from conftest_store import digit_files, digit_png, home, make_zip, write_imagefolder  # noqa: F401


def run(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_full_project_lifecycle(capsys, home, tmp_path):
    assert run(capsys, "project", "create", "Leaves", "--home", home)[0] == 0
    folder = write_imagefolder(tmp_path / "data", {"rust": digit_files(3), "healthy": digit_files(3, start=3)})
    archive = tmp_path / "more.zip"
    archive.write_bytes(make_zip([("rust/z.png", digit_png(20))]))
    loose = tmp_path / "loose.png"
    loose.write_bytes(digit_png(30))
    code, out, _ = run(capsys, "project", "import", "Leaves", folder, archive, loose, "--home", home)
    assert code == 0 and "8 added" in out
    code, out, _ = run(capsys, "project", "stats", "Leaves", "--json", "--home", home)
    assert json.loads(out)["class_counts"] == {"healthy": 3, "rust": 4}
    code, out, _ = run(capsys, "project", "stats", "Leaves", "--home", home)
    assert "rust: 4" in out and "1 image(s) are unlabeled" in out
    target = tmp_path / "export.zip"
    assert run(capsys, "project", "export", "Leaves", target, "--home", home)[0] == 0
    assert len(zipfile.ZipFile(target).namelist()) == 7
    assert run(capsys, "project", "rename", "Leaves", "Leaves 2", "--home", home)[0] == 0
    code, out, _ = run(capsys, "project", "list", "--json", "--home", home)
    assert json.loads(out) == ["Leaves 2"]
    assert run(capsys, "project", "fsck", "Leaves 2", "--verify-hashes", "--home", home)[0] == 0
    assert run(capsys, "project", "delete", "Leaves 2", "--confirm", "Leaves 2", "--home", home)[0] == 0
    assert "no projects" in run(capsys, "project", "list", "--home", home)[1]


def test_import_with_label_and_flat(capsys, home, tmp_path):
    run(capsys, "project", "create", "p", "--home", home)
    folder = write_imagefolder(tmp_path / "data", {"sub": digit_files(2)})
    assert run(capsys, "project", "import", "p", folder, "--label", "seven", "--home", home)[0] == 0
    with open_project("p", home=home) as project:
        assert project.class_counts() == {"seven": 2}


def test_missing_project_is_one_clear_line(capsys, home):
    code, _, err = run(capsys, "project", "stats", "ghost", "--home", home)
    assert code == 1 and err.startswith("error: no project named 'ghost'")


def test_invalid_project_name(capsys, home):
    code, _, err = run(capsys, "project", "create", "a/b", "--home", home)
    assert code == 1 and "contains '/'" in err


def test_rejected_files_give_exit_code_1_and_reasons(capsys, home, tmp_path):
    run(capsys, "project", "create", "p", "--home", home)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    code, out, err = run(capsys, "project", "import", "p", bad, "--home", home)
    assert code == 1 and "0 added" in out and "rejected: bad.png" in err


def test_import_of_missing_path(capsys, home, tmp_path):
    run(capsys, "project", "create", "p", "--home", home)
    code, _, err = run(capsys, "project", "import", "p", tmp_path / "nothing", "--home", home)
    assert code == 1 and "is not an image, a folder or a .zip" in err


def test_delete_with_wrong_confirmation(capsys, home):
    run(capsys, "project", "create", "keep me", "--home", home)
    code, _, err = run(capsys, "project", "delete", "keep me", "--confirm", "keep", "--home", home)
    assert code == 1 and "does not match" in err


def test_home_from_environment(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_APP_HOME", str(tmp_path / "ws"))
    run(capsys, "project", "create", "env")
    assert json.loads(run(capsys, "project", "list", "--json")[1]) == ["env"]


class _FakeStrategy:
    classes_ = ["cat", "dog"]

    def predict_proba(self, images):
        import torch

        return torch.tensor([[0.55, 0.45], [0.95, 0.05]][: len(images)])


@pytest.fixture
def fake_runs(monkeypatch):
    module = types.ModuleType("fsl_app.runs")
    module.load_run = lambda run_dir: (_FakeStrategy(), object())
    monkeypatch.setitem(sys.modules, "fsl_app.runs", module)
    return module


def test_suggest_table_and_json(capsys, home, tmp_path, fake_runs):
    run(capsys, "project", "create", "p", "--home", home)
    with open_project("p", home=home) as project:
        ids = project.import_files(digit_files(2)).added_ids
    (tmp_path / "run").mkdir()
    code, out, _ = run(capsys, "suggest", "p", "--run", tmp_path / "run", "--home", home)
    assert code == 0 and "suggested label" in out
    code, out, _ = run(capsys, "suggest", "p", "--run", tmp_path / "run", "--top", "1", "--json", "--home", home)
    [suggestion] = json.loads(out)
    assert suggestion["image_id"] == ids[0] and suggestion["label"] == "cat"
    assert np.isclose(suggestion["margin"], 0.1)


def test_suggest_with_missing_run_folder(capsys, home, tmp_path, fake_runs):
    run(capsys, "project", "create", "p", "--home", home)
    code, _, err = run(capsys, "suggest", "p", "--run", tmp_path / "nope", "--home", home)
    assert code == 1 and "run folder" in err


def test_suggest_with_broken_run(capsys, home, tmp_path, fake_runs):
    def broken(run_dir):
        raise KeyError("config.json")

    fake_runs.load_run = broken
    run(capsys, "project", "create", "p", "--home", home)
    (tmp_path / "run").mkdir()
    code, _, err = run(capsys, "suggest", "p", "--run", tmp_path / "run", "--home", home)
    assert code == 1 and "could not load the run" in err


def test_commands_plug_into_an_existing_parser(home):
    parser = argparse.ArgumentParser(prog="fsl-app")
    subparsers = parser.add_subparsers(dest="command", required=True)
    subparsers.add_parser("train")
    add_store_commands(subparsers)
    args = parser.parse_args(["project", "create", "x", "--home", str(home)])
    assert args.func(args) == 0
