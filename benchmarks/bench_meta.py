"""Issue 12: meta-learning (MAML / ANIL, Matching Networks) against ProtoNet, the linear probe and fine-tuning.

Same seeded episodes for every method: ``sample_episode`` of ``fsl_app.evaluation`` with ``default_rng(0)``, 15
queries per class, on digits and scikit-image patches, 5-way 1-shot, 5-way 5-shot and 10-way 5-shot. Frozen-feature
methods fit on the product's cached features of the default backbone (``fit_features``); the methods that adapt the
backbone (first-order MAML on the last layer groups, Matching Networks with episodic fine-tuning, ``finetune``) fit
on the images and run only the first ``--adapting-episodes`` of the 5-way 5-shot episodes (a CPU takes minutes per fit), so
their rows have wider intervals and are compared with the frozen methods on those episodes only. Accuracy % ± 95% CI
over episodes; seconds per episode: fit + prediction of the queries, every method run once per episode in rotated
order. Within one protocol, a method whose mean lies within the winner's 95% CI ties with it.

Run alone: ``.venv/bin/python benchmarks/bench_meta.py [--quick] [--episodes N] [--adapting-episodes N]``.
"""

from __future__ import annotations

import argparse
import logging
import math
import time

import numpy as np
import torch

import _datasets
import _report
from fsl_app.backbones import load_backbone
from fsl_app.dataset import ImageSet
from fsl_app.evaluation import sample_episode
from fsl_app.features import get_extractor
from fsl_app.strategies import create_strategy

PROTOCOLS = ((5, 1), (5, 5), (10, 5))
N_QUERY = 15
FROZEN = {
    "maml ANIL (head)": ("maml", {}),
    "maml FOMAML (head)": ("maml", {"variant": "fomaml"}),
    "matchingnet (frozen)": ("matchingnet", {}),
    "protonet": ("protonet", {}),
    "linear": ("linear", {}),
}
FCE = {"matchingnet FCE (frozen)": ("matchingnet", {"fce_steps": 2, "fce_episodes": 30})}  # left out by --quick
ADAPTING_PROTOCOLS = ((5, 5),)  # a CPU takes minutes per fit of these
ADAPTING_EPISODES = 10  # meta-training / fine-tuning episodes of the backbone-adapting methods
ADAPTING = {
    "maml FOMAML (last_block)": ("maml", {"adapt": "last_block", "variant": "fomaml",
                                          "meta_episodes": ADAPTING_EPISODES, "inner_steps": 2}),
    "matchingnet (episodic)": ("matchingnet", {"finetune_episodes": ADAPTING_EPISODES}),
    "finetune": ("finetune", {}),
}


