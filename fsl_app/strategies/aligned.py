"""A linear probe on features aligned to the unlabeled pool's domain (the deployment domain).

When the labeled images come from one domain (studio photos, one camera, clean scans) and the images to classify
from another (phone photos, another camera, inverted scans), every deployment feature is offset from where the head
learned its classes. Given a pool of unlabeled images from the deployment domain, the offset is estimated and undone:

- ``center``: deployment features are centred on the pool's mean instead of the labeled images' mean. With CL2N
  (subtract a centre, then scale to unit length) this is only a different centre, so the exported head is exactly the
  linear probe's head with the pool mean as its normalizer's centre;
- ``coral``: CORAL (Sun, Feng and Saenko, "Return of Frustratingly Easy Domain Adaptation", AAAI 2016) also whitens
  the pool's covariance and recolours with the labeled images' (``fsl_app.shift.fit_alignment``, shrunk covariances);
  the exported head is that affine alignment followed by the linear probe's head (ONNX and TorchScript export only).

Use it when the pool holds images of the domain the model will be used on and that domain differs from the labeled
one; without a pool (or with fewer than 2 pool images) it is exactly ``linear`` with the same classifier and ``C``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from ..shift import AlignmentModule, fit_alignment
from . import _heads
from ._heads import LinearHead
from ._registry import register_strategy
from .base import FeatureStrategy
from .linear import LinearProbe

log = logging.getLogger(__name__)

METHODS = ("center", "coral")
CLASSIFIERS = ("logreg", "svm")


class AlignedHead(nn.Module):
    """logits = head(alignment(x)): x (n, d) deployment features -> (n, n_classes)."""

    def __init__(self, alignment: AlignmentModule, head: LinearHead):
        super().__init__()
        self.alignment = alignment
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.alignment(features))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.head.normalizer(self.alignment(features))


@register_strategy
class AlignedProbe(FeatureStrategy):
    """Linear probe whose deployment features are aligned to the labeled domain with statistics of the pool.

    The pool is taken to come from the deployment domain (Sun, Feng and Saenko 2016, CORAL; see the module docstring).
    ``alignment_`` holds ``fsl_app.shift.Alignment.to_dict()`` of the fit; ``pool_used_`` the pool size (0: the plain
    linear probe).
    """

    name = "aligned"
    summary = "linear probe on features moved onto the labeled domain with the pool's statistics (domain shift)"
    uses_unlabeled = True
    param_help = {
        "method": "center: centre deployment features on the pool's mean (safe default); coral: also match the "
                  "pool's covariance to the labeled images' (CORAL)",
        "classifier": "logreg: logistic regression; svm: linear SVM",
        "C": "inverse regularisation strength: larger fits the training images more closely",
    }
    param_choices = {"method": METHODS, "classifier": CLASSIFIERS}
    param_ranges = {"C": (1e-6, None)}

    def __init__(self, *, method: str = "center", classifier: str = "logreg", C: float = 10.0, seed: int = 0):
        self.method = method
        self.classifier = classifier
        self.C = C
        self.seed = seed

    def _fit_head(self, features: torch.Tensor, y: np.ndarray, unlabeled: torch.Tensor | None) -> nn.Module:
        probe = LinearProbe(classifier=self.classifier, C=self.C, normalize="cl2n", seed=self.seed)
        head = probe._fit_head(features, y, None)
        self.pool_used_ = 0
        self.alignment_ = {"method": "none", "message": ""}
        if unlabeled is None or len(unlabeled) < 2:
            count = 0 if unlabeled is None else len(unlabeled)
            self.alignment_["message"] = f"no alignment: the pool has {count} image(s), it needs at least 2; " \
                                         "fitted as the plain linear probe."
            log.info("%s: %s", self.name, self.alignment_["message"])
            return head
        alignment = fit_alignment(features, unlabeled, method=self.method)
        self.alignment_ = {"method": alignment.method, "message": alignment.message}
        self.pool_used_ = len(unlabeled)
        if alignment.message:
            log.info("%s: %s", self.name, alignment.message)
        if alignment.method == "coral":
            return AlignedHead(alignment.to_module(), head)
        with torch.no_grad():  # CL2N after centring on the pool mean: only the normalizer's centre changes
            head.normalizer.center.copy_(alignment.target_mean)
        return head

    def embed(self, images) -> torch.Tensor:
        """The normalized (after alignment) feature space the head decides in, (n, d)."""
        if not isinstance(getattr(self, "head_", None), AlignedHead):
            return super().embed(images)
        self.check_is_fitted()
        with torch.no_grad():
            return self.head_.embed(self._features(images).float())

    def _state_meta(self) -> dict:
        meta = {"pool_used": getattr(self, "pool_used_", 0), "alignment": getattr(self, "alignment_", {})}
        if isinstance(self.head_, AlignedHead):
            return {**meta, "head": {"kind": "aligned", "head": self.head_.head.config()}}
        return {**meta, **super()._state_meta()}

    def _restore(self, meta: dict, tensors: dict[str, torch.Tensor], backbone) -> None:
        self.pool_used_ = int(meta.get("pool_used", 0))
        self.alignment_ = dict(meta.get("alignment", {}))
        if meta["head"].get("kind") != "aligned":
            super()._restore(meta, tensors, backbone)
            return
        self.backbone_ = backbone
        state = {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")}
        alignment = AlignmentModule(state["alignment.target_mean"], state["alignment.matrix"],
                                    state["alignment.source_mean"])
        inner = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
        self.head_ = AlignedHead(alignment, _heads.head_from_config(meta["head"]["head"], inner)).eval()
