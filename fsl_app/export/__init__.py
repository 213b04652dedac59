"""Export a run so it runs anywhere, and predict with a run folder or any export.

Every strategy's ``to_module()`` maps a preprocessed batch (n, 3, H, W) to logits (n, n_classes); this package writes
that one module in three formats, each carrying the class names, timm's eval preprocessing and an optional
"none of these" threshold:

- ``onnx``: ``model.onnx`` (opset 18, dynamic batch), metadata in ``metadata_props`` (one JSON value per key);
  ``--quantize int8`` applies onnxruntime's static QDQ int8 quantization, calibrated on the run's images, for CPU
  deployment (fp32 with a message when fewer than 10 images can be read).
- ``torchscript``: a traced module with the metadata as the extra file ``fsl_app.json``.
- ``bundle``: a zip with ``model.safetensors`` (the full module state: ``backbone.*`` and ``head.*``),
  ``config.json``, a model card ``README.md``, ``predict.py`` (torch + timm only), ``model.onnx`` and
  ``predict_onnx.py`` (onnxruntime + numpy + pillow only), and their shared ``bundle_io.py``.

Loading never unpickles arbitrary code: bundles are safetensors + JSON, TorchScript archives are opened with
``torch.jit.load`` only after their ``fsl_app.json`` extra file was found and checked, ONNX files must carry fsl_app
metadata. Zip files are checked against their CRC-32 and bundles against the sha256 of their model files. The
rejection threshold ``auto`` is the highest max-probability that still accepts at least 95 % of the correctly
classified held-out images of the run (``predictions.json``). A run with an out-of-distribution autoencoder
(``fsl_app.ood``) exports a second output, ``ood_score`` (n,), in every format; ``--ood auto|FLOAT`` makes a score
above the limit answer ``unknown`` too (either rule rejects).

Modules: ``formats`` (vocabulary), ``metadata`` (reading and checking what a file says about itself), ``threshold``,
``prepare`` (run -> module + metadata), ``onnx_writer`` / ``torchscript_writer`` / ``bundle_writer``, ``model_card``,
``writers`` (``export_run``), ``bundle_reader`` and ``predictors`` (``load_predictor``); ``bundle_scripts/`` holds the
scripts copied into every bundle. Importing this package does not import torch: the names that need it load with
their module on first use.
"""

from __future__ import annotations

from .formats import (BUNDLE_FILES, BUNDLE_SCRIPTS, CHECKSUMMED_FILES, EXPORT_FORMAT_VERSION, EXPORT_FORMATS,
                      FORMAT_SUFFIXES, MARKER_KEY, PREPROCESSING_KEYS, PROBABILITY_TOLERANCE, QUANTIZATIONS,
                      THRESHOLD_KEEP, TORCHSCRIPT_EXTRA_FILE, UNKNOWN_LABEL, ModelFileError)
from .metadata import check_export_info, info_from_onnx_metadata, onnx_metadata, read_torchscript_info
from .threshold import choose_threshold, parse_threshold

_NEEDS_TORCH = {  # name -> module, imported on first use (PEP 562 module __getattr__)
    **dict.fromkeys(("Predictor", "RunPredictor", "OnnxPredictor", "TorchScriptPredictor", "BundlePredictor",
                     "PREDICTORS_BY_SUFFIX", "load_predictor"), "predictors"),
    **dict.fromkeys(("WRITERS", "export_run", "export_path", "exported_info"), "writers"),
    **dict.fromkeys(("Exportable", "prepare_export", "portable_module"), "prepare"),
    **dict.fromkeys(("write_onnx", "quantize_int8", "attach_onnx_metadata", "calibration_batch", "nodes_kept_float"),
                    "onnx_writer"),
    **dict.fromkeys(("write_torchscript",), "torchscript_writer"),
    **dict.fromkeys(("write_bundle", "bundle_config", "bundle_script"), "bundle_writer"),
    **dict.fromkeys(("load_bundle", "read_bundle_state", "build_bundle_module", "expected_state_shapes"),
                    "bundle_reader"),
}


def __getattr__(name: str):
    module = _NEEDS_TORCH.get(name)
    if module is None:  # also the answer while a submodule is being imported below
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import (bundle_reader, bundle_writer, onnx_writer, predictors, prepare,  # noqa: F401  (each becomes
                   torchscript_writer, writers)  # an attribute of this package)
    return getattr(globals()[module], name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NEEDS_TORCH))
