"""Score a huge folder of images on a Ray cluster: ``fsl-app predict MODEL --batch DIR --ray [ADDRESS] --out FILE``.

Ray Data (``ray.data``) streams the image paths through ``map_batches`` over :class:`ImageScorer`, a callable class
of which every actor of the pool (``ActorPoolStrategy``) loads the model once: one ONNX Runtime session per actor for
an ``.onnx`` export (any model ``fsl-app predict`` reads works the same way). The driver writes the predictions as
they stream back, every ``part_rows`` rows, into atomic part files beside the output (``FILE.parts/``); at the end
the parts are merged into ``FILE`` (Parquet or CSV by its suffix), also atomically.

Resumable: a rerun reads ``FILE`` and the parts already written and scores only the images found in neither, so a run
that died (the driver killed, a node lost) resumes where its last part ended, and no image ends up in the output
twice or goes missing. Within a run, Ray Data retries a batch whose actor died on a fresh actor.

The images and the model must be readable at the same paths on every node (a shared file system); the nodes need
``fsl_app`` installed with the ``ray`` extra.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

PART_ROWS = 512
CONNECT_TIMEOUT_S = 5.0
DEFAULT_RAY_PORT = 6379
COLUMNS = ("image", "label", "probability", "top_k", "error")


class RayPredictError(ValueError):
    """A problem the user can fix (Ray missing or unreachable, an unusable output path)."""


@dataclass
class RayPredictReport:
    out: Path
    n_images: int  # images under the folder
    n_scored: int  # scored by this run
    n_resumed: int  # already in the output (or its parts) before this run
    n_errors: int  # images that could not be read, over the whole output


class ImageScorer:
    """One Ray actor's model. Batch ``{"image": paths (n,)}`` -> the columns of :data:`COLUMNS`, n rows."""

    def __init__(self, model: str, top_k: int = 3):
        from .export import load_predictor

        self.predictor = load_predictor(model)
        self.top_k = top_k

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        paths = [Path(str(path)) for path in batch["image"]]
        results = self.predictor.predict_paths(paths, top_k=self.top_k, batch_size=max(1, len(paths)))
        rows = [prediction_row(result) for result in results]
        return {column: np.array([row[column] for row in rows], dtype=object if column != "probability" else float)
                for column in COLUMNS}


def prediction_row(result: dict) -> dict:
    """One prediction dict of ``Predictor.predict_paths`` as a flat output row (``top_k`` as JSON text)."""
    if "error" in result:
        return {"image": result["image"], "label": "", "probability": float("nan"), "top_k": "[]",
                "error": result["error"]}
    return {"image": result["image"], "label": result["label"], "probability": float(result["probability"]),
            "top_k": json.dumps(result["top_k"], ensure_ascii=False), "error": ""}


def list_images(folder: str | Path) -> list[str]:
    """Absolute paths of every image under ``folder``, sorted (the order ``fsl-app predict --batch`` uses)."""
    from .images import is_image_name

    root = Path(folder)
    if not root.is_dir():
        raise RayPredictError(f"{folder} is not a folder. Pass the folder of images to score with --batch DIR.")
    return [str(path.resolve()) for path in sorted(root.rglob("*")) if path.is_file() and is_image_name(path.name)]


def predict_folder_ray(model: str | Path, folder: str | Path, out: str | Path, *, address: str | None = None,
                       actors: int | None = None, gpus_per_actor: float = 0, batch_size: int = 64, top_k: int = 3,
                       part_rows: int = PART_ROWS, connect_timeout: float = CONNECT_TIMEOUT_S,
                       on_progress: Callable[[int, int], None] | None = None,
                       scorer: type = ImageScorer) -> RayPredictReport:
    """Score every image under ``folder`` not yet in ``out`` on Ray; write ``out`` (.parquet or .csv).
    ``scorer``: the callable class each actor holds (:class:`ImageScorer`, or a subclass)."""
    out = Path(out)
    _output_format(out)
    model = str(Path(model).resolve())
    paths = list_images(folder)
    done = scored_images(out)
    todo = [path for path in paths if path not in done]
    if todo:
        ray = connect(address, connect_timeout)
        _score(ray, model, todo, out, actors=actors, gpus_per_actor=gpus_per_actor, batch_size=batch_size,
               top_k=top_k, part_rows=part_rows, on_progress=on_progress, scorer=scorer)
    table = merge_parts(out)
    errors = int((table["error"] != "").sum()) if len(table) else 0
    return RayPredictReport(out, len(paths), len(todo), len(paths) - len(todo), errors)


