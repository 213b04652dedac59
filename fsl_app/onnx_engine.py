"""The frozen backbone in ONNX Runtime: exported once per backbone id, cached on disk, checked against torch.

The export fixes the input size, so timm's TF-style "same" padding is turned into constant padding first
(:func:`static_same_padding`): identical numbers, and ONNX Runtime can then fuse every Pad into its Conv. The check
against torch runs once per exported file and library versions (a ``.verified.json`` marker next to the file).

On a CPU the session can use its cores in two ways (``parallel``):

- ``"intra"``: one ``run`` at a time, each operator split over ``threads`` intra-op threads (not spinning);
- ``"data"``: a single-threaded session run concurrently from ``threads`` Python threads, each on its own slice of
  at most ``OnnxBackbone.chunk_size`` images (ONNX Runtime's ``run`` releases the GIL and is thread-safe). No
  per-operator synchronisation, no spinning threads, activations that stay in a core's cache: on a small machine it
  is faster and leaves decoding threads room to run. This is the default for feature extraction
  (benchmarks/results/extraction.md measures both).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backbones import Backbone

log = logging.getLogger(__name__)
OPSET = 18
EXPORT_REVISION = 2  # part of the cached file name: bump when export_onnx changes what it writes
PARALLEL_MODES = ("data", "intra")
_EXPORT_LOCK = threading.Lock()


def cpu_threads() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup v2 CPU quota (containers); at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, *, input_name: str = "images",
                output_name: str | tuple[str, ...] = "output", static_padding: bool = True) -> Path:
    """Export ``model`` with a dynamic batch axis, atomically (temp file then rename).

    ``output_name``: one name, or one name per output of a model that returns a tuple.

    The height and width of ``example`` are fixed in the export, so ``static_padding`` (default) first replaces
    timm's TF-style "same"-padded convolutions by constant padding for that size (:func:`static_same_padding`):
    the same numbers, without the shape arithmetic that otherwise runs at every call and blocks ONNX Runtime's
    Pad+Conv fusion (benchmarks/results/extraction.md measures the gain).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(handle)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            if static_padding:
                model = static_same_padding(model, example)
            outputs = [output_name] if isinstance(output_name, str) else list(output_name)
            torch.onnx.export(model.eval(), (example,), temp, input_names=[input_name], output_names=outputs,
                              dynamic_axes={input_name: {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
                              opset_version=OPSET, dynamo=False)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return path


def static_same_padding(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``model``, or a copy whose timm ``Conv2dSame`` layers use constant padding for ``example``'s spatial size.

    ``Conv2dSame`` computes TensorFlow's "same" padding from the input size at every call; for a fixed input size it
    is a constant ``ZeroPad2d`` followed by an unpadded convolution, which gives identical outputs for that size.
    """
    try:
        from timm.layers import Conv2dSame
        from timm.layers.padding import get_same_padding
    except ImportError:  # a timm without these layers has nothing to replace
        return model
    if not any(isinstance(module, Conv2dSame) for module in model.modules()):
        return model
    model = copy.deepcopy(model)
    sizes: dict[str, tuple[int, int]] = {}
    def recorder(name: str):
        def hook(_module, args) -> None:
            sizes.setdefault(name, tuple(args[0].shape[-2:]))

        return hook

    hooks = [module.register_forward_pre_hook(recorder(name))
             for name, module in model.named_modules() if isinstance(module, Conv2dSame)]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    for name, (height, width) in sizes.items():
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        same = getattr(parent, attribute)
        pad_h = get_same_padding(int(height), same.kernel_size[0], same.stride[0], same.dilation[0])
        pad_w = get_same_padding(int(width), same.kernel_size[1], same.stride[1], same.dilation[1])
        conv = nn.Conv2d(same.in_channels, same.out_channels, same.kernel_size, same.stride, 0, same.dilation,
                         same.groups, same.bias is not None)
        conv.weight = same.weight
        conv.bias = same.bias
        pad = nn.ZeroPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        setattr(parent, attribute, nn.Sequential(pad, conv))
    return model


def cpu_session(path: Path, threads: int | None = None, *, spinning: bool = True):
    """An ONNX Runtime CPU session with all graph optimizations and ``threads`` intra-op threads.

    ``spinning=False`` lets idle intra-op threads sleep instead of busy-waiting, so other threads of the process
    (image decoding) get the cores between operators.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxBackbone:
    """Callable (n, 3, H, W) float tensor -> (n, d) float tensor, backed by an ONNX Runtime CPU session.

    With ``workers > 1`` (a single-threaded session, ``parallel="data"``) a batch is cut into slices of at most
    ``chunk_size`` images that ``workers`` threads run concurrently; :meth:`run` forwards one array in the calling
    thread. Small slices keep a run's activations in the core's cache (benchmarks/results/extraction.md, "Slice and
    batch sizes").
    """

    chunk_size = 2

    def __init__(self, session, *, workers: int = 1):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.workers = max(1, int(workers))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ort") if self.workers > 1 else None

    def run(self, array: np.ndarray) -> np.ndarray:
        """Forward one float32 array (n, 3, H, W) in the calling thread."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(array, dtype=np.float32)})[0]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        if self._pool is None or len(array) < 2:
            return torch.from_numpy(self.run(array))
        slices = max(self.workers, -(-len(array) // self.chunk_size))
        return torch.from_numpy(np.concatenate(list(self._pool.map(self.run, np.array_split(array, slices)))))

    @staticmethod
    def export_path(backbone: Backbone, directory: Path) -> Path:
        """Where :meth:`for_backbone` keeps the export of ``backbone`` (one file per weights and export revision)."""
        return Path(directory) / f"{backbone.id}-r{EXPORT_REVISION}.onnx"

    @classmethod
    def for_backbone(cls, backbone: Backbone, directory: Path, *, tolerance: float = 1e-3, threads: int | None = None,
                     parallel: str = "data") -> "OnnxBackbone":
        """Load the cached export of ``backbone`` or export it now; verify it matches torch before use.

        The check runs once per exported file and library versions: a ``<file>.verified.json`` next to the export
        records the file's sha256 and the onnxruntime, torch and timm versions, so later processes skip the torch forward.

        ``threads`` (default: the usable cores) are spent as ``parallel`` says: ``"data"`` (concurrent
        single-threaded runs on slices of the batch) or ``"intra"`` (one run, multi-threaded operators).
        """
        if parallel not in PARALLEL_MODES:
            raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {parallel!r}")
        threads = threads or cpu_threads()
        path = cls.export_path(backbone, directory)
        example = torch.randn(2, *backbone.input_size, generator=torch.Generator().manual_seed(0))
        with _EXPORT_LOCK:
            if not path.is_file():
                log.info("exporting %s to ONNX once (cached at %s)", backbone.name, path)
                export_onnx(backbone.model.cpu().float(), example, path)
                _remove_older_revisions(backbone, path)
        if parallel == "data":
            engine = cls(cpu_session(path, 1), workers=threads)
        else:  # no spinning: the extractor's decoding threads run between operators
            engine = cls(cpu_session(path, threads, spinning=False))
        marker = path.with_name(path.name + ".verified.json")
        fingerprint = _fingerprint(path, tolerance)
        if _read_json(marker) == fingerprint:
            return engine  # this exact file was checked against torch with these library versions before
        with torch.inference_mode():
            reference = backbone.model.cpu().eval()(example)
        difference = (engine(example) - reference).abs().max().item()
        if not difference <= tolerance:
            path.unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
            raise RuntimeError(f"ONNX output differs from torch by {difference:.2e}")
        _write_json(marker, fingerprint)
        return engine


def _remove_older_revisions(backbone: Backbone, current: Path) -> None:
    """Exports of the same weights written by an older fsl_app (and their check markers) are dead weight."""
    for old in list(current.parent.glob(f"{backbone.id}.onnx*")) + list(current.parent.glob(f"{backbone.id}-r*.onnx*")):
        if old.name.startswith(current.name):
            continue
        try:
            old.unlink()
        except OSError:  # in use elsewhere (Windows) or read-only: harmless, just space
            pass


def _fingerprint(path: Path, tolerance: float) -> dict:
    """What a successful check against torch vouches for: these bytes, run by these library versions."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    versions = {package: _installed_version(package) for package in ("onnxruntime", "torch", "timm")}  # no import
    return {"sha256": digest.hexdigest(), **versions, "tolerance": tolerance}


def _installed_version(package: str) -> str:
    """The installed distribution's version (onnxruntime may be installed as onnxruntime-gpu), read without import."""
    from importlib import metadata

    for distribution in (package, f"{package}-gpu"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict) -> None:
    try:
        handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(data, stream)
        os.replace(temp, path)
    except OSError as error:  # a read-only cache only costs the check next time
        log.info("could not record the ONNX check in %s (%s)", path, error)
