"""Batched feature extraction with device / engine choice and an on-disk feature cache.

The cache key is (image sha256, backbone id incl. weights hash, preprocessing), so retraining a frozen-feature
strategy on the same images never runs the backbone again. On CPU the frozen backbone runs in ONNX Runtime, on CUDA
in PyTorch with AMP and channels_last (speeds: benchmarks/RESULTS.md).

Preprocessing is timm's eval transform, split in two so it is cheap: the PIL resize and center crop run per image in
worker threads (Pillow releases the GIL), then ``ToTensor`` + ``Normalize`` run once per batch as vectorized numpy
with the same float32 operations in the same order, so the batch is bit-identical to stacking ``eval_transform``
outputs (:class:`BatchPreprocessor`, built from the data config without importing timm; any other transform falls
back to calling it per image). Images are read at twice the resize target (:func:`fsl_app.images.decode_for_model`:
JPEG DCT scaling, then a resize), the rule every export applies too; large photos come from their working copies
(:mod:`fsl_app.working_copies`), which hold the same pixels. The engine is built on first use, so an
extraction served entirely from the cache loads no ONNX session and no timm. On CPU the extraction
is data-parallel by default: each worker thread decodes, preprocesses and forwards its own slice of a batch through a
single-threaded ONNX Runtime session, so decoding never waits for the forward pass and no thread spins idle.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from .atomic import open_atomic
from .backbones import Backbone
from .dataset import ImageSet
from .images import load_image
from .preprocess import DRAFT_FACTOR, eval_geometry, working_side
from .working_copies import cache_root, load_working

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnx")
PARALLEL = ("auto", "data", "intra")


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


def eval_transform(data_config: dict) -> Callable[[Image.Image], torch.Tensor]:
    """timm's evaluation preprocessing: resize, center crop, to tensor, normalize. Output (3, H, W)."""
    from timm.data import create_transform  # timm pulls in torchvision and torch._dynamo: only when needed

    return create_transform(**data_config, is_training=False)


