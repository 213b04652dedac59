"""Downloads of a run (fsl_app.run_downloads): the run folder as a zip, exports written once per run and format."""

from __future__ import annotations

import io
import zipfile

from fsl_app import run_downloads
from fsl_app.runs import train_run
from fsl_app.strategies import create_strategy


def test_run_zip_holds_every_file_of_the_run(tmp_path):
    run_dir = tmp_path / "20261201-linear-abc"
    (run_dir / "sub").mkdir(parents=True)
    (run_dir / "model.json").write_text("{}")
    (run_dir / "sub" / "extra.txt").write_text("x")
    with zipfile.ZipFile(io.BytesIO(run_downloads.run_zip_bytes(run_dir))) as archive:
        assert sorted(archive.namelist()) == [f"{run_dir.name}/model.json", f"{run_dir.name}/sub/extra.txt"]


def test_an_export_is_written_once_into_the_project(tmp_path, digits_set, tiny_backbone):
    run_dir = train_run(digits_set, create_strategy("protonet"), tiny_backbone, tmp_path / "run").run_dir
    path = run_downloads.export_once(tmp_path / "project", run_dir, "onnx")
    assert path == tmp_path / "project" / run_downloads.EXPORTS_FOLDER / "run.onnx" and path.stat().st_size > 0
    written = path.stat().st_mtime_ns
    assert run_downloads.export_once(tmp_path / "project", run_dir, "onnx") == path
    assert path.stat().st_mtime_ns == written
