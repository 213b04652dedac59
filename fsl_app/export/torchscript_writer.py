"""``--format torchscript``: the traced module (dynamic batch) with fsl_app's metadata as the extra file
``fsl_app.json``, which the reader checks before anything is unpickled."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

from .formats import TORCHSCRIPT_EXTRA_FILE
from .prepare import Exportable, check_same_probabilities, make_shareable

__all__ = ["write_torchscript"]


def write_torchscript(exportable: Exportable, out: Path, *, quantize: str | None = None) -> Path:
    """``out``: the traced module (dynamic batch, checked) with metadata in the extra file ``fsl_app.json``."""
    if quantize:
        raise ValueError("--quantize applies to ONNX models. Use --format onnx or bundle, or drop --quantize.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's FutureWarning and tracer warnings
        traced = torch.jit.trace(exportable.module, exportable.example(), check_trace=False)
        with torch.inference_mode():
            check_same_probabilities(traced(exportable.example(3)), exportable, "TorchScript")
        handle, temp = tempfile.mkstemp(dir=out.parent, suffix=".pt.tmp")
        os.close(handle)
        try:
            torch.jit.save(traced, temp, _extra_files={TORCHSCRIPT_EXTRA_FILE: json.dumps(exportable.info)})
            make_shareable(Path(temp))
            os.replace(temp, out)
        finally:
            Path(temp).unlink(missing_ok=True)
    return out
