"""2-D projections for the embedding map: shapes, seeds, tiny and degenerate inputs, clear errors."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from fsl_app.projection import METHODS, project_2d


@pytest.fixture(scope="module")
def clusters() -> tuple[np.ndarray, np.ndarray]:
    """Three well separated clusters of 6 points in 32-D."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10, size=(3, 32))
    labels = np.repeat(np.arange(3), 6)
    return centres[labels] + rng.normal(size=(18, 32)), labels


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_projection_is_2d_finite_and_seeded(clusters, method):
    x, _ = clusters
    first, second = project_2d(x, method, seed=3), project_2d(x, method, seed=3)
    assert first.shape == (18, 2) and np.isfinite(first).all()
    np.testing.assert_allclose(first, second)


@pytest.mark.slow  # numba compiles UMAP on the first call in a fresh environment (~30 s of CPU), then caches it
def test_umap_projection_keeps_clusters_apart(clusters):
    x, labels = clusters
    points = project_2d(x, "umap", seed=0)
    assert points.shape == (18, 2) and np.isfinite(points).all()
    np.testing.assert_allclose(project_2d(x, "umap", seed=0), points)  # the same seed gives the same map
    centres = np.stack([points[labels == c].mean(0) for c in range(3)])
    spread = max(np.linalg.norm(points[labels == c] - centres[c], axis=1).mean() for c in range(3))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a + 1, 3)]
    assert min(gaps) > spread


class FakeUMAP:
    """Records the arguments umap.UMAP gets; returns the first two columns."""

    calls: list[dict] = []

    def __init__(self, **kwargs):
        FakeUMAP.calls.append(kwargs)

    def fit_transform(self, x):
        return x[:, :2]


@pytest.mark.parametrize("n, neighbours, init", [(5, 4, "random"), (18, 15, "spectral")])
def test_umap_gets_a_neighbourhood_that_fits_the_data_and_the_seed(monkeypatch, clusters, n, neighbours, init):
    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    FakeUMAP.calls.clear()
    points = project_2d(clusters[0][:n], "umap", seed=7)
    assert points.shape == (n, 2)
    assert FakeUMAP.calls == [{"n_components": 2, "n_neighbors": neighbours, "random_state": 7, "init": init}]


def test_pca_separates_clusters(clusters):
    x, labels = clusters
    points = project_2d(x, "pca")
    centres = np.stack([points[labels == c].mean(0) for c in range(3)])
    assert min(np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a + 1, 3)) > 1.0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_tiny_sets_fall_back_to_pca(method, n):
    points = project_2d(np.arange(n * 4, dtype=float).reshape(n, 4), method)
    assert points.shape == (n, 2) and np.isfinite(points).all()


def test_constant_and_one_dimensional_embeddings_give_zeros_or_a_line():
    assert not project_2d(np.ones((5, 3)), "pca").any()
    line = project_2d(np.arange(5, dtype=float)[:, None], "pca")
    assert line.shape == (5, 2) and not line[:, 1].any() and line[:, 0].std() > 0


def test_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    points = project_2d(torch.randn(6, 8), "pca")
    assert points.shape == (6, 2)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="projection must be one of"):
        project_2d(np.zeros((4, 2)), "lda")
    with pytest.raises(ValueError, match="2-D array"):
        project_2d(np.zeros(4), "pca")
    with pytest.raises(ValueError, match="NaN"):
        project_2d(np.array([[0.0, np.nan], [1.0, 2.0]]), "pca")
