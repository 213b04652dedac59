"""Self-training: a logistic regression that pseudo-labels the pool images it is sure of, then is fitted again.

The oldest semi-supervised recipe (Scudder 1965; Yarowsky 1995; "pseudo-labelling", Lee 2013), and a strong one on
good frozen features: Wang et al., "Instance Credibility Inference for Few-Shot Learning" (CVPR 2020) reach
transductive state of the art by adding only the most credible pseudo-labels to a linear classifier. Its weak point
is the confidence threshold; here the labeled images choose it: out-of-fold predictions (stratified k-fold over the
labeled images) give, for each confidence level, how often predictions that sure were right, and the threshold is
the lowest confidence at which they were right ``target_precision`` of the time. With one image in some class there
are no out-of-fold predictions; then the most confident ``fallback_fraction`` of the pool images predicted in each
class are used. Pool images are gated for outliers first (``_pool``), and pseudo-labels follow the predicted classes,
so an imbalanced pool stays imbalanced instead of being forced even.

The head is a classifier refitted on the labeled images plus the pseudo-labeled ones (weight ``pseudo_weight`` each):
by default a linear SVM, which generalises better than the scoring logistic regression on these features, with its
margins turned into probabilities by a temperature fitted on out-of-fold decisions of the labeled images (as
``linear`` does); on CL2N features centred on the labeled images and the pool. One linear layer, as ``linear``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.svm import LinearSVC
from torch import nn

from ._heads import FeatureNormalizer, LinearHead, binary_to_two_columns
from ._pool import OUTLIER_MODES, POOL_PARAM_HELP, PoolFeatureStrategy
from ._registry import register_strategy
from .linear import out_of_fold_temperature

MAX_FOLDS = 5
CLASSIFIERS = ("svm", "logreg")


@register_strategy
class SelfTraining(PoolFeatureStrategy):
    name = "selftrain"
    summary = "logistic regression that adds its confident pool predictions as labels: the safe way to use the pool"
    param_help = {
        "C": "inverse regularisation of the logistic regression that scores the pool: larger fits the labeled images "
             "more closely",
        "classifier": "the final classifier on labeled and pseudo-labeled images: svm (linear SVM) or logreg (the "
                      "scoring model, refitted)",
        "svm_C": "inverse regularisation of the final SVM",
        "target_precision": "pseudo-label pool images at the confidence where held-out labeled images were right "
                            "this often",
        "fallback_fraction": "with a single image in some class: share of each predicted class's pool images used",
        "pseudo_weight": "weight of a pseudo-labeled image relative to a labeled one",
        "rounds": "pseudo-label and refit this many times",
        **POOL_PARAM_HELP,
    }
    param_choices = {"classifier": CLASSIFIERS, "outliers": OUTLIER_MODES}
    param_ranges = {"C": (1e-6, None), "svm_C": (1e-6, None), "target_precision": (0.0, 1.0), "fallback_fraction": (0.0, 1.0),
                    "pseudo_weight": (0.0, None), "rounds": (0, 10), "max_pool": (2, None)}

    def __init__(self, *, C: float = 100.0, classifier: str = "svm", svm_C: float = 10.0,
                 target_precision: float = 0.9, fallback_fraction: float = 0.5, pseudo_weight: float = 1.0,
                 rounds: int = 1, outliers: str = "gate", max_pool: int = 2000, seed: int = 0):
        self.C = C
        self.classifier = classifier
        self.svm_C = svm_C
        self.target_precision = target_precision
        self.fallback_fraction = fallback_fraction
        self.pseudo_weight = pseudo_weight
        self.rounds = rounds
        self.outliers = outliers
        self.max_pool = max_pool
        self.seed = seed

    def _fit_normalized(self, normalizer: FeatureNormalizer, x: torch.Tensor, y: np.ndarray,
                        u: torch.Tensor | None) -> nn.Module:
        labeled = x.double().numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            train, targets, weights = self._pseudo_labeled(labeled, y, None if u is None else u.double().numpy())
            if self.classifier == "logreg":
                model, temperature = self._logreg().fit(train, targets, sample_weight=weights), 1.0
            else:
                model = self._svm().fit(train, targets, sample_weight=weights)
                temperature = self._svm_temperature(labeled, y)
        weight, bias = binary_to_two_columns(model.coef_, np.atleast_1d(model.intercept_))
        return LinearHead(normalizer, torch.from_numpy(weight / temperature), torch.from_numpy(bias / temperature))

    def _pseudo_labeled(self, x: np.ndarray, y: np.ndarray,
                        pool: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Training rows, targets and weights: the labeled images plus the confident pool images."""
        self.pseudo_labels_ = 0
        train, targets, weights = x, y, np.ones(len(y))
        if pool is None or self.rounds == 0:
            return train, targets, weights
        threshold = self._threshold(x, y)
        model = self._logreg().fit(x, y)
        for _ in range(self.rounds):
            probabilities = model.predict_proba(pool)
            chosen = self._confident(probabilities, threshold)
            train = np.concatenate([x, pool[chosen]])
            targets = np.concatenate([y, model.classes_[probabilities.argmax(1)[chosen]]])
            weights = np.concatenate([np.ones(len(y)), np.full(int(chosen.sum()), self.pseudo_weight)])
            model = self._logreg().fit(train, targets, sample_weight=weights)
            self.pseudo_labels_ = int(chosen.sum())
        return train, targets, weights

    def _svm_temperature(self, x: np.ndarray, y: np.ndarray) -> float:
        """Temperature of the SVM margins from out-of-fold decisions on the labeled images (1.0 without folds)."""
        return out_of_fold_temperature(self._svm(), x, y, self.seed)

    def _threshold(self, x: np.ndarray, y: np.ndarray) -> float | None:
        """The lowest out-of-fold confidence whose predictions at least that sure reach ``target_precision``;
        None without out-of-fold predictions (a class with one image)."""
        folds = min(MAX_FOLDS, int(np.bincount(y).min()))
        if folds < 2:
            return None
        cv = StratifiedKFold(folds, shuffle=True, random_state=self.seed)
        probabilities = cross_val_predict(self._logreg(), x, y, cv=cv, method="predict_proba")
        confidence = probabilities.max(1)
        order = np.argsort(-confidence)
        correct = (probabilities.argmax(1) == y)[order]
        precision = np.cumsum(correct) / np.arange(1, len(y) + 1)
        reached = np.flatnonzero(precision >= self.target_precision)
        return float(confidence[order][reached.max()]) if len(reached) else float(np.nextafter(confidence.max(), 2))

    def _confident(self, probabilities: np.ndarray, threshold: float | None) -> np.ndarray:
        """Boolean mask (m,) of the pool rows to pseudo-label."""
        confidence, predicted = probabilities.max(1), probabilities.argmax(1)
        if threshold is not None:
            return confidence >= threshold
        chosen = np.zeros(len(probabilities), dtype=bool)
        for label in np.unique(predicted):
            members = np.flatnonzero(predicted == label)
            keep = max(1, int(self.fallback_fraction * len(members))) if self.fallback_fraction > 0 else 0
            chosen[members[np.argsort(-confidence[members])[:keep]]] = True
        return chosen

    def _logreg(self) -> LogisticRegression:
        return LogisticRegression(C=self.C, max_iter=2000, random_state=self.seed)

    def _svm(self) -> LinearSVC:
        return LinearSVC(C=self.svm_C, max_iter=20000, random_state=self.seed)

    def _state_meta(self) -> dict:
        return {**super()._state_meta(), "pseudo_labels": getattr(self, "pseudo_labels_", 0)}

    def _restore(self, meta: dict, tensors: dict[str, torch.Tensor], backbone) -> None:
        super()._restore(meta, tensors, backbone)
        self.pseudo_labels_ = int(meta.get("pseudo_labels", 0))
