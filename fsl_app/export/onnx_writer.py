"""``--format onnx``: ``model.onnx`` (opset 18, dynamic batch) with fsl_app's metadata in ``metadata_props`` (one JSON
value per key); outputs ``logits`` (n, C) and, for a run with an autoencoder, ``ood_score`` (n,).

``--quantize int8`` applies ONNX Runtime's static QDQ quantization: int8 weights (per output channel) and uint8
activations whose ranges come from calibration images of the project (the run's labeled images plus any extra ones
the caller passes, e.g. the unlabeled pool), preprocessed exactly like the model's input. The convolutions of the
first, high-resolution stages (at >= 1/4 of the input size, the stem included) and everything after the backbone's
last pooling (the head, the autoencoder: a few small matrix products on the features) stay float
(:func:`nodes_kept_float`). With fewer than ``MIN_CALIBRATION_IMAGES`` readable images the export
falls back to fp32 and says so (a warning, and ``quantization_fallback`` in the metadata).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

from .formats import MIN_CALIBRATION_IMAGES, OOD_OUTPUT
from .metadata import onnx_metadata
from .prepare import Exportable, check_same_probabilities, make_shareable

__all__ = ["write_onnx", "quantize_int8", "attach_onnx_metadata", "calibration_batch", "nodes_kept_float"]

CALIBRATION_LIMIT = 200  # at most this many images are read for calibration (ranges settle long before)
EARLY_FRACTION = 4  # convolutions at >= 1/4 of the input resolution stay float (benchmarks/results_export.md)


def write_onnx(exportable: Exportable, out: Path, *, quantize: str | None = None) -> Path:
    """``out``: ONNX (dynamic batch, checked against PyTorch) with fsl_app metadata; int8 if ``quantize``."""
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as temp:
        model_path = _export_checked_onnx(exportable, Path(temp) / "model.onnx")
        info = {**exportable.info, "quantization": None}
        if quantize:
            calibration = calibration_batch(exportable)
            if len(calibration) < MIN_CALIBRATION_IMAGES:
                message = (f"--quantize int8 needs at least {MIN_CALIBRATION_IMAGES} calibration images and the run "
                           f"has {len(calibration)} readable ones, so the model was written in fp32 (int8 ranges "
                           "from so few images would be unreliable). Label more images or pass the pool, then "
                           "export again.")
                warnings.warn(message, stacklevel=2)
                info["quantization_fallback"] = message
            else:
                model_path = quantize_int8(model_path, Path(temp) / "model.int8.onnx", calibration)
                info["quantization"] = quantize
                info["calibration_images"] = len(calibration)
        attach_onnx_metadata(model_path, info)
        make_shareable(model_path)
        os.replace(model_path, out)
    return out


def _export_checked_onnx(exportable: Exportable, path: Path) -> Path:
    from ..onnx_engine import cpu_session, export_onnx

    names = ("logits", OOD_OUTPUT) if exportable.info.get("ood") else "logits"
    export_onnx(exportable.module, exportable.example(), path, input_name="images", output_name=names)
    session = cpu_session(path)
    outputs = session.run(None, {"images": exportable.example(3).numpy()})
    check_same_probabilities(_tensors(outputs), exportable, "ONNX")
    return path


def _tensors(outputs: list):
    import torch

    tensors = [torch.from_numpy(output) for output in outputs]
    return tuple(tensors) if len(tensors) > 1 else tensors[0]


def calibration_batch(exportable: Exportable, limit: int = CALIBRATION_LIMIT):
    """The calibration images (``exportable.calibration``, unreadable ones skipped, at most ``limit``) preprocessed
    with the model's eval transform: float32 (n, 3, H, W)."""
    import numpy as np

    from ..features import images_to_batch
    from ..images import ImageError, load_for_model
    from ..preprocess import working_side

    images = []
    for path in exportable.calibration:
        if len(images) >= limit:
            break
        try:
            images.append(load_for_model(path, working_side(exportable.info["preprocessing"])))
        except (ImageError, OSError):
            continue
    if not images:
        return np.zeros((0, *exportable.info["preprocessing"]["input_size"]), dtype=np.float32)
    preprocessing = exportable.info["preprocessing"]
    return np.concatenate([images_to_batch(images[start:start + 32], preprocessing).numpy()
                           for start in range(0, len(images), 32)]).astype(np.float32)


def quantize_int8(source: Path, out: Path, calibration=None) -> Path:
    """Static int8 QDQ quantization (onnxruntime ``quantize_static``, per-channel weights) calibrated on
    ``calibration`` (float32 (n, 3, H, W), preprocessed like the model input); ``nodes_kept_float`` stay float.

    ``calibration`` None or with fewer than ``MIN_CALIBRATION_IMAGES`` images raises ValueError (``write_onnx``
    falls back to fp32 before calling this).
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration is None or len(calibration) < MIN_CALIBRATION_IMAGES:
        raise ValueError(f"static int8 quantization needs at least {MIN_CALIBRATION_IMAGES} calibration images, got "
                         f"{0 if calibration is None else len(calibration)}. Label more images.")

    class Images(CalibrationDataReader):
        """One preprocessed image (1, 3, H, W) per call, then None."""

        def __init__(self):
            self.remaining = iter(range(len(calibration)))

        def get_next(self):
            index = next(self.remaining, None)
            return None if index is None else {"images": calibration[index:index + 1]}

    logging.disable(logging.WARNING)  # onnxruntime logs shape-inference chatter on the root logger
    try:
        prepared = out.with_name(out.stem + ".pre.onnx")
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(str(prepared), str(out), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=nodes_kept_float(prepared),
                            calibration_providers=["CPUExecutionProvider"])
        prepared.unlink(missing_ok=True)
    finally:
        logging.disable(logging.NOTSET)
    return out


def nodes_kept_float(path: Path, *, early_fraction: int = EARLY_FRACTION) -> list[str]:
    """Names of the nodes quantization leaves in float.

    - every Conv whose output is at least 1 / ``early_fraction`` of the input's height (the stem and the first,
      high-resolution stages: few channels, so int8 noise there is large and spreads through the whole network);
    - every node after the last global pooling (the head and the autoencoder: small matrix products on features).
    """
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    nodes = list(model.graph.node)
    input_height = _dims(model.graph.input[0])[2]
    heights = {value.name: _dims(value)[2] for value in model.graph.value_info if len(_dims(value)) == 4}
    early = [node.name for node in nodes if node.op_type == "Conv" and isinstance(input_height, int)
             and isinstance(heights.get(node.output[0]), int)
             and heights[node.output[0]] * early_fraction >= input_height]
    first_conv = next((node.name for node in nodes if node.op_type == "Conv"), None)
    pools = [index for index, node in enumerate(nodes) if node.op_type in ("GlobalAveragePool", "ReduceMean")]
    tail = [node.name for node in nodes[pools[-1] + 1:]] if pools else []
    return list(dict.fromkeys(([first_conv] if first_conv else []) + early + tail))


def _dims(value) -> list:
    """A value's shape: ints where known, None where symbolic (the batch)."""
    return [dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim]


def attach_onnx_metadata(path: Path, info: dict) -> None:
    """Replace the model's ``metadata_props`` with fsl_app's (see :func:`onnx_metadata`)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, onnx_metadata(info))
    model.doc_string = f"fsl_app export of run {info['run']}: {info['strategy']} on {info['backbone']['name']}, " \
                       f"classes {', '.join(info['classes'])}"
    onnx.save(model, str(path))
