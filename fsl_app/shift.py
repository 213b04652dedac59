"""Domain shift on frozen features: detect it (two-sample test) and align a target domain to the labeled one.

**Detect.** :func:`detect_shift` compares the labeled images' features (the reference) with a pool or a folder about
to be predicted (the target) with the kernel two-sample test of Gretton et al., "A Kernel Two-Sample Test" (JMLR
2012): the maximum mean discrepancy (MMD) under an RBF kernel whose bandwidth is the median pairwise distance, and a
permutation p-value. The effect size is the MMD itself (0: same distribution, sqrt(2): no overlap at all), which
does not grow with the sample size the way a p-value does. It also ranks every target image by its mean distance to
its k nearest reference images, relative to how far reference images lie from each other, so the fronts can show
the images furthest from the labeled data. A shift between a labeled set that holds only some classes and a pool
that holds others is a real shift too: the test compares distributions, whatever made them differ.

**Adapt.** :func:`fit_alignment` fits an affine map ``x -> (x - mu_t) @ A + mu_s`` that moves target features onto
the source (labeled) domain: ``center`` subtracts the target mean and adds the source mean (A = I); ``coral``
(Sun, Feng and Saenko, "Return of Frustratingly Easy Domain Adaptation", AAAI 2016) also whitens with the target
covariance and recolours with the source covariance, A = C_t^(-1/2) C_s^(1/2), so the aligned target has the source's
mean and covariance. Covariances are shrunk towards a scaled identity (Ledoit-Wolf by default), which keeps the map
well-posed when there are far fewer images than feature dimensions (20 images, 1280-d). Then the whitening fits the
span of the pool's own images: new images of the target domain come out with the source's spread, the pool images
themselves with less (centring has no such effect). The fitted map is a plain affine layer (:class:`AlignmentModule`)
that runs before any head, so it exports with the model.

Cost bounds: the test uses at most ``max_points`` images per side (seeded subsample): memory O((2 max_points)^2) for
the kernel matrix plus O(max_points x permutation batch), time O(max_points^2 (d + permutations)); the furthest-image
ranking visits every target image in chunks against the (subsampled) reference, so it is linear in the target size.
Covariances use at most ``max_points`` images per domain (means use all of them) and are kept as a low-rank
eigendecomposition; building A costs O(d^2 r) with r the rank (at most the number of images used).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from .dataset import DataError

ALIGN_METHODS = ("none", "center", "coral")
DEFAULT_MAX_POINTS = 500  # per side, for the two-sample test
DEFAULT_COVARIANCE_POINTS = 1000  # per domain, for the covariance of an alignment
_PERMUTATION_BATCH = 64
_RANK_CHUNK = 4096


def _single_threaded(function):
    """Run ``function`` with one BLAS/OpenMP thread: on these few-hundred-row problems more threads only wait on
    each other, as in the strategies' head fits."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with threadpool_limits(1):
            return function(*args, **kwargs)

    return wrapper


def _check_features(features: torch.Tensor, role: str, *, min_rows: int = 0) -> torch.Tensor:
    """Validated (n, d) floating-point features, not copied (callers convert subsamples and chunks to float64);
    ``role`` names the argument in errors."""
    if not isinstance(features, torch.Tensor):
        features = torch.as_tensor(np.asarray(features))
    if features.ndim != 2:
        raise DataError(f"{role} features must be a 2-D (images x dimensions) tensor, got shape "
                        f"{tuple(features.shape)}.")
    if len(features) < min_rows:
        raise DataError(f"{role} needs at least {min_rows} images, got {len(features)}. Add images to it.")
    features = features.detach() if features.is_floating_point() else features.float()
    bad = sum(int((~torch.isfinite(chunk)).any(dim=1).sum()) for chunk in features.split(_RANK_CHUNK))
    if bad:
        raise DataError(f"{role} features hold NaN or infinite values in {bad} image(s). Re-extract the features "
                        "(clear the feature cache) or drop those images.")
    return features


def _check_same_dimension(first: torch.Tensor, second: torch.Tensor) -> None:
    if first.shape[1] != second.shape[1]:
        raise DataError(f"reference and target features differ in dimension ({first.shape[1]} vs "
                        f"{second.shape[1]}): extract both with the same backbone.")


