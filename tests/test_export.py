"""Export (ONNX, TorchScript, bundle) for every registered strategy, reloaded in fresh processes.

One run per strategy is trained on the digits with the tiny random backbone and exported in every format with
``--threshold auto``. Three subprocesses then start at once: ``fsl-app predict --json`` over every export and run
folder, the bundles' own ``predict.py`` (torch + timm only) and ``predict_onnx.py`` (onnxruntime only). Their
probabilities must match the in-app ``strategy.predict_proba`` within 1e-4 with the same top class.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsl_app.cli import main as cli_main
from fsl_app.dataset import ImageRecord, ImageSet
from fsl_app.export import (BUNDLE_FILES, PREPROCESSING_KEYS, UNKNOWN_LABEL, ModelFileError, choose_threshold,
                            export_path, export_run, load_predictor, parse_threshold)
from fsl_app.images import sha256_file
from fsl_app.runs import train_run
from fsl_app.strategies import create_strategy, list_strategies

try:
    from tests.conftest import make_digits_folder
except ImportError:  # tests/ is on sys.path, not the repository root
    from conftest import make_digits_folder

FORMATS = ("onnx", "torchscript", "bundle")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "bundle": ".zip"}
TINY_PARAMS = {"finetune": {"epochs": 2, "batch_size": 16, "patience": 2}, "maml": {"meta_episodes": 5}}
EXTRA_BUNDLE_CASES = {"linear-rbf": ("linear", {"classifier": "rbf"}),  # the RBF-kernel head in predict.py
                      "matchingnet-fce": ("matchingnet", {"fce_steps": 2, "fce_episodes": 3})}  # its LSTM cell
CASES = {name: (name, TINY_PARAMS.get(name, {})) for name in list_strategies()} | EXTRA_BUNDLE_CASES
TOLERANCE = 1e-4

FSL_APP_PREDICT = r"""
import contextlib, io, json, sys
from fsl_app.cli import main
models, images = json.loads(sys.argv[1]), sys.argv[2:]
results = {}
for model in models:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["predict", model, *images, "--json", "--top-k", "10"])
    results[model] = {"code": code, "output": json.loads(printed.getvalue())}
print(json.dumps({"results": results, "modules": [m for m in ("streamlit",) if m in sys.modules]}))
"""

BUNDLE_SCRIPTS = r"""
import contextlib, io, json, runpy, sys
scripts, images = json.loads(sys.argv[1]), sys.argv[2:]
results = {}
for script in scripts:
    printed = io.StringIO()
    sys.argv = [script, *images]
    with contextlib.redirect_stdout(printed):
        runpy.run_path(script, run_name="__main__")
    results[script] = json.loads(printed.getvalue())
