"""Issue 13 item 3: telling images of classes a run never saw from images of its classes ("none of these").

Data: scikit-learn's digits and scikit-image patches (``_datasets``), frozen features of the default backbone from
the product's feature cache. Each split draws ``n_seen`` classes as the run's classes; the others are held out. The
run trains on ``shots`` labeled images per seen class: the product's ``linear`` strategy (logistic regression on CL2N
features) and ``fsl_app.ood.fit_autoencoder`` on the same labeled features. Test images: every other image of the
seen classes (in-distribution, label 0) and every image of the held-out classes (label 1, capped per class).

Scores (higher = "none of these"), each as AUROC on the test images:

- max-probability: ``1 - max softmax probability`` of the linear run (today's ``--threshold``);
- autoencoder: the calibrated reconstruction error (``ood_score``, 1.0 = the 95th percentile of out-of-fold errors
  of the labeled images);
- combined: ``max(ood_score, (1 - p_max) / (1 - t))``, where ``t`` is the ``--threshold auto`` value computed from
  out-of-fold (4-fold) predictions of the labeled images: each score divided by its own rejection limit, so the
  maximum is above 1 exactly when the export's "either says unknown" rule rejects;
- plus the rejection rates of the rule at those limits (held-out classes caught, seen-class images rejected).

A one-class row fits the autoencoder on a single class (max-probability is undefined there).
Run alone: ``.venv/bin/python benchmarks/bench_ood.py [--quick]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

import _datasets
import _report
from fsl_app.backbones import load_backbone
from fsl_app.dataset import ImageSet
from fsl_app.export.threshold import choose_threshold
from fsl_app.features import get_extractor
from fsl_app.ood import fit_autoencoder
from fsl_app.strategies import create_strategy

SETS = {"digits": (_datasets.digits_folder, 5), "patches": (_datasets.patches_folder, 8)}  # name -> (build, n_seen)
SHOTS = (5, 20)
TEST_PER_CLASS = 40
FOLDS = 4


def linear_probabilities(train: torch.Tensor, labels: list[str], test: torch.Tensor) -> np.ndarray:
    return create_strategy("linear").fit_features(train, labels).predict_proba(test).numpy()


def probability_limit(train: torch.Tensor, labels: list[str], rng: np.random.Generator) -> float:
    """``--threshold auto`` from out-of-fold predictions of the labeled images (as a run's predictions.json)."""
    order = rng.permutation(len(labels))
    predictions = []
    for fold in np.array_split(order, FOLDS):
        keep = np.setdiff1d(order, fold)
        kept_labels = [labels[i] for i in keep]
        classes = sorted(set(kept_labels))
        proba = linear_probabilities(train[keep], kept_labels, train[fold])
        predictions += [{"true": labels[i], "predicted": classes[int(row.argmax())],
                         "probabilities": dict(zip(classes, row.tolist()))} for i, row in zip(fold, proba)]
    return choose_threshold(predictions)


def one_split(features: torch.Tensor, labels: np.ndarray, n_seen: int, shots: int, rng: np.random.Generator) -> dict:
    classes = np.unique(labels)
    seen = rng.choice(classes, n_seen, replace=False)
    train, test_in, test_out = [], [], []
    for label in classes:
        indices = rng.permutation(np.flatnonzero(labels == label))
        if label in seen:
            train += list(indices[:shots])
            test_in += list(indices[shots:shots + TEST_PER_CLASS])
        else:
            test_out += list(indices[:TEST_PER_CLASS])
    train_labels = [str(labels[i]) for i in train]
    test = np.concatenate([test_in, test_out])
    is_out = np.r_[np.zeros(len(test_in)), np.ones(len(test_out))]
    proba = linear_probabilities(features[train], train_labels, features[test]) if n_seen > 1 else None
    started = time.perf_counter()
    autoencoder = fit_autoencoder(features[train], seed=int(rng.integers(1 << 30)))
    fit_seconds = time.perf_counter() - started
    with torch.no_grad():
        ood = autoencoder(features[test]).numpy()
    result = {"ae": roc_auc_score(is_out, ood), "fit_seconds": fit_seconds,
              "ae_caught": float((ood[is_out == 1] > 1).mean()), "ae_rejected_in": float((ood[is_out == 0] > 1).mean())}
    if proba is not None:
        limit = probability_limit(features[train], train_labels, rng)
        prob_score = (1 - proba.max(1)) / max(1 - limit, 1e-6)
        combined = np.maximum(ood, prob_score)
        result.update(prob=roc_auc_score(is_out, 1 - proba.max(1)), combined=roc_auc_score(is_out, combined),
                      prob_caught=float((prob_score[is_out == 1] > 1).mean()),
                      prob_rejected_in=float((prob_score[is_out == 0] > 1).mean()),
                      both_caught=float((combined[is_out == 1] > 1).mean()),
                      both_rejected_in=float((combined[is_out == 0] > 1).mean()))
    return result


def study(features: torch.Tensor, labels: np.ndarray, n_seen: int, shots: int, splits: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [one_split(features, labels, n_seen, shots, rng) for _ in range(splits)]


def mean_ci(values) -> str:
    values = np.asarray(values, dtype=float)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{values.mean():.3f} ± {half:.3f}"


def percent(values) -> str:
    return f"{100 * np.mean(values):.0f} %"


def rows_for(name: str, n_seen: int, shots: int, results: list[dict]) -> tuple[list, list]:
    get = lambda key: [r[key] for r in results if key in r]  # noqa: E731
    if n_seen == 1:
        auroc = [name, 1, shots, "n/a", mean_ci(get("ae")), "n/a", "autoencoder (only score)"]
        rule = [name, 1, shots, "n/a", f"{percent(get('ae_caught'))} / {percent(get('ae_rejected_in'))}", "n/a"]
        return auroc, rule
    means = {key: np.mean(get(key)) for key in ("prob", "ae", "combined")}
    best = max(means, key=means.get)
    labels = {"prob": "max-probability", "ae": "autoencoder", "combined": "combined"}
    auroc = [name, n_seen, shots, mean_ci(get("prob")), mean_ci(get("ae")), mean_ci(get("combined")), labels[best]]
    rule = [name, n_seen, shots, f"{percent(get('prob_caught'))} / {percent(get('prob_rejected_in'))}",
            f"{percent(get('ae_caught'))} / {percent(get('ae_rejected_in'))}",
            f"{percent(get('both_caught'))} / {percent(get('both_rejected_in'))}"]
    return auroc, rule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 class splits per setting instead of 20")
    parser.add_argument("--splits", type=int, default=None)
    args = parser.parse_args()
    splits = args.splits or (6 if args.quick else 20)
    started = time.perf_counter()
    info = _report.machine_info()
    torch.manual_seed(0)
    backbone = load_backbone()
    extractor = get_extractor(backbone)
    auroc_rows, rule_rows, fit_seconds, wins = [], [], [], []
    with threadpool_limits(1):
        for name, (build, n_seen) in SETS.items():
            images = ImageSet.from_folder(build())
            features, labels = extractor.extract(images), images.label_indices()
            for seen, shots in [(n_seen, s) for s in SHOTS] + [(1, SHOTS[-1])]:
                results = study(features, labels, seen, shots, splits)
                auroc, rule = rows_for(name, seen, shots, results)
                auroc_rows.append(auroc)
                rule_rows.append(rule)
                fit_seconds += [r["fit_seconds"] for r in results]
                if seen > 1:
                    wins.append(auroc[-1])
                print(auroc, f"{time.perf_counter() - started:.0f} s", flush=True)
    auroc_table = _report.table(["set", "seen classes", "shots", "max-probability", "autoencoder", "combined",
                                 "best"], auroc_rows)
    rule_table = _report.table(["set", "seen classes", "shots", "max-probability (auto threshold)",
                                "autoencoder (score > 1)", "either (the export rule)"], rule_rows)
    verdict = max(set(wins), key=wins.count)
    sections = [
        f"Frozen `{backbone.name}` features; the linear strategy and `fit_autoencoder` on `shots` labeled images per "
        f"seen class; {splits} random class splits per row (mean AUROC ± 95 % interval over splits); test: up to "
        f"{TEST_PER_CLASS} other images per seen class vs up to {TEST_PER_CLASS} images per held-out class. "
        "See the script's docstring for the scores.",
        "### AUROC at telling held-out classes from the run's classes (1.0 = perfect, 0.5 = chance)\n\n" + auroc_table,
        "### The rules at their limits: held-out-class images caught / seen-class images rejected\n\n" + rule_table,
        f"Autoencoder fit (3 out-of-fold fits + the final one, one thread): median {np.median(fit_seconds):.2f} s, "
        f"max {np.max(fit_seconds):.2f} s.",
        f"**Which wins:** the {verdict} score has the best mean AUROC in {wins.count(verdict)} of {len(wins)} "
        "multi-class settings (table above; overlapping intervals are ties).",
    ]
    goals = [["AE AUROC vs max-probability (multi-class rows won)", f"{verdict}: {wins.count(verdict)}/{len(wins)}",
              "see table"]]
    _report.write_result("ood", "Q13. \"None of these\": max-probability vs autoencoder reconstruction error",
                         sections, info=info, seconds=time.perf_counter() - started, goals=goals)


if __name__ == "__main__":
    main()
