"""2-D maps of embeddings for plots: PCA, t-SNE and UMAP, seeded, safe on the tiny sets of few-shot projects.

``project_2d(embeddings (n, d), method) -> (n, 2)``. PCA is exact and instant; t-SNE (van der Maaten and Hinton,
2008) and UMAP (McInnes et al., 2018) keep local neighbourhoods and show clusters better, at some seconds of cost.
With very few points the neighbourhood sizes are shrunk to fit, and below 4 points every method falls back to PCA.
"""

from __future__ import annotations

import numpy as np

METHODS = ("pca", "tsne", "umap")
METHOD_LABELS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
MIN_POINTS_FOR_NEIGHBOURS = 4


def project_2d(embeddings, method: str = "pca", *, seed: int = 0) -> np.ndarray:
    """Coordinates (n, 2) of ``embeddings`` (n, d) (array or tensor); the same seed gives the same map."""
    if method not in METHODS:
        raise ValueError(f"projection must be one of {', '.join(METHODS)}, got {method!r}.")
    x = _as_matrix(embeddings)
    if len(x) == 0:
        return np.zeros((0, 2))
    if method == "pca" or len(x) < MIN_POINTS_FOR_NEIGHBOURS:
        return pca_2d(x)
    if method == "tsne":
        return tsne_2d(x, seed)
    return umap_2d(x, seed)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """First two principal components; missing components (n or d below 2) are zeros."""
    from sklearn.decomposition import PCA

    components = min(2, len(x), x.shape[1])
    out = np.zeros((len(x), 2))
    if len(x) >= 2 and components > 0 and np.ptp(x, axis=0).max() > 0:
        out[:, :components] = PCA(n_components=components, random_state=0).fit_transform(x)
    return out


def tsne_2d(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def umap_2d(x: np.ndarray, seed: int) -> np.ndarray:
    import warnings

    import umap

    neighbours = int(min(15, len(x) - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs overridden by random_state; spectral init fallback on tiny sets
        reducer = umap.UMAP(n_components=2, n_neighbors=max(2, neighbours), random_state=seed,
                            init="random" if len(x) < 10 else "spectral")
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def _as_matrix(embeddings) -> np.ndarray:
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().float().cpu().numpy()
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (n, d), got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values; the model produced invalid features.")
    return x