print(json.dumps({"results": results, "modules": [m for m in ("fsl_app", "torch", "streamlit") if m in sys.modules]}))
"""


# --- fixtures: train once per strategy, export every format, predict in fresh processes ---------------------------

@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def query_paths(digits_dir, workspace) -> list[Path]:
    """2 training and 2 unseen images per digit class."""
    unseen = make_digits_folder(workspace / "unseen", per_class=2, offset=6)
    seen = [path for folder in sorted(digits_dir.iterdir()) for path in sorted(folder.glob("*.png"))[:2]]
    return seen + sorted(unseen.rglob("*.png"))


@pytest.fixture(scope="module")
def runs(digits_set, tiny_backbone, workspace) -> dict:
    """case name -> RunResult of a run trained on the 18 digits with the tiny backbone."""
    return {case: train_run(digits_set, create_strategy(name, **params), tiny_backbone, workspace / f"run-{case}")
            for case, (name, params) in CASES.items()}


@pytest.fixture(scope="module")
def expected(runs, query_paths) -> dict[str, torch.Tensor]:
    """case name -> in-app probabilities (n_images, n_classes) of the fitted strategy."""
    images = ImageSet(ImageRecord(path=path, sha256=sha256_file(path)) for path in query_paths)
    return {case: result.strategy.predict_proba(images).float() for case, result in runs.items()}


@pytest.fixture(scope="module")
def exports(runs, workspace) -> dict[tuple[str, str], Path]:
    """(case, format) -> exported file, every format with --threshold auto; bundles are also unzipped."""
    files = {}
    for case, result in runs.items():
        formats = FORMATS if case not in EXTRA_BUNDLE_CASES else ("bundle",)
        for export_format in formats:
            out = workspace / "exports" / f"{case}{SUFFIXES[export_format]}"
            files[case, export_format] = export_run(result.run_dir, export_format, out, threshold="auto")
        with zipfile.ZipFile(files[case, "bundle"]) as archive:
            archive.extractall(workspace / "unzipped" / case)
    return files


class FreshProcesses:
    """Three subprocesses started together; ``[name]`` waits for one and returns its JSON output."""

    def __init__(self, jobs: dict[str, tuple[str, list[str]]], images: list[str], folder: Path):
        self.logs = {name: (folder / f"{name}.out", folder / f"{name}.err") for name in jobs}
        self.processes = {name: self._start([sys.executable, "-c", code, json.dumps(targets), *images],
                                            folder, *self.logs[name]) for name, (code, targets) in jobs.items()}
        self.outputs: dict[str, dict] = {}

    @staticmethod
    def _start(command: list[str], folder: Path, stdout: Path, stderr: Path) -> subprocess.Popen:
        with stdout.open("w") as out, stderr.open("w") as err:  # the child keeps its own copies
            return subprocess.Popen(command, cwd=folder, stdout=out, stderr=err)

    def __getitem__(self, name: str) -> dict:
        if name not in self.outputs:
            code = self.processes[name].wait(timeout=300)
            stdout, stderr = (path.read_text() for path in self.logs[name])
            assert code == 0, f"{name} failed:\n{stderr[-3000:]}"
            self.outputs[name] = json.loads(stdout.strip().splitlines()[-1])
        return self.outputs[name]

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def fresh_processes(runs, exports, query_paths, workspace):
    """fsl-app predict over every export and run folder, the bundles' predict.py, and their predict_onnx.py."""
    models = [str(path) for path in exports.values()] + [str(result.run_dir) for result in runs.values()]
    unzipped = [workspace / "unzipped" / case for case in runs]
    jobs = {"fsl_app": (FSL_APP_PREDICT, models),
            "predict.py": (BUNDLE_SCRIPTS, [str(folder / "predict.py") for folder in unzipped]),
            "predict_onnx.py": (BUNDLE_SCRIPTS, [str(folder / "predict_onnx.py") for folder in unzipped])}
    processes = FreshProcesses(jobs, [str(path) for path in query_paths], workspace)
    yield processes
    processes.stop()


@pytest.fixture(autouse=True)
def _start_fresh_processes_early(request):
    """The first test that trains starts the fresh processes too, so they run while the in-process tests do
    (their checks come last in this file); tests that need no run never start them."""
    if "runs" in request.fixturenames:
        request.getfixturevalue("fresh_processes")


def assert_same_predictions(output: list[dict], probabilities: torch.Tensor, classes: list[str],
                            threshold: float | None, images: list[Path]) -> None:
    """Probabilities within TOLERANCE, same top class, and 'unknown' exactly below the threshold."""
    assert [item["image"] for item in output] == [str(path) for path in images]
    for item, expected_row in zip(output, probabilities):
        got = torch.tensor([next(t["probability"] for t in item["top_k"] if t["label"] == c) for c in classes])
        assert (got - expected_row).abs().max().item() < TOLERANCE, item["image"]
        assert item["top_k"][0]["label"] == classes[int(expected_row.argmax())], item["image"]
        top = float(expected_row.max())
        if threshold is not None and abs(top - threshold) < TOLERANCE:
            continue  # too close to the threshold to call
        rejected = threshold is not None and top < threshold
        assert item["label"] == (UNKNOWN_LABEL if rejected else classes[int(expected_row.argmax())])


def run_threshold(result) -> float:
    return choose_threshold(json.loads((result.run_dir / "predictions.json").read_text()))


# --- what the files hold --------------------------------------------------------------------------------------------