def _subsample(features: torch.Tensor, limit: int, generator: torch.Generator) -> torch.Tensor:
    if len(features) <= limit:
        return features
    return features[torch.randperm(len(features), generator=generator)[:limit]]


# ----------------------------------------------------------------------------------------------- detection


@dataclass
class ShiftReport:
    """Outcome of :func:`detect_shift`; ``to_dict`` is what the Data page and ``fsl-app project stats`` show."""

    shifted: bool
    verdict: str
    p_value: float
    mmd: float  # effect size: sqrt(max(mmd2, 0)), 0 (same) .. sqrt(2) (disjoint)
    mmd2: float  # unbiased estimate of the squared MMD on the subsample
    alpha: float
    permutations: int
    bandwidth: float  # RBF length scale (median pairwise distance of the pooled subsample)
    n_reference: int
    n_target: int
    n_reference_tested: int
    n_target_tested: int
    furthest: list[int] = field(default_factory=list)  # target indices, furthest from the reference first
    furthest_scores: list[float] = field(default_factory=list)  # k-NN distance / typical reference k-NN distance

    def to_dict(self) -> dict:
        return asdict(self)


@_single_threaded
def detect_shift(reference: torch.Tensor, target: torch.Tensor, *, alpha: float = 0.05, permutations: int = 500,
                 seed: int = 0, max_points: int = DEFAULT_MAX_POINTS, n_furthest: int = 10,
                 k_neighbors: int = 5) -> ShiftReport:
    """MMD two-sample test of reference (n, d) vs target (m, d) features, and the target images furthest away.

    The p-value is (1 + #permuted statistics >= observed) / (1 + permutations); ``shifted`` is ``p_value < alpha``.
    At most ``max_points`` images per side enter the test (a seeded subsample); every target image is ranked.
    """
    if permutations < 1:
        raise ValueError(f"permutations must be at least 1, got {permutations}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    reference = _check_features(reference, "the reference (labeled) set", min_rows=2)
    target = _check_features(target, "the target set (pool or folder to predict)", min_rows=2)
    _check_same_dimension(reference, target)
    generator = torch.Generator().manual_seed(seed)
    tested_reference = _subsample(reference, max_points, generator).double()
    tested_target = _subsample(target, max_points, generator).double()
    kernel, bandwidth = _rbf_kernel(torch.cat([tested_reference, tested_target]))
    n = len(tested_reference)
    mmd2 = _unbiased_mmd2(kernel, n)
    p_value = _permutation_p_value(kernel, n, permutations, generator)
    furthest, scores = rank_furthest(tested_reference, target, count=n_furthest, k_neighbors=k_neighbors)
    mmd = math.sqrt(max(mmd2, 0.0))
    shifted = p_value < alpha
    verdict = (f"shift detected (p={p_value:.3g}, MMD={mmd:.3f})" if shifted
               else f"no measurable shift (p={p_value:.3g}, MMD={mmd:.3f})")
    return ShiftReport(shifted=shifted, verdict=verdict, p_value=p_value, mmd=mmd, mmd2=mmd2, alpha=alpha,
                       permutations=permutations, bandwidth=bandwidth, n_reference=len(reference),
                       n_target=len(target), n_reference_tested=n, n_target_tested=len(tested_target),
                       furthest=furthest, furthest_scores=scores)


def _rbf_kernel(points: torch.Tensor) -> tuple[torch.Tensor, float]:
    """exp(-||x - y||^2 / (2 sigma^2)) over (N, d) points, sigma = median pairwise distance; (N, N) and sigma."""
    squared = torch.cdist(points, points).square()
    off_diagonal = squared[~torch.eye(len(points), dtype=torch.bool)]
    positive = off_diagonal[off_diagonal > 0]
    median = float(positive.median()) if len(positive) else 1.0  # all points equal: any bandwidth gives MMD 0
    return torch.exp(-squared / (2 * median)), math.sqrt(median)


def _unbiased_mmd2(kernel: torch.Tensor, n: int) -> float:
    """Gretton et al.'s unbiased MMD^2 with the first ``n`` rows/columns of ``kernel`` as one sample."""
    m = len(kernel) - n
    k_xx, k_yy, k_xy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def _permutation_p_value(kernel: torch.Tensor, n: int, permutations: int, generator: torch.Generator) -> float:
    """Permutation test of the biased MMD^2 = a^T K a, a = +1/n on one sample and -1/m on the other.

    Each batch of permutations is one (N, N) x (N, batch) product, so memory stays O(N^2 + N x batch).
    """
    total = len(kernel)
    m = total - n
    weights = torch.cat([torch.full((n,), 1.0 / n), torch.full((m,), -1.0 / m)]).to(kernel.dtype)
    observed = float(weights @ kernel @ weights)
    exceed = 0
    done = 0
    while done < permutations:
        batch = min(_PERMUTATION_BATCH, permutations - done)
        order = torch.argsort(torch.rand(batch, total, generator=generator), dim=1)
        assignment = weights[order].T  # (N, batch): a permuted weight vector per column
        statistics = ((kernel @ assignment) * assignment).sum(dim=0)
        exceed += int((statistics >= observed - 1e-12).sum())
        done += batch
    return (1 + exceed) / (1 + permutations)


@_single_threaded
def rank_furthest(reference: torch.Tensor, target: torch.Tensor, *, count: int = 10,
                  k_neighbors: int = 5) -> tuple[list[int], list[float]]:
    """Indices of the ``count`` target rows (m, d) furthest from the reference rows (n, d), furthest first, with
    their scores: mean distance to the k nearest reference rows over the reference rows' own typical (median,
    leave-one-out) k-NN distance, so ~1 means "as close as the labeled images are to each other".

    The target is visited in chunks: memory O(chunk x n), time linear in m.
    """
    reference = _check_features(reference, "the reference (labeled) set", min_rows=2)
    target = _check_features(target, "the target set (pool or folder to predict)", min_rows=1)
    _check_same_dimension(reference, target)
    reference = reference.double()
    k = max(1, min(k_neighbors, len(reference) - 1))
    own = torch.cdist(reference, reference)
    own.fill_diagonal_(float("inf"))
    typical = float(own.topk(k, dim=1, largest=False).values.mean(dim=1).median())
    scale = typical if typical > 0 else 1.0
    scores = torch.cat([torch.cdist(chunk.double(), reference).topk(k, dim=1, largest=False).values.mean(dim=1)
                        for chunk in target.split(_RANK_CHUNK)]) / scale
    top = scores.topk(min(count, len(scores)))
    return top.indices.tolist(), [round(float(s), 4) for s in top.values]


# ----------------------------------------------------------------------------------------------- alignment


@dataclass
class DomainStatistics:
    """Mean (d,) and covariance of one domain's features, the covariance as eigenpairs: ``basis`` (r, d) rows are
    orthonormal directions with ``variances`` (r,); every direction outside the basis has variance 0.

    ``ledoit_wolf`` is the Ledoit-Wolf shrinkage intensity of that covariance (Ledoit and Wolf, "A well-conditioned
    estimator for large-dimensional covariance matrices", 2004). Compute a pool's statistics once with :meth:`of`
    and reuse them for every fit that aligns to that pool.
    """

    mean: torch.Tensor
    basis: torch.Tensor
    variances: torch.Tensor
    ledoit_wolf: float
    count: int
    _dense: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    @_single_threaded
    def of(cls, features: torch.Tensor, *, max_points: int = DEFAULT_COVARIANCE_POINTS,
           seed: int = 0) -> "DomainStatistics":
        """Statistics of (n, d) features: the mean of all n, the covariance of at most ``max_points`` of them."""
        features = _check_features(features, "the domain", min_rows=1)
        mean = features.mean(dim=0, dtype=torch.float64)
        sample = _subsample(features, max_points, torch.Generator().manual_seed(seed)).double()
        centered = sample - sample.mean(dim=0)
        _, singular, basis = torch.linalg.svd(centered, full_matrices=False)
        variances = singular.square() / len(sample)  # maximum-likelihood covariance, as Ledoit-Wolf assumes
        return cls(mean=mean, basis=basis, variances=variances, ledoit_wolf=_ledoit_wolf(centered),
                   count=len(features))

    @property
    def dimension(self) -> int:
        return self.mean.shape[0]

    @property
    def average_variance(self) -> float:
        """trace(C) / d: the variance of the identity that shrinkage pulls the covariance towards."""
        return float(self.variances.sum()) / self.dimension

    def dense_power(self, power: float, shrinkage: float) -> torch.Tensor:
        """:meth:`shrunk_power` as a dense (d, d) matrix, kept on this object for the next alignment to the domain."""
        key = (power, shrinkage)
        if key not in self._dense:
            self._dense[key] = self.shrunk_power(power, shrinkage).dense()
        return self._dense[key]

    def shrunk_power(self, power: float, shrinkage: float) -> "ScaledLowRank":
        """((1 - s) C + s (trace(C) / d) I) ** power, s = ``shrinkage``, as identity plus low rank."""
        floor = max(shrinkage * self.average_variance, 1e-9 * self.average_variance)
        shrunk = (1 - shrinkage) * self.variances + floor
        return ScaledLowRank(floor ** power, self.basis, shrunk.pow(power) - floor ** power)


@dataclass
class ScaledLowRank:
    """The (d, d) matrix scale * I + basis^T diag(weights) basis, with orthonormal ``basis`` rows (r, d)."""

    scale: float
    basis: torch.Tensor
    weights: torch.Tensor

    def dense(self) -> torch.Tensor:
        identity = torch.eye(self.basis.shape[1], dtype=self.basis.dtype)
        return self.scale * identity + (self.basis.T * self.weights) @ self.basis

    def left_multiply(self, matrix: torch.Tensor) -> torch.Tensor:
        """matrix (d, d) @ self, dense, in O(d^2 r)."""
        return self.scale * matrix + ((matrix @ self.basis.T) * self.weights) @ self.basis


def _ledoit_wolf(centered: torch.Tensor) -> float:
    """Ledoit-Wolf shrinkage of the covariance of centered (n, d) rows, as scikit-learn's ``ledoit_wolf_shrinkage``
    computes it, but through the n x n Gram matrix (cheap when n << d)."""
    n, d = centered.shape
    squared_norms = centered.square().sum(dim=1)
    average_variance = float(squared_norms.sum()) / (n * d)
    gram_frobenius = float((centered @ centered.T).square().sum()) / n ** 2  # ||X^T X / n||_F^2
    beta = (float(squared_norms.square().sum()) / n - gram_frobenius) / (n * d)
    delta = (gram_frobenius - 2 * average_variance * float(squared_norms.sum()) / n + d * average_variance ** 2) / d
    beta = min(beta, delta)
    return 0.0 if beta <= 0 or delta <= 0 else beta / delta


class AlignmentModule(nn.Module):
    """x (n, d) -> (x - target_mean) @ matrix + source_mean; an empty ``matrix`` stands for the identity."""

    def __init__(self, target_mean: torch.Tensor, matrix: torch.Tensor, source_mean: torch.Tensor):
        super().__init__()
        self.register_buffer("target_mean", target_mean.float().clone())
        self.register_buffer("matrix", matrix.float().clone())
        self.register_buffer("source_mean", source_mean.float().clone())
        self.has_matrix = matrix.numel() > 0  # a plain attribute, so tracing and scripting see a constant

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        centered = features - self.target_mean
        if self.has_matrix:
            centered = centered @ self.matrix
        return centered + self.source_mean


@dataclass
class Alignment:
    """A fitted map of target-domain features onto the source domain: x -> (x - target_mean) @ matrix + source_mean.

    ``matrix`` is empty for ``center`` and ``none`` (the identity); ``message`` says why an alignment fell back to
    the identity, empty otherwise.
    """

    method: str
    source_mean: torch.Tensor
    target_mean: torch.Tensor
    matrix: torch.Tensor
    shrinkage_source: float = 0.0
    shrinkage_target: float = 0.0
    n_source: int = 0
    n_target: int = 0
    message: str = ""

    @_single_threaded
    def apply(self, features: torch.Tensor) -> torch.Tensor:
        """Aligned copy of target features (n, d), float32, computed by :meth:`to_module`'s module."""
        features = _check_features(features, "the features to align")
        with torch.no_grad():
            return self.to_module()(features.float())

    def to_module(self) -> AlignmentModule:
        return AlignmentModule(self.target_mean, self.matrix, self.source_mean).eval()

    def to_dict(self) -> dict:
        """JSON-ready description (no tensors) for run configs and model cards."""
        return {"method": self.method, "shrinkage_source": self.shrinkage_source,
                "shrinkage_target": self.shrinkage_target, "n_source": self.n_source, "n_target": self.n_target,
                "message": self.message}


def identity_alignment(dimension: int, message: str = "") -> Alignment:
    zeros = torch.zeros(dimension)
    return Alignment(method="none", source_mean=zeros, target_mean=zeros.clone(), matrix=torch.empty(0, 0),
                     message=message)


@_single_threaded
def fit_alignment(source: torch.Tensor | DomainStatistics, target: torch.Tensor | DomainStatistics, *,
                  method: str = "center", shrinkage: float | str = "auto") -> Alignment:
    """Fit the map of target features onto source features (``method`` in :data:`ALIGN_METHODS`).

    ``source`` / ``target``: features (n, d) or their :class:`DomainStatistics`. ``shrinkage``: "auto" (each
    domain's Ledoit-Wolf intensity) or a fixed value in [0, 1] for both. A domain of fewer than 2 images gives the
    identity map with a ``message`` saying so (there is no spread to estimate), never an error.
    """
    if method not in ALIGN_METHODS:
        raise ValueError(f"method must be one of {ALIGN_METHODS}, got {method!r}")
    if shrinkage != "auto" and not (isinstance(shrinkage, (int, float)) and 0 <= shrinkage <= 1):
        raise ValueError(f"shrinkage must be 'auto' or a number in [0, 1], got {shrinkage!r}")
    covariance = method == "coral"
    source_stats = _statistics(source, "the source (labeled) set", covariance=covariance)
    target_stats = _statistics(target, "the target set (pool)", covariance=covariance)
    dimension = _common_dimension(source_stats, target_stats)
    if method == "none":
        return identity_alignment(dimension)
    for stats, role, fix in ((source_stats, "labeled set", "Label more images"),
                             (target_stats, "target pool", "Add unlabeled images to the pool")):
        if stats.count < 2:
            return identity_alignment(dimension, f"no {method} alignment: the {role} has {stats.count} image(s); "
                                                 f"it needs at least 2. {fix}.")
    alignment = Alignment(method="center", source_mean=source_stats.mean.float(),
                          target_mean=target_stats.mean.float(), matrix=torch.empty(0, 0),
                          n_source=source_stats.count, n_target=target_stats.count)
    if method == "center":
        return alignment
    if source_stats.average_variance <= 0 or target_stats.average_variance <= 0:
        alignment.message = "coral fell back to centering: a domain has no spread (all its features are equal)."
        return alignment
    shrink_source = source_stats.ledoit_wolf if shrinkage == "auto" else float(shrinkage)
    shrink_target = target_stats.ledoit_wolf if shrinkage == "auto" else float(shrinkage)
    whiten = target_stats.dense_power(-0.5, shrink_target)
    matrix = source_stats.shrunk_power(0.5, shrink_source).left_multiply(whiten)
    alignment.method = "coral"
    alignment.matrix = matrix.float()
    alignment.shrinkage_source, alignment.shrinkage_target = round(shrink_source, 6), round(shrink_target, 6)
    return alignment


def _statistics(domain: torch.Tensor | DomainStatistics, role: str, *, covariance: bool) -> DomainStatistics:
    """The domain's statistics; without ``covariance`` only the mean and count are filled in (centring needs no
    more)."""
    if isinstance(domain, DomainStatistics):
        return domain
    features = _check_features(domain, role)
    if len(features) and covariance:
        return DomainStatistics.of(features)
    mean = features.mean(dim=0, dtype=torch.float64) if len(features) else torch.zeros(features.shape[1],
                                                                                        dtype=torch.float64)
    return DomainStatistics(mean=mean, basis=torch.empty(0, features.shape[1], dtype=torch.float64),
                            variances=torch.empty(0, dtype=torch.float64), ledoit_wolf=0.0, count=len(features))


def _common_dimension(source: DomainStatistics, target: DomainStatistics) -> int:
    if source.dimension != target.dimension:
        raise DataError(f"source and target features differ in dimension ({source.dimension} vs "
                        f"{target.dimension}): extract both with the same backbone.")
    return source.dimension