def _score(ray, model: str, todo: Sequence[str], out: Path, *, actors, gpus_per_actor, batch_size, top_k,
           part_rows, on_progress, scorer) -> None:
    from ray.data import ActorPoolStrategy

    pool_size = actors or max(1, int(ray.available_resources().get("CPU", 1)))
    dataset = ray.data.from_items([{"image": path} for path in todo],
                                  override_num_blocks=max(1, min(1000, math.ceil(len(todo) / batch_size))))
    predictions = dataset.map_batches(scorer, fn_constructor_kwargs={"model": model, "top_k": top_k},
                                      batch_size=batch_size, compute=ActorPoolStrategy(min_size=1, max_size=pool_size),
                                      num_gpus=gpus_per_actor or None, batch_format="numpy")
    written = 0
    for rows in predictions.iter_batches(batch_size=part_rows, batch_format="pandas"):
        write_part(out, rows)
        written += len(rows)
        if on_progress is not None:
            on_progress(written, len(todo))


def connect(address: str | None, timeout: float = CONNECT_TIMEOUT_S):
    """``ray``, initialised: the running session, a local Ray (``None`` / ``"local"``), or the cluster at ``address``.

    A ``host:port`` or ``ray://host:port`` address is probed first, so one that does not answer fails within
    ``timeout`` seconds with a message instead of hanging.
    """
    try:
        import ray
    except ImportError as error:
        raise RayPredictError("--ray needs Ray: pip install 'fsl_app[ray]' (or pip install 'ray[data]').") from error
    if ray.is_initialized():
        return ray
    if address in (None, "", "local"):
        ray.init(include_dashboard=False, log_to_driver=False)
        return ray
    if address != "auto":
        _probe(address, timeout)
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, TimeoutError) as error:
        raise RayPredictError(f"cannot join the Ray cluster at {address!r} ({error}). Start one with `ray start "
                              "--head` on the head node, or pass its address (host:6379 or ray://host:10001)."
                              ) from error
    return ray


def _probe(address: str, timeout: float) -> None:
    """Open a TCP connection to the address's host and port, or raise RayPredictError within ``timeout`` s."""
    host_port = address.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":") if ":" in host_port else (host_port, ":", str(DEFAULT_RAY_PORT))
    try:
        port_number = int(port)
    except ValueError:
        raise RayPredictError(f"Ray address {address!r} has no valid port. Pass host:port, e.g. 10.0.0.5:6379 or "
                              "ray://10.0.0.5:10001, or --ray alone for a local Ray.") from None
    import socket

    try:
        with socket.create_connection((host or "127.0.0.1", port_number), timeout=timeout):
            pass
    except OSError as error:
        raise RayPredictError(f"no Ray cluster answers at {address!r} (after {timeout:.0f} s: {error}). Check the "
                              "address and that `ray start --head` runs there, or pass --ray alone for a local "
                              "Ray.") from None


# --- output files ---------------------------------------------------------------------------------------------------

