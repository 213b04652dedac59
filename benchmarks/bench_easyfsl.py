"""Q4: few-shot accuracy of fsl_app's strategies vs easyfsl's methods on the same features and the same episodes.

Features: the product's cached frozen features of the default backbone (``get_extractor(backbone).extract``).
Episodes: ``fsl_app.evaluation.sample_episode`` with one seeded generator per protocol, shared by every method.
easyfsl (PyPI ``easyfsl``, a benchmark-only dependency) gets an identity backbone, so its methods work on the same
features; each runs with its default hyperparameters, once on raw features and once with CL2N (centering on the
support mean, then L2 normalization, passed as ``feature_centering`` / ``feature_normalization=2``); the better of
the two is reported (chosen on the same episodes, which favours easyfsl slightly). Ours are shown per configuration
(``--param`` values of the product's strategies); "our best" is the best configuration, "our default" the strategy
defaults. Transductive methods (marked T) also look at the unlabeled queries of the episode, which
fsl_app's strategies do not.

Data sets (both offline): scikit-learn's digits (224 px PNG, 10 classes) and scikit-image's bundled pictures cut
into 64 px patches (16 classes, 24-40 patches each; the class is the source picture).

Run alone: ``.venv/bin/python benchmarks/bench_easyfsl.py [--quick] [--episodes N]``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

import _datasets
import _report
from fsl_app.backbones import load_backbone
from fsl_app.dataset import ImageSet
from fsl_app.evaluation import sample_episode
from fsl_app.features import get_extractor
from fsl_app.strategies import create_strategy

PROTOCOLS = [(5, 1), (5, 5), (10, 5)]
OURS = {
    "linear (logreg, CL2N)": ("linear", {"classifier": "logreg"}),
    "linear (svm, CL2N)": ("linear", {"classifier": "svm"}),
    "protonet (euclidean, CL2N)": ("protonet", {}),
    "protonet (cosine, CL2N)": ("protonet", {"distance": "cosine"}),
    "protonet (cosine, L2 only)": ("protonet", {"distance": "cosine", "normalize": "l2"}),
    "linear (logreg, L2 only)": ("linear", {"classifier": "logreg", "normalize": "l2"}),
}
DEFAULTS = ("linear (logreg, CL2N)", "protonet (euclidean, CL2N)")  # what the product does without --param


def easyfsl_methods() -> dict:
    from easyfsl import methods

    return {"PrototypicalNetworks": (methods.PrototypicalNetworks, False), "SimpleShot": (methods.SimpleShot, False),
            "Finetune": (methods.Finetune, False), "TIM": (methods.TIM, True), "BD-CSPN": (methods.BDCSPN, True),
            "LaplacianShot": (methods.LaplacianShot, True), "PT-MAP": (methods.PTMAP, True),
            "TransductiveFinetuning": (methods.TransductiveFinetuning, True)}


def run_ours(name: str, support: torch.Tensor, support_labels: list[str], query: torch.Tensor) -> np.ndarray:
    strategy_name, params = OURS[name]
    model = create_strategy(strategy_name, **params).fit_features(support, support_labels)
    return np.array(model.classes_)[model.predict_proba(query).argmax(1).numpy()]


def run_easyfsl(cls, preprocessing: str, support: torch.Tensor, support_y: torch.Tensor,
                query: torch.Tensor) -> np.ndarray:
    options = {}
    if preprocessing == "CL2N":
        options = {"feature_centering": support.mean(0), "feature_normalization": 2}
    model = cls(torch.nn.Identity(), **options)
    with torch.no_grad(), threadpool_limits(1):  # as fsl_app's head fits: tiny tensors, one thread
        model.process_support_set(support, support_y)
        scores = model(query)
    return scores.argmax(1).numpy()


def evaluate_dataset(features: torch.Tensor, labels: np.ndarray, classes: list[str], episodes: int,
                     methods: dict) -> tuple[dict, dict]:
    """{(method, protocol): accuracies %} for ours and theirs (theirs per preprocessing)."""
    accuracies: dict[tuple[str, tuple[int, int]], list[float]] = {}
    seconds: dict[str, float] = {}
    for n_way, k_shot in PROTOCOLS:
        rng = np.random.default_rng(0)
        for _ in range(episodes):
            support_idx, query_idx = sample_episode(labels, n_way, k_shot, 15, rng)
            support, query = features[support_idx], features[query_idx]
            support_names = [classes[i] for i in labels[support_idx]]
            query_names = np.array([classes[i] for i in labels[query_idx]])
            episode_classes = sorted(set(support_names))
            support_y = torch.as_tensor([episode_classes.index(c) for c in support_names])
            query_y = np.array([episode_classes.index(c) for c in query_names])
            for name in OURS:
                start = time.perf_counter()
                predicted = run_ours(name, support, support_names, query)
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
                accuracies.setdefault((name, (n_way, k_shot)), []).append(100 * float((predicted == query_names).mean()))
            for name, (cls, _) in methods.items():
                for preprocessing in ("raw", "CL2N"):
                    key = f"{name} [{preprocessing}]"
                    start = time.perf_counter()
                    predicted = run_easyfsl(cls, preprocessing, support, support_y, query)
                    seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
                    accuracies.setdefault((key, (n_way, k_shot)), []).append(100 * float((predicted == query_y).mean()))
    return accuracies, seconds


def ci(values: list[float]) -> float:
    return 1.96 * float(np.std(values, ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def dataset_section(title: str, accuracies: dict, seconds: dict, methods: dict, episodes: int) -> tuple[str, list]:
    total_episodes = episodes * len(PROTOCOLS)
    rows, verdicts = [], []
    best: dict[str, dict[tuple[int, int], tuple[float, str]]] = {"ours": {}, "ours_default": {}, "theirs": {},
                                                                  "theirs_inductive": {}}
    for name in OURS:
        row = [name, ""]
        for protocol in PROTOCOLS:
            values = accuracies[(name, protocol)]
            row.append(f"{np.mean(values):.1f} ± {ci(values):.1f}")
            for group in (["ours"] + (["ours_default"] if name in DEFAULTS else [])):
                if np.mean(values) > best[group].get(protocol, (-1, ""))[0]:
                    best[group][protocol] = (float(np.mean(values)), name)
        rows.append(row + [1000 * seconds[name] / total_episodes])
    for name, (_, transductive) in methods.items():
        row = [f"easyfsl {name}", "T" if transductive else ""]
        chosen = []
        for protocol in PROTOCOLS:
            options = {p: accuracies[(f"{name} [{p}]", protocol)] for p in ("raw", "CL2N")}
            preprocessing = max(options, key=lambda p: np.mean(options[p]))
            values = options[preprocessing]
            chosen.append(preprocessing)
            row.append(f"{np.mean(values):.1f} ± {ci(values):.1f} ({preprocessing})")
            for group in (["theirs"] + ([] if transductive else ["theirs_inductive"])):
                if np.mean(values) > best[group].get(protocol, (-1, ""))[0]:
                    best[group][protocol] = (float(np.mean(values)), name)
        milliseconds = 1000 * np.mean([seconds[f"{name} [{p}]"] for p in ("raw", "CL2N")]) / total_episodes
        rows.append(row + [milliseconds])
    summary = []
    for protocol in PROTOCOLS:
        ours, theirs, inductive = best["ours"][protocol], best["theirs"][protocol], best["theirs_inductive"][protocol]
        default = best["ours_default"][protocol]
        label = f"{protocol[0]}-way {protocol[1]}-shot"
        verdict = "ours >= theirs" if ours[0] >= theirs[0] else (
            f"easyfsl's transductive {theirs[1]} wins by {theirs[0] - ours[0]:.1f} pts" if theirs[1] != inductive[1]
            else f"easyfsl's {theirs[1]} wins by {theirs[0] - ours[0]:.1f} pts")
        summary.append([label, f"{ours[0]:.1f} ({ours[1]})", f"{default[0]:.1f} ({default[1]})",
                        f"{theirs[0]:.1f} ({theirs[1]})",
                        f"{inductive[0]:.1f} ({inductive[1]})", verdict])
        verdicts.append((title, label, ours, theirs, inductive))
    header = ["method", "T"] + [f"{n}-way {k}-shot" for n, k in PROTOCOLS] + ["ms / episode"]
    text = (f"### {title} ({episodes} episodes per protocol, 15 queries per class, seed 0)\n\n"
            + _report.table(header, rows) + "\n\n"
            + _report.table(["protocol", "our best", "our defaults (best of)", "easyfsl best (any)",
                             "easyfsl best inductive", "verdict (our best vs easyfsl best)"], summary))
    return text, verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 episodes per protocol instead of 200")
    parser.add_argument("--episodes", type=int, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    info = _report.machine_info()
    episodes = args.episodes or (20 if args.quick else 200)
    import easyfsl

    torch.manual_seed(0)
    backbone = load_backbone()
    extractor = get_extractor(backbone)
    methods = easyfsl_methods()
    sections = [f"easyfsl {getattr(easyfsl, '__version__', '')} methods with an identity backbone on fsl_app's "
                f"cached `{backbone.name}` features. Accuracy % ± 95% CI over episodes; for easyfsl the better of raw "
                "and CL2N features is shown (in brackets). T = transductive (uses the episode's unlabeled queries)."]
    goals = []
    for title, folder in (("digits (sklearn, 1797 images, 10 classes)", _datasets.digits_folder()),
                          ("scikit-image patches (587 images, 16 classes)", _datasets.patches_folder())):
        images = ImageSet.from_folder(folder)
        features = extractor.extract(images)
        labels = images.label_indices()
        accuracies, seconds = evaluate_dataset(features, labels, images.classes, episodes, methods)
        text, verdicts = dataset_section(title, accuracies, seconds, methods, episodes)
        sections.append(text)
        for dataset, label, ours, theirs, inductive in verdicts:
            short = dataset.split(" (")[0]
            verdict = "met" if ours[0] >= theirs[0] else (
                f"not met: transductive {theirs[1]} wins by {theirs[0] - ours[0]:.1f}"
                + ("; met vs inductive" if ours[0] >= inductive[0] else f"; inductive {inductive[1]} too"))
            goals.append([f"our best >= easyfsl best, {short}, {label}",
                          f"{ours[0]:.1f} ({ours[1]}) vs {theirs[0]:.1f} ({theirs[1]})", verdict])
    _report.write_result("easyfsl", "Q4. Few-shot accuracy: fsl_app vs easyfsl on the same features and episodes",
                         sections, info=info, seconds=time.perf_counter() - started, goals=goals)


if __name__ == "__main__":
    main()
