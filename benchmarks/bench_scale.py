"""Issue 14 item 3: projects of 1,000 / 10,000 / 100,000 images: time and peak memory of every step, and how long
each studio page takes to answer.

Data (made here, no download): synthetic 32 px RGB PNGs, each a scikit-learn digit (8 px, bilinear upscale) shifted
by up to 4 px, tinted, on a random background, with Gaussian noise (sd 12); a tenth of them sit in their digit's
class folder (labeled, at most 2,500), the rest are loose (the unlabeled pool). Every image is different (sha256);
some are near duplicates (same digit, same shift, similar colours), as in a real folder of photos.

Steps, each in a fresh process (its peak RSS, ``resource.getrusage``, is the step's memory with the interpreter and
libraries it needs; "own" is the peak less the RSS just before the step):

- ``import``: ``Project.import_imagefolder`` into a new project (decode, hash, signature, file copy, SQLite).
- ``stats``: ``Project.stats()`` on a freshly opened project (counts, warnings, and the near-duplicate search, whose
  answer it saves in the project), then on the project opened again (the saved answer read, not searched).
- ``near-duplicates``: ``near_duplicate_pairs`` over every stored signature (the multi-index hash); up to 10,000
  images also the former all-pairs comparison, interleaved (rounds alternate the order), and the same pairs asserted.
- ``train``: the studio's training job (``linear``, protocol auto) on the labeled images, with timm's tiny random
  ``test_efficientnet`` backbone: extracting features with the default backbone on 2 CPUs would take hours at 100k,
  so this step and the next two measure the store and the app around a backbone, not a backbone.
- ``suggest``: ``suggest_for_project(top=24, max_images=2000)``, what the Data page runs (a sample of the pool).
- ``embedding-map``: ``inspect_run.embedding_map`` (PCA), which shows at most 2,000 points with a note.
- ``pages``: every studio page through Streamlit's AppTest with the project open (and its run): the first render
  (project opened, near duplicates read as ``stats`` saved them) and a rerun (what a click costs), seconds each.

Time growth is the log-log slope of seconds against images between the smallest and the largest size (1: linear).

Run alone: ``.venv/bin/python benchmarks/bench_scale.py [--quick] [--sizes 1000,10000,100000]``; ``--quick`` runs
1,000 and 10,000 images (a few minutes), the default adds 100,000 (about half an hour on 2 busy cores). Profiling:
``--keep-home PATH --steps train,pages`` keeps the workspace (a project already there is not imported again) and
writes no report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import _report  # noqa: E402  (no heavy imports: a step's memory is its own; _datasets imports torch)

STEPS = ["import", "stats", "near-duplicates", "train", "suggest", "embedding-map", "pages"]
PAGES = ["home", "data", "augment", "train", "compare", "export"]
GOALS = {"near-duplicates seconds at 100k": 10.0, "peak memory GiB": 2.0, "page seconds": 2.0}
LABELED_SHARE = 0.1
MAX_LABELED = 2_500  # labeled images at most (few-shot projects label few; the tiny backbone still extracts them)
SIZE = 32
TINY_BACKBONE = "test_efficientnet"
EXHAUSTIVE_UP_TO = 10_000


# --- data -----------------------------------------------------------------------------------------------------------

def synthetic_folder(n: int, seed: int = 0) -> Path:
    """n synthetic digit images as an ImageFolder tree: 10 % in class folders, the rest loose (unlabeled)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    import _datasets

    def write(root: Path) -> None:
        digits = load_digits()
        rng = np.random.default_rng(seed)
        base = np.stack([np.asarray(Image.fromarray(np.uint8(d * 255 / 16)).resize((SIZE, SIZE),
                                                                                   Image.Resampling.BILINEAR))
                         for d in digits.images]).astype(np.float32)
        for folder in [str(label) for label in range(10)]:
            (root / folder).mkdir()
        for i in range(n):
            k = rng.integers(len(base))
            glyph = np.roll(base[k], tuple(rng.integers(-4, 5, 2)), (0, 1))
            pixels = rng.uniform(0, 120, 3) + glyph[..., None] * rng.uniform(0.3, 1.0, 3) + \
                rng.normal(0, 12, (SIZE, SIZE, 3))
            folder = root / str(digits.target[k]) if rng.random() < min(LABELED_SHARE, MAX_LABELED / n) else root
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"s{i:06d}.png")

    return _datasets._build(f"scale-{n}", write)


# --- one step, in its own process -------------------------------------------------------------------------------------

def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM; not ``getrusage``, whose maximum survives exec from a big parent)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def project_name(n: int) -> str:
    return f"scale-{n}"