def _output_format(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise RayPredictError(f"--out {out}: the predictions are written as .parquet or .csv; name the file so.")
    return suffix[1:]


def parts_folder(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def write_part(out: Path, rows) -> Path:
    """Write one part (a pandas DataFrame of :data:`COLUMNS`) atomically into ``FILE.parts/``."""
    import uuid

    from .atomic import open_atomic

    folder = parts_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"part-{uuid.uuid4().hex}.parquet"
    with open_atomic(target, "wb") as handle:
        rows[list(COLUMNS)].to_parquet(handle, index=False)
    return target


def read_predictions(out: Path):
    """Every row in ``out`` and its parts (a pandas DataFrame of :data:`COLUMNS`, one row per image)."""
    import pandas as pd

    frames = []
    if out.is_file():
        frames.append(pd.read_parquet(out) if _output_format(out) == "parquet"
                      else pd.read_csv(out, keep_default_na=False, dtype={"image": str, "label": str, "error": str,
                                                                           "top_k": str}))
    folder = parts_folder(out)
    if folder.is_dir():
        frames.extend(pd.read_parquet(part) for part in sorted(folder.glob("part-*.parquet")))
    if not frames:
        return pd.DataFrame({column: [] for column in COLUMNS})
    table = pd.concat(frames, ignore_index=True)[list(COLUMNS)]
    table["probability"] = pd.to_numeric(table["probability"], errors="coerce")
    return table.drop_duplicates("image", keep="first").reset_index(drop=True)


def scored_images(out: Path) -> set[str]:
    return set(read_predictions(out)["image"])


def merge_parts(out: Path):
    """Rewrite ``out`` with every row of the parts (sorted by image), then remove the parts; returns the table."""
    import shutil

    from .atomic import open_atomic

    table = read_predictions(out).sort_values("image").reset_index(drop=True)
    folder = parts_folder(out)
    if folder.is_dir() or not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with open_atomic(out, "wb") as handle:
            if _output_format(out) == "parquet":
                table.to_parquet(handle, index=False)
            else:
                handle.write(table.to_csv(index=False).encode("utf-8"))
        shutil.rmtree(folder, ignore_errors=True)
    return table


# --- command line -----------------------------------------------------------------------------------------------------

def add_ray_arguments(predict) -> None:
    """``--ray [ADDRESS]``, ``--out``, ``--ray-actors``, ``--ray-gpus`` on the ``predict`` parser (stdlib only)."""
    predict.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                         help="score --batch DIR with Ray Data: alone for a local Ray, or a cluster address "
                              "(host:6379, ray://host:10001, auto); needs the 'ray' extra and --out")
    predict.add_argument("--out", default=None, metavar="FILE", help="with --ray: predictions file (.parquet or "
                         ".csv); a rerun scores only the images not in it yet")
    predict.add_argument("--ray-actors", type=int, default=None, metavar="N",
                         help="with --ray: model actors at most (default: one per CPU of the cluster)")
    predict.add_argument("--ray-gpus", type=float, default=0, metavar="G", help="with --ray: GPUs per actor")


def run_from_cli(args) -> int:
    """``fsl-app predict MODEL --batch DIR --ray [ADDRESS] --out FILE``: score, print a summary line."""
    import sys

    if not args.batch or args.images:
        raise RayPredictError("--ray scores one folder: pass it with --batch DIR (and no other image arguments).")
    if not args.out:
        raise RayPredictError("--ray writes its predictions to a file: add --out predictions.parquet (or .csv).")

    def progress(done: int, total: int) -> None:
        if not args.json:
            print(f"scored {done}/{total}", file=sys.stderr, flush=True)

    report = predict_folder_ray(args.model, args.batch, args.out, address=args.ray, actors=args.ray_actors,
                                gpus_per_actor=args.ray_gpus, top_k=args.top_k, on_progress=progress)
    summary = {"out": str(report.out), "images": report.n_images, "scored": report.n_scored,
               "resumed": report.n_resumed, "errors": report.n_errors}
    print(json.dumps(summary) if args.json else
          f"{report.n_images} images: {report.n_scored} scored now, {report.n_resumed} already in {report.out}, "
          f"{report.n_errors} unreadable")
    return 0 if report.n_errors == 0 else 1
