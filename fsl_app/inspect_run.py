"""Look inside a trained run: its fitted strategy, a 2-D map of the space it decides in, predictions for a new
image with the nearest training images.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .backbones import BackboneError
from .dataset import ImageRecord, ImageSet
from .images import decode_image, sha256_bytes
from .projection import project_2d
from .runs import load_run

HELD_OUT, TRAINING_ONLY = "held-out (evaluated)", "training only"
MAX_MAP_POINTS = 2_000  # embedding, projecting and drawing more points takes seconds and shows no more structure


def fitted_strategy(run_dir: str | Path):
    """The fitted strategy of a run folder; the error says what to do when its backbone weights are missing."""
    try:
        strategy, _ = load_run(run_dir)
    except BackboneError as error:
        raise BackboneError(f"this run's backbone cannot be loaded here: {error}") from error
    return strategy


def run_image_set(run: dict) -> ImageSet:
    """The labeled images a run trained on that are still on disk, in the order of its predictions' indices."""
    records = (run["config"].get("data") or {}).get("images") or []
    return ImageSet(ImageRecord(path=Path(r["path"]), sha256=r["sha256"], label=r["label"])
                    for r in records if Path(r["path"]).is_file())


@dataclass
class EmbeddingMap:
    """Points of a 2-D map: x, y, label, file, path, role (held-out, training only, or a strategy's own points such
    as ``prototype``), correct (None where not evaluated)."""

    points: list[dict]
    method: str
    note: str = ""


def embedding_map(strategy, run: dict, method: str = "pca", *, seed: int = 0, names: dict[str, str] | None = None,
                  max_points: int = MAX_MAP_POINTS) -> EmbeddingMap:
    """2-D map of ``strategy.embed`` of the run's images, plus the strategy's own ``map_points()`` (e.g. ProtoNet's
    prototypes). ``names`` maps sha256 to the file name shown on hover (default: the stored file name). A run of
    more than ``max_points`` images is shown by a seeded random sample of them, and the map's note says so."""
    import numpy as np

    images = run_image_set(run)
    if len(images) == 0:
        return EmbeddingMap([], method, "The images of this run are no longer on disk.")
    index = np.arange(len(images))
    note = ""
    if len(images) > max_points:
        index = np.sort(np.random.default_rng(seed).choice(len(images), size=max_points, replace=False))
        note = (f"The map shows a random sample of {max_points:,} of the run's {len(images):,} images: embedding "
                "and projecting every one would take too long.")
        images = images.subset(index)
    vectors = strategy.embed(images).detach().float().cpu().numpy()
    extra = [(role, label, _as_array(vector)) for role, label, vector in strategy.map_points()]
    stacked = np.concatenate([vectors, np.stack([v for _, _, v in extra])]) if extra else vectors
    xy = project_2d(stacked, method, seed=seed)
    outcome = {p["index"]: p["true"] == p["predicted"] for p in run.get("predictions") or []}
    points = [{"x": float(xy[i, 0]), "y": float(xy[i, 1]), "label": images[i].label,
               "file": (names or {}).get(images[i].sha256, images[i].path.name), "path": str(images[i].path),
               "role": HELD_OUT if int(index[i]) in outcome else TRAINING_ONLY,
               "correct": outcome.get(int(index[i]))}
              for i in range(len(images))]
    points += [{"x": float(xy[len(images) + j, 0]), "y": float(xy[len(images) + j, 1]), "label": label,
                "file": f"{role} of {label}", "path": None, "role": role, "correct": None}
               for j, (role, label, _) in enumerate(extra)]
    return EmbeddingMap(points, method, note)


def _as_array(vector):
    """A tensor or array vector (d,) as a float numpy array."""
    import numpy as np

    if hasattr(vector, "detach"):
        vector = vector.detach().float().cpu().numpy()
    return np.asarray(vector, dtype=np.float32)


@dataclass
class Prediction:
    top_k: list[dict]  # [{label, probability}], most probable first
    nearest: list[dict] = field(default_factory=list)  # [{path, label, similarity}], most similar first


def predict_image(strategy, data: bytes, name: str, *, top_k: int = 3, training: ImageSet | None = None,
                  neighbours: int = 5) -> Prediction:
    """Top-k classes of one uploaded image and its nearest training images in the strategy's embedding space."""
    decode_image(data, name)  # raises ImageError with a readable reason
    with tempfile.TemporaryDirectory(prefix="fsl_app_try_") as folder:
        path = Path(folder) / f"query{Path(name).suffix.lower() or '.png'}"
        path.write_bytes(data)
        query = ImageSet([ImageRecord(path=path, sha256=sha256_bytes(data), label=None)])
        probabilities = strategy.predict_proba(query)[0].float()
        values, indices = probabilities.topk(min(top_k, len(strategy.classes_)))
        top = [{"label": strategy.classes_[i], "probability": float(v)}
               for v, i in zip(values.tolist(), indices.tolist())]
        nearest = _nearest(strategy, query, training, neighbours) if training is not None and len(training) else []
    return Prediction(top, nearest)


def _nearest(strategy, query: ImageSet, training: ImageSet, count: int) -> list[dict]:
    """The ``count`` training images with the highest cosine similarity to the query in ``strategy.embed`` space."""
    import torch

    both = strategy.embed(ImageSet(list(query.records) + list(training.records))).float()
    unit = torch.nn.functional.normalize(both, dim=1)
    similarity = (unit[1:] @ unit[0]).tolist()
    order = sorted(range(len(similarity)), key=lambda i: -similarity[i])[:count]
    return [{"path": str(training[i].path), "label": training[i].label, "similarity": similarity[i]} for i in order]