def test_onnx_has_dynamic_batch_opset_and_preprocessing_metadata(exports, runs):
    import onnx

    model = onnx.load(str(exports["linear", "onnx"]))
    props = {prop.key: json.loads(prop.value) for prop in model.metadata_props}
    assert max(opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx")) >= 17
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    assert set(PREPROCESSING_KEYS) <= set(props)
    assert props["input_size"] == [3, 160, 160] and props["interpolation"] == "bicubic"
    assert props["classes"] == runs["linear"].strategy.classes_
    assert props["threshold"] == run_threshold(runs["linear"])


def test_torchscript_carries_metadata_as_extra_file(exports, runs):
    with zipfile.ZipFile(exports["protonet", "torchscript"]) as archive:
        extra = next(name for name in archive.namelist() if name.endswith("/extra/fsl_app.json"))
        info = json.loads(archive.read(extra))
    assert info["classes"] == runs["protonet"].strategy.classes_
    assert info["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert info["threshold"] == run_threshold(runs["protonet"])


def test_bundle_holds_weights_config_card_and_scripts(exports, runs):
    with zipfile.ZipFile(exports["finetune", "bundle"]) as archive:
        assert sorted(archive.namelist()) == sorted(BUNDLE_FILES)
        config = json.loads(archive.read("config.json"))
        card = archive.read("README.md").decode()
    for key in ("backbone", "params", "classes", "preprocessing", "augment", "metrics", "data", "threshold", "files"):
        assert config[key] is not None, key
    assert config["head"] == {"kind": "timm", "n_classes": 3}
    assert config["params"]["epochs"] == 2 and config["augment"]["transform"]  # albumentations dict of "light"
    assert len(config["data"]["images"]) == 18 and all("path" not in image for image in config["data"]["images"])
    assert "per_class_accuracy" in config["metrics"]
    for text in ("digit_0", "held-out accuracy", "Intended use", "Limits", "predict.py", "random weights"):
        assert text in card


# --- rejection threshold --------------------------------------------------------------------------------------------

def test_auto_threshold_accepts_95_percent_of_correct_held_out_predictions():
    correct = [{"true": "a", "predicted": "a", "probabilities": {"a": p, "b": 1 - p}}
               for p in np.linspace(0.50, 0.99, 40)]
    wrong = [{"true": "a", "predicted": "b", "probabilities": {"a": 0.01, "b": 0.99}}]
    threshold = choose_threshold(correct + wrong)
    accepted = sum(max(item["probabilities"].values()) >= threshold for item in correct)
    assert accepted == 38  # ceil(0.95 * 40): the highest threshold that keeps them
    assert threshold == pytest.approx(np.linspace(0.50, 0.99, 40)[2], abs=1e-4)
    with pytest.raises(ValueError, match="--threshold FLOAT"):
        choose_threshold(wrong)


@pytest.mark.parametrize("value, parsed", [("none", None), (None, None), ("auto", "auto"), ("0.7", 0.7), (1, 1.0)])
def test_threshold_option_parsing(value, parsed):
    assert parse_threshold(value) == parsed


@pytest.mark.parametrize("value", ["1.5", "-0.1", "high", "nan"])
def test_threshold_option_rejects_non_probabilities(value):
    with pytest.raises(ValueError, match="auto, none or a probability"):
        parse_threshold(value)


@pytest.fixture(scope="module")
def astronaut(workspace) -> Path:
    from skimage import data

    path = workspace / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((128, 128)).save(path)
    return path


def test_out_of_distribution_image_is_unknown_with_a_high_threshold(runs, workspace, astronaut, query_paths):
    """The RBF-kernel head is confident only near its training images (with the random tiny backbone too).

    That every format and both bundle scripts carry the threshold is checked by the fresh-process tests below.
    """
    result = runs["linear-rbf"]
    out = workspace / "strict" / "linear-rbf.onnx"
    assert cli_main(["export", str(result.run_dir), "--format", "onnx", "--out", str(out), "--threshold", "0.99"]) == 0
    digit, photo = load_predictor(out).predict_paths([query_paths[0], astronaut])
    assert photo["label"] == UNKNOWN_LABEL and photo["probability"] < 0.99
    assert photo["top_k"][0]["label"] in result.strategy.classes_
    assert digit["label"] == "digit_0"  # a training image stays above the threshold


def test_without_threshold_the_top_class_is_always_reported(runs, astronaut):
    predictor = load_predictor(runs["linear-rbf"].run_dir)
    assert predictor.threshold is None
    assert predictor.predict_paths([astronaut])[0]["label"] in runs["linear-rbf"].strategy.classes_


# --- int8 ----------------------------------------------------------------------------------------------------------

def test_int8_quantized_onnx_is_smaller_and_predicts(runs, exports, workspace, query_paths):
    import onnx

    out = workspace / "int8" / "linear.onnx"
    assert cli_main(["export", str(runs["linear"].run_dir), "--format", "onnx", "--quantize", "int8",
                     "--out", str(out)]) == 0
    model = onnx.load(str(out))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in model.graph.node}  # static QDQ
    assert json.loads({p.key: p.value for p in model.metadata_props}["quantization"]) == "int8"
    predictor = load_predictor(out)
    probabilities = predictor.predict_proba_images([Image.open(path).convert("RGB") for path in query_paths])
    assert torch.allclose(probabilities.sum(1), torch.ones(len(query_paths)), atol=1e-5)
    assert out.stat().st_size < exports["linear", "onnx"].stat().st_size


# --- foreign, tampered and wrong-model files ------------------------------------------------------------------------

class _Exploit:
    """Unpickling this object creates ``marker``: proof that a loader unpickled untrusted code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_pickled_checkpoint_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weights": torch.zeros(2), "payload": _Exploit(marker)}, tmp_path / "model.pt")
    with pytest.raises(ModelFileError, match="never unpickles"):
        load_predictor(tmp_path / "model.pt")
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated in recent torch
def test_torchscript_without_fsl_app_metadata_is_refused(tmp_path):
    traced = torch.jit.trace(torch.nn.Linear(3, 2), torch.zeros(1, 3))
    traced.save(str(tmp_path / "other.pt"))
    with pytest.raises(ModelFileError, match="not exported by fsl-app"):
        load_predictor(tmp_path / "other.pt")


def test_torchscript_with_metadata_for_another_model_is_refused(exports, tmp_path):
    edited = tmp_path / "edited.pt"
    rewrite_zip(exports["linear", "torchscript"], edited, "/extra/fsl_app.json",
                lambda info: {**info, "classes": info["classes"] + ["digit_9"]})
    with pytest.raises(ModelFileError, match="outputs \\(1, 3\\).*names 4 classes"):
        load_predictor(edited)


def test_onnx_without_fsl_app_metadata_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph), str(tmp_path / "foreign.onnx"))
    with pytest.raises(ModelFileError, match="not exported by fsl-app"):
        load_predictor(tmp_path / "foreign.onnx")


def test_file_that_is_not_onnx_is_refused(tmp_path):
    (tmp_path / "notes.onnx").write_text("not a model")
    with pytest.raises(ModelFileError, match="cannot be read as an ONNX model"):
        load_predictor(tmp_path / "notes.onnx")


def test_bundle_whose_config_describes_other_shapes_names_the_tensor(exports, tmp_path):
    edited = tmp_path / "edited.zip"

    def add_class(config):
        return {**config, "classes": config["classes"] + ["digit_9"],
                "head": {**config["head"], "n_classes": config["head"]["n_classes"] + 1}}

    rewrite_zip(exports["linear", "bundle"], edited, "config.json", add_class)
    with pytest.raises(ModelFileError, match=r"head\.linear\.weight has shape \(3, 256\) but config\.json "
                                             r"describes \(4, 256\)"):
        load_predictor(edited)


def test_bundle_with_weights_of_another_model_is_refused(exports, tmp_path):
    mixed = tmp_path / "mixed.zip"
    with zipfile.ZipFile(exports["finetune", "bundle"]) as source:
        finetuned_weights = source.read("model.safetensors")
    rewrite_zip(exports["linear", "bundle"], mixed, "model.safetensors", raw=finetuned_weights)
    with pytest.raises(ModelFileError, match="does not match config.json: .*(missing|unexpected)"):
        load_predictor(mixed)


def test_bundle_with_modified_weights_fails_its_checksum(exports, tmp_path):
    from safetensors.torch import load, save

    with zipfile.ZipFile(exports["protonet", "bundle"]) as source:
        state = load(source.read("model.safetensors"))
    state["head.linear.bias"] = state["head.linear.bias"] + 1.0
    tampered = tmp_path / "tampered.zip"
    rewrite_zip(exports["protonet", "bundle"], tampered, "model.safetensors", raw=save(state))
    with pytest.raises(ModelFileError, match="modified after export"):
        load_predictor(tampered)


def test_zip_that_is_not_a_bundle_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as archive:
        archive.writestr("cat.txt", "meow")
    with pytest.raises(ModelFileError, match="lacks config.json"):
        load_predictor(tmp_path / "photos.zip")


@pytest.mark.parametrize("export_format, member_suffix", [
    ("bundle", "model.safetensors"), ("bundle", "config.json"), ("torchscript", "/data/0"),
    ("torchscript", "/extra/fsl_app.json")])
def test_archive_with_one_corrupted_byte_is_refused_as_damaged(export_format, member_suffix, exports, tmp_path,
                                                               query_paths, capsys):
    damaged = tmp_path / f"damaged{SUFFIXES[export_format]}"
    corrupt_member_byte(exports["linear", export_format], damaged, member_suffix)
    with pytest.raises(ModelFileError, match="damaged.*(download it again|re-export)"):
        load_predictor(damaged)
    assert cli_main(["predict", str(damaged), str(query_paths[0])]) == 2
    error = capsys.readouterr().err
    assert "damaged" in error and "Traceback" not in error


def test_bundle_without_checksums_is_refused(exports, tmp_path):
    stripped = tmp_path / "stripped.zip"
    rewrite_zip(exports["linear", "bundle"], stripped, "config.json",
                lambda config: {key: value for key, value in config.items() if key != "files"})
    with pytest.raises(ModelFileError, match="no checksums"):
        load_predictor(stripped)


def test_bundle_with_another_onnx_model_fails_its_checksum(exports, tmp_path):
    with zipfile.ZipFile(exports["protonet", "bundle"]) as source:
        other_onnx = source.read("model.onnx")
    swapped = tmp_path / "swapped.zip"
    rewrite_zip(exports["linear", "bundle"], swapped, "model.onnx", raw=other_onnx)
    with pytest.raises(ModelFileError, match="model.onnx was modified after export"):
        load_predictor(swapped)


def test_bundle_scripts_refuse_missing_or_mismatched_checksums(exports, workspace, tmp_path, query_paths):
    """Each script checks the file it runs against config.json, and refuses a bundle without checksums."""
    linear, protonet = workspace / "unzipped" / "linear", workspace / "unzipped" / "protonet"
    cases = {"no-checksums": {"config.json": _without_checksums(linear / "config.json")},
             "other-weights": {"model.safetensors": (protonet / "model.safetensors").read_bytes()},
             "other-onnx": {"model.onnx": (protonet / "model.onnx").read_bytes()}}
    runs = {"no-checksums": ("predict.py", "predict_onnx.py"), "other-weights": ("predict.py",),
            "other-onnx": ("predict_onnx.py",)}
    processes = {}
    for case, replaced in cases.items():
        folder = tmp_path / case
        shutil.copytree(linear, folder)
        for name, data in replaced.items():
            (folder / name).write_bytes(data)
        for script in runs[case]:
            processes[case, script] = subprocess.Popen(
                [sys.executable, str(folder / script), str(query_paths[0])], cwd=tmp_path,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for (case, script), process in processes.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode != 0 and out == "", (case, script, out)
        assert "Traceback" not in err, (case, script, err)
        expected = "no checksums" if case == "no-checksums" else "modified after export"
        assert expected in err and "re-export" in err.lower(), (case, script, err)


def _without_checksums(config_path: Path) -> bytes:
    config = json.loads(config_path.read_text())
    del config["files"]
    return json.dumps(config).encode()


def corrupt_member_byte(source: Path, target: Path, member_suffix: str) -> None:
    """Copy a zip, flipping one byte in the middle of one member's stored data (its CRC-32 no longer matches)."""
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        member = next(item for item in archive.infolist() if item.filename.endswith(member_suffix))
    header = member.header_offset
    name_length, extra_length = struct.unpack("<HH", data[header + 26:header + 30])  # local file header fields
    data[header + 30 + name_length + extra_length + member.compress_size // 2] ^= 0xFF
    target.write_bytes(bytes(data))


def rewrite_zip(source: Path, target: Path, member_suffix: str, edit=None, *, raw: bytes | None = None) -> None:
    """Copy a zip, replacing the member ending in ``member_suffix`` by ``raw`` or by ``edit(json) -> json``."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            data = old.read(item)
            if item.filename.endswith(member_suffix):
                data = raw if raw is not None else json.dumps(edit(json.loads(data))).encode()
            new.writestr(item, data)


# --- command line -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arguments, message", [
    (["--format", "onnx"], "not a finished run folder"),
    (["--format", "torchscript", "--quantize", "int8"], "--quantize applies to ONNX"),
    (["--format", "onnx", "--threshold", "2"], "auto, none or a probability"),
])
def test_export_command_reports_user_errors_without_traceback(arguments, message, tmp_path, capsys):
    assert cli_main(["export", str(tmp_path / "no-such-run"), *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_export_out_must_name_the_format(runs, tmp_path):
    with pytest.raises(ValueError, match="must end in .onnx"):
        export_path(runs["linear"].run_dir, "onnx", tmp_path / "model.pt")
    default = export_path(runs["linear"].run_dir, "bundle", None)
    assert default == runs["linear"].run_dir.with_name(runs["linear"].run_dir.name + ".zip")


def test_predict_command_explains_unknown_model_files(tmp_path, query_paths, capsys):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8)
    assert cli_main(["predict", str(tmp_path / "weights.bin"), str(query_paths[0])]) == 2
    assert "unknown model format" in capsys.readouterr().err
    assert cli_main(["predict", str(tmp_path / "missing.onnx"), str(query_paths[0])]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_predictions_of_an_unzipped_bundle_folder_match_the_zip(exports, workspace, query_paths):
    from_zip = load_predictor(exports["protonet", "bundle"]).predict_paths(query_paths[:3])
    from_folder = load_predictor(workspace / "unzipped" / "protonet").predict_paths(query_paths[:3])
    assert from_zip == from_folder


# --- every strategy x every format, in a fresh process --------------------------------------------------------------

@pytest.mark.parametrize("export_format", FORMATS)
@pytest.mark.parametrize("strategy", list_strategies())
def test_export_predicts_like_the_app_in_a_fresh_process(strategy, export_format, runs, exports, expected,
                                                         fresh_processes, query_paths):
    result = fresh_processes["fsl_app"]["results"][str(exports[strategy, export_format])]
    assert result["code"] == 0
    assert_same_predictions(result["output"], expected[strategy], runs[strategy].strategy.classes_,
                            run_threshold(runs[strategy]), query_paths)


@pytest.mark.parametrize("strategy", list_strategies())
def test_run_folder_predicts_like_the_app_in_a_fresh_process(strategy, runs, expected, fresh_processes,
                                                             query_paths):
    result = fresh_processes["fsl_app"]["results"][str(runs[strategy].run_dir)]
    assert_same_predictions(result["output"], expected[strategy], runs[strategy].strategy.classes_, None,
                            query_paths)


@pytest.mark.parametrize("script", ["predict.py", "predict_onnx.py"])
@pytest.mark.parametrize("case", list(CASES))
def test_bundle_scripts_predict_like_the_app_without_fsl_app(case, script, runs, expected, fresh_processes,
                                                             workspace, query_paths):
    output = fresh_processes[script]["results"][str(workspace / "unzipped" / case / script)]
    assert_same_predictions(output, expected[case], runs[case].strategy.classes_, run_threshold(runs[case]),
                            query_paths)


@pytest.mark.parametrize("export_format", FORMATS)
def test_auto_threshold_rejects_some_images_in_every_format(export_format, exports, fresh_processes, workspace):
    """With the tiny random backbone the linear run is unsure of some digits: 'unknown' next to real labels."""
    outputs = [fresh_processes["fsl_app"]["results"][str(exports["linear", export_format])]["output"]]
    if export_format == "bundle":
        outputs += [fresh_processes[script]["results"][str(workspace / "unzipped" / "linear" / script)]
                    for script in ("predict.py", "predict_onnx.py")]
    for output in outputs:
        labels = {item["label"] for item in output}
        assert UNKNOWN_LABEL in labels and len(labels) > 1


def test_fresh_processes_import_only_what_they_need(fresh_processes):
    assert fresh_processes["fsl_app"]["modules"] == []  # no streamlit
    assert fresh_processes["predict.py"]["modules"] == ["torch"]  # no fsl_app
    assert fresh_processes["predict_onnx.py"]["modules"] == []  # neither torch nor fsl_app
