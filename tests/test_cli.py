"""The ``fsl-app`` command line (fsl_app.cli), called in-process through ``main([...])``, plus one real subprocess.

The tiny random backbone (``--backbone test_efficientnet --weights random``) keeps every command fast and offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_digits_folder
from fsl_app.cli import EXIT_USAGE, main

TINY = ["--backbone", "test_efficientnet", "--weights", "random"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_error(code: int, err: str, *fragments: str) -> None:
    assert code == EXIT_USAGE
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]  # progress bars may come before it
    assert last_line.startswith("fsl-app ") and "error:" in last_line, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    """A command that falls back to its default ``runs/`` folder writes into a temp dir, never into the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_dir):
    """``fsl-app train ... --json`` once; returns (exit code, stdout, run folder)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", str(digits_dir), "--strategy", "linear", *TINY, "--out", str(out), "--json",
                 "--param", "C=2.5", "--seed", "4"])
    return code, out


@pytest.fixture(scope="module")
def new_images(tmp_path_factory) -> Path:
    return make_digits_folder(tmp_path_factory.mktemp("new"), classes=(0, 1), per_class=1, offset=8)


# --- train --------------------------------------------------------------------------------------------------------

def test_train_json_writes_the_run(tmp_path, digits_dir, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "train", digits_dir, "--strategy", "protonet", *TINY, "--out", out, "--json",
                              "--protocol", "kfold")
    assert code == 0
    metrics = json.loads(stdout)  # exactly one JSON document on stdout
    assert metrics["run_dir"] == str(out) and metrics["protocol"] == "kfold"
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n_images"] == 18
    for name in ("config.json", "metrics.json", "metrics.jsonl", "predictions.json", "model.json",
                 "model.safetensors"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["accuracy"] == metrics["accuracy"]


def test_train_passes_params_and_seed_to_the_strategy(trained):
    code, out = trained
    assert code == 0
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["strategy"] == "linear" and config["seed"] == 4
    assert config["params"]["C"] == 2.5 and config["params"]["seed"] == 4
    assert config["backbone"]["name"] == "test_efficientnet" and config["backbone"]["weights"] == "random"


def test_train_human_output(tmp_path, digits_dir, capsys):
    code, stdout, _ = run_cli(capsys, "train", digits_dir, "--strategy", "protonet", *TINY, "--out",
                              tmp_path / "human", "--protocol", "kfold")
    assert code == 0
    assert "kfold accuracy" in stdout and f"run saved to {tmp_path / 'human'}" in stdout


def test_train_refuses_an_existing_run(trained, digits_dir, capsys):
    _, out = trained
    code, stdout, err = run_cli(capsys, "train", digits_dir, "--strategy", "linear", *TINY, "--out", out)
    assert_clean_error(code, err, "already exists", "Choose another --out")
    assert stdout == ""


# --- evaluate -----------------------------------------------------------------------------------------------------

def test_evaluate_json_prints_one_object(digits_dir, capsys):
    code, stdout, _ = run_cli(capsys, "evaluate", digits_dir, "--strategy", "protonet", *TINY, "--n-way", 3,
                              "--k-shot", 2, "--queries", 2, "--episodes", 4, "--json")
    assert code == 0
    assert len(stdout.strip().splitlines()) == 1
    result = json.loads(stdout)
    assert isinstance(result, dict)
    assert 0.0 <= result["mean_accuracy"] <= 100.0 and result["ci95"] >= 0.0
    assert result["n_way"] == 3 and result["k_shot"] == 2 and result["episodes"] == 4
    assert result["strategy"] == "protonet" and result["backbone"].startswith("test_efficientnet-")


def test_evaluate_human_output(digits_dir, capsys):
    code, stdout, _ = run_cli(capsys, "evaluate", digits_dir, "--strategy", "linear", *TINY, "--n-way", 2,
                              "--k-shot", 1, "--queries", 1, "--episodes", 2)
    assert code == 0 and "2-way 1-shot, 2 episodes:" in stdout and "%" in stdout


def test_evaluate_with_too_few_images_is_a_clean_error(digits_dir, capsys):
    code, _, err = run_cli(capsys, "evaluate", digits_dir, "--strategy", "protonet", *TINY, "--n-way", 3,
                           "--k-shot", 5, "--queries", 15, "--episodes", 2, "--json")
    assert_clean_error(code, err, "needs 3 classes with at least 20 images", "Lower --n-way")


# --- the unlabeled pool -------------------------------------------------------------------------------------------

EPISODE = ["--n-way", 2, "--k-shot", 1, "--queries", 2, "--episodes", 3, "--json"]


@pytest.fixture(scope="module")
def pooled_dir(tmp_path_factory) -> Path:
    """3 classes x 6 digits plus 4 loose, unlabeled digits at the top of the tree (the pool)."""
    root = make_digits_folder(tmp_path_factory.mktemp("pooled"))
    extra = make_digits_folder(tmp_path_factory.mktemp("loose"), classes=(0, 1), per_class=2, offset=10)
    for path in sorted(extra.rglob("*.png")):
        (root / f"loose_{path.name}").write_bytes(path.read_bytes())
    return root


@pytest.fixture(scope="module")
def other_domain(tmp_path_factory) -> Path:
    """The same 3 digit classes, other images, drawn inverted: a second domain with the same class names."""
    from PIL import Image, ImageOps

    root = make_digits_folder(tmp_path_factory.mktemp("inverted"), per_class=5, offset=20)
    for path in root.rglob("*.png"):
        ImageOps.invert(Image.open(path).convert("RGB")).save(path)
    return root


def evaluate_json(capsys, data, strategy, *flags) -> dict:
    code, stdout, err = run_cli(capsys, "evaluate", data, "--strategy", strategy, *TINY, *EPISODE, *flags)
    assert code == 0, err
    return json.loads(stdout)


def test_evaluate_passes_every_pool_flag_to_the_episodes(digits_dir, other_domain, capsys, monkeypatch):
    from fsl_app import evaluation

    calls = []

    def record(*args, **kwargs):
        calls.append(kwargs)
        return evaluation.EpisodeReport(2, 1, 2, 3, 50.0, 0.0, [0.5, 0.5, 0.5])

    monkeypatch.setattr(evaluation, "evaluate_episodes", record)
    result = evaluate_json(capsys, digits_dir, "bdcspn", "--transductive", "--pool", 4, "--pool-imbalance", 2,
                           "--pool-outliers", 0.25, "--query-data", other_domain)
    (kwargs,) = calls
    assert kwargs["transductive"] is True and kwargs["pool"] == 4
    assert kwargs["pool_imbalance"] == 2.0 and kwargs["pool_outliers"] == 0.25
    assert kwargs["query_images"].classes == ["digit_0", "digit_1", "digit_2"] and len(kwargs["query_images"]) == 15
    assert result["transductive"] is True and result["pool"] == 4 and result["pool_imbalance"] == 2.0
    assert result["pool_outliers"] == 0.25 and result["query_data"] == str(other_domain)
    defaults = evaluate_json(capsys, digits_dir, "bdcspn")
    assert calls[1]["transductive"] is False and calls[1]["pool"] == 0 and calls[1]["query_images"] is None
    assert calls[1]["pool_imbalance"] is None and calls[1]["pool_outliers"] == 0.0
    assert defaults["transductive"] is False and defaults["query_data"] is None


def test_evaluate_transductive_gives_the_queries_to_a_pool_aware_strategy(digits_dir, capsys, monkeypatch):
    from fsl_app.strategies import get_strategy_class

    strategy_class, seen = get_strategy_class("bdcspn"), []
    original = strategy_class.fit_features

    def spy(self, features, labels, **kwargs):
        seen.append(None if kwargs["unlabeled"] is None else len(kwargs["unlabeled"]))
        return original(self, features, labels, **kwargs)

    monkeypatch.setattr(strategy_class, "fit_features", spy)
    result = evaluate_json(capsys, digits_dir, "bdcspn", "--transductive")
    assert seen == [4, 4, 4]  # 2-way x 2 queries, every episode
    assert 0.0 <= result["mean_accuracy"] <= 100.0 and result["episodes"] == 3
    seen.clear()
    evaluate_json(capsys, digits_dir, "bdcspn", "--transductive", "--pool", 2)
    assert seen == [6, 6, 6]  # the queries and 2 extra images


def test_evaluate_with_an_imbalanced_pool_with_outliers(digits_dir, capsys):
    result = evaluate_json(capsys, digits_dir, "selftrain", "--pool", 4, "--pool-imbalance", 0.5,
                           "--pool-outliers", 0.5)
    assert result["pool"] == 4 and result["pool_imbalance"] == 0.5 and result["pool_outliers"] == 0.5
    assert 0.0 <= result["mean_accuracy"] <= 100.0 and result["n_test"] == 3 * 2 * 2


def test_evaluate_across_domains_and_says_so(digits_dir, other_domain, capsys):
    result = evaluate_json(capsys, digits_dir, "alpha_tim", "--query-data", other_domain, "--pool", 2)
    assert result["query_data"] == str(other_domain) and 0.0 <= result["mean_accuracy"] <= 100.0
    code, stdout, _ = run_cli(capsys, "evaluate", digits_dir, "--strategy", "bdcspn", *TINY, *EPISODE[:-1],
                              "--transductive", "--pool", 2, "--pool-imbalance", 2, "--query-data", other_domain)
    assert code == 0
    assert f"2-way 1-shot, 3 episodes, transductive, pool 2 (Dirichlet 2), queries from {other_domain}:" in stdout


def test_evaluate_says_when_the_strategy_ignores_the_pool(digits_dir, capsys):
    code, _, err = run_cli(capsys, "evaluate", digits_dir, "--strategy", "linear", *TINY, *EPISODE, "--transductive")
    assert code == 0 and "linear ignores unlabeled images" in err and "selftrain" in err


@pytest.mark.parametrize("flags, fragments", [
    (["--pool", "-1"], ["argument --pool", "0 or more"]),
    (["--pool", "many"], ["argument --pool", "not a whole number"]),
    (["--pool", 2, "--pool-imbalance", 0], ["argument --pool-imbalance", "> 0"]),
    (["--pool", 2, "--pool-imbalance", "nan"], ["argument --pool-imbalance", "nan"]),
    (["--pool", 2, "--pool-outliers", 1.5], ["argument --pool-outliers", "[0, 1]"]),
])
def test_bad_pool_values_are_usage_errors(digits_dir, capsys, flags, fragments):
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in ["evaluate", digits_dir, "--strategy", "bdcspn", *TINY, *EPISODE, *flags]])
    assert exit_info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize("flags, fragments", [
    (["--pool-imbalance", 2], ["--pool-imbalance shapes the extra pool", "add --pool N"]),
    (["--pool-outliers", 0.3, "--pool-imbalance", 2], ["--pool-imbalance and --pool-outliers shape", "--pool N"]),
    (["--pool", 40], ["a pool of 40 images", "Lower --pool or --queries"]),
    (["--pool", 10, "--pool-outliers", 1], ["10 outlier pool images", "Lower --pool or --pool-outliers"]),
    (["--query-data", "no_such_folder"], ["--query-data no_such_folder: no such folder", "same class names"]),
])
def test_pools_the_data_cannot_supply_are_clean_errors(digits_dir, capsys, flags, fragments):
    code, stdout, err = run_cli(capsys, "evaluate", digits_dir, "--strategy", "bdcspn", *TINY, *EPISODE, *flags)
    assert_clean_error(code, err, *fragments)
    assert stdout == ""


def test_query_data_with_other_class_names_is_a_clean_error_naming_them(digits_dir, tmp_path, capsys):
    other = make_digits_folder(tmp_path / "other", classes=(0, 1, 7), per_class=3)
    code, _, err = run_cli(capsys, "evaluate", digits_dir, "--strategy", "bdcspn", *TINY, *EPISODE,
                           "--query-data", other)
    assert_clean_error(code, err, "same class folders", "missing ['digit_2']", "unknown ['digit_7']")
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "a.png").write_bytes(next((other / "digit_0").iterdir()).read_bytes())
    code, _, err = run_cli(capsys, "evaluate", digits_dir, "--strategy", "bdcspn", *TINY, *EPISODE,
                           "--query-data", loose)
    assert_clean_error(code, err, "no class sub-folders", "one sub-folder per class")


def test_train_gives_loose_unlabeled_images_to_a_pool_aware_strategy(pooled_dir, tmp_path, capsys):
    code, stdout, _ = run_cli(capsys, "train", pooled_dir, "--strategy", "selftrain", *TINY, "--out",
                              tmp_path / "pool", "--protocol", "kfold", "--json")
    assert code == 0
    metrics = json.loads(stdout)
    assert metrics["pool_size"] == 4 and metrics["n_images"] == 18
    assert 0 <= metrics["pseudo_labels"] <= metrics["pool_used"] <= 4
    assert json.loads((tmp_path / "pool" / "config.json").read_text(encoding="utf-8"))["pool_size"] == 4
    code, stdout, _ = run_cli(capsys, "train", pooled_dir, "--strategy", "selftrain", *TINY, "--out",
                              tmp_path / "no-pool", "--protocol", "kfold", "--json", "--no-pool")
    assert code == 0 and json.loads(stdout)["pool_size"] == 0


def test_train_human_output_names_the_pool(pooled_dir, tmp_path, capsys):
    code, stdout, _ = run_cli(capsys, "train", pooled_dir, "--strategy", "bdcspn", *TINY, "--out", tmp_path / "r",
                              "--protocol", "kfold")
    assert code == 0 and "18 images, unlabeled pool: " in stdout
    code, stdout, err = run_cli(capsys, "train", pooled_dir, "--strategy", "linear", *TINY, "--out", tmp_path / "l",
                                "--protocol", "kfold", "--json")
    assert code == 0 and json.loads(stdout)["pool_size"] == 0
    assert "linear ignores the 4 unlabeled images" in err


def test_train_uses_a_projects_unlabeled_images(pooled_dir, tmp_path, capsys):
    from fsl_app.store import create_project

    home = tmp_path / "home"
    project = create_project("pooled", home)
    project.import_imagefolder(pooled_dir)
    project.close()
    code, stdout, _ = run_cli(capsys, "train", "pooled", "--home", home, "--strategy", "bdcspn", *TINY, "--out",
                              tmp_path / "run", "--protocol", "kfold", "--json")
    assert code == 0 and json.loads(stdout)["pool_size"] == 4
    code, _, err = run_cli(capsys, "train", digits_dir_of(pooled_dir, tmp_path), "--strategy", "alpha_tim", *TINY,
                           "--out", tmp_path / "none", "--protocol", "kfold", "--json")
    assert code == 0 and "no unlabeled images" in err


def digits_dir_of(pooled_dir: Path, tmp_path: Path) -> Path:
    """A copy of ``pooled_dir`` without its loose images."""
    import shutil

    copy = tmp_path / "labeled_only"
    shutil.copytree(pooled_dir, copy, ignore=lambda folder, names: [n for n in names if n.startswith("loose_")])
    return copy


# --- predict ------------------------------------------------------------------------------------------------------

def test_predict_json_lists_one_result_per_image(trained, new_images, capsys):
    _, out = trained
    images = sorted(new_images.rglob("*.png"))
    code, stdout, _ = run_cli(capsys, "predict", out, *images, "--json")
    assert code == 0
    results = json.loads(stdout)
    assert isinstance(results, list) and [item["image"] for item in results] == [str(path) for path in images]
    classes = {"digit_0", "digit_1", "digit_2"}
    for item in results:
        assert set(item) == {"image", "label", "probability", "top_k", "ood_score"}  # the run has an autoencoder
        assert item["ood_score"] > 0
        assert item["label"] in classes
        assert [entry["label"] for entry in item["top_k"]][0] == item["label"]
        assert item["probability"] == item["top_k"][0]["probability"]
        probabilities = [entry["probability"] for entry in item["top_k"]]
        assert probabilities == sorted(probabilities, reverse=True) and len(probabilities) == 3
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)


def test_predict_matches_the_loaded_run(trained, new_images, capsys):
    from fsl_app.dataset import ImageSet
    from fsl_app.runs import load_run

    _, out = trained
    code, stdout, _ = run_cli(capsys, "predict", out, new_images, "--json", "--top-k", 1)  # a folder expands
    assert code == 0
    results = json.loads(stdout)
    strategy, _ = load_run(out)
    images = ImageSet.from_folder(new_images)
    assert [item["label"] for item in results] == strategy.predict(images)
    assert all(len(item["top_k"]) == 1 for item in results)


def test_predict_reports_unreadable_images_and_exits_1(trained, new_images, tmp_path, capsys):
    _, out = trained
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a picture")
    good = sorted(new_images.rglob("*.png"))[0]
    code, stdout, _ = run_cli(capsys, "predict", out, good, broken, "--json")
    assert code == 1
    results = json.loads(stdout)
    assert results[0]["label"] in {"digit_0", "digit_1", "digit_2"}
    assert results[1]["image"] == str(broken) and "not an image" in results[1]["error"]


def test_predict_without_images_is_a_clean_error(trained, capsys):
    _, out = trained
    code, _, err = run_cli(capsys, "predict", out)
    assert_clean_error(code, err, "no images given")


def test_predict_with_a_folder_that_is_not_a_run(tmp_path, new_images, capsys):
    code, _, err = run_cli(capsys, "predict", tmp_path, *sorted(new_images.rglob("*.png")), "--json")
    assert_clean_error(code, err, str(tmp_path))


# --- clean errors -------------------------------------------------------------------------------------------------

def test_missing_data_dir_is_a_clean_error(tmp_path, capsys):
    code, stdout, err = run_cli(capsys, "train", tmp_path / "no_such_dir", "--strategy", "linear", *TINY,
                                "--out", tmp_path / "run")
    assert_clean_error(code, err, "no_such_dir", "neither an existing folder nor a project")
    assert stdout == "" and not (tmp_path / "run").exists()


def test_data_dir_without_images_is_a_clean_error(tmp_path, capsys):
    (tmp_path / "data" / "cats").mkdir(parents=True)
    code, _, err = run_cli(capsys, "train", tmp_path / "data", "--strategy", "linear", *TINY)
    assert_clean_error(code, err, "holds no images", "one sub-folder per class")


def test_data_dir_with_one_class_is_a_clean_error(tmp_path, capsys):
    data = make_digits_folder(tmp_path / "data", classes=(7,), per_class=2)
    code, _, err = run_cli(capsys, "evaluate", data, "--strategy", "linear", *TINY, "--n-way", 2, "--k-shot", 1)
    assert_clean_error(code, err, "needs 2 classes")
    code, _, err = run_cli(capsys, "train", data, "--strategy", "linear", *TINY, "--out", tmp_path / "run")
    assert_clean_error(code, err, "at least 2 classes", "Add images for another class")


@pytest.mark.parametrize("arguments, fragments", [
    (["--strategy", "reptile"], ["unknown strategy 'reptile'", "linear"]),
    (["--strategy", "linear", "--param", "gamma=3"], ["gamma", "classifier"]),
    (["--strategy", "linear", "--param", "C"], ["must look like name=value"]),
    (["--strategy", "linear", "--backbone", "resnet_nope"], ["unknown backbone"]),
])
def test_bad_options_are_clean_errors(digits_dir, tmp_path, capsys, arguments, fragments):
    argv = ["train", digits_dir, "--weights", "random", "--out", tmp_path / "run", *arguments]
    if "--backbone" not in arguments:
        argv += ["--backbone", "test_efficientnet"]
    code, _, err = run_cli(capsys, *argv)
    assert_clean_error(code, err, *fragments)
    assert not (tmp_path / "run").exists()


def test_bad_checkpoint_is_a_clean_error(digits_dir, tmp_path, capsys):
    (tmp_path / "w.pth").write_bytes(b"not a checkpoint")
    code, _, err = run_cli(capsys, "train", digits_dir, "--strategy", "linear", "--backbone", "test_efficientnet",
                           "--weights", tmp_path / "w.pth")
    assert_clean_error(code, err, "w.pth", "cannot be read safely")


def test_missing_required_option_is_a_usage_error(digits_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(digits_dir)])
    assert exit_info.value.code == 2
    assert "--strategy" in capsys.readouterr().err


# --- the installed entry point ------------------------------------------------------------------------------------

def test_installed_entry_point_help():
    script = Path(sys.executable).with_name("fsl-app.exe" if os.name == "nt" else "fsl-app")
    assert script.is_file(), f"{script} missing: run `pip install -e .`"
    completed = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr
    for command in ("train", "evaluate", "predict", "export", "ui"):
        assert command in completed.stdout
    assert "Traceback" not in completed.stderr


HEAVY_MODULES = ("torch", "timm", "onnxruntime", "sklearn")
LOADED_AFTER_MAIN = """
import sys
from fsl_app.cli import main
try:
    main(sys.argv[1:])
