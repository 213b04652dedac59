"""A bundle back into a module: safetensors weights checked against ``config.json``, rebuilt on timm + fsl_app's head.

Only JSON and safetensors are read. A bundle .zip must pass its CRC-32 check; ``config.json`` must record the
sha256 of ``model.safetensors`` and ``model.onnx`` and both files must match, so a bundle is used whole or not at all.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .formats import ModelFileError
from .metadata import (check_bundle_archive, check_checksum, check_export_info, read_bundle_bytes, read_bundle_json,
                       recorded_checksums)

BACKBONE_PREFIX = "backbone."


def load_bundle(path: str | Path) -> tuple[nn.Module, dict]:
    """The module (n, 3, H, W) -> logits (n, C) and the ``config.json`` of a bundle .zip or unzipped folder."""
    path = Path(path)
    if path.is_file():
        check_bundle_archive(path)
    info = check_export_info(read_bundle_json(path, "config.json"), path)
    check_checksum(path, "model.onnx", read_bundle_bytes(path, "model.onnx"), recorded_checksums(path, info))
    return build_bundle_module(info, read_bundle_state(path, info)).eval(), info


def read_bundle_state(bundle: Path, info: dict) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors``, checked against ``config.json`` (names, shapes, then sha256)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    checksums = recorded_checksums(bundle, info)
    data = read_bundle_bytes(bundle, "model.safetensors")
    try:
        state = load(data)
    except (SafetensorError, ValueError, OSError) as error:
        raise ModelFileError(f"{bundle}: model.safetensors is not a valid safetensors file ({error}). Re-export "
                             "the bundle.") from error
    problems = _state_problems(state, expected_state_shapes(info))
    if problems:
        raise ModelFileError(f"{bundle}: model.safetensors does not match config.json: {'; '.join(problems[:3])}"
                             f"{' ...' if len(problems) > 3 else ''}. The bundle was edited or mixes files of two "
                             "exports; re-export it with `fsl-app export RUN_DIR --format bundle`.")
    check_checksum(bundle, "model.safetensors", data, checksums)
    return state


def _state_problems(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> list[str]:
    problems = [f"{key} has shape {tuple(state[key].shape)} but config.json describes {shape}"
                for key, shape in expected.items() if key in state and tuple(state[key].shape) != shape]
    problems += [f"tensor {key} is missing" for key in expected if key not in state]
    problems += [f"unexpected tensor {key}" for key in state if key not in expected]
    return problems


def expected_state_shapes(info: dict) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the module ``config.json`` describes (timm skeleton on the meta device + head)."""
    head = _checked_head_spec(info)
    with torch.device("meta"):
        backbone = _create_timm_backbone(info, head)
    shapes = {BACKBONE_PREFIX + key: tuple(value.shape) for key, value in backbone.state_dict().items()}
    shapes.update({"head." + key: shape for key, shape in head_state_shapes(head).items()})
    if info.get("ood"):
        from ..ood import autoencoder_state_shapes

        shapes.update({"ood." + key: shape for key, shape in autoencoder_state_shapes(_checked_ood_spec(info)).items()})
    return shapes


def _checked_ood_spec(info: dict) -> dict:
    ood = info["ood"]
    if not isinstance(ood, dict) or ood.get("kind") != "autoencoder" or not all(
            isinstance(ood.get(key), int) and ood[key] > 0 for key in ("in_features", "hidden", "bottleneck")):
        raise ModelFileError(f"config.json describes an unknown out-of-distribution model {ood!r}: the bundle is from "
                             "a newer fsl_app (upgrade it) or was edited (re-export it).")
    return ood


def head_state_shapes(head: dict) -> dict[str, tuple[int, ...]]:
    """Shapes of a head's tensors: C classes, d features, n support points (RBF, attention)."""
    classes, features = head["n_classes"], head.get("in_features")
    if head["kind"] == "timm":
        return {}
    shapes = {"normalizer.center": (features,)}
    if head["kind"] == "linear":
        return {**shapes, "linear.weight": (classes, features), "linear.bias": (classes,)}
    if head["kind"] == "attention":
        shapes = {**shapes, "support": (head.get("n_support"), features), "coef": (head.get("n_support"), classes)}
        if head.get("fce_steps", 0) > 0:  # the attention LSTM cell of Matching Networks' full-context embeddings
            shapes.update({"query_cell.weight_ih": (4 * features, 2 * features),
                           "query_cell.weight_hh": (4 * features, features),
                           "query_cell.bias_ih": (4 * features,), "query_cell.bias_hh": (4 * features,)})
        return shapes
    return {**shapes, "support": (head.get("n_support"), features), "coef": (head.get("n_support"), classes),
            "intercept": (classes,)}


def _checked_head_spec(info: dict) -> dict:
    head = info.get("head")
    if not isinstance(head, dict) or head.get("kind") not in ("linear", "rbf", "attention", "timm"):
        raise ModelFileError(f"config.json describes an unknown head {head!r}: the bundle is from a newer fsl_app "
                             "(upgrade it) or was edited (re-export it).")
    if head.get("n_classes") != len(info["classes"]):
        raise ModelFileError(f"config.json lists {len(info['classes'])} classes but its head has "
                             f"{head.get('n_classes')} outputs. The bundle was edited; re-export it.")
    return head


def _create_timm_backbone(info: dict, head: dict) -> nn.Module:
    import timm

    name = info.get("backbone", {}).get("name")
    try:
        return timm.create_model(name, pretrained=False, num_classes=head["n_classes"] if head["kind"] == "timm" else 0)
    except (RuntimeError, TypeError, ValueError, AttributeError) as error:
        raise ModelFileError(f"config.json names the backbone {name!r}, which this timm ({timm.__version__}) cannot "
                             "build. Upgrade timm to the version in requirements.txt.") from error


def build_bundle_module(info: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """The exported module (n, 3, H, W) -> logits (n, C) from ``config.json`` and the checked safetensors state; with
    an autoencoder (``config.json["ood"]``) it returns (logits, OOD score (n,))."""
    from ..strategies._heads import head_from_config
    from ..strategies.base import ImageClassifier

    head_spec = _checked_head_spec(info)
    backbone = _create_timm_backbone(info, head_spec)
    head_state = {key.removeprefix("head."): value for key, value in state.items() if key.startswith("head.")}
    head = nn.Identity() if head_spec["kind"] == "timm" else head_from_config(head_spec, head_state)
    module = ImageClassifier(backbone, head)
    if info.get("ood"):
        from ..ood import FeatureAutoencoder, OodImageClassifier

        spec = _checked_ood_spec(info)
        module = OodImageClassifier(module, FeatureAutoencoder(spec["in_features"], spec["hidden"], spec["bottleneck"]))
    module.load_state_dict(state)
    return module.eval()
