"""The multi-index near-duplicate search gives exactly the pairs that comparing every pair gives."""

import numpy as np
import pytest

from fsl_app.store import near_duplicate_pairs
from fsl_app.store.duplicates import _all_close_pairs, close_pairs


def _hashes_with_planted_neighbours(n: int, seed: int, clusters: int = 40) -> np.ndarray:
    """n random 64-bit hashes; a share are copies of others with 0-9 bits flipped, some in tight clusters."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + \
        rng.integers(0, 2, size=n).astype(np.uint64)
    for i in range(n // 3, n):
        source = hashes[rng.integers(0, clusters)] if i % 5 == 0 else hashes[rng.integers(0, i)]
        flips = rng.choice(64, size=rng.integers(0, 10), replace=False)
        hashes[i] = source ^ np.uint64(sum(1 << int(bit) for bit in flips))
    return hashes


@pytest.mark.parametrize("crowded", [64, 3])  # 3: most block values are compared as dense blocks
@pytest.mark.parametrize("max_distance", [0, 3, 4, 6, 7, 9])
def test_index_finds_the_same_pairs_as_comparing_all(max_distance, crowded, monkeypatch):
    from fsl_app.store import duplicates

    monkeypatch.setattr(duplicates, "_CROWDED", crowded)
    hashes = _hashes_with_planted_neighbours(3000, seed=max_distance)
    expected = set(zip(*(a.tolist() for a in _all_close_pairs(hashes, max_distance))))
    found = list(zip(*(a.tolist() for a in close_pairs(hashes, max_distance))))
    assert len(found) == len(set(found)), "a pair was reported twice"
    assert set(found) == expected
    assert len(expected) > 100  # the planted neighbours are there to be found


def test_near_duplicate_pairs_are_unchanged_by_the_index(monkeypatch):
    """Full signatures (hash, mean colour, pixel digest) through the public function, index against all pairs."""
    rng = np.random.default_rng(7)
    hashes = _hashes_with_planted_neighbours(2500, seed=11)
    colours = rng.integers(0, 226, size=(40, 3))
    signatures = [f"{int(h):016x}-{''.join(f'{c:02x}' for c in colours[i % 40] + (i % 3) * 10)}-"
                  f"{int(rng.integers(0, 400)):016x}" for i, h in enumerate(hashes)]
    ids = list(range(5, 5 + len(signatures)))
    from fsl_app.store import duplicates

    indexed = near_duplicate_pairs(ids, signatures)
    monkeypatch.setattr(duplicates, "close_pairs", _all_close_pairs)
    exhaustive = near_duplicate_pairs(ids, signatures)
    assert indexed == exhaustive and len(indexed) > 50


def test_signatures_parse_at_once_as_one_by_one():
    from fsl_app.store.duplicates import _Signatures

    rng = np.random.default_rng(3)
    current = [f"{int(h):016x}-{int(c):06x}-{int(d):016x}" for h, c, d in
               zip(rng.integers(0, 2**62, 50), rng.integers(0, 2**24, 50), rng.integers(0, 2**62, 50))]
    current[3] = current[3].upper()
    fast = _Signatures._parse_current(current)
    assert fast is not None
    slow = _Signatures._parse_each(current)
    for field in ("phash", "colour", "digest", "known"):
        assert np.array_equal(getattr(fast, field), getattr(slow, field)), field
    assert _Signatures._parse_current(current + ["8000000000000000"]) is None  # a legacy bare hash: one by one
    assert _Signatures._parse_current([current[0][:-1] + "g"]) is None
