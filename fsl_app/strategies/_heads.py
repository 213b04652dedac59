"""Heads on frozen features: feature normalization, linear and RBF-kernel layers, temperature calibration.

Logistic regression, linear SVM and ProtoNet are all exactly a linear layer on normalized features; an RBF SVM is a
kernel layer. Every head maps features (n, d) to logits (n, n_classes) and exports like any other nn.Module.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

NORMALIZATIONS = ("cl2n", "l2", "none")


class FeatureNormalizer(nn.Module):
    """CL2N (Wang et al. 2019, SimpleShot): subtract the support mean, then L2-normalize. (n, d) -> (n, d)."""

    def __init__(self, center: torch.Tensor, *, subtract_center: bool, l2: bool):
        super().__init__()
        self.register_buffer("center", center.float().clone())
        self.subtract_center = subtract_center
        self.l2 = l2

    @classmethod
    def fit(cls, features: torch.Tensor, mode: str) -> "FeatureNormalizer":
        if mode not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {mode!r}")
        return cls(features.mean(dim=0), subtract_center=mode == "cl2n", l2=mode in ("cl2n", "l2"))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.subtract_center:
            features = features - self.center
        if self.l2:
            features = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return features

    def config(self) -> dict:
        return {"subtract_center": self.subtract_center, "l2": self.l2}


class LinearHead(nn.Module):
    """logits = W · normalize(x) + b, with W (n_classes, d) and b (n_classes,)."""

    def __init__(self, normalizer: FeatureNormalizer, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.normalizer = normalizer
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight.float())
            self.linear.bias.copy_(bias.float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.normalizer(features))

    def config(self) -> dict:
        return {"kind": "linear", "normalizer": self.normalizer.config(),
                "in_features": self.linear.in_features, "n_classes": self.linear.out_features}


class RBFHead(nn.Module):
    """logits = exp(-gamma ||normalize(x) - s_j||^2) · coef + intercept over training points s (n_train, d)."""

    def __init__(self, normalizer: FeatureNormalizer, support: torch.Tensor, coef: torch.Tensor,
                 intercept: torch.Tensor, gamma: float):
        super().__init__()
        self.normalizer = normalizer
        self.register_buffer("support", support.float().clone())
        self.register_buffer("coef", coef.float().clone())
        self.register_buffer("intercept", intercept.float().clone())
        self.gamma = float(gamma)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.normalizer(features)
        squared = (x * x).sum(1, keepdim=True) - 2 * x @ self.support.T + (self.support ** 2).sum(1)[None, :]
        return torch.exp(-self.gamma * squared.clamp_min(0)) @ self.coef + self.intercept

    def config(self) -> dict:
        return {"kind": "rbf", "normalizer": self.normalizer.config(), "gamma": self.gamma,
                "n_support": self.support.shape[0], "in_features": self.support.shape[1],
                "n_classes": self.coef.shape[1]}


class AttentionHead(nn.Module):
    """Matching Networks' classifier: logits_c = log sum_{j in class c} exp(scale cos(f(x), g_j)) over support points.

    softmax of these logits is the attention mass on each class's support points. ``support`` g (n_support, d) holds
    the (optionally context-embedded) support features, ``coef`` (n_support, n_classes) their one-hot labels. With
    ``fce_steps > 0`` the query f(x) is the full-context embedding of Vinyals et al. (2016): ``fce_steps`` rounds of
    an LSTM cell reading attention over the support (easyfsl's ``encode_query_features``).
    """

    def __init__(self, normalizer: FeatureNormalizer, support: torch.Tensor, coef: torch.Tensor, scale: float,
                 query_cell: nn.LSTMCell | None = None, fce_steps: int = 0):
        super().__init__()
        self.normalizer = normalizer
        self.register_buffer("support", support.float().clone())
        self.register_buffer("coef", coef.float().clone())
        self.scale = float(scale)
        self.fce_steps = int(fce_steps)
        self.query_cell = query_cell if self.fce_steps > 0 else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return attention_logits(self.encode_queries(self.normalizer(features)), self.support, self.coef, self.scale)

    def encode_queries(self, queries: torch.Tensor) -> torch.Tensor:
        """Full-context embedding of queries (n, d) against the support, or the queries themselves."""
        if self.query_cell is None:
            return queries
        return fce_queries(queries, self.support, self.query_cell, self.fce_steps)

    def config(self) -> dict:
        return {"kind": "attention", "normalizer": self.normalizer.config(), "scale": self.scale,
                "fce_steps": self.fce_steps, "n_support": self.support.shape[0], "in_features": self.support.shape[1],
                "n_classes": self.coef.shape[1]}


def fce_queries(queries: torch.Tensor, support: torch.Tensor, cell: nn.LSTMCell, steps: int) -> torch.Tensor:
    """Vinyals et al.'s attention LSTM: h <- LSTM([q, attention read-out of support], (h, c)) + q, ``steps`` times."""
    hidden, state = queries, torch.zeros_like(queries)
    for _ in range(steps):
        read_out = torch.softmax(hidden @ support.T, dim=1) @ support
        hidden, state = cell(torch.cat((queries, read_out), 1), (hidden, state))
        hidden = hidden + queries
    return hidden


def attention_logits(queries: torch.Tensor, support: torch.Tensor, coef: torch.Tensor, scale: float) -> torch.Tensor:
    """log of the softmax attention mass per class: (n, d), (n_support, d), (n_support, C) -> (n, C)."""
    unit_queries = queries / queries.norm(dim=1, keepdim=True).clamp_min(1e-12)
    unit_support = support / support.norm(dim=1, keepdim=True).clamp_min(1e-12)
    similarity = scale * unit_queries @ unit_support.T
    peak = similarity.max(dim=1, keepdim=True).values
    return torch.log((torch.exp(similarity - peak) @ coef).clamp_min(1e-30)) + peak


def head_from_config(config: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild a head saved with ``config()`` and ``state_dict()``."""
    norm = config["normalizer"]
    normalizer = FeatureNormalizer(state["normalizer.center"], subtract_center=norm["subtract_center"],
                                   l2=norm["l2"])
    if config["kind"] == "linear":
        return LinearHead(normalizer, state["linear.weight"], state["linear.bias"])
    if config["kind"] == "rbf":
        return RBFHead(normalizer, state["support"], state["coef"], state["intercept"], config["gamma"])
    if config["kind"] == "attention":
        cell = None
        if config["fce_steps"] > 0:
            d = config["in_features"]
            cell = nn.LSTMCell(2 * d, d)
            cell.load_state_dict({k.removeprefix("query_cell."): v for k, v in state.items()
                                  if k.startswith("query_cell.")})
        return AttentionHead(normalizer, state["support"], state["coef"], config["scale"], cell, config["fce_steps"])
    raise ValueError(f"unknown head kind {config['kind']!r}: the model file is from a newer fsl_app; upgrade it.")


def binary_to_two_columns(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's binary (1, d) decision z becomes logits [-z/2, z/2]: softmax of them equals sigmoid(z)."""
    if weight.shape[0] != 1:
        return weight, bias
    return np.concatenate([-weight / 2, weight / 2]), np.concatenate([-bias / 2, bias / 2])


def fit_temperature(logits: torch.Tensor, y: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(logits / T); 1.0 without data."""
    if len(y) == 0:
        return 1.0
    targets = torch.as_tensor(y)
    grid = torch.logspace(-3, 2, 101)
    losses = [nn.functional.cross_entropy(logits / t, targets).item() for t in grid]
    return float(grid[int(np.argmin(losses))])
