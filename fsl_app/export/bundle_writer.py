"""``--format bundle``: a zip that runs without fsl_app.

Members: ``model.safetensors`` (the full module state: ``backbone.*`` and ``head.*``), ``config.json`` (metadata,
training summary, sha256 of both model files), a model card ``README.md``, ``predict.py`` (torch + timm only),
``model.onnx`` and ``predict_onnx.py`` (onnxruntime + numpy + pillow only), ``bundle_io.py`` (checksum check and
image loading shared by both scripts) and ``requirements.txt``. The scripts are the files in ``bundle_scripts/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import torch

from .formats import BUNDLE_FILES, BUNDLE_SCRIPTS
from .model_card import model_card
from .onnx_writer import write_onnx
from .prepare import Exportable

__all__ = ["write_bundle", "bundle_config", "bundle_script"]


def write_bundle(exportable: Exportable, out: Path, *, quantize: str | None = None) -> Path:
    """``out``: a zip that runs without fsl_app (see the module docstring); ``quantize`` applies to model.onnx."""
    if exportable.info["head"] is None:
        raise ValueError(f"the {exportable.info['strategy']} strategy's module has no head description, so it cannot "
                         "be bundled as safetensors. Use --format onnx or torchscript.")
    from safetensors.torch import save

    weights = save({key: value.detach().cpu().contiguous().clone()
                    for key, value in exportable.module.state_dict().items()})
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as temp:
        onnx_path = write_onnx(exportable, Path(temp) / "model.onnx", quantize=quantize)
        onnx_bytes = onnx_path.read_bytes()
        quantize = _written_quantization(onnx_path)  # None when int8 fell back to fp32 (too few calibration images)
        config = bundle_config(exportable, {"model.safetensors": weights, "model.onnx": onnx_bytes}, quantize)
        members = {"model.safetensors": weights, "config.json": json.dumps(config, indent=2, ensure_ascii=False),
                   "README.md": model_card(exportable, quantize), "model.onnx": onnx_bytes,
                   "requirements.txt": _requirements(), **{name: bundle_script(name) for name in BUNDLE_SCRIPTS}}
        archive_path = Path(temp) / "bundle.zip"
        with zipfile.ZipFile(archive_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in BUNDLE_FILES:  # weights barely deflate (8 %): stored, they load without inflating
                archive.writestr(name, members[name], compress_type=zipfile.ZIP_STORED if name in
                                 ("model.onnx", "model.safetensors") else None)
        os.replace(archive_path, out)
    return out


def _written_quantization(onnx_path: Path) -> str | None:
    """The ``quantization`` recorded in a written model.onnx's metadata."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    return json.loads(props.get("quantization", "null"))


def bundle_script(name: str) -> str:
    """The text of one script shipped in every bundle (``fsl_app/export/bundle_scripts/<name>``)."""
    return (resources.files(__package__) / "bundle_scripts" / name).read_text(encoding="utf-8")


def bundle_config(exportable: Exportable, files: dict[str, bytes], quantize: str | None) -> dict:
    """config.json: the export metadata plus the run's augmentation, metrics, data snapshot and file checksums."""
    config, metrics = exportable.run["config"], exportable.run["metrics"] or {}
    return {**exportable.info, "onnx_quantization": quantize,
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
            "augment": augment_dict(exportable), "protocol": metrics.get("protocol", config.get("protocol")),
            "seed": config.get("seed"),
            "class_counts": config.get("class_counts"), "trained_at": config.get("created_at"),
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"torch": torch.__version__, "timm": _timm_version(),
                         "trained_with_torch": config.get("torch")},
            "metrics": {key: value for key, value in metrics.items() if not key.endswith("_seconds")},
            "data": _data_snapshot(config.get("data"))}


def augment_dict(exportable: Exportable) -> dict | None:
    """The albumentations dict the run trained with: the run's ``augment``, else the strategy's ``augment`` param."""
    spec = exportable.run["config"].get("augment") or exportable.info["params"].get("augment")
    if spec is None or isinstance(spec, dict):
        return spec
    from ..augment import build_augment, to_dict

    return to_dict(build_augment(spec))


def _data_snapshot(data):
    """The run's data snapshot without local folder paths (only file names), so a shared bundle leaks nothing."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        return data
    images = [{**{k: v for k, v in item.items() if k != "path"}, "name": Path(item.get("path", "")).name}
              for item in data["images"]]
    return {**data, "images": images}


def _timm_version() -> str:
    import timm

    return timm.__version__


def _requirements() -> str:
    import onnxruntime

    return (f"# predict.py (exported with torch {torch.__version__.split('+')[0]}, timm {_timm_version()})\n"
            f"torch>=2.0\ntimm>=1.0\n"
            f"# predict_onnx.py needs only these (exported with onnxruntime {onnxruntime.__version__}):\n"
            "# onnxruntime\n# numpy\n# pillow\n")
