"""Near-duplicate detection: image signatures at import time, cosine similarity once features exist.

Exact duplicates (same bytes, same sha256) are never stored twice. Near duplicates (the same picture re-encoded,
resized or lightly edited) are kept but flagged: in few-shot data they inflate a class and, split across train and
test, make an evaluation look better than it is.

A perceptual hash sees structure in grey levels only: every single-colour image, red or blue, 1 pixel or 1000, has
the same one. The stored signature therefore adds the mean colour (near duplicates must also look alike in colour)
and a digest of the pixels at a canonical size (only equal digests are "identical").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

NEAR_DUPLICATE_MAX_DISTANCE = 6  # of 64 phash bits; re-encoded or resized copies are typically 0-4 apart
MAX_COLOUR_DIFFERENCE = 24  # of 255, per channel of the mean colour; re-encoding or resizing moves it by ~1
CANONICAL_SIZE = (32, 32)
_LEGACY_FLAT_HASHES = frozenset({0x8000000000000000, 0})  # what phash gives every single-colour image
_CHUNK = 256
_SIGNATURE_LENGTH = 40  # 16 + 1 + 6 + 1 + 16
_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
_HEX_VALUE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)
_HEX_VALUE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_SMALL = 2_048  # up to this many hashes, comparing all pairs is as fast as the index
_CROWDED = 64  # rows sharing one block value beyond which they are compared as a dense block
_DENSE_CELLS = 1 << 22  # hash pairs compared at once in a dense block (32 MiB of uint64)
_QUERY_ROWS = 16_384  # hashes looked up at once: bounds the memory of one lookup
_BLOCKS = 4  # 16-bit blocks of the 64-bit perceptual hash, for the multi-index search
_PAIRS_FORMAT = 1  # bump when near_duplicate_pairs answers differently for the same signatures


def perceptual_hash(image: Image.Image) -> str:
    """64-bit DCT perceptual hash (``imagehash.phash``) as 16 hex digits."""
    import imagehash

    return str(imagehash.phash(image))


def image_signature(image: Image.Image) -> str:
    """``<phash 16 hex>-<mean RGB 6 hex>-<pixel digest 16 hex>``: what :func:`near_duplicate_pairs` compares.

    The digest hashes the RGB pixels box-resized to :data:`CANONICAL_SIZE`: the same picture stored in two
    lossless formats (or at sizes that average to the same pixels) has the same digest; a lossy re-encoding does not.
    """
    small = image.convert("RGB").resize(CANONICAL_SIZE, Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.uint8)
    mean = np.round(pixels.reshape(-1, 3).mean(0)).astype(int)
    colour = "".join(f"{int(value):02x}" for value in mean)
    digest = hashlib.sha256(pixels.tobytes()).hexdigest()[:16]
    return f"{perceptual_hash(image)}-{colour}-{digest}"


@dataclass(frozen=True)
class _Signatures:
    """Parsed signatures of n images; hashes stored before signatures existed have ``known`` False."""

    phash: np.ndarray  # (n,) uint64
    colour: np.ndarray  # (n, 3) int16
    digest: np.ndarray  # (n,) uint64
    known: np.ndarray  # (n,) bool

    @classmethod
    def parse(cls, hashes: Sequence[str]) -> "_Signatures":
        parsed = cls._parse_current(hashes)
        return parsed if parsed is not None else cls._parse_each(hashes)

    @classmethod
    def _parse_current(cls, hashes: Sequence[str]) -> "_Signatures | None":
        """All signatures in the current 40-character format at once (100,000 in a few ms); None otherwise."""
        if not len(hashes) or not all(isinstance(value, str) and len(value) == _SIGNATURE_LENGTH for value in hashes):
            return None
        raw = np.frombuffer("".join(hashes).encode("ascii", errors="replace"), np.uint8).reshape(-1, _SIGNATURE_LENGTH)
        nibbles = _HEX_VALUE[raw].astype(np.uint64)  # (n, 40); dashes and other characters are 255
        dashes = raw[:, [16, 23]] == ord("-")
        digits = np.delete(nibbles, [16, 23], axis=1)
        if not dashes.all() or (digits == 255).any():
            return None
        weights = np.uint64(16) ** np.arange(15, -1, -1, dtype=np.uint64)
        phash = (nibbles[:, :16] * weights).sum(1, dtype=np.uint64)
        colour = (nibbles[:, 17:23:2] * 16 + nibbles[:, 18:23:2]).astype(np.int16)
        digest = (nibbles[:, 24:] * weights).sum(1, dtype=np.uint64)
        return cls(phash, colour, digest, np.ones(len(raw), dtype=bool))

    @classmethod
    def _parse_each(cls, hashes: Sequence[str]) -> "_Signatures":
        parts = [str(value).split("-") for value in hashes]
        known = np.array([len(part) == 3 for part in parts], dtype=bool)
        phash = np.array([int(part[0], 16) for part in parts], dtype=np.uint64)
        colour = np.array([[int(part[1][i:i + 2], 16) for i in (0, 2, 4)] if len(part) == 3 else [0, 0, 0]
                           for part in parts], dtype=np.int16).reshape(-1, 3)
        digest = np.array([int(part[2], 16) if len(part) == 3 else 0 for part in parts], dtype=np.uint64)
        return cls(phash, colour, digest, known)

    @property
    def legacy_flat(self) -> np.ndarray:
        """Old hashes of single-colour images: their colour is unknown, so they match nothing."""
        return ~self.known & np.isin(self.phash, np.array(sorted(_LEGACY_FLAT_HASHES), dtype=np.uint64))


def near_duplicate_pairs(ids: Sequence[int], hashes: Sequence[str],
                         max_distance: int = NEAR_DUPLICATE_MAX_DISTANCE) -> list[tuple[int, int, int]]:
    """Pairs ``(id_a, id_b, distance)`` of near duplicates, closest first; ``id_a < id_b``.

    ``hashes`` are :func:`image_signature` strings (or bare 16-hex perceptual hashes stored by older versions).
    Distance 0 means identical pixels at the canonical size; otherwise it is the perceptual-hash Hamming distance
    (at least 1), at most ``max_distance``, between images whose mean colours also agree.
    """
    if len(ids) != len(hashes):
        raise ValueError(f"got {len(ids)} ids but {len(hashes)} hashes; pass one hash per id.")
    signatures = _Signatures.parse(hashes)
    distances = {**_alike_pairs(signatures, max_distance), **_identical_pairs(signatures)}
    id_array = np.asarray(ids, dtype=np.int64)
    pairs = [_ordered(id_array[row], id_array[col], distance) for (row, col), distance in distances.items()]
    return sorted(pairs, key=lambda pair: (pair[2], pair[0], pair[1]))


def pairs_key(ids: Sequence[int], hashes: Sequence[str], max_distance: int) -> str:
    """A digest of every ``(id, signature)`` and of the search's settings: what :func:`near_duplicate_pairs` answers
    depends on nothing else, so equal keys mean equal answers (ids are never reused; a signature never changes)."""
    digest = hashlib.sha256(f"{_PAIRS_FORMAT}/{max_distance}/{MAX_COLOUR_DIFFERENCE}/{len(ids)}/".encode())
    digest.update(np.asarray(ids, dtype=np.int64).tobytes())
    digest.update("\n".join(str(value) for value in hashes).encode())
    return digest.hexdigest()


def load_pairs(path: Path, key: str) -> list[tuple[int, int, int]] | None:
    """The pairs :func:`save_pairs` wrote under ``key``; None when the file is missing, unreadable or another key's."""
    try:
        saved = json.loads(Path(path).read_text())
        if saved.get("key") != key:
            return None
        return [(int(a), int(b), int(distance)) for a, b, distance in saved["pairs"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_pairs(path: Path, key: str, pairs: Sequence[tuple[int, int, int]]) -> None:
    """Write ``pairs`` under ``key`` atomically; a folder that cannot be written only costs the next search."""
    from ..atomic import write_bytes_atomic

    try:
        write_bytes_atomic(path, json.dumps({"key": key, "pairs": [list(pair) for pair in pairs]},
                                            separators=(",", ":")).encode(), durable=False)
    except OSError:
        pass


def _alike_pairs(signatures: _Signatures, max_distance: int) -> dict[tuple[int, int], int]:
    """``{(row, col): Hamming distance, at least 1}`` for rows whose hashes and mean colours are close."""
    rows, cols = close_pairs(signatures.phash, max_distance)
    distance = np.bitwise_count(signatures.phash[rows] ^ signatures.phash[cols])
    keep = ~signatures.legacy_flat[rows] & ~signatures.legacy_flat[cols]
    both_known = signatures.known[rows] & signatures.known[cols]
    colour_gap = np.abs(signatures.colour[rows] - signatures.colour[cols]).max(-1, initial=0)
    keep &= ~both_known | (colour_gap <= MAX_COLOUR_DIFFERENCE)
    rows, cols, distance = rows[keep], cols[keep], np.maximum(distance[keep], 1)
    return dict(zip(zip(rows.tolist(), cols.tolist()), distance.tolist()))


def close_pairs(phash: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Every row pair ``(rows, cols)``, ``rows < cols``, once, whose hashes are at most ``max_distance`` bits apart.

    Multi-index hashing (Norouzi, Punjani and Fleet, "Fast Search in Hamming Space with Multi-Index Hashing", CVPR
    2012): the 64 bits are cut into :data:`_BLOCKS` blocks of 16; two hashes at most ``d`` apart differ in at least one
    block by at most ``d // _BLOCKS`` bits (pigeonhole), so looking each hash's blocks (and their neighbours within
    that radius) up in an index of the block values finds every close pair among a few candidates instead of
    comparing all n^2 pairs. Real hashes crowd into some block values (photos on plain backgrounds, centred
    objects): those crowded values are compared as dense blocks instead of pair lists. The same answer as comparing
    every pair (:func:`_all_close_pairs`). ``phash``: (n,) uint64.
    """
    n = len(phash)
    radius = max_distance // _BLOCKS
    if n <= _SMALL or radius >= 2:  # few hashes, or a radius that makes the index slower than comparing all pairs
        return _all_close_pairs(phash, max_distance)
    masks = np.array([0] + ([1 << bit for bit in range(16)] if radius == 1 else []), dtype=np.int64)
    found = []
    for block in range(_BLOCKS):
        keys = ((phash >> np.uint64(16 * block)) & np.uint64(0xFFFF)).astype(np.int64)
        order = np.argsort(keys, kind="stable")  # row numbers grouped by key
        bucket_start = np.concatenate([[0], np.cumsum(np.bincount(keys, minlength=1 << 16))])
        crowded = np.diff(bucket_start) > _CROWDED
        for mask in masks:
            # a pair whose keys differ by the mask's bit is looked up once, from the row whose key lacks the bit
            queries = np.flatnonzero((keys & mask) == 0) if mask else np.arange(n)
            for start in range(0, len(queries), _QUERY_ROWS):
                part = queries[start:start + _QUERY_ROWS]
                rows, cols = _lookup(part, keys[part] ^ mask, bucket_start, order, crowded, same_key=not mask)
                close = np.bitwise_count(phash[rows] ^ phash[cols]) <= max_distance
                rows, cols = rows[close], cols[close]
                found.append(np.minimum(rows, cols) * n + np.maximum(rows, cols))
        for key in np.flatnonzero(crowded):
            found.extend(_crowded_pairs(phash, max_distance, key ^ masks, bucket_start, order))
    pairs = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)  # encoded row * n + col
    return pairs // n, pairs % n


def _lookup(rows: np.ndarray, query: np.ndarray, bucket_start: np.ndarray, order: np.ndarray, crowded: np.ndarray,
            same_key: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs ``(rows[i], col)`` with ``key[col] == query[i]``, skipping crowded keys (rows with key k are
    ``order[bucket_start[k]:bucket_start[k + 1]]``); with ``same_key`` only pairs with row < col."""
    start = bucket_start[query]
    counts = np.where(crowded[query], 0, bucket_start[query + 1] - start)
    pair_rows = np.repeat(rows, counts)
    offsets = np.arange(counts.sum(), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = order[np.repeat(start, counts) + offsets]
    if same_key:
        keep = pair_rows < cols
        return pair_rows[keep], cols[keep]
    return pair_rows, cols


def _crowded_pairs(phash: np.ndarray, max_distance: int, neighbour_keys: np.ndarray, bucket_start: np.ndarray,
                   order: np.ndarray) -> list[np.ndarray]:
    """Encoded close pairs between the rows of a crowded key (``neighbour_keys[0]``) and the rows of it and its
    neighbouring keys, compared as dense blocks of at most :data:`_DENSE_CELLS` hash pairs."""
    n = len(phash)
    targets = order[bucket_start[neighbour_keys[0]]:bucket_start[neighbour_keys[0] + 1]]
    queries = np.concatenate([order[bucket_start[key]:bucket_start[key + 1]] for key in neighbour_keys])
    found = []
    step = max(1, _DENSE_CELLS // len(targets))
    for first in range(0, len(queries), step):
        part = queries[first:first + step]
        close = np.bitwise_count(phash[part, None] ^ phash[None, targets]) <= max_distance
        a, b = part[np.nonzero(close)[0]], targets[np.nonzero(close)[1]]
        keep = a != b
        found.append(np.minimum(a, b)[keep] * n + np.maximum(a, b)[keep])
    return found


def _all_close_pairs(phash: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Every row pair within ``max_distance`` by comparing all pairs, in blocks of :data:`_CHUNK` rows."""
    found_rows, found_cols = [], []
    for start in range(0, len(phash), _CHUNK):
        hamming = np.bitwise_count(phash[start:start + _CHUNK, None] ^ phash[None, start:])
        rows, cols = np.nonzero(hamming <= max_distance)
        rows, cols = rows + start, cols + start
        keep = cols > rows
        found_rows.append(rows[keep])
        found_cols.append(cols[keep])
    if not found_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(found_rows).astype(np.int64), np.concatenate(found_cols).astype(np.int64)


def _identical_pairs(signatures: _Signatures) -> dict[tuple[int, int], int]:
    """``{(row, col): 0}`` for rows whose pixel digests are equal."""
    groups: dict[int, list[int]] = {}
    for row in np.flatnonzero(signatures.known):
        groups.setdefault(int(signatures.digest[row]), []).append(int(row))
    return {(a, b): 0 for rows in groups.values() for i, a in enumerate(rows) for b in rows[i + 1:]}


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
