"""Every exported variant of a run: file, size, speed here and top-1 agreement with the run (tiny timm model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsl_app.backbones import load_backbone
from fsl_app.dataset import ImageSet
from fsl_app.export.variants import VARIANTS, export_variants, measure_variants, pick_images, variant_path
from fsl_app.runs import train_run
from fsl_app.strategies import create_strategy


@pytest.fixture(scope="module")
def run_dir(digits_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("variant_runs") / "run"
    train_run(ImageSet.from_folder(digits_dir), create_strategy("linear"), load_backbone("test_efficientnet", "random"),
              out, protocol="holdout")
    return out


def test_every_variant_is_exported_measured_and_agrees_with_the_run(run_dir, digits_set, tmp_path):
    progress = []
    paths = export_variants(run_dir, tmp_path, on_progress=lambda phase, done, total: progress.append(phase))
    assert set(paths) == set(VARIANTS) and len(progress) == len(VARIANTS)
    assert all(paths[name] == variant_path(tmp_path, run_dir, name) and paths[name].is_file() for name in VARIANTS)
    images = pick_images([record.path for record in digits_set.records], 6)
    rows = {row.variant: row for row in measure_variants(run_dir, paths, images, rounds=1)}
    assert list(rows) == ["run", *VARIANTS]
    assert rows["run"].agreement == 1.0 and rows["run"].speed_vs_run == 1.0
    for name in ("onnx", "torchscript", "bundle"):  # float exports answer like the run
        assert rows[name].agreement == 1.0, rows[name]
    assert rows["run"].size_mb is None  # a run folder holds the head; its backbone loads from elsewhere
    for name in VARIANTS:
        assert rows[name].error is None and rows[name].n_images == 6
        assert rows[name].size_mb > 0 and rows[name].images_per_s > 0
    assert 0.0 <= rows["onnx-int8"].agreement <= 1.0
    assert rows["onnx-int8"].size_mb < rows["onnx"].size_mb  # int8 weights take a quarter of the bytes
    assert export_variants(run_dir, tmp_path, ["onnx"])["onnx"].stat().st_mtime == paths["onnx"].stat().st_mtime


def test_a_variant_that_fails_is_a_row_with_its_reason(run_dir, digits_set, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    paths = {"onnx": broken, "torchscript": "TorchScript export failed: disk full"}
    images = pick_images([record.path for record in digits_set.records], 3)
    rows = {row.variant: row for row in measure_variants(run_dir, paths, images, rounds=1)}
    assert "cannot load" in rows["onnx"].error and rows["onnx"].images_per_s is None
    assert rows["torchscript"].error == "TorchScript export failed: disk full"
    assert rows["run"].error is None


def test_pick_images_spreads_over_the_list():
    paths = [f"{i}.png" for i in range(10)]
    assert [p.name for p in pick_images(paths, 3)] == ["0.png", "4.png", "9.png"]
    assert len(pick_images(paths[:2], 5)) == 2
