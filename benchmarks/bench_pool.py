"""Issue 11: learning from the unlabeled pool, on the same cached features and seeded episodes for every method.

Features: the product's cached frozen features of the default backbone. Episodes and pools: ``sample_episode`` and
``sample_pool`` of ``fsl_app.evaluation`` with the generators ``evaluate_episodes`` uses (episodes from
``default_rng(seed)``, pools from ``default_rng([seed, 1])``), so every method, and every pool setting, sees the same
support and query images. Every fit is transductive: the episode's queries (15 a class, scored) are unlabeled images
of the fit, as in the literature; the pool scenarios add extra unlabeled images that are not scored:

- balanced: the queries alone;
- imbalanced pool: ``POOL_SIZE`` more images of the episode's classes with Dirichlet(2) class shares;
- 30% outliers: ``POOL_SIZE`` more images, 30% of them from classes outside the episode.

Ours: fsl_app's strategies through ``fit_features(support, labels, unlabeled=...)``, then ``predict_proba`` of the
fitted head on the queries (the exported model, which never sees the pool). easyfsl's transductive methods (identity
backbone) get the same support, and the same unlabeled images through ``forward(queries + pool)``; their predictions
on the queries are scored. Configurations are chosen on separate validation episodes (seed 1): our best among our
configurations, and for each easyfsl method raw or CL2N features (``--quick``: CL2N, their better choice in
``bench_easyfsl.py`` for these methods); the test episodes (seed 0) then compare the two choices. A difference smaller than the 95% CI of the paired per-episode differences is called a tie.

Run alone: ``.venv/bin/python benchmarks/bench_pool.py [--quick] [--episodes N]``.
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
from fsl_app.evaluation import sample_episode, sample_pool
from fsl_app.features import get_extractor
from fsl_app.strategies import create_strategy

SHOTS = (1, 5)
N_WAY, N_QUERY = 5, 15
POOL_SIZE = {"digits": 100, "patches": 40}  # patches: the smallest classes leave 4 images after 5 shots + 15 queries
INDUCTIVE = {"linear (logreg)": ("linear", {}), "linear (svm)": ("linear", {"classifier": "svm"}),
             "protonet": ("protonet", {})}
POOL_AWARE = {"selftrain": ("selftrain", {}), "selftrain, no outlier gate": ("selftrain", {"outliers": "off"}),
              "selftrain, logreg head": ("selftrain", {"classifier": "logreg"}),
              "bdcspn": ("bdcspn", {}), "bdcspn, no k-NN": ("bdcspn", {"laplacian": 0.0}),
              "alpha_tim (alpha 2)": ("alpha_tim", {}), "alpha_tim (alpha 7)": ("alpha_tim", {"alpha": 7.0}),
              "alpha_tim (alpha 1 = TIM)": ("alpha_tim", {"alpha": 1.0})}
ABLATIONS = ("selftrain, logreg head", "bdcspn, no k-NN", "alpha_tim (alpha 7)")  # left out by --quick
IN_POOL_SCENARIOS = ("selftrain", "selftrain, no outlier gate", "bdcspn", "alpha_tim (alpha 2)")
DEFAULT = "selftrain"  # what "use the unlabeled pool" runs
SCENARIOS = {"imbalanced pool (Dirichlet 2)": {"imbalance": 2.0}, "30% outliers": {"outliers": 0.3}}


def easyfsl_methods() -> dict:
    from easyfsl import methods

    return {"BD-CSPN": methods.BDCSPN, "LaplacianShot": methods.LaplacianShot, "TIM": methods.TIM,
            "PT-MAP": methods.PTMAP}


def episodes(labels: np.ndarray, k_shot: int, count: int, seed: int, pool: int = 0, **pool_settings) -> list:
    """(support, queries, extra pool) index arrays, drawn as ``evaluate_episodes`` draws them."""
    rng, pool_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    drawn = []
    for _ in range(count):
        support, query = sample_episode(labels, N_WAY, k_shot, N_QUERY, rng)
        extra = sample_pool(labels, np.unique(labels[support]), np.concatenate([query, support]), pool, pool_rng,
                            **pool_settings) if pool else np.zeros(0, dtype=np.int64)
        drawn.append((support, query, extra))
    return drawn


def run_ours(config: tuple, support: torch.Tensor, names: list[str], unlabeled: torch.Tensor,
             query: torch.Tensor) -> np.ndarray:
    strategy_name, params = config
    model = create_strategy(strategy_name, **params).fit_features(support, names, unlabeled=unlabeled)
    return np.array(model.classes_)[model.predict_proba(query).argmax(1).numpy()]


def run_easyfsl(cls, preprocessing: str, support: torch.Tensor, support_y: torch.Tensor, unlabeled: torch.Tensor,
                n_query: int) -> np.ndarray:
    options = {"feature_centering": support.mean(0), "feature_normalization": 2} if preprocessing == "CL2N" else {}
    model = cls(torch.nn.Identity(), **options)
    with torch.no_grad(), threadpool_limits(1):
        model.process_support_set(support, support_y)
        return model(unlabeled)[:n_query].argmax(1).numpy()


def accuracies(features: torch.Tensor, labels: np.ndarray, classes: list[str], drawn: list, ours: dict,
               theirs: dict) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per-episode accuracy (%) of each method, and its mean seconds per fit. ``theirs``: name -> (cls, prep)."""
    scores: dict[str, list[float]] = {name: [] for name in [*ours, *theirs]}
    seconds = dict.fromkeys(scores, 0.0)
    for support_idx, query_idx, extra_idx in drawn:
        support, query = features[support_idx], features[query_idx]
        unlabeled = torch.cat([query, features[extra_idx]])
        names = [classes[i] for i in labels[support_idx]]
        truth = np.array([classes[i] for i in labels[query_idx]])
        episode_classes = sorted(set(names))
        support_y = torch.as_tensor([episode_classes.index(n) for n in names])
        for name, config in ours.items():
            started = time.perf_counter()
            predicted = run_ours(config, support, names, unlabeled, query)
            seconds[name] += time.perf_counter() - started
            scores[name].append(100 * float((predicted == truth).mean()))
        for name, (cls, preprocessing) in theirs.items():
            started = time.perf_counter()
            predicted = np.array(episode_classes)[run_easyfsl(cls, preprocessing, support, support_y, unlabeled,
                                                              len(query_idx))]
            seconds[name] += time.perf_counter() - started
            scores[name].append(100 * float((predicted == truth).mean()))
    return scores, {name: value / max(1, len(drawn)) for name, value in seconds.items()}


