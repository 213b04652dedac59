"""Batched feature extraction with device / engine choice and an on-disk feature cache.

The cache key is (image sha256, backbone id incl. weights hash, preprocessing), so retraining a frozen-feature
strategy on the same images never runs the backbone again. On CPU the frozen backbone runs in ONNX Runtime (measured
several times faster than eager PyTorch here, see benchmarks/RESULTS.md); on CUDA it runs in PyTorch with AMP and
channels_last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torch import nn

from .backbones import Backbone
from .dataset import ImageSet
from .images import load_image

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnx")


def pick_device(preferred: str | None = None) -> torch.device:
    """CUDA, then Apple MPS, then CPU; ``preferred`` (or env ``FSL_APP_DEVICE``) overrides."""
    preferred = preferred or os.environ.get("FSL_APP_DEVICE")
    if preferred:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return f"CPU ({torch.get_num_threads()} threads)"


def cache_root() -> Path:
    """``FSL_APP_CACHE``, else the platform's user cache dir."""
    configured = os.environ.get("FSL_APP_CACHE")
    if configured:
        return Path(configured)
    import platformdirs

    return Path(platformdirs.user_cache_dir("fsl_app"))


def eval_transform(data_config: dict) -> Callable[[Image.Image], torch.Tensor]:
    """timm's evaluation preprocessing: resize, center crop, to tensor, normalize. Output (3, H, W)."""
    return create_transform(**data_config, is_training=False)


