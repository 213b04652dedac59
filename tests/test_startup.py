"""Start-up: each command imports only what it needs, checked in a fresh process through ``sys.modules``.

``predict`` on an ``.onnx`` or a bundle runs on onnxruntime + numpy + pillow (no torch); a frozen-feature run
folder predicts through the cached ONNX engine without timm; ``train`` on a warm feature cache imports neither
timm (nor the torchvision and torch._dynamo it pulls in) nor albumentations; a zipped run folder predicts like
the folder.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import TINY_BACKBONE
from fsl_app.cli import main as cli_main
from fsl_app.export.loading import OnnxRuntimePredictor, open_predictor
from fsl_app.run_downloads import run_zip_bytes

HEAVY = ("torch", "timm", "torchvision", "torch._dynamo", "albumentations", "onnxruntime", "sklearn")
RUN_CLI = """
import json, sys
from fsl_app.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def run_cli(*argv: str) -> tuple[list, dict]:
    """``fsl-app ARGV --json`` in a fresh interpreter: (its JSON answer, {"code", "modules" it imported})."""
    completed = subprocess.run([sys.executable, "-c", RUN_CLI, *argv, "--json"], capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.strip().splitlines()
    return json.loads(lines[-2]), json.loads(lines[-1])


@pytest.fixture(scope="module")
def exported(digits_dir, tmp_path_factory):
    """A linear run on the tiny backbone (its features and ONNX engine now cached), its .onnx, bundle and zip."""
    root = tmp_path_factory.mktemp("startup")
    run = root / "run"
    assert cli_main(["train", str(digits_dir), "--strategy", "linear", "--backbone", TINY_BACKBONE, "--weights",
                     "random", "--out", str(run), "--json"]) == 0
    for fmt, name in (("onnx", "model.onnx"), ("bundle", "bundle.zip")):
        assert cli_main(["export", str(run), "--format", fmt, "--out", str(root / name)]) == 0
    (root / "run.zip").write_bytes(run_zip_bytes(run))
    return {"run": run, "onnx": root / "model.onnx", "bundle": root / "bundle.zip", "zip": root / "run.zip"}


@pytest.fixture(scope="module")
def images(digits_dir):
    return sorted(str(path) for path in digits_dir.rglob("*.png"))[::4]


@pytest.mark.parametrize("model", ["onnx", "bundle"])
def test_predict_with_an_onnx_export_imports_no_torch_and_matches_the_torch_path(model, exported, images):
    from fsl_app.export import load_predictor

    answer, process = run_cli("predict", str(exported[model]), *images)
    assert process["code"] == 0 and process["modules"] == ["onnxruntime"]
    reference = load_predictor(exported[model]).predict_paths(images)
    assert [row["label"] for row in answer] == [row["label"] for row in reference]
    for row, expected in zip(answer, reference):
        assert abs(row["probability"] - expected["probability"]) < 1e-4


def test_predict_with_a_run_folder_uses_the_cached_onnx_engine_without_timm(exported, images):
    answer, process = run_cli("predict", str(exported["run"]), *images)
    assert process["code"] == 0
    assert "timm" not in process["modules"] and "torchvision" not in process["modules"]
    expected = open_predictor(exported["onnx"]).predict_paths(images)
    assert [row["label"] for row in answer] == [row["label"] for row in expected]


def test_predict_with_a_zipped_run_folder_answers_like_the_folder(exported, images, capsys):
    assert cli_main(["predict", str(exported["zip"]), *images, "--json"]) == 0
    from_zip = json.loads(capsys.readouterr().out)
    assert cli_main(["predict", str(exported["run"]), *images, "--json"]) == 0
    assert from_zip == json.loads(capsys.readouterr().out)


def test_train_on_a_warm_cache_imports_neither_timm_nor_albumentations(exported, digits_dir, tmp_path):
    metrics, process = run_cli("train", str(digits_dir), "--strategy", "linear", "--backbone", TINY_BACKBONE,
                               "--weights", "random", "--out", str(tmp_path / "again"))
    assert process["code"] == 0 and metrics["n_images"] == 18
    assert not {"timm", "torchvision", "torch._dynamo", "albumentations", "onnxruntime"} & set(process["modules"])


def test_light_predictor_serves_onnx_and_bundles(exported):
    for model in ("onnx", "bundle"):
        predictor = open_predictor(exported[model])
        assert isinstance(predictor, OnnxRuntimePredictor) and predictor.classes == ["digit_0", "digit_1", "digit_2"]


def test_a_backbone_loaded_before_is_described_from_its_manifest_and_built_on_first_use(monkeypatch):
    import torch

    from fsl_app import backbones
    from fsl_app.backbones import BackboneError, load_backbone

    first = load_backbone(TINY_BACKBONE, "random")
    again = load_backbone(TINY_BACKBONE, "random")
    assert not again.model_loaded and again.id == first.id and again.data_config == first.data_config
    assert again.model(torch.zeros(1, *again.input_size)).shape == (1, again.num_features)

    fingerprint = backbones._weights_fingerprint(TINY_BACKBONE, "random", 0)
    path = backbones._manifest_path(fingerprint)
    manifest = json.loads(path.read_text())
    monkeypatch.setattr(backbones, "_read_manifest", lambda _: {**manifest, "id": "edited"})
    with pytest.raises(BackboneError, match="changed"):
        load_backbone(TINY_BACKBONE, "random").model  # noqa: B018
    assert load_backbone(TINY_BACKBONE, "random", lazy=False).model_loaded
