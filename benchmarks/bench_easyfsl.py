"""Q4: few-shot accuracy of fsl_app's strategies vs easyfsl's methods on the same features and the same episodes.

Features: the product's cached frozen features of the default backbone (``get_extractor(backbone).extract``).
Episodes: ``fsl_app.evaluation.sample_episode`` with one seeded generator per protocol, shared by every method.
easyfsl (PyPI ``easyfsl``, a benchmark-only dependency) gets an identity backbone, so its methods work on the same
features; each runs with its default hyperparameters, once on raw features and once with CL2N (centering on the
support mean, then L2 normalization, passed as ``feature_centering`` / ``feature_normalization=2``). Ours are shown
per configuration (``--param`` values of the product's strategies). Transductive methods (marked T) also look at the
unlabeled queries of the episode, which fsl_app's strategies do not.

Picks before scores: every choice (our best configuration, easyfsl's best method and its preprocessing, the better
of our two defaults) is made on validation episodes (seed 1) and only then scored on separate test episodes
(seed 0), so the maximum over many noisy means does not favour either side. Verdict of "our pick >= easyfsl's pick":
the per-episode difference of the two picks on the same test episodes has a mean and a 95% CI (Student t);
"met" when the whole CI is above 0 (so our mean is higher), "not met" when it is below 0, "tie" otherwise: the
episodes do not separate them. Full runs use 100 validation + 300 test episodes per protocol (a paired CI of about
+-0.5 to 1 point); ``--quick`` 20 + 40, where most differences under ~2 points come out as ties.

Data sets (both offline): scikit-learn's digits (224 px PNG, 10 classes) and scikit-image's bundled pictures cut
into 64 px patches (16 classes, 24-40 patches each; the class is the source picture).

Run alone: ``.venv/bin/python benchmarks/bench_easyfsl.py [--quick] [--episodes N] [--validation-episodes N]``.
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
QUERIES = 15  # per class
PREPROCESSINGS = ("raw", "CL2N")
VALIDATION_SEED, TEST_SEED = 1, 0
FULL_EPISODES = (100, 300)  # (validation, test) episodes per protocol
QUICK_EPISODES = (20, 40)
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


def episode_accuracies(features: torch.Tensor, labels: np.ndarray, classes: list[str], protocol: tuple[int, int],
                       episodes: int, seed: int, methods: dict, seconds: dict,
                       theirs: set[str] | None = None) -> dict[str, list[float]]:
    """{candidate: accuracy % per episode} on ``episodes`` seeded episodes, the same ones for every candidate.

    Candidates: each of our configurations (``OURS``) and each easyfsl method on raw and on CL2N features
    (``"TIM [CL2N]"``; only those in ``theirs`` when given); ``seconds`` collects each candidate's
    fit + predict time per episode.
    """
    n_way, k_shot = protocol
    rng = np.random.default_rng(seed)
    accuracies: dict[str, list[float]] = {}
    for _ in range(episodes):
        support_idx, query_idx = sample_episode(labels, n_way, k_shot, QUERIES, rng)
        support, query = features[support_idx], features[query_idx]
        support_names = [classes[i] for i in labels[support_idx]]
        query_names = np.array([classes[i] for i in labels[query_idx]])
        episode_classes = sorted(set(support_names))
        support_y = torch.as_tensor([episode_classes.index(c) for c in support_names])
        query_y = np.array([episode_classes.index(c) for c in query_names])
        for name in OURS:
            start = time.perf_counter()
            predicted = run_ours(name, support, support_names, query)
            seconds.setdefault(name, []).append(time.perf_counter() - start)
            accuracies.setdefault(name, []).append(100 * float((predicted == query_names).mean()))
        for name, (cls, _) in methods.items():
            for preprocessing in PREPROCESSINGS:
                key = f"{name} [{preprocessing}]"
                if theirs is not None and key not in theirs:
                    continue
                start = time.perf_counter()
                predicted = run_easyfsl(cls, preprocessing, support, support_y, query)
                seconds.setdefault(key, []).append(time.perf_counter() - start)
                accuracies.setdefault(key, []).append(100 * float((predicted == query_y).mean()))
    return accuracies


def ci(values) -> float:
    """Half-width of the 95% confidence interval of the mean (Student t: honest for a few episodes too)."""
    from scipy.stats import t

    n = len(values)
    return float(t.ppf(0.975, n - 1)) * float(np.std(values, ddof=1)) / math.sqrt(n) if n > 1 else 0.0


def pick(validation: dict[str, list[float]], candidates: list[str]) -> str:
    """The candidate with the highest mean on the validation episodes (ties: the first listed)."""
    return max(candidates, key=lambda name: np.mean(validation[name]))


def compare(ours: list[float], theirs: list[float]) -> tuple[float, float, str]:
    """Paired per-episode difference ours - theirs (same episodes): mean, 95% CI half-width, and the outcome.

    ``"better"`` when the whole CI is above 0, ``"worse"`` when it is below 0, otherwise ``"tie"``: the episodes do
    not separate the two (identical methods give a difference of exactly 0, a tie).
    """
    difference = np.array(ours) - np.array(theirs)
    mean, half = float(difference.mean()), ci(difference)
    outcome = "better" if mean - half > 0 else "worse" if mean + half < 0 else "tie"
    return mean, half, outcome


def is_transductive(candidate: str, methods: dict) -> bool:
    """Whether an easyfsl candidate ("TIM [CL2N]") uses the queries; our configurations never do."""
    return methods.get(candidate.split(" [")[0], (None, False))[1]


def choices(validation: dict[str, list[float]], methods: dict) -> dict:
    """The picks, made on the validation episodes only: ours, easyfsl's (any, inductive) and each method's
    preprocessing (``per_method``: method -> candidate)."""
    per_method = {name: pick(validation, [f"{name} [{p}]" for p in PREPROCESSINGS]) for name in methods}
    theirs = [f"{name} [{p}]" for name in methods for p in PREPROCESSINGS]
    return {"ours": pick(validation, list(OURS)), "theirs": pick(validation, theirs),
            "theirs_inductive": pick(validation, [c for c in theirs if not is_transductive(c, methods)]),
            "per_method": per_method}


def verdict(ours: str, theirs: str, inductive: str, test: dict[str, list[float]], methods: dict) -> tuple[str, str]:
    """(measured, verdict) of the goal "our pick >= easyfsl's pick" on the test episodes.

    met: our pick is better than easyfsl's pick beyond the 95% CI of the paired difference; tie: the CI includes 0
    (the episodes do not separate them); not met: easyfsl's pick is better beyond the CI. When easyfsl's pick is
    transductive, the comparison with its best inductive method is added.
    """
    n = len(test[ours])
    mean, half, outcome = compare(test[ours], test[theirs])
    measured = (f"{np.mean(test[ours]):.1f} ± {ci(test[ours]):.1f} ({ours}) vs {np.mean(test[theirs]):.1f} ± "
                f"{ci(test[theirs]):.1f} ({theirs}{', T' if is_transductive(theirs, methods) else ''}); paired "
                f"difference {mean:+.1f} ± {half:.1f}")
    words = {"better": "met", "tie": f"tie ({n} episodes do not separate them)",
             "worse": f"not met: {theirs} better by {-mean:.1f} ± {half:.1f}"}
    text = words[outcome]
    if is_transductive(theirs, methods) and outcome != "better":
        mean_i, half_i, outcome_i = compare(test[ours], test[inductive])
        text += f"; vs easyfsl's inductive pick {inductive}: " + {
            "better": f"met ({mean_i:+.1f} ± {half_i:.1f})", "tie": f"tie ({mean_i:+.1f} ± {half_i:.1f})",
            "worse": f"not met ({mean_i:+.1f} ± {half_i:.1f})"}[outcome_i]
    return measured, text


def dataset_section(title: str, validation: dict, test: dict, picks: dict, seconds: dict, methods: dict,
                    sizes: tuple[int, int]) -> tuple[str, list]:
    """Markdown for one data set (test accuracies of every candidate, then the picks) and its goal rows."""
    n_validation, n_test = sizes

    def cell(protocol, candidate, suffix=""):
        values = test[protocol][candidate]
        return f"{np.mean(values):.1f} ± {ci(values):.1f}{suffix}"

    rows = [[name, "", *[cell(p, name, " *" if picks[p]["ours"] == name else "") for p in PROTOCOLS],
             1000 * np.mean(seconds[name])] for name in OURS]
    for name, (_, transductive) in methods.items():
        chosen = [picks[p]["per_method"][name] for p in PROTOCOLS]
        rows.append([f"easyfsl {name}", "T" if transductive else "",
                     *[cell(p, c, f" ({c.split(' [')[1][:-1]})" + (" *" if picks[p]["theirs"] == c else ""))
                       for p, c in zip(PROTOCOLS, chosen)],
                     1000 * np.mean([t for p in PREPROCESSINGS for t in seconds[f"{name} [{p}]"]])])
    summary, goals = [], []
    for protocol in PROTOCOLS:
        label = f"{protocol[0]}-way {protocol[1]}-shot"
        chosen = picks[protocol]
        measured, text = verdict(chosen["ours"], chosen["theirs"], chosen["theirs_inductive"], test[protocol],
                                 methods)
        default = max(DEFAULTS, key=lambda name: np.mean(validation[protocol][name]))
        summary.append([label, f"{chosen['ours']}: {cell(protocol, chosen['ours'])}",
                        f"{default}: {cell(protocol, default)}",
                        f"{chosen['theirs']}: {cell(protocol, chosen['theirs'])}",
                        f"{chosen['theirs_inductive']}: {cell(protocol, chosen['theirs_inductive'])}", text])
        goals.append([f"our pick >= easyfsl's pick, {title.split(' (')[0]}, {label}", measured, text])
    header = ["method", "T"] + [f"{n}-way {k}-shot" for n, k in PROTOCOLS] + ["ms / episode"]
    text = (f"### {title} ({n_test} test episodes per protocol, seed {TEST_SEED}; picks made on {n_validation} "
            f"validation episodes, seed {VALIDATION_SEED}; {QUERIES} queries per class)\n\n"
            + _report.table(header, rows) + "\n\n"
            + _report.table(["protocol", "our pick (test)", "our defaults, better on validation (test)",
                             "easyfsl pick, any (test)", "easyfsl pick, inductive (test)",
                             "verdict (our pick vs easyfsl's pick, paired)"], summary))
    return text, goals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_EPISODES[0]} validation + {QUICK_EPISODES[1]} test episodes per protocol "
                             f"instead of {FULL_EPISODES[0]} + {FULL_EPISODES[1]}")
    parser.add_argument("--episodes", type=int, default=None, help="test episodes per protocol")
    parser.add_argument("--validation-episodes", type=int, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    info = _report.machine_info()
    defaults = QUICK_EPISODES if args.quick else FULL_EPISODES
    sizes = (args.validation_episodes or defaults[0], args.episodes or defaults[1])
    import easyfsl

    torch.manual_seed(0)
    backbone = load_backbone()
    extractor = get_extractor(backbone)
    methods = easyfsl_methods()
    sections = [f"easyfsl {getattr(easyfsl, '__version__', '')} methods with an identity backbone on fsl_app's "
                f"cached `{backbone.name}` features. Accuracy % ± 95% CI over the test episodes; for easyfsl the "
                "preprocessing (raw or CL2N, in brackets) is the one better on the validation episodes. * marks the "
                "picks: our best configuration and easyfsl's best method, both chosen on the validation episodes "
                "before the test episodes are scored. T = transductive (uses the episode's unlabeled queries). The "
                "verdict compares the two picks by their paired per-episode difference (same test episodes): met "
                "when its 95% CI is above 0, not met when below 0, otherwise a tie."]
    goals = []
    for title, folder in (("digits (sklearn, 1797 images, 10 classes)", _datasets.digits_folder()),
                          ("scikit-image patches (587 images, 16 classes)", _datasets.patches_folder())):
        images = ImageSet.from_folder(folder)
        features = extractor.extract(images)
        labels = images.label_indices()
        seconds: dict[str, list[float]] = {}
        validation = {p: episode_accuracies(features, labels, images.classes, p, sizes[0], VALIDATION_SEED, methods,
                                            seconds) for p in PROTOCOLS}
        picks = {p: choices(validation[p], methods) for p in PROTOCOLS}
        test = {p: episode_accuracies(features, labels, images.classes, p, sizes[1], TEST_SEED, methods, seconds,
                                      theirs={*picks[p]["per_method"].values(), picks[p]["theirs"],
                                              picks[p]["theirs_inductive"]}) for p in PROTOCOLS}
        text, rows = dataset_section(title, validation, test, picks, seconds, methods, sizes)
        sections.append(text)
        goals += rows
    _report.write_result("easyfsl", "Q4. Few-shot accuracy: fsl_app vs easyfsl on the same features and episodes",
                         sections, info=info, seconds=time.perf_counter() - started, goals=goals)


if __name__ == "__main__":
    main()
