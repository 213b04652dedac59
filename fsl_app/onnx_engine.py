"""The frozen backbone in ONNX Runtime: exported once per backbone id, cached on disk, checked against torch."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backbones import Backbone

log = logging.getLogger(__name__)
OPSET = 18
_EXPORT_LOCK = threading.Lock()


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, *, input_name: str = "images",
                output_name: str = "output") -> Path:
    """Export ``model`` with a dynamic batch axis, atomically (temp file then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(handle)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (example,), temp, input_names=[input_name], output_names=[output_name],
                              dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                              opset_version=OPSET, dynamo=False)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return path


def cpu_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxBackbone:
    """Callable (n, 3, H, W) float tensor -> (n, d) float tensor, backed by an ONNX Runtime CPU session."""

    def __init__(self, session):
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])

    @classmethod
    def for_backbone(cls, backbone: Backbone, directory: Path, *, tolerance: float = 1e-3) -> "OnnxBackbone":
        """Load the cached export of ``backbone`` or export it now; verify it matches torch before use."""
        path = directory / f"{backbone.id}.onnx"
        example = torch.randn(2, *backbone.input_size, generator=torch.Generator().manual_seed(0))
        with _EXPORT_LOCK:
            if not path.is_file():
                log.info("exporting %s to ONNX once (cached at %s)", backbone.name, path)
                export_onnx(backbone.model.cpu().float(), example, path)
        engine = cls(cpu_session(path))
        with torch.inference_mode():
            reference = backbone.model.cpu().eval()(example)
        difference = (engine(example) - reference).abs().max().item()
        if not difference <= tolerance:
            path.unlink(missing_ok=True)
            raise RuntimeError(f"ONNX output differs from torch by {difference:.2e}")
        return engine