def run_step(step: str, n: int) -> dict:
    """Do ``step`` on the n-image project; returns seconds and whatever the step reports."""
    from fsl_app.store import create_project, open_project
    from fsl_app.store.project import NEAR_DUPLICATES_FILE

    if step == "import":
        folder = os.environ["FSL_SCALE_FOLDER"]
        project = create_project(project_name(n))
        started = time.perf_counter()
        report = project.import_imagefolder(folder)
        return {"seconds": time.perf_counter() - started, "added": len(report.added)}
    project = open_project(project_name(n))
    if step == "stats":
        (project.path / NEAR_DUPLICATES_FILE).unlink(missing_ok=True)  # measure the search, not a saved answer
        started = time.perf_counter()
        stats = project.stats()
        seconds = time.perf_counter() - started
        with open_project(project_name(n)) as again:  # another session, or the server restarted
            started = time.perf_counter()
            same = again.stats()
            reopened = time.perf_counter() - started
        assert same.as_dict() == stats.as_dict(), "the saved near duplicates differ from the search's"
        return {"seconds": seconds, "reopened_seconds": reopened, "images": stats.n_images,
                "pairs": stats.identical_pairs + stats.near_duplicate_pairs}
    if step == "near-duplicates":
        return near_duplicate_step(project, n)
    if step == "train":
        return train_step(project)
    if step == "suggest":
        return suggest_step(project)
    if step == "embedding-map":
        return embedding_step(project)
    if step == "pages":
        return pages_step(project)
    raise ValueError(step)


def near_duplicate_step(project, n: int) -> dict:
    from fsl_app.store import duplicates

    with project.read() as conn:
        rows = conn.execute("SELECT id, phash FROM images ORDER BY id").fetchall()
    ids, hashes = [row[0] for row in rows], [row[1] for row in rows]
    started = time.perf_counter()
    pairs = duplicates.near_duplicate_pairs(ids, hashes)
    result = {"seconds": time.perf_counter() - started, "pairs": len(pairs)}
    if n <= EXHAUSTIVE_UP_TO:
        indexed, exhaustive = [], []
        for round_number in range(3):
            order = ["index", "all pairs"] if round_number % 2 == 0 else ["all pairs", "index"]
            for name in order:
                if name == "all pairs":
                    duplicates.close_pairs, saved = duplicates._all_close_pairs, duplicates.close_pairs
                started = time.perf_counter()
                found = duplicates.near_duplicate_pairs(ids, hashes)
                (exhaustive if name == "all pairs" else indexed).append(time.perf_counter() - started)
                if name == "all pairs":
                    duplicates.close_pairs = saved
                    assert found == pairs, "the index and the all-pairs comparison disagree"
        result.update(all_pairs_seconds=_report.median(exhaustive),
                      speedup=_report.median([e / i for e, i in zip(exhaustive, indexed)]), same_pairs=True)
    return result


def _queue_run(project) -> dict:
    from fsl_app import jobs, training_job

    queue = jobs.JobQueue()
    request = training_job.TrainRequest(str(project.path), TINY_BACKBONE, "random", "linear",
                                        training_job.default_params("linear", seed=0, project_augment=None))
    started = time.perf_counter()
    view = queue.wait(training_job.submit_training(queue, request, owner=project.name), timeout=3600)
    queue.shutdown()
    if view.status != jobs.DONE:
        raise RuntimeError(f"training failed: {view.error}")
    return {"seconds": time.perf_counter() - started}


def train_step(project) -> dict:
    return {**_queue_run(project), "labeled": project.count_images(labeled=True)}


def _latest_run(project):
    from fsl_app import inspect_run, run_tables

    run = run_tables.project_runs(project.path)[0]
    return run, inspect_run.fitted_strategy(run["run_dir"])


def suggest_step(project) -> dict:
    from fsl_app.store import suggest_for_project

    _, strategy = _latest_run(project)
    started = time.perf_counter()
    suggestions = suggest_for_project(project, strategy, top=24, max_images=2000)
    return {"seconds": time.perf_counter() - started, "shown": len(suggestions),
            "pool": project.count_images(labeled=False)}


def embedding_step(project) -> dict:
    from fsl_app import inspect_run
    from fsl_app.runs import read_run

    run, strategy = _latest_run(project)
    started = time.perf_counter()
    points = inspect_run.embedding_map(strategy, read_run(run["run_dir"]), "pca", names=project.source_names())
    return {"seconds": time.perf_counter() - started, "points": len(points.points), "note": points.note}


