"""Issue 11 item 4: domain shift on frozen features, detected (MMD two-sample test) and adapted (centring, CORAL).

Data: two domain-shift pairs built from data that packages ship (``_datasets.SHIFT_PAIRS``): scikit-learn's digits
(A) vs the same digits with dilated strokes, inverted (B); scikit-image patches (A) vs their Sobel edge maps (B).
A and B hold the same class names and the same file names, image for image, so a support image of A and a query
image of B are never the same picture (episodes draw disjoint indices). Features: the product's cached frozen
features of the default backbone (``get_extractor(load_backbone()).extract``).

(a) Detector (``fsl_app.shift.detect_shift``, 500 permutations, alpha 0.05): over seeded draws, the fraction
flagged when both sides come from one domain (false-positive rate; the permutation test is exact, so it should stay
within sampling error of alpha) and when the reference comes from A and the target from B (power). Draws: random
images of all classes (25 vs 75 and 100 vs 400), and an episode-shaped draw (5-way 5-shot support vs 15 queries per
class of the same 5 classes).

(b) Few-shot accuracy with support from A and queries from B: the product's linear probe (logistic regression,
CL2N, ``create_strategy("linear")``) fit on the support, predicting (i) the raw B queries (inductive), or (ii) the B
queries mapped by ``fit_alignment(support features, pool)`` (``center`` or ``coral``), where the pool is the
episode's queries (the transductive protocol) or every image of B (a pool holding the other classes too); coral
with Ledoit-Wolf shrinkage ("auto") and with a fixed 0.9; or (iii) "gated center": centred on the queries only
when ``detect_shift(support, queries)`` flags a shift; or (iv) the product's pool-aware strategies ``aligned`` and
``selftrain`` fitted with the episode's queries as their unlabeled pool. The same variants
also run with queries from A (no shift) to show what alignment costs when there is nothing to fix. Every variant sees
the same seeded episodes (``fsl_app.evaluation.sample_episode``); differences are paired per episode, 95% CI.

Run alone: ``.venv/bin/python benchmarks/bench_shift.py [--quick] [--episodes N] [--draws N]``.
"""

from __future__ import annotations

import argparse
import inspect
import math
import time

import numpy as np
import torch
from scipy.stats import binom
from threadpoolctl import threadpool_limits

import _datasets
import _report
from fsl_app.backbones import load_backbone
from fsl_app.dataset import ImageSet
from fsl_app.evaluation import sample_episode
from fsl_app.features import get_extractor
from fsl_app.shift import DomainStatistics, detect_shift, fit_alignment
from fsl_app.strategies import create_strategy

PROTOCOLS = [(5, 5), (10, 5)]
N_QUERY = 15
ALPHA = 0.05
POWER_GOAL = 0.9
NO_SHIFT_TOLERANCE = 0.5  # points an alignment may cost when there is no shift, to be a safe default
DRAWS = [("random, 25 vs 75", 25, 75), ("random, 100 vs 400", 100, 400), ("5-way 5-shot support vs its queries",
                                                                            None, None)]
# the product's pool-aware strategies, fitted with the episode's queries as their unlabeled pool
POOL_STRATEGY_VARIANTS = ["strategy aligned (pool: queries)", "strategy selftrain (pool: queries)"]
SHIFTED_VARIANTS = ["inductive", "center (pool: queries)", "coral (pool: queries)",
                    "coral (pool: queries, shrinkage 0.9)", "center (pool: all of B)", "coral (pool: all of B)",
                    "gated center (pool: queries)", *POOL_STRATEGY_VARIANTS]
UNSHIFTED_VARIANTS = ["inductive", "center (pool: queries)", "coral (pool: queries)",
                      "coral (pool: queries, shrinkage 0.9)", "gated center (pool: queries)", *POOL_STRATEGY_VARIANTS]


def load_pair(name: str, extractor) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, list[str]]:
    """Features of domains A and B (n, d) each, row i of both from the same source picture, and the labels."""
    build_a, build_b, _ = _datasets.SHIFT_PAIRS[name]
    root_a, root_b = build_a(), build_b()
    images_a, images_b = ImageSet.from_folder(root_a), ImageSet.from_folder(root_b)
    names_a = [r.path.relative_to(root_a) for r in images_a.records]
    names_b = [r.path.relative_to(root_b) for r in images_b.records]
    if names_a != names_b:
        raise RuntimeError(f"{root_a} and {root_b} do not hold the same files; delete {root_b} to rebuild it")
    return extractor.extract(images_a), extractor.extract(images_b), images_a.label_indices(), images_a.classes