def preprocessing_key(data_config: dict) -> str:
    text = json.dumps({k: data_config[k] for k in sorted(data_config)}, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class FeatureCache:
    """Features on disk, one ``.npy`` per (namespace, sha256), plus an in-process memory layer."""

    def __init__(self, root: str | Path | None = None, *, enabled: bool = True):
        self.root = Path(root) if root is not None else cache_root() / "features"
        self.enabled = enabled
        self._memory: dict[tuple[str, str], np.ndarray] = {}
        self._lock = threading.Lock()

    def _path(self, namespace: str, sha: str) -> Path:
        return self.root / namespace / sha[:2] / f"{sha}.npy"

    def get(self, namespace: str, sha: str) -> np.ndarray | None:
        key = (namespace, sha)
        with self._lock:
            if key in self._memory:
                return self._memory[key]
        if not self.enabled:
            return None
        path = self._path(namespace, sha)
        try:
            value = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        with self._lock:
            self._memory[key] = value
        return value

    def put(self, namespace: str, sha: str, value: np.ndarray) -> None:
        with self._lock:
            self._memory[(namespace, sha)] = value
        if not self.enabled:
            return
        path = self._path(namespace, sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, value, allow_pickle=False)
        os.replace(temp, path)

    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()


_DEFAULT_CACHE: FeatureCache | None = None


def default_cache() -> FeatureCache:
    global _DEFAULT_CACHE
    if _DEFAULT_CACHE is None or _DEFAULT_CACHE.root != cache_root() / "features":
        _DEFAULT_CACHE = FeatureCache()
    return _DEFAULT_CACHE


class FeatureExtractor:
    """Runs a frozen backbone over images in batches; returns float32 CPU features (n, num_features).

    ``engine="auto"`` uses ONNX Runtime on CPU (exported once per backbone id and cached on disk) and PyTorch on
    GPUs; any failure of the ONNX path falls back to PyTorch with the reason logged.
    """

    def __init__(self, backbone: Backbone, *, device: str | torch.device | None = None, engine: str = "auto",
                 batch_size: int = 32, cache: FeatureCache | None = None, num_workers: int | None = None):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.backbone = backbone
        self.device = pick_device(str(device) if device is not None else None)
        self.batch_size = batch_size
        self.cache = cache if cache is not None else default_cache()
        self.transform = eval_transform(backbone.data_config)
        self.namespace = f"{backbone.id}-{preprocessing_key(backbone.data_config)}"
        self.num_workers = num_workers or min(4, os.cpu_count() or 1)
        requested = os.environ.get("FSL_APP_ENGINE", engine) if engine == "auto" else engine
        self._forward = self._choose_engine(requested)

    # --- engines ---
    def _choose_engine(self, requested: str) -> Callable[[torch.Tensor], torch.Tensor]:
        if requested in ("auto", "onnx") and self.device.type == "cpu":
            try:
                from .onnx_engine import OnnxBackbone

                session = OnnxBackbone.for_backbone(self.backbone, cache_root() / "onnx")
                self.engine = "onnx"
                return session
            except Exception as error:  # noqa: BLE001 - any ONNX problem means: use torch
                log.warning("ONNX Runtime path unavailable for %s (%s); using PyTorch.", self.backbone.name, error)
        self.engine = "torch"
        return self._torch_forward()

    def _torch_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        model = self.backbone.model.to(self.device).eval()
        on_cuda = self.device.type == "cuda"
        if on_cuda or self.device.type == "cpu":
            model = model.to(memory_format=torch.channels_last)

        def forward(batch: torch.Tensor) -> torch.Tensor:
            batch = batch.to(self.device, non_blocking=True)
            batch = batch.contiguous(memory_format=torch.channels_last) if batch.ndim == 4 else batch
            with torch.inference_mode(), torch.autocast(self.device.type, enabled=on_cuda):
                return model(batch).float().cpu()

        return forward

    # --- public API ---
    def forward_tensors(self, batch: torch.Tensor) -> torch.Tensor:
        """Features of a preprocessed batch (n, 3, H, W) -> (n, d), no cache."""
        return self._forward(batch)

    def extract_pil(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Features of PIL images (n, d), no cache (for one-off predictions)."""
        outputs = [self._forward(torch.stack([self.transform(im) for im in images[i:i + self.batch_size]]))
                   for i in range(0, len(images), self.batch_size)]
        return torch.cat(outputs) if outputs else torch.empty(0, self.backbone.num_features)

    def extract(self, images: ImageSet, *, progress: bool = False) -> torch.Tensor:
        """Features (n, d) of every image in ``images``, reading and filling the cache."""
        found: dict[str, np.ndarray] = {}
        for sha in dict.fromkeys(images.shas):
            cached = self.cache.get(self.namespace, sha)
            if cached is not None:
                found[sha] = cached
        todo = [r for r in {r.sha256: r for r in images.records}.values() if r.sha256 not in found]
        if todo:
            for records, features in self._run(todo, progress=progress):
                for record, row in zip(records, features.numpy()):
                    self.cache.put(self.namespace, record.sha256, row)
                    found[record.sha256] = row
        if not len(images):
            return torch.empty(0, self.backbone.num_features)
        return torch.from_numpy(np.stack([found[sha] for sha in images.shas])).float()

    def _run(self, records: list, *, progress: bool) -> Iterable[tuple[list, torch.Tensor]]:
        """Decode and preprocess in worker threads, one batch ahead of the forward pass."""
        batches = [records[i:i + self.batch_size] for i in range(0, len(records), self.batch_size)]
        bar = _progress_bar(len(records), progress, f"features ({self.engine})")
        with ThreadPoolExecutor(self.num_workers) as pool:
            def prepare(batch):
                return torch.stack(list(pool.map(lambda r: self.transform(load_image(r.path)), batch)))

            with ThreadPoolExecutor(1) as prefetcher:
                pending = prefetcher.submit(prepare, batches[0])
                for index, batch in enumerate(batches):
                    tensor = pending.result()
                    if index + 1 < len(batches):
                        pending = prefetcher.submit(prepare, batches[index + 1])
                    yield batch, self._forward(tensor)
                    bar.update(len(batch))
        bar.close()


def _progress_bar(total: int, enabled: bool, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=description, unit="img", leave=False)


_EXTRACTORS: dict[tuple[str, str, str], FeatureExtractor] = {}
_EXTRACTORS_LOCK = threading.Lock()


def get_extractor(backbone: Backbone, *, device: str | torch.device | None = None,
                  engine: str = "auto") -> FeatureExtractor:
    """A process-wide extractor per (backbone id, device, engine): the ONNX session is built once."""
    key = (backbone.id, str(device), engine)
    with _EXTRACTORS_LOCK:
        if key not in _EXTRACTORS:
            _EXTRACTORS[key] = FeatureExtractor(backbone, device=device, engine=engine)
        return _EXTRACTORS[key]


def extract_features(backbone: Backbone, images: ImageSet, *, progress: bool = False) -> torch.Tensor:
    """Features (n, d) of ``images`` through the cached, process-wide extractor of ``backbone``."""
    return get_extractor(backbone).extract(images, progress=progress)


def images_to_batch(images: Sequence[Image.Image], data_config: dict) -> torch.Tensor:
    """Preprocess PIL images into a model batch (n, 3, H, W)."""
    transform = eval_transform(data_config)
    return torch.stack([transform(image) for image in images])


def freeze(model: nn.Module) -> nn.Module:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()
