"""The scripts copied into every bundle (``fsl_app/export/bundle_scripts/``), tested as code.

They run without fsl_app, so they cannot import it: these tests hold them to fsl_app's behaviour instead. Running
them on real exports (predictions, refused tampered files) is in test_export.py.
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsl_app.export import BUNDLE_FILES, BUNDLE_SCRIPTS, CHECKSUMMED_FILES
from fsl_app.images import load_image

SCRIPTS = Path(__file__).resolve().parents[1] / "fsl_app" / "export" / "bundle_scripts"


@pytest.fixture(scope="module")
def bundle_io():
    spec = importlib.util.spec_from_file_location("bundle_io_under_test", SCRIPTS / "bundle_io.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gradient(dtype, scale: float) -> np.ndarray:
    return (np.arange(48 * 64).reshape(48, 64) * scale).astype(dtype)


def _exif_rotated_jpeg(path: Path) -> None:
    image = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (32, 1, 3)))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(path, exif=exif.tobytes(), quality=95)


def _palette_with_transparency(path: Path) -> None:
    image = Image.fromarray(_gradient(np.uint8, 0.08)).convert("P")
    image.save(path, transparency=0)


TRICKY_IMAGES = {
    "16-bit.png": lambda path: Image.fromarray(_gradient(np.uint16, 20.0)).save(path),
    "32-bit.tif": lambda path: Image.fromarray(_gradient(np.int32, 20.0)).save(path),
    "32-bit-dark.tif": lambda path: Image.fromarray(_gradient(np.int32, 0.05)).save(path),
    "float.tif": lambda path: Image.fromarray(_gradient(np.float32, 0.001)).save(path),
    "rgba.png": lambda path: Image.new("RGBA", (40, 30), (200, 30, 30, 90)).save(path),
    "gray-alpha.png": lambda path: Image.new("LA", (40, 30), (80, 128)).save(path),
    "palette-transparent.png": _palette_with_transparency,
    "cmyk.jpg": lambda path: Image.new("CMYK", (40, 30), (10, 200, 30, 5)).save(path),
    "exif-rotated.jpg": _exif_rotated_jpeg,
}


@pytest.mark.parametrize("name", list(TRICKY_IMAGES))
def test_bundle_scripts_see_images_as_fsl_app_does(name, bundle_io, tmp_path):
    """Same pixels as fsl_app's loader for every mode that needs converting, so predictions agree."""
    path = tmp_path / name
    TRICKY_IMAGES[name](path)
    expected = np.asarray(load_image(path))
    got = np.asarray(bundle_io.load_rgb(path))
    assert got.shape == expected.shape and got.dtype == np.uint8
    assert np.array_equal(got, expected), f"{name}: max difference {np.abs(got.astype(int) - expected).max()}"


def test_scripts_check_the_model_files_fsl_app_checksums(bundle_io):
    assert bundle_io.CHECKSUMMED_FILES == CHECKSUMMED_FILES
    assert set(BUNDLE_SCRIPTS) <= set(BUNDLE_FILES)
    assert sorted(path.name for path in SCRIPTS.glob("*.py")) == sorted(BUNDLE_SCRIPTS)


def test_read_checked_returns_only_matching_bytes(bundle_io, tmp_path):
    import hashlib

    weights, onnx = b"weights", b"onnx model"
    (tmp_path / "model.safetensors").write_bytes(weights)
    (tmp_path / "model.onnx").write_bytes(onnx)
    files = {"model.safetensors": hashlib.sha256(weights).hexdigest(), "model.onnx": hashlib.sha256(onnx).hexdigest()}
    (tmp_path / "config.json").write_text(json.dumps({"files": files}))
    assert bundle_io.read_checked(tmp_path, "model.onnx") == onnx
    (tmp_path / "model.onnx").write_bytes(b"another model")
    with pytest.raises(bundle_io.BundleError, match="model.onnx was modified after export"):
        bundle_io.read_checked(tmp_path, "model.onnx")
    (tmp_path / "config.json").write_text(json.dumps({"files": {"model.onnx": files["model.onnx"]}}))
    with pytest.raises(bundle_io.BundleError, match="no checksums for model.safetensors"):
        bundle_io.read_checked(tmp_path, "model.safetensors")


def test_scripts_are_valid_standalone_python():
    """No fsl_app import: the scripts run where only torch + timm (or onnxruntime) are installed."""
    for script in BUNDLE_SCRIPTS:
        source = (SCRIPTS / script).read_text(encoding="utf-8")
        compile(source, script, "exec")
        assert "fsl_app" not in "".join(line for line in io.StringIO(source) if line.lstrip().startswith(
            ("import ", "from ")))