def ci(values) -> float:
    values = np.asarray(values, dtype=float)
    return 1.96 * float(values.std(ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else 0.0


# ------------------------------------------------------------------------------------------------ detector


def draw(labels: np.ndarray, size: tuple[int | None, int | None], rng: np.random.Generator) -> tuple[np.ndarray,
                                                                                                       np.ndarray]:
    """Disjoint reference and target indices: random images, or an episode's support and queries."""
    n_reference, n_target = size
    if n_reference is None:
        return sample_episode(labels, 5, 5, N_QUERY, rng)
    order = rng.permutation(len(labels))
    return order[:n_reference], order[n_reference:n_reference + n_target]


def detector_study(features_a: torch.Tensor, features_b: torch.Tensor, labels: np.ndarray, draws: int) -> dict:
    """{(draw name, case): [ShiftReport]} for the cases A vs A, B vs B (no shift) and A vs B (shift)."""
    reports: dict[tuple[str, str], list] = {}
    for draw_name, n_reference, n_target in DRAWS:
        rng = np.random.default_rng(0)
        for seed in range(draws):
            reference, target = draw(labels, (n_reference, n_target), rng)
            for case, (first, second) in {"A vs A": (features_a, features_a), "B vs B": (features_b, features_b),
                                          "A vs B": (features_a, features_b)}.items():
                report = detect_shift(first[reference], second[target], alpha=ALPHA, seed=seed)
                reports.setdefault((draw_name, case), []).append(report)
    return reports


def detector_section(pair: str, reports: dict, draws: int) -> tuple[str, list]:
    allowed = int(binom.ppf(0.95, draws, ALPHA))  # false positives consistent with a level-alpha test
    rows, goals = [], []
    false_positives, powers = [], []
    for draw_name, _, _ in DRAWS:
        for case in ("A vs A", "B vs B", "A vs B"):
            found = reports[(draw_name, case)]
            flagged = sum(r.shifted for r in found)
            p_values = [r.p_value for r in found]
            rows.append([draw_name, case, "shift" if case == "A vs B" else "none", f"{flagged}/{len(found)}",
                         f"{np.median(p_values):.3g}", f"{np.median([r.mmd for r in found]):.3f}",
                         f"{np.percentile([r.mmd for r in found], 95):.3f}"])
            if case == "A vs B":
                powers.append((flagged / len(found), draw_name))
            else:
                false_positives.append((flagged, f"{case}, {draw_name}"))
    worst_false = max(false_positives, key=lambda item: item[0])
    weakest_power = min(powers, key=lambda item: item[0])
    text = (f"#### Detector, {pair} ({draws} seeded draws per row, alpha {ALPHA})\n\n"
            + _report.table(["draw", "sides", "true shift", "flagged", "median p", "median MMD", "95th pct MMD"],
                            rows))
    goals.append([f"detector false positives within a level-{ALPHA} test, {pair}",
                  f"worst {worst_false[0]}/{draws} ({worst_false[1]}), allowed <= {allowed}",
                  "met" if worst_false[0] <= allowed else "not met"])
    goals.append([f"detector power >= {POWER_GOAL}, {pair}", f"weakest {weakest_power[0]:.2f} ({weakest_power[1]})",
                  "met" if weakest_power[0] >= POWER_GOAL else "not met"])
    return text, goals


# ------------------------------------------------------------------------------------------------ accuracy


def fit_linear(support: torch.Tensor, names: list[str]):
    model = create_strategy("linear")
    options = {"backbone": None} if "backbone" in inspect.signature(model.fit_features).parameters else {}
    return model.fit_features(support, names, **options)


def fit_pool_strategy(name: str, support: torch.Tensor, names: list[str], pool: torch.Tensor):
    """A registered pool-aware strategy fitted on the support with ``pool`` (the queries) as its unlabeled images."""
    return create_strategy(name).fit_features(support, names, unlabeled=pool)


def accuracy(model, queries: torch.Tensor, truth: np.ndarray) -> float:
    predicted = np.array(model.classes_)[model.predict_proba(queries).argmax(1).numpy()]
    return 100.0 * float((predicted == truth).mean())


def variant_queries(variant: str, support: torch.Tensor, queries: torch.Tensor, pool_statistics) -> torch.Tensor:
    """The query features (m, d) as the variant hands them to the classifier ("gated": aligned only when
    ``detect_shift(support, queries)`` flags a shift)."""
    if variant == "inductive":
        return queries
    gated = variant.startswith("gated ")
    method = variant.removeprefix("gated ").split(" ")[0]
    if gated and not detect_shift(support, queries, alpha=ALPHA, permutations=200).shifted:
        return queries
    pool = pool_statistics if "all of B" in variant else queries
    shrinkage = 0.9 if "shrinkage 0.9" in variant else "auto"
    return fit_alignment(support, pool, method=method, shrinkage=shrinkage).apply(queries)


def accuracy_study(features_a: torch.Tensor, features_b: torch.Tensor, labels: np.ndarray, classes: list[str],
                   episodes: int) -> tuple[dict, dict]:
    """{(direction, protocol, variant): accuracies %} and {(direction, variant): seconds} on shared episodes."""
    statistics_b = DomainStatistics.of(features_b)
    results: dict[tuple[str, tuple[int, int], str], list[float]] = {}
    seconds: dict[tuple[str, str], float] = {}
    class_names = np.array(classes)
    for protocol in PROTOCOLS:
        rng = np.random.default_rng(0)
        for _ in range(episodes):
            support_idx, query_idx = sample_episode(labels, *protocol, N_QUERY, rng)
            support = features_a[support_idx]
            truth = class_names[labels[query_idx]]
            with threadpool_limits(1):
                model = fit_linear(support, list(class_names[labels[support_idx]]))
                for direction, queries, variants in (("A -> B", features_b[query_idx], SHIFTED_VARIANTS),
                                                     ("A -> A", features_a[query_idx], UNSHIFTED_VARIANTS)):
                    for variant in variants:
                        started = time.perf_counter()
                        if variant.startswith("strategy "):
                            names = list(class_names[labels[support_idx]])
                            score = accuracy(fit_pool_strategy(variant.split(" ")[1], support, names, queries),
                                             queries, truth)
                        else:
                            score = accuracy(model, variant_queries(variant, support, queries, statistics_b), truth)
                        elapsed = time.perf_counter() - started
                        seconds[(direction, variant)] = seconds.get((direction, variant), 0.0) + elapsed
                        results.setdefault((direction, protocol, variant), []).append(score)
    return results, seconds


def paired(results: dict, direction: str, protocol: tuple[int, int], variant: str) -> tuple[float, float]:
    difference = np.subtract(results[(direction, protocol, variant)], results[(direction, protocol, "inductive")])
    return float(difference.mean()), ci(difference)


def accuracy_section(pair: str, description: str, results: dict, seconds: dict, episodes: int) -> tuple[str, list]:
    protocol_names = [f"{n}-way {k}-shot" for n, k in PROTOCOLS]
    rows = []
    for direction, variants in (("A -> B", SHIFTED_VARIANTS), ("A -> A", UNSHIFTED_VARIANTS)):
        for variant in variants:
            row = [direction, variant]
            for protocol in PROTOCOLS:
                values = results[(direction, protocol, variant)]
                cell = f"{np.mean(values):.1f} ± {ci(values):.1f}"
                if variant != "inductive":
                    mean, half = paired(results, direction, protocol, variant)
                    cell += f" ({mean:+.1f} ± {half:.1f})"
                row.append(cell)
            rows.append(row + [f"{1000 * seconds[(direction, variant)] / (episodes * len(PROTOCOLS)):.1f}"])
    gains = []
    for protocol, label in zip(PROTOCOLS, protocol_names):
        best = max(SHIFTED_VARIANTS[1:], key=lambda v: np.mean(results[("A -> B", protocol, v)]))
        gains.append((label, best, *paired(results, "A -> B", protocol, best)))
    goals = [[f"aligned beats inductive under shift, {pair}",
              "; ".join(f"{label}: {best} {mean:+.1f} ± {half:.1f}" for label, best, mean, half in gains),
              "met" if all(mean - half > 0 for *_, mean, half in gains) else "not met"]]
    for variant in ("center (pool: queries)", "coral (pool: queries)"):
        costs = [(label, *paired(results, "A -> A", protocol, variant))
                 for protocol, label in zip(PROTOCOLS, protocol_names)]
        goals.append([f"{variant.split(' ')[0]} costs <= {NO_SHIFT_TOLERANCE} pts without shift, {pair}",
                      "; ".join(f"{label}: {mean:+.1f} ± {half:.1f}" for label, mean, half in costs),
                      "met" if all(mean >= -NO_SHIFT_TOLERANCE for _, mean, _ in costs) else "not met"])
    text = (f"#### Few-shot accuracy, {pair}: support from A, queries from B ({description}) or from A "
            f"({episodes} episodes per protocol, {N_QUERY} queries per class, seed 0)\n\n"
            "Accuracy % ± 95% CI; in brackets the paired difference to the inductive row of the same direction.\n\n"
            + _report.table(["queries", "variant"] + protocol_names + ["ms / episode (alignment only)"], rows))
    return text, goals


def default_section(all_results: dict[str, dict]) -> tuple[str, list]:
    """Which alignment could be on by default: significant gain under every shift, no cost beyond the tolerance
    without shift (variants that need only the episode's queries, so they run in both directions); among those, the
    largest mean change over every pair, protocol and direction."""
    rows, safe = [], []
    for variant in UNSHIFTED_VARIANTS[1:]:
        gains = [paired(results, "A -> B", protocol, variant) for results in all_results.values()
                 for protocol in PROTOCOLS]
        costs = [paired(results, "A -> A", protocol, variant)[0] for results in all_results.values()
                 for protocol in PROTOCOLS]
        helps = all(mean - half > 0 for mean, half in gains)
        harmless = min(costs) >= -NO_SHIFT_TOLERANCE
        if helps and harmless:
            safe.append((float(np.mean([mean for mean, _ in gains] + costs)), variant))
        rows.append([variant, f"{min(mean for mean, _ in gains):+.1f} .. {max(mean for mean, _ in gains):+.1f}",
                     f"{min(costs):+.1f}", "yes" if helps else "no", "yes" if harmless else "no",
                     "candidate" if helps and harmless else "no"])
    best = max(safe, key=lambda item: item[0])[1] if safe else "none"
    text = ("#### Default candidate (all pairs and protocols)\n\n"
            + _report.table(["variant", "gain under shift (range, pts)", "worst change without shift (pts)",
                             "significant gain everywhere", f"costs <= {NO_SHIFT_TOLERANCE} pts without shift",
                             "default candidate"], rows)
            + f"\n\nBest default candidate (largest mean change over both directions among candidates): **{best}**.")
    return text, [["an alignment that helps under shift and is harmless without it", best,
                   "met" if safe else "not met"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 episodes and 60 detector draws instead of 300/400")
    parser.add_argument("--episodes", type=int, default=None)
    parser.add_argument("--draws", type=int, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    info = _report.machine_info()
    episodes = args.episodes or (40 if args.quick else 300)
    draws = args.draws or (60 if args.quick else 400)
    torch.manual_seed(0)
    backbone = load_backbone()
    extractor = get_extractor(backbone)
    sections = [f"Frozen `{backbone.name}` features (the product's feature cache). Domain B of each pair is domain A "
                "transformed image by image; see the script's docstring for the protocol."]
    goals, all_results = [], {}
    for pair, (_, _, description) in _datasets.SHIFT_PAIRS.items():
        features_a, features_b, labels, classes = load_pair(pair, extractor)
        stage = time.perf_counter()
        with threadpool_limits(1):
            text, pair_goals = detector_section(pair, detector_study(features_a, features_b, labels, draws), draws)
        print(f"{pair}: detector study {time.perf_counter() - stage:.0f} s", flush=True)
        sections.append(f"### {pair}: A = the bench set, B = {description}\n\n" + text)
        goals += pair_goals
        stage = time.perf_counter()
        results, seconds = accuracy_study(features_a, features_b, labels, classes, episodes)
        print(f"{pair}: accuracy study {time.perf_counter() - stage:.0f} s", flush=True)
        text, pair_goals = accuracy_section(pair, description, results, seconds, episodes)
        sections.append(text)
        goals += pair_goals
        all_results[pair] = results
    text, default_goals = default_section(all_results)
    sections.append(text)
    goals += default_goals
    _report.write_result("shift", "Q11. Domain shift: detection (MMD test) and feature alignment (centring, CORAL)",
                         sections, info=info, seconds=time.perf_counter() - started, goals=goals)


if __name__ == "__main__":
    main()
