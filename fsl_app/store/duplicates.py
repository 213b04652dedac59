"""Near-duplicate detection: perceptual hashes at import time, cosine similarity once features exist.

Exact duplicates (same bytes, same sha256) are never stored twice. Near duplicates (the same picture re-encoded,
resized or lightly edited) are kept but flagged: in few-shot data they inflate a class and, split across train and
test, make an evaluation look better than it is.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

NEAR_DUPLICATE_MAX_DISTANCE = 6  # of 64 phash bits; re-encoded or resized copies are typically 0-4 apart
_CHUNK = 1024


def perceptual_hash(image: Image.Image) -> str:
    """64-bit DCT perceptual hash (``imagehash.phash``) as 16 hex digits."""
    import imagehash

    return str(imagehash.phash(image))


def near_duplicate_pairs(ids: Sequence[int], hashes: Sequence[str],
                         max_distance: int = NEAR_DUPLICATE_MAX_DISTANCE) -> list[tuple[int, int, int]]:
    """Pairs ``(id_a, id_b, hamming distance)`` with distance <= ``max_distance``, closest first; ``id_a < id_b``."""
    if len(ids) != len(hashes):
        raise ValueError(f"got {len(ids)} ids but {len(hashes)} hashes; pass one hash per id.")
    values = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    id_array = np.asarray(ids, dtype=np.int64)
    pairs = []
    for start in range(0, len(values), _CHUNK):
        block = values[start:start + _CHUNK]
        distances = np.bitwise_count(block[:, None] ^ values[None, :])
        rows, cols = np.nonzero(distances <= max_distance)
        keep = cols > rows + start
        for row, col in zip(rows[keep], cols[keep], strict=True):
            pairs.append(_ordered(id_array[row + start], id_array[col], int(distances[row, col])))
    return sorted(pairs, key=lambda pair: (pair[2], pair[0], pair[1]))


def similar_pairs_from_embeddings(embeddings, ids: Sequence[int],
                                  min_similarity: float = 0.95) -> list[tuple[int, int, float]]:
    """Pairs ``(id_a, id_b, cosine similarity)`` with similarity >= ``min_similarity``, most similar first.

    ``embeddings``: array or tensor of shape (n, d), one row per id (e.g. backbone features).
    """
    matrix = _as_float_matrix(embeddings)
    if matrix.shape[0] != len(ids):
        raise ValueError(f"embeddings have {matrix.shape[0]} rows but {len(ids)} ids were given; pass one id per row.")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    id_array = np.asarray(ids, dtype=np.int64)
    pairs = []
    for start in range(0, len(unit), _CHUNK):
        similarity = unit[start:start + _CHUNK] @ unit.T
        rows, cols = np.nonzero(similarity >= min_similarity)
        keep = cols > rows + start
        for row, col in zip(rows[keep], cols[keep], strict=True):
            a, b, _ = _ordered(id_array[row + start], id_array[col], 0)
            pairs.append((a, b, float(similarity[row, col])))
    return sorted(pairs, key=lambda pair: (-pair[2], pair[0], pair[1]))


def _as_float_matrix(embeddings) -> np.ndarray:
    if hasattr(embeddings, "detach"):  # torch.Tensor, without importing torch here
        embeddings = embeddings.detach().float().cpu().numpy()
    matrix = np.asarray(embeddings, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"embeddings must have shape (n, d), got {matrix.shape}.")
    return matrix


def _ordered(a, b, distance: int) -> tuple[int, int, int]:
    a, b = int(a), int(b)
    return (a, b, distance) if a < b else (b, a, distance)
