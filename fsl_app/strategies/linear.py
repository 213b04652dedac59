"""Linear probe on frozen features: logistic regression, linear SVM or RBF SVM (scikit-learn).

The simplest strong few-shot baseline: Tian et al., "Rethinking Few-Shot Image Classification: a Good Embedding Is All
You Need?" (ECCV 2020) show a logistic regression on frozen pretrained features rivals meta-learning; Wang et al.,
"SimpleShot" (2019) show that CL2N feature normalization (center on the support mean, then L2-normalize) adds several
points. The fitted classifier is folded into one head: a linear layer (logistic regression, linear SVM) or an RBF
kernel layer over the support points (RBF SVM), so export is backbone + head for all three. SVM margins are turned into
probabilities by a temperature fitted on cross-validated decision values (Platt-style scaling). It ignores
``unlabeled`` images (see ``selftrain`` for a probe that learns from the pool).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.multiclass import OneVsRestClassifier
from sklearn.svm import SVC, LinearSVC
from torch import nn

from ._heads import NORMALIZATIONS, FeatureNormalizer, LinearHead, RBFHead, binary_to_two_columns, fit_temperature
from ._registry import register_strategy
from .base import FeatureStrategy

CLASSIFIERS = ("logreg", "svm", "rbf")


@register_strategy
class LinearProbe(FeatureStrategy):
    name = "linear"
    summary = "logistic regression or SVM on frozen features: the strong, fast default (ignores the pool)"
    param_help = {
        "classifier": "logreg: logistic regression; svm: linear SVM; rbf: SVM with a Gaussian kernel",
        "C": "inverse regularisation strength: larger fits the training images more closely",
        "normalize": "cl2n: centre on the mean feature, then scale to unit length (SimpleShot); l2; none",
        "calibrate": "fit a temperature so that SVM scores become honest probabilities",
    }
    param_choices = {"classifier": CLASSIFIERS, "normalize": NORMALIZATIONS}
    param_ranges = {"C": (1e-6, None)}

    def __init__(self, *, classifier: str = "logreg", C: float = 10.0, normalize: str = "cl2n",
                 calibrate: bool = True, seed: int = 0):
        self.classifier = classifier
        self.C = C
        self.normalize = normalize
        self.calibrate = calibrate
        self.seed = seed

    def _estimator(self):
        if self.classifier == "logreg":
            return LogisticRegression(C=self.C, max_iter=2000, random_state=self.seed)
        if self.classifier == "svm":
            return LinearSVC(C=self.C, max_iter=20000, random_state=self.seed)
        if self.classifier == "rbf":
            return OneVsRestClassifier(SVC(kernel="rbf", C=self.C, gamma=self._gamma_))
        raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")

    def _fit_head(self, features: torch.Tensor, y: np.ndarray, unlabeled: torch.Tensor | None) -> nn.Module:
        normalizer = FeatureNormalizer.fit(features, self.normalize)
        with torch.no_grad():
            x = normalizer(features).double().numpy()
        self._gamma_ = 1.0 / (x.shape[1] * x.var()) if x.var() > 0 else 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            estimator = self._estimator().fit(x, y)
            temperature = self._temperature(x, y)
        if self.classifier == "rbf":
            return self._rbf_head(normalizer, estimator, x, temperature)
        weight, bias = binary_to_two_columns(estimator.coef_, np.atleast_1d(estimator.intercept_))
        return LinearHead(normalizer, torch.from_numpy(weight / temperature), torch.from_numpy(bias / temperature))

    def _temperature(self, x: np.ndarray, y: np.ndarray) -> float:
        """Logistic regression is already calibrated; SVM margins get a temperature from held-out decisions."""
        if self.classifier == "logreg" or not self.calibrate:
            return 1.0
        return out_of_fold_temperature(self._estimator(), x, y, self.seed)

    def _rbf_head(self, normalizer, estimator, x: np.ndarray, temperature: float) -> nn.Module:
        """One binary SVC per class (one-vs-rest): decision_c(x) = sum_j dual_cj K(x, s_j) + b_c."""
        binaries = estimator.estimators_
        coef = np.zeros((x.shape[0], len(binaries)))
        intercept = np.zeros(len(binaries))
        for column, svc in enumerate(binaries):
            coef[svc.support_, column] = svc.dual_coef_[0]
            intercept[column] = svc.intercept_[0]
        if len(binaries) == 1:  # binary problem: a single decision z -> logits [-z/2, z/2]
            coef = np.concatenate([-coef / 2, coef / 2], axis=1)
            intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
        return RBFHead(normalizer, torch.from_numpy(x), torch.from_numpy(coef / temperature),
                       torch.from_numpy(intercept / temperature), self._gamma_)


def out_of_fold_temperature(estimator, x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Temperature that calibrates ``estimator``'s decision margins, from out-of-fold decisions on (x (n, d), y (n,));
    1.0 when a class has fewer than 2 images (no folds)."""
    folds = min(3, int(np.bincount(y).min()))
    if folds < 2:
        return 1.0
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    decisions = cross_val_predict(estimator, x, y, cv=cv, method="decision_function")
    if decisions.ndim == 1:
        decisions = np.stack([-decisions / 2, decisions / 2], axis=1)
    return fit_temperature(torch.from_numpy(decisions).float(), y)
