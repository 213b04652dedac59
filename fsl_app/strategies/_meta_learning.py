"""Episodes inside the user's support set, and the MAML / ANIL inner and outer loops written with ``torch.func``.

An episode takes up to ``n_way`` classes that have at least two images and splits each one's images in half: shots
to adapt on, queries to score the adapted model. A support set with one image per class has no such split: callers
then adapt without meta-training (:func:`meta_trainable_classes` tells them).

The model is ``logits = scale * (W . z + b)`` on ``z = film(l2(body(x) - centre))``: ``body`` is the identity on
cached features or the backbone with some parameters replaced (``functional_call``), ``centre`` is the mean of the
task's shots (CL2N, SimpleShot), ``film`` an optional feature-wise gain and shift, and the head ``W, b`` starts as the
Proto-MAML initialisation ``W_c = 2 p_c, b_c = -|p_c|^2`` from the class means ``p_c`` of the shots (Triantafillou
et al., "Meta-Dataset", ICLR 2020), so it fits any number of classes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.func import grad, grad_and_value

from .base import check_interrupt

Params = dict[str, torch.Tensor]
Body = Callable[[Params, torch.Tensor], torch.Tensor]  # (params, inputs (n, ...)) -> embeddings (n, d)


def meta_trainable_classes(y: np.ndarray) -> np.ndarray:
    """Classes with at least 2 images (a shot and a query); meta-training needs two of them."""
    counts = np.bincount(y) if len(y) else np.zeros(0, dtype=int)
    return np.flatnonzero(counts >= 2)


def sample_split_episode(y: np.ndarray, n_way: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (shots, queries) of one episode: up to ``n_way`` classes with >= 2 images, each split in half."""
    eligible = meta_trainable_classes(y)
    classes = rng.choice(eligible, size=min(n_way, len(eligible)), replace=False)
    shots, queries = split_in_half(y, classes, rng)
    return np.array(shots), np.array(queries)


def split_in_half(y: np.ndarray, classes, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """(shots, queries): the images of each of ``classes`` shuffled and split in half (at least one shot)."""
    shots, queries = [], []
    for label in classes:
        members = rng.permutation(np.flatnonzero(y == label))
        half = max(1, len(members) // 2)
        shots.extend(members[:half].tolist())
        queries.extend(members[half:].tolist())
    return shots, queries


def relabel(y: np.ndarray) -> tuple[torch.Tensor, int]:
    """Labels (n,) as 0..C-1 in sorted order of their values, and C."""
    values, inverse = np.unique(y, return_inverse=True)
    return torch.as_tensor(inverse, dtype=torch.long), len(values)


def embed(params: Params, body: Body, inputs: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """z (n, d): body output centred on the task's shots, scaled to unit length, then the optional gain and shift."""
    return normalized(params, body(params, inputs), centre)


def normalized(params: Params, embeddings: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """CL2N of body outputs (n, d) with the given centre, then the optional feature-wise gain and shift."""
    z = embeddings - centre
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if "gain" in params:
        z = z * params["gain"] + params["shift"]
    return z


def proto_head(z: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Proto-MAML head from shot embeddings z (n, d): W (C, d) = 2 p_c, b (C,) = -|p_c|^2."""
    prototypes = torch.stack([z[y == c].mean(0) for c in range(n_classes)])
    return 2 * prototypes, -(prototypes ** 2).sum(1)


def logits_of(z: torch.Tensor, params: Params) -> torch.Tensor:
    return params["log_scale"].exp() * (z @ params["W"].T + params["b"])


def adapt(params: Params, body: Body, shots: torch.Tensor, y: torch.Tensor, n_classes: int, *, keys: list[str],
          steps: int, lr: float, first_order: bool, body_lr: float | None = None) -> tuple[Params, torch.Tensor, float]:
    """Inner loop: ``steps`` SGD steps at ``lr`` on the shots' cross-entropy over ``keys`` (the head "W", "b" and,
    for MAML, body parameters), starting from the Proto-MAML head. Returns (adapted params, centre, shot accuracy at
    the last step); body parameters step at ``body_lr`` (default ``lr``). With ``first_order`` the steps are constants to the outer gradient; otherwise they are
    differentiated through (second order: only cheap when ``keys`` are the head, as in ANIL)."""
    embeddings = body(params, shots)
    centre = embeddings.mean(0).detach()
    z = normalized(params, embeddings, centre)
    W, b = proto_head(z, y, n_classes)
    params = {**params, "W": W, "b": b}
    adapts_body = any(key not in ("W", "b") for key in keys)

    def shots_loss(adapted: Params, fixed: Params):
        merged = {**fixed, **adapted}
        features = embed(merged, body, shots, centre) if adapts_body else z
        logits = logits_of(features, merged)
        return nn.functional.cross_entropy(logits, y), logits

    accuracy = 0.0
    for _ in range(steps):
        check_interrupt()
        adapted = {key: params[key] for key in keys}
        fixed = {key: value for key, value in params.items() if key not in adapted}
        grads, logits = grad(shots_loss, has_aux=True)(adapted, fixed)
        accuracy = float((logits.argmax(1) == y).float().mean())
        if first_order:
            grads = {key: value.detach() for key, value in grads.items()}
            adapted = {key: value.detach() for key, value in adapted.items()}
        rates = {key: lr if key in ("W", "b") or body_lr is None else body_lr for key in keys}
        params = {**params, **{key: adapted[key] - rates[key] * grads[key] for key in keys}}
    return params, centre, accuracy


def query_loss(params: Params, body: Body, queries: torch.Tensor, y: torch.Tensor, centre: torch.Tensor):
    """Cross-entropy of the adapted model on the queries, and its logits (n_query, C)."""
    logits = logits_of(embed(params, body, queries, centre), params)
    return nn.functional.cross_entropy(logits, y), logits


def meta_gradient(theta: Params, body: Body, episode: tuple, *, variant: str, inner_keys: list[str], steps: int,
                  lr: float, body_lr: float | None = None) -> tuple[Params, float, float, float]:
    """Outer gradient of the query loss with respect to the meta-parameters ``theta`` for one episode
    (shots (n_s, ...), y_s, queries, y_q, C). ANIL differentiates through the head-only inner loop; first-order MAML
    takes the gradient at the adapted parameters (Finn et al. 2017, section 5.2). Returns (grads, loss, shot
    accuracy, query accuracy)."""
    shots, y_shots, queries, y_queries, n_classes = episode
    if variant == "anil":
        def outer(theta: Params):
            adapted, centre, shot_acc = adapt(theta, body, shots, y_shots, n_classes, keys=inner_keys, steps=steps,
                                              lr=lr, first_order=False)
            loss, logits = query_loss(adapted, body, queries, y_queries, centre)
            return loss, (loss.detach(), logits.detach(), torch.tensor(shot_acc))

        grads, (loss, logits, shot_acc) = grad(outer, has_aux=True)(theta)
        shot_acc = float(shot_acc)
    else:
        adapted, centre, shot_acc = adapt(theta, body, shots, y_shots, n_classes, keys=inner_keys, steps=steps,
                                          lr=lr, first_order=True, body_lr=body_lr)
        head = {"W": adapted["W"].detach(), "b": adapted["b"].detach()}
        at = {key: adapted[key].detach() for key in theta}
        grads, (loss, logits) = grad_and_value(
            lambda p: query_loss({**p, **head}, body, queries, y_queries, centre), has_aux=True)(at)
    accuracy = float((logits.argmax(1) == y_queries).float().mean())
    return grads, float(loss), shot_acc, accuracy
