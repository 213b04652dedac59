"""``--quantize int8``: static QDQ quantization calibrated on the run's own images agrees with fp32 on real images,
and with fewer than 10 calibration images the export falls back to fp32 with a message."""

from __future__ import annotations

import warnings

import onnx
import pytest
import torch

from conftest import make_digits_folder
from fsl_app.dataset import ImageSet
from fsl_app.export import export_run, load_predictor
from fsl_app.export.formats import MIN_CALIBRATION_IMAGES
from fsl_app.runs import train_run
from fsl_app.strategies import create_strategy

AGREEMENT = 0.8  # tiny random backbone: its features separate digits far less than a pretrained one


@pytest.fixture(scope="module")
def queries(tmp_path_factory) -> list:
    root = make_digits_folder(tmp_path_factory.mktemp("int8_queries"), per_class=8, offset=6)
    images = ImageSet.from_folder(root)
    return [images.load(i) for i in range(len(images))]


def test_static_int8_agrees_with_fp32_on_real_images(digits_set, tiny_backbone, queries, tmp_path):
    run = train_run(digits_set, create_strategy("linear"), tiny_backbone, tmp_path / "run", protocol="holdout")
    fp32 = load_predictor(export_run(run.run_dir, "onnx", tmp_path / "fp32.onnx"))
    int8_path = export_run(run.run_dir, "onnx", tmp_path / "int8.onnx", quantize="int8")
    int8 = load_predictor(int8_path)
    assert int8.info["quantization"] == "int8" and int8.info["calibration_images"] == len(digits_set)
    operators = {node.op_type for node in onnx.load(str(int8_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= operators  # QDQ format
    reference, quantized = fp32.predict_proba_images(queries), int8.predict_proba_images(queries)
    agreement = (reference.argmax(1) == quantized.argmax(1)).float().mean().item()
    assert agreement >= AGREEMENT
    assert not torch.equal(reference, quantized)  # it really is another model
    ood = int8.predict_paths([])  # the OOD output survives quantization (kept in float)
    assert ood == [] and len(int8.session.get_outputs()) == 2


def test_too_few_calibration_images_fall_back_to_fp32(tiny_backbone, tmp_path):
    images = ImageSet.from_folder(make_digits_folder(tmp_path / "few", per_class=3))  # 9 images
    assert len(images) < MIN_CALIBRATION_IMAGES
    run = train_run(images, create_strategy("linear"), tiny_backbone, tmp_path / "run", protocol="holdout")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_run(run.run_dir, "onnx", tmp_path / "model.onnx", quantize="int8")
    assert any("at least 10 calibration images" in str(w.message) for w in caught)
    predictor = load_predictor(path)
    assert predictor.info["quantization"] is None
    assert "fp32" in predictor.info["quantization_fallback"]
    assert "QuantizeLinear" not in {node.op_type for node in onnx.load(str(path)).graph.node}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bundle = export_run(run.run_dir, "bundle", tmp_path / "model.zip", quantize="int8")
    assert load_predictor(bundle).info["onnx_quantization"] is None  # the bundle records what was written