except SystemExit:  # --help
    pass
print(sorted(m for m in {heavy} if m in sys.modules))
"""


def test_building_the_parser_does_not_import_torch():
    """`fsl-app --help` and argument errors answer at once: torch (about 2 s to import) loads only for real work."""
    code = ("import sys; from fsl_app.cli import build_parser; build_parser(); "
            f"print(sorted(m for m in {HEAVY_MODULES} if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["project", "list"], ["export", "--help"], ["ui", "--help"]])
def test_commands_that_need_no_model_import_no_model_library(argv, tmp_path):
    code = LOADED_AFTER_MAIN.format(heavy=HEAVY_MODULES)
    completed = subprocess.run([sys.executable, "-c", code, *argv, *(["--home", str(tmp_path)] if "list" in argv
                                                                     else [])],
                               capture_output=True, text=True, check=True)
    assert completed.stdout.strip().splitlines()[-1] == "[]", completed.stdout
    assert "Traceback" not in completed.stderr


def test_ui_runs_the_packaged_app_with_the_packaged_streamlit_settings(tmp_path):
    """`fsl-app ui` works from any folder: the app and its settings come from the installed package."""
    import fsl_app
    from fsl_app.cli.ui import streamlit_command

    command = streamlit_command(port=8765, address="127.0.0.1")
    package = Path(fsl_app.__file__).parent
    assert command[1:4] == ["-m", "streamlit", "run"] and Path(command[4]) == package / "app.py"
    assert Path(command[4]).is_file()
    flags = command[5:]
    for flag in ("--server.address=127.0.0.1", "--server.port=8765", "--server.headless=true",
                 "--server.fileWatcherType=none", "--browser.gatherUsageStats=false", "--server.maxUploadSize=1024"):
        assert flag in flags
    assert len({flag.split("=")[0] for flag in flags}) == len(flags)  # the address and port replace the file's
