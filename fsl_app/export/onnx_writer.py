"""``--format onnx``: ``model.onnx`` (opset 18, dynamic batch) with fsl_app's metadata in ``metadata_props`` (one JSON
value per key); ``--quantize int8`` applies onnxruntime's dynamic int8 quantization for CPU deployment."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .metadata import onnx_metadata
from .prepare import Exportable, check_same_probabilities, make_shareable

__all__ = ["write_onnx", "quantize_int8", "attach_onnx_metadata"]


def write_onnx(exportable: Exportable, out: Path, *, quantize: str | None = None) -> Path:
    """``out``: ONNX (dynamic batch, checked against PyTorch) with fsl_app metadata; int8 if ``quantize``."""
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as temp:
        model_path = _export_checked_onnx(exportable, Path(temp) / "model.onnx")
        if quantize:
            model_path = quantize_int8(model_path, Path(temp) / "model.int8.onnx")
        info = {**exportable.info, "quantization": quantize}
        attach_onnx_metadata(model_path, info)
        make_shareable(model_path)
        os.replace(model_path, out)
    return out


def _export_checked_onnx(exportable: Exportable, path: Path) -> Path:
    from ..onnx_engine import OnnxBackbone, cpu_session, export_onnx

    example = exportable.example()
    export_onnx(exportable.module, example, path, input_name="images", output_name="logits")
    exported = OnnxBackbone(cpu_session(path))(exportable.example(3))
    check_same_probabilities(exported, exportable, "ONNX")
    return path


def quantize_int8(source: Path, out: Path) -> Path:
    """Dynamic int8 quantization for CPU deployment (onnxruntime ``quantize_dynamic``): a ~3x smaller file.

    Weights are stored as uint8 and activations quantized at run time. The first convolution (it sees the raw
    pixels) and depthwise convolutions stay float: quantizing them cost the most accuracy and speed for few weights
    (benchmarks/results_export.md has the measured drop and speed ratio).
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # onnxruntime logs shape-inference chatter on the root logger
    try:
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QUInt8,
                         nodes_to_exclude=_convolutions_kept_float(source))
    finally:
        logging.disable(logging.NOTSET)
    return out


def _convolutions_kept_float(path: Path) -> list[str]:
    """Names of the first Conv node (graph order is topological) and of every depthwise (grouped) Conv."""
    import onnx

    convolutions = [node for node in onnx.load(str(path)).graph.node if node.op_type == "Conv"]
    grouped = [node.name for node in convolutions if any(a.name == "group" and a.i > 1 for a in node.attribute)]
    return ([convolutions[0].name] if convolutions else []) + grouped


def attach_onnx_metadata(path: Path, info: dict) -> None:
    """Replace the model's ``metadata_props`` with fsl_app's (see :func:`onnx_metadata`)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, onnx_metadata(info))
    model.doc_string = f"fsl_app export of run {info['run']}: {info['strategy']} on {info['backbone']['name']}, " \
                       f"classes {', '.join(info['classes'])}"
    onnx.save(model, str(path))