def pages_step(project) -> dict:
    """Each page in a new session of a warm server (libraries imported by a visit of every page without a project
    first, and timm, which a server has imported once it trained or described a backbone): the first render (the
    first page to need them opens the project and reads its near duplicates, searched by the ``stats`` step;
    Compare loads the run's model) and a rerun. What the project's size costs, not the server's start-up."""
    from streamlit.testing.v1 import AppTest

    import fsl_app.inspect_run  # noqa: F401 - what a running server has imported (torch, timm)
    import fsl_app.strategies  # noqa: F401
    import timm  # noqa: F401 - imported lazily since the backbones module stopped importing it up front

    app = HERE.parent / "fsl_app" / "app.py"
    home = os.environ["FSL_APP_HOME"]
    with tempfile.TemporaryDirectory() as empty:  # an empty workspace: the warm-up opens no project
        os.environ["FSL_APP_HOME"] = empty
        warm = AppTest.from_file(str(app), default_timeout=600)
        warm.run()
        for page in PAGES[1:]:
            warm.switch_page(f"views/{page}.py").run()
        os.environ["FSL_APP_HOME"] = home
    result = {}
    for page in PAGES:
        at = AppTest.from_file(str(app), default_timeout=600)
        at.session_state["project"] = project.name
        started = time.perf_counter()
        at.run()  # the landing page (Home)
        if page != "home":
            started = time.perf_counter()
            at.switch_page(f"views/{page}.py").run()
        first = time.perf_counter() - started
        started = time.perf_counter()
        at.run()
        rerun = time.perf_counter() - started
        if at.exception:
            raise RuntimeError(f"page {page}: {[e.value for e in at.exception]}")
        result[page] = {"first": first, "rerun": rerun}
    result["seconds"] = max(max(times["first"], times["rerun"]) for times in result.values())
    return result


def step_main(step: str, n: int) -> None:
    before = rss_mib()
    result = run_step(step, n)
    result.update(peak_rss_mib=peak_rss_mib(), own_rss_mib=peak_rss_mib() - before)
    print("RESULT " + json.dumps(result))


# --- the driver -----------------------------------------------------------------------------------------------------