def ci(values) -> float:
    values = np.asarray(values, dtype=float)
    return 1.96 * float(values.std(ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def run_protocol(features, images: ImageSet, backbone, n_way: int, k_shot: int, count: int,
                 methods: dict) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per-episode accuracy (%) and mean seconds per episode of ``methods`` on the first ``count`` seeded episodes
    (the same for every call); every method runs once per episode, in rotated order."""
    labels, classes = images.label_indices(), images.classes
    rng = np.random.default_rng(0)
    drawn = [sample_episode(labels, n_way, k_shot, N_QUERY, rng) for _ in range(count)]
    scores = {name: [] for name in methods}
    seconds = {name: [] for name in methods}
    for number, (support, query) in enumerate(drawn):
        names = [classes[i] for i in labels[support]]
        truth = np.array([classes[i] for i in labels[query]])
        order = list(methods)
        for name in order[number % len(order):] + order[:number % len(order)]:
            strategy_name, params = methods[name]
            started = time.perf_counter()
            if name not in ADAPTING:
                model = create_strategy(strategy_name, **params).fit_features(features[support], names)
                predicted = model.predict(features[query])
            else:
                model = create_strategy(strategy_name, **params).fit(images.subset(support), backbone=backbone)
                predicted = model.predict(images.subset(query))
            seconds[name].append(time.perf_counter() - started)
            scores[name].append(100 * float(np.mean(np.array(predicted) == truth)))
    return scores, {name: float(np.mean(values)) for name, values in seconds.items()}


def section(title: str, n_way: int, k_shot: int, scores: dict, seconds: dict, adapting: dict) -> tuple[str, list]:
    frozen_names = [name for name in scores if name not in adapting]
    best = max(frozen_names, key=lambda name: np.mean(scores[name]))
    low = np.mean(scores[best]) - ci(scores[best])
    rows, winners = [], []
    for name, values in scores.items():
        mean = float(np.mean(values))
        verdict = ""
        if name in frozen_names:
            verdict = "best" if name == best else ("tie (within the best's CI)" if mean >= low else "")
        else:
            paired = [scores[best][i] for i in range(len(values))]
            verdict = f"{best} on the same {len(values)}: {np.mean(paired):.1f}"
        rows.append([name, len(values), f"{mean:.1f} ± {ci(values):.1f}", f"{seconds[name]:.2f}", verdict])
        if verdict in ("best", "tie (within the best's CI)"):
            winners.append(name)
    text = (f"### {title}, {n_way}-way {k_shot}-shot\n\n"
            + _report.table(["method", "episodes", "accuracy %", "s / episode", "vs the best frozen method"], rows))
    return text, [f"{title} {n_way}w{k_shot}s", best, ", ".join(w for w in winners if w != best) or "-"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 episodes (1 for the backbone-adapting methods), "
                        "no full-context embeddings")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per protocol (frozen methods)")
    parser.add_argument("--adapting-episodes", type=int, default=None,
                        help="episodes per protocol of the backbone-adapting methods (the first ones)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the one-shot fallbacks log once per fit; the tables say so once
    started = time.perf_counter()
    info = _report.machine_info()
    count = args.episodes or (10 if args.quick else 100)
    adapting_count = args.adapting_episodes if args.adapting_episodes is not None else (1 if args.quick else 5)
    frozen = FROZEN if args.quick else {**FROZEN, **FCE}
    torch.manual_seed(0)
    backbone = load_backbone()
    extractor = get_extractor(backbone)
    sections = [f"Meta-learning on the product's `{backbone.name}` backbone, {N_QUERY} queries per class. Frozen "
                f"methods: {count} episodes per protocol on cached features; backbone-adapting methods: 5-way 5-shot only, "
                f"the first {adapting_count} of the same episodes, on images ({ADAPTING_EPISODES} meta-training / episodic "
                "fine-tuning episodes each). With one image per class MAML cannot split the support into shots and "
                "queries: it adapts its Proto-MAML head without meta-training (the fallback it logs), so its 1-shot "
                "rows measure that fallback, and 1-shot Matching Networks is cosine nearest neighbour."]
    data = {title: ImageSet.from_folder(folder) for title, folder in (("digits", _datasets.digits_folder()),
                                                                      ("patches", _datasets.patches_folder()))}
    features = {title: extractor.extract(images) for title, images in data.items()}
    results: dict[tuple, tuple[dict, dict]] = {}
    # frozen methods on every protocol first, then the slow backbone-adapting ones: a long run leaves what it measured
    for methods, count_here, protocols in ((frozen, count, PROTOCOLS), (ADAPTING, adapting_count, ADAPTING_PROTOCOLS)):
        for title, images in data.items():
            for n_way, k_shot in protocols:
                if count_here == 0:
                    continue
                scores, seconds = run_protocol(features[title], images, backbone, n_way, k_shot, count_here, methods)
                old_scores, old_seconds = results.get((title, n_way, k_shot), ({}, {}))
                results[(title, n_way, k_shot)] = ({**old_scores, **scores}, {**old_seconds, **seconds})
                write(sections[0], results, info, started)


def write(intro: str, results: dict, info: dict, started: float) -> None:
    sections, summary = [], []
    for (title, n_way, k_shot), (scores, seconds) in results.items():
        text, row = section(title, n_way, k_shot, scores, seconds, ADAPTING)
        sections.append(text)
        summary.append(row)
    who = "### Who wins where (frozen methods, all episodes)\n\n" + _report.table(
        ["protocol", "best", "ties within its 95% CI"], summary)
    _report.write_result("meta", "Issue 12. Meta-learning: MAML / ANIL and Matching Networks against ProtoNet, "
                         "linear and fine-tuning", [intro, who, *sections], info=info,
                         seconds=time.perf_counter() - started)


if __name__ == "__main__":
    main()