def ci(values) -> float:
    values = np.asarray(values, dtype=float)
    return 1.96 * float(values.std(ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def cell(values) -> str:
    return f"{np.mean(values):.1f} ± {ci(values):.1f}"


def compare(ours: list[float], theirs: list[float]) -> tuple[float, float, str]:
    """Mean paired difference (ours - theirs), its 95% CI, and the verdict it supports."""
    difference = np.array(ours) - np.array(theirs)
    mean, half = float(difference.mean()), ci(difference)
    verdict = "met" if mean >= 0 else ("tie (within the CI)" if -mean <= half else "not met")
    return mean, half, verdict


def balanced_section(title: str, features, labels, classes, counts: dict, quick: bool) -> tuple[str, list, dict]:
    """Balanced transductive episodes: choose on validation, compare on test. Returns text, goal rows and the
    choices made on validation per shot: {"easyfsl": {method: preprocessing}, "inductive": our inductive best}."""
    methods = easyfsl_methods()
    preprocessings = ("CL2N",) if quick else ("raw", "CL2N")
    theirs_all = {f"easyfsl {name} [{prep}]": (cls, prep) for name, cls in methods.items() for prep in preprocessings}
    ours_all = {**INDUCTIVE, **{name: config for name, config in POOL_AWARE.items()
                                if not (quick and name in ABLATIONS)}}
    rows, goals, choices = [], [], {}
    for k_shot in SHOTS:
        validation = accuracies(features, labels, classes, episodes(labels, k_shot, counts["validation"], 1),
                                ours_all, theirs_all)[0]
        test, seconds = accuracies(features, labels, classes, episodes(labels, k_shot, counts["test"], 0),
                                   ours_all, theirs_all)
        our_choice = max(ours_all, key=lambda name: np.mean(validation[name]))
        preps = {name: max(preprocessings, key=lambda p: np.mean(validation[f"easyfsl {name} [{p}]"]))
                 for name in methods}
        their_choice = max((f"easyfsl {n} [{p}]" for n, p in preps.items()), key=lambda m: np.mean(validation[m]))
        choices[k_shot] = {"easyfsl": preps, "inductive": max(INDUCTIVE, key=lambda n: np.mean(validation[n]))}
        for name in [*ours_all, *(f"easyfsl {n} [{p}]" for n, p in preps.items())]:
            mark = " (chosen)" if name in (our_choice, their_choice) else ""
            rows.append([f"{N_WAY}-way {k_shot}-shot", name + mark, f"{np.mean(validation[name]):.1f}",
                         cell(test[name]), 1000 * seconds[name]])
        mean, half, verdict = compare(test[our_choice], test[their_choice])
        goals.append([f"our best >= easyfsl best, balanced transductive, {title}, {N_WAY}-way {k_shot}-shot",
                      f"{np.mean(test[our_choice]):.1f} ({our_choice}) vs {np.mean(test[their_choice]):.1f} "
                      f"({their_choice.removeprefix('easyfsl ')}); paired difference {mean:+.1f} ± {half:.1f}",
                      verdict])
    text = (f"### {title}: balanced, transductive (queries only), {counts['validation']} validation episodes "
            f"(seed 1), {counts['test']} test episodes (seed 0)\n\n"
            + _report.table(["protocol", "method", "validation %", "test % ± 95% CI", "ms / fit"], rows))
    return text, goals, choices


def pool_section(title: str, features, labels, classes, count: int, pool: int, choices: dict) -> tuple[str, list]:
    """Imbalanced and outlier pools (plus the queries): our default vs our inductive best, easyfsl beside them."""
    methods = easyfsl_methods()
    ours = {**INDUCTIVE, **{name: POOL_AWARE[name] for name in IN_POOL_SCENARIOS}}
    rows, goals = [], []
    for scenario, settings in SCENARIOS.items():
        for k_shot in SHOTS:
            theirs = {f"easyfsl {n} [{p}]": (methods[n], p) for n, p in choices[k_shot]["easyfsl"].items()}
            drawn = episodes(labels, k_shot, count, 0, pool=pool, **settings)
            scores, _ = accuracies(features, labels, classes, drawn, ours, theirs)
            inductive_best = choices[k_shot]["inductive"]
            for name in [*ours, *theirs]:
                rows.append([scenario, f"{N_WAY}-way {k_shot}-shot", name, cell(scores[name]),
                             f"{np.mean(scores[name]) - np.mean(scores[inductive_best]):+.1f}"])
            difference = np.array(scores[DEFAULT]) - np.array(scores[inductive_best])
            goals.append([f"pool-aware default ({DEFAULT}) >= inductive best - 0.5, {scenario}, {title}, "
                          f"{N_WAY}-way {k_shot}-shot",
                          f"{np.mean(scores[DEFAULT]):.1f} vs {np.mean(scores[inductive_best]):.1f} "
                          f"({inductive_best}): {difference.mean():+.1f} ± {ci(difference):.1f}",
                          "met" if difference.mean() >= -0.5 else "not met"])
    text = (f"### {title}: pools of {pool} extra unlabeled images beside the queries, {count} test episodes (seed 0)"
            "\n\nOur inductive best is the inductive configuration chosen on the balanced validation episodes; easyfsl "
            "methods use the features (raw or CL2N) chosen there.\n\n"
            + _report.table(["pool", "protocol", "method", "test % ± 95% CI", "vs our inductive best"], rows))
    return text, goals


def timing_section(features: torch.Tensor, labels: np.ndarray, classes: list[str], rounds: int) -> tuple[str, list]:
    """Seconds per pool-aware fit of 5-way 5-shot with 100 pool images (not transductive), rotated rounds."""
    drawn = episodes(labels, 5, rounds, 2, pool=100)
    names = [name for name in POOL_AWARE if name in IN_POOL_SCENARIOS]
    times: dict[str, list[float]] = {name: [] for name in names}
    for number, (support_idx, _, extra_idx) in enumerate(drawn):
        support_names = [classes[i] for i in labels[support_idx]]
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            strategy_name, params = POOL_AWARE[name]
            started = time.perf_counter()
            create_strategy(strategy_name, **params).fit_features(features[support_idx], support_names,
                                                                  unlabeled=features[extra_idx])
            times[name].append(time.perf_counter() - started)
    rows = [[name, 1000 * _report.median(times[name]), 1000 * max(times[name])] for name in names]
    goals = [[f"one pool-aware fit ({name}), 5-way 5-shot + 100 pool images, < 1 s",
              f"median {_report.median(times[name]):.3f} s, max {max(times[name]):.3f} s",
              "met" if max(times[name]) < 1.0 else "not met"] for name in names]
    text = (f"### Time per fit: 5-way 5-shot + 100 unlabeled pool images (digits features, {rounds} rounds, order "
            "rotated)\n\n" + _report.table(["strategy", "median (ms)", "max (ms)"], rows))
    return text, goals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 validation and 20 test episodes instead of 50 / 200, "
                        "no ablations, easyfsl on CL2N features only")
    parser.add_argument("--episodes", type=int, default=None, help="test episodes per protocol")
    parser.add_argument("--validation", type=int, default=None, help="validation episodes per protocol")
    args = parser.parse_args()
    started = time.perf_counter()
    info = _report.machine_info()
    counts = {"validation": args.validation or (10 if args.quick else 50), "test": args.episodes or (20 if args.quick else 200)}
    torch.manual_seed(0)
    import easyfsl

    backbone = load_backbone()
    extractor = get_extractor(backbone)
    sections = [f"fsl_app's pool-aware strategies (selftrain, bdcspn, alpha_tim) and inductive ones against easyfsl "
                f"{getattr(easyfsl, '__version__', '')}'s transductive methods on fsl_app's cached `{backbone.name}` "
                f"features. {N_WAY}-way, {N_QUERY} queries per class, every fit transductive. Accuracy % ± 95% CI over "
                "episodes; \"(chosen)\" marks the configuration picked on the validation episodes. Our default for "
                f"\"use the unlabeled pool\" is `{DEFAULT}`."]
    goals = []
    for title, folder in (("digits", _datasets.digits_folder()), ("patches", _datasets.patches_folder())):
        images = ImageSet.from_folder(folder)
        features, labels = extractor.extract(images), images.label_indices()
        text, rows, choices = balanced_section(title, features, labels, images.classes, counts, args.quick)
        sections.append(text)
        goals += rows
        text, rows = pool_section(title, features, labels, images.classes, counts["test"], POOL_SIZE[title], choices)
        sections.append(text)
        goals += rows
        if title == "digits":
            timing, timing_goals = timing_section(features, labels, images.classes, 10 if args.quick else 30)
    sections.append(timing)
    goals += timing_goals
    sections.append(_report.table(["goal", "measured", "verdict"], goals))
    _report.write_result("pool", "Issue 11. Learning from the unlabeled pool: transductive, imbalanced and outlier "
                         "pools, fsl_app vs easyfsl", sections, info=info, seconds=time.perf_counter() - started,
                         goals=goals)


if __name__ == "__main__":
    main()