def preprocessing_key(data_config: dict) -> str:
    text = json.dumps({k: data_config[k] for k in sorted(data_config)}, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class BatchPreprocessor:
    """timm's eval transform as per-image PIL work (:meth:`to_array`) plus one vectorized batch step (:meth:`stack`).

    Built by :meth:`from_transform` only when the transform is the standard ``[Resize, CenterCrop, (Maybe)ToTensor,
    Normalize]``; the resize and crop are the transform's own objects, and :meth:`stack` repeats ToTensor's
    ``float32 / 255`` and Normalize's ``(x - mean) / std`` in float32, so the result equals
    ``torch.stack([transform(im) for im in images])`` exactly (benchmarks/bench_extraction.py checks it).
    """

    def __init__(self, geometry: Sequence[Callable], mean: torch.Tensor, std: torch.Tensor):
        self.geometry = list(geometry)
        self.mean = np.asarray(torch.as_tensor(mean, dtype=torch.float32), dtype=np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(torch.as_tensor(std, dtype=torch.float32), dtype=np.float32).reshape(1, -1, 1, 1)

    @classmethod
    def from_data_config(cls, data_config: dict) -> "BatchPreprocessor | None":
        """The eval preprocessing of ``data_config`` without building timm's transform (no timm import), or None
        for a crop mode :func:`fsl_app.preprocess.eval_geometry` does not reproduce."""
        geometry = eval_geometry(data_config)
        if geometry is None:
            return None
        return cls([geometry], torch.tensor(data_config["mean"]), torch.tensor(data_config["std"]))

    @classmethod
    def from_transform(cls, transform) -> "BatchPreprocessor | None":
        from torchvision import transforms as tv_transforms

        steps = list(getattr(transform, "transforms", []))
        if len(steps) < 2 or not isinstance(steps[-1], tv_transforms.Normalize) \
                or not isinstance(steps[-2], tv_transforms.ToTensor):
            return None
        geometry = steps[:-2]
        if not all(isinstance(step, (tv_transforms.Resize, tv_transforms.CenterCrop)) for step in geometry):
            return None
        normalize = steps[-1]
        if normalize.inplace:
            return None
        return cls(geometry, normalize.mean, normalize.std)

    def to_array(self, image: Image.Image) -> np.ndarray:
        """Resized and cropped RGB pixels (H, W, 3) uint8; ``image`` must be RGB."""
        if image.mode != "RGB":
            raise ValueError(f"BatchPreprocessor needs RGB images, got mode {image.mode!r}")
        for step in self.geometry:
            image = step(image)
        return np.asarray(image, dtype=np.uint8)

    def stack(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """Float32 batch (n, 3, H, W): ToTensor (``/ 255``) then Normalize (``- mean``, ``/ std``)."""
        pixels = np.stack(arrays)
        batch = np.empty((pixels.shape[0], pixels.shape[3], pixels.shape[1], pixels.shape[2]), dtype=np.float32)
        np.copyto(batch, pixels.transpose(0, 3, 1, 2))
        batch /= np.float32(255)
        batch -= self.mean
        batch /= self.std
        return torch.from_numpy(batch)

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.stack([self.to_array(image) for image in images])


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
        with open_atomic(self._path(namespace, sha), "wb", durable=False) as stream:  # a cache: rebuilt if lost
            np.save(stream, value, allow_pickle=False)

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

    ``parallel`` says how CPU cores are shared between decoding and the forward pass. ``"data"`` (the ``auto``
    choice for ONNX Runtime on CPU): ``num_workers`` threads each decode, preprocess and forward their own slice of a
    batch with a single-threaded session. ``"intra"`` (the choice for PyTorch and GPUs): ``num_workers`` threads
    decode one batch ahead while the engine runs the current batch with all its threads.
    """

    def __init__(self, backbone: Backbone, *, device: str | torch.device | None = None, engine: str = "auto",
                 batch_size: int = 32, cache: FeatureCache | None = None, num_workers: int | None = None,
                 parallel: str = "auto"):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        if parallel not in PARALLEL:
            raise ValueError(f"parallel must be one of {PARALLEL}, got {parallel!r}")
        from .onnx_engine import cpu_threads

        self.backbone = backbone
        self.device = pick_device(str(device) if device is not None else None)
        self.batch_size = batch_size
        self.cache = cache if cache is not None else default_cache()
        self.preprocessor = BatchPreprocessor.from_data_config(backbone.data_config)
        self._transform = None
        self.side = working_side(backbone.data_config)  # None: decode every pixel (benchmarks compare with it)
        self.working_copies = True  # False: decode every file (benchmarks measure the first read)
        # "w2": images read at twice the resize (features made with another reading rule are not reused)
        self.namespace = f"{backbone.id}-{preprocessing_key(backbone.data_config)}-w{DRAFT_FACTOR}"
        self.num_workers = num_workers or cpu_threads()
        self._requested = (os.environ.get("FSL_APP_ENGINE", engine) if engine == "auto" else engine, parallel)
        self._engine_forward = None
        self._engine_lock = threading.Lock()

    @property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """timm's eval transform (built on first use: :attr:`preprocessor` does the work when it can)."""
        if self._transform is None:
            self._transform = eval_transform(self.backbone.data_config)
        return self._transform

    # --- engines ---
    @property
    def _forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The engine, chosen and built on first use: an extraction served from the cache needs none."""
        with self._engine_lock:
            if self._engine_forward is None:
                self._engine_forward = self._choose_engine(*self._requested)
            return self._engine_forward

    @_forward.setter
    def _forward(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._engine_forward = forward

    @property
    def engine(self) -> str:
        """``"onnx"`` or ``"torch"`` (choosing it builds the engine)."""
        self._forward  # noqa: B018 - builds the engine, which records its kind
        return self._engine

    @property
    def parallel(self) -> str:
        self._forward  # noqa: B018
        return self._parallel

    def _choose_engine(self, requested: str, parallel: str) -> Callable[[torch.Tensor], torch.Tensor]:
        if requested in ("auto", "onnx") and self.device.type == "cpu":
            try:
                from .onnx_engine import OnnxBackbone

                self._parallel = "data" if parallel == "auto" else parallel
                session = OnnxBackbone.for_backbone(self.backbone, cache_root() / "onnx", threads=self.num_workers,
                                                    parallel=self._parallel)
                self._engine = "onnx"
                return session
            except Exception as error:  # noqa: BLE001 - any ONNX problem means: use torch
                log.warning("ONNX Runtime path unavailable for %s (%s); using PyTorch.", self.backbone.name, error)
        self._engine = "torch"
        self._parallel = "intra"  # torch's CPU threads are process-wide: one forward at a time
        return self._torch_forward()

    def _torch_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        # A private copy: moving it to the GPU or to channels_last must not change the backbone that strategies
        # deep-copy for fine-tuning and export (those expect it on the CPU, in the default layout).
        model = copy.deepcopy(self.backbone.model).to(self.device).eval()
        on_cuda = self.device.type == "cuda"
        if on_cuda or self.device.type == "cpu":
            model = model.to(memory_format=torch.channels_last)

        def forward(batch: torch.Tensor) -> torch.Tensor:
            if on_cuda and batch.device.type == "cpu":
                batch = batch.pin_memory()
            batch = batch.to(self.device, non_blocking=True)
            batch = batch.contiguous(memory_format=torch.channels_last) if batch.ndim == 4 else batch
            with torch.inference_mode(), torch.autocast(self.device.type, enabled=on_cuda):
                return model(batch).float().cpu()

        return forward

    # --- public API ---
    def forward_tensors(self, batch: torch.Tensor) -> torch.Tensor:
        """Features of a preprocessed batch (n, 3, H, W) -> (n, d), no cache."""
        return self._forward(batch)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model batch (n, 3, H, W) of PIL images: exactly ``torch.stack([self.transform(im) ...])``."""
        if self.preprocessor is not None and all(image.mode == "RGB" for image in images):
            return self.preprocessor(images)
        return torch.stack([self.transform(image) for image in images])

    def extract_pil(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Features of PIL images (n, d), no cache (for one-off predictions)."""
        outputs = [self._forward(self.preprocess(images[i:i + self.batch_size]))
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

    # --- the pipeline ---
    def _load_array(self, record) -> np.ndarray | torch.Tensor:
        if self.side is None:
            image = load_image(record.path)
        else:
            image = load_working(record.path, record.sha256, self.side, copies=self.working_copies)
        return self.preprocessor.to_array(image) if self.preprocessor is not None else self.transform(image)

    def _stack(self, items: list) -> torch.Tensor:
        return self.preprocessor.stack(items) if self.preprocessor is not None else torch.stack(items)

    def _run(self, records: list, *, progress: bool) -> Iterable[tuple[list, torch.Tensor]]:
        bar = _progress_bar(len(records), progress, f"features ({self.engine})")
        try:
            if self.parallel == "data" and hasattr(self._forward, "run") and self.num_workers > 1:
                runs = self._run_data_parallel(records)
            else:
                runs = self._run_prefetch(records)
            for chunk, features in runs:
                yield chunk, features
                bar.update(len(chunk))
        finally:
            bar.close()

    def _run_data_parallel(self, records: list) -> Iterable[tuple[list, torch.Tensor]]:
        """Each worker decodes, preprocesses and forwards slices of at most the engine's ``chunk_size`` images."""
        size = max(1, min(-(-self.batch_size // self.num_workers), self._forward.chunk_size))
        chunks = [records[i:i + size] for i in range(0, len(records), size)]
        forward = self._forward.run

        def process(chunk):
            return torch.from_numpy(forward(self._stack([self._load_array(r) for r in chunk]).numpy()))

        with ThreadPoolExecutor(self.num_workers, thread_name_prefix="extract") as pool:
            yield from zip(chunks, _ordered_map(pool, process, chunks, ahead=2 * self.num_workers))

    def _run_prefetch(self, records: list) -> Iterable[tuple[list, torch.Tensor]]:
        """Decode and preprocess in worker threads, one batch ahead of the forward pass."""
        batches = [records[i:i + self.batch_size] for i in range(0, len(records), self.batch_size)]
        with ThreadPoolExecutor(self.num_workers, thread_name_prefix="decode") as pool:
            def prepare(batch):
                return self._stack(list(pool.map(self._load_array, batch)))

            with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as prefetcher:
                yield from zip(batches, map(self._forward, _ordered_map(prefetcher, prepare, batches, ahead=1)))


def _ordered_map(pool: ThreadPoolExecutor, function: Callable, items: Sequence, *, ahead: int) -> Iterable:
    """``map(function, items)`` on ``pool`` with at most ``ahead`` items in flight, results in order.

    Closing the generator early (an error downstream) cancels what has not started, instead of finishing it all.
    """
    pending = []
    iterator = iter(items)
    try:
        for item in iterator:
            pending.append(pool.submit(function, item))
            if len(pending) >= ahead:
                break
        while pending:
            result = pending.pop(0).result()
            for item in iterator:
                pending.append(pool.submit(function, item))
                break
            yield result
    finally:
        for future in pending:
            future.cancel()


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
    """Preprocess PIL images into a model batch (n, 3, H, W) (equal to stacking ``eval_transform`` outputs)."""
    preprocessor = BatchPreprocessor.from_data_config(data_config)
    if preprocessor is not None and images and all(image.mode == "RGB" for image in images):
        return preprocessor(images)
    transform = eval_transform(data_config)
    return torch.stack([transform(image) for image in images])