def measure(step: str, n: int, home: Path, folder: Path) -> dict:
    env = {**os.environ, "FSL_APP_HOME": str(home), "FSL_APP_TEST_BACKBONES": "1", "PYTHONPATH": str(HERE.parent),
           "FSL_SCALE_FOLDER": str(folder)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--step", step, "--n", str(n)],
                          capture_output=True, text=True, env=env, timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(f"{step} at {n} failed:\n{done.stderr[-3000:]}")
    line = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    print(f"{n:>7} {step:<16} {result['seconds']:8.2f} s  peak {result['peak_rss_mib']:7.0f} MiB "
          f"(process {time.perf_counter() - started:.0f} s)", flush=True)
    return result


def slope(sizes: list[int], seconds: list[float]) -> float:
    if len(sizes) < 2 or min(seconds) <= 0:
        return float("nan")
    return math.log(seconds[-1] / seconds[0]) / math.log(sizes[-1] / sizes[0])


def report(sizes: list[int], results: dict, info: dict, generate_seconds: dict) -> None:
    largest = sizes[-1]
    header = ["step", *[f"{n:,} images: s" for n in sizes], "slope", *[f"peak MiB at {n:,}" for n in sizes],
              f"own MiB at {largest:,}"]
    rows = []
    for step in STEPS:
        seconds = [results[n][step]["seconds"] for n in sizes]
        rows.append([step, *[f"{s:.2f}" for s in seconds], f"{slope(sizes, seconds):.2f}",
                     *[f"{results[n][step]['peak_rss_mib']:.0f}" for n in sizes],
                     f"{results[largest][step]['own_rss_mib']:.0f}"])
    page_rows = [[page, *[f"{results[n]['pages'][page]['first']:.2f} / {results[n]['pages'][page]['rerun']:.2f}"
                          for n in sizes]] for page in PAGES]
    dup_rows = [[f"{n:,}", results[n]["near-duplicates"]["pairs"], f"{results[n]['near-duplicates']['seconds']:.3f}",
                 *([f"{results[n]['near-duplicates']['all_pairs_seconds']:.3f}",
                    f"{results[n]['near-duplicates']['speedup']:.1f}x"] if "speedup" in results[n]["near-duplicates"]
                   else ["not run", "-"])] for n in sizes]
    worst_page = max(max(results[largest]["pages"][p]["first"], results[largest]["pages"][p]["rerun"]) for p in PAGES)
    peak = max(results[largest][step]["peak_rss_mib"] for step in STEPS) / 1024
    dup = results[largest]["near-duplicates"]["seconds"]
    goals = [{"question": f"near-duplicate search at {largest:,} images", "goal": "< 10 s",
              "measured": f"{dup:.2f} s", "verdict": "met" if dup < 10 else "missed"},
             {"question": f"peak memory of every step at {largest:,} images", "goal": "<= 2 GiB",
              "measured": f"{peak:.2f} GiB", "verdict": "met" if peak <= 2 else "missed"},
             {"question": f"slowest studio page at {largest:,} images (first render or rerun)", "goal": "< 2 s",
              "measured": f"{worst_page:.2f} s", "verdict": "met" if worst_page < 2 else "missed"}]
    embedding = results[largest]["embedding-map"]
    sections = [
        "Synthetic 32 px digit images (10 % labeled in 10 classes, at most 2,500, the rest the unlabeled pool); every "
        "step in a fresh process; peak = the process's peak RSS (interpreter and libraries included), own = peak less the RSS "
        "before the step. `train`, `suggest` and `embedding-map` use timm's tiny random `test_efficientnet` "
        "(extracting 100k images with the default backbone on 2 CPUs takes hours): they measure the store and the "
        "app around the backbone, and the three data sets share their first images (one seed), so these steps hit the "
        "feature cache of the smaller runs: their times are not a scaling measure. Data generation (not a product "
        "step): "
        + ", ".join(f"{n:,}: {generate_seconds[n]:.0f} s" for n in sizes) + ".",
        "## Steps\n\n" + _report.table(header, rows),
        "## Near duplicates: the multi-index hash against comparing every pair\n\nSame pairs asserted wherever "
        f"both ran (up to {EXHAUSTIVE_UP_TO:,} images; at 100k comparing every pair takes minutes). Speed-up: "
        "median of per-round ratios, rounds interleaved.\n\n"
        + _report.table(["images", "pairs", "index s", "all pairs s", "speed-up"], dup_rows),
        "## Near duplicates: searched once per set of images, then read\n\n`Project.stats()` searches and saves "
        "its answer in the project (`cache/near_duplicates.json`, under a digest of every image id and signature); "
        "the project opened again (another session, a restarted server) reads it; an import or delete searches "
        "again.\n\n"
        + _report.table(["images", "first stats s (search)", "stats after reopening s (read)"],
                        [[f"{n:,}", f"{results[n]['stats']['seconds']:.2f}",
                          f"{results[n]['stats']['reopened_seconds']:.2f}"] for n in sizes]),
        "## Studio pages (AppTest): first render / rerun, seconds\n\nEach page in a new session of a server that "
        "has served every page (libraries imported; timm too) but not this project: first render of the page after "
        "landing on Home (Home's own first render opens the project and reads its near duplicates as `stats` saved "
        "them; after an import or delete it searches again, under a spinner; Compare's loads the run's model and "
        "maps at most 2,000 of its images), then a rerun.\n\n"
        + _report.table(["page", *[f"{n:,} images" for n in sizes]], page_rows),
        f"Embedding map at {largest:,}: {embedding['points']} points; note shown: \"{embedding['note']}\"",
        "## Goals\n\n" + _report.table(["question", "goal", "measured", "verdict"],
                                       [[g["question"], g["goal"], g["measured"], g["verdict"]] for g in goals]),
    ]
    _report.write_result("scale", "100,000-image projects: time, memory, pages", sections, info=info)
    goal_rows = [[f"{g['question']}: {g['goal']}", g["measured"], g["verdict"]] for g in goals]
    (_report.RESULTS_DIR / "scale.goals.json").write_text(json.dumps(
        {"title": "Scale. 100,000-image projects", "date": info["date"], "rows": goal_rows}, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 and 10,000 images only")
    parser.add_argument("--sizes", default=None, help="comma-separated image counts")
    parser.add_argument("--keep-home", type=Path, default=None,
                        help="use this workspace folder and keep it (profiling: import the projects once); "
                             "a project already there is not imported again")
    parser.add_argument("--steps", default=None, help="comma-separated steps to run (no report unless all run)")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        step_main(args.step, args.n)
        return
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else \
        ([1000, 10_000] if args.quick else [1000, 10_000, 100_000])
    info = _report.machine_info()
    import _datasets

    home = args.keep_home or _datasets.data_root() / f"scale-home-{os.getpid()}"
    steps = args.steps.split(",") if args.steps else STEPS
    results, generate_seconds = {}, {}
    try:
        for n in sizes:
            started = time.perf_counter()
            folder = synthetic_folder(n)
            generate_seconds[n] = time.perf_counter() - started
            kept = args.keep_home and any((home / "projects").glob(f"{project_name(n)}*"))
            results[n] = {step: measure(step, n, home, folder) for step in steps if not (kept and step == "import")}
        if steps == STEPS and not args.keep_home:
            report(sizes, results, info, generate_seconds)  # before the clean-up: 100,000 files take minutes
    finally:
        if not args.keep_home:
            import shutil

            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
