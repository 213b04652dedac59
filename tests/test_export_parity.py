"""Export parity for every contract setting of every strategy, not only the defaults.

Each setting (linear: classifier x normalization; protonet: distance x normalization, and episodic tuning; finetune:
every mode; any other registered strategy: its defaults) is trained on digits with the tiny random backbone and
exported with ``fsl_app.export.export_run`` as TorchScript and as a bundle. The bundle holds the ONNX model the
``onnx`` format writes (same writer, same metadata), so one export per format covers ONNX, TorchScript, safetensors
and the two stand-alone scripts. Each must give the fitted strategy's probabilities within 1e-4 (and the run
folder's autoencoder OOD score within 1e-3, relative): the ``.pt``, the
bundle's ``model.onnx`` and the bundle reloaded with ``load_predictor``, and the bundle's own ``predict.py``
(torch + timm) and ``predict_onnx.py`` (onnxruntime), run in two fresh processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import make_digits_folder
from test_export import BUNDLE_SCRIPTS
from fsl_app.dataset import ImageSet
from fsl_app.export import export_run, load_predictor
from fsl_app.runs import train_run
from fsl_app.strategies import create_strategy, list_strategies
from fsl_app.strategies._heads import NORMALIZATIONS
from fsl_app.strategies.finetune import MODES
from fsl_app.strategies.linear import CLASSIFIERS
from fsl_app.strategies.protonet import DISTANCES

SETTINGS_BY_STRATEGY = {
    "linear": [{"classifier": c, "normalize": n} for c in CLASSIFIERS for n in NORMALIZATIONS],
    "protonet": [{"distance": d, "normalize": n} for d in DISTANCES for n in NORMALIZATIONS]
    + [{"finetune_episodes": 2}],
    "finetune": [{"mode": mode, "epochs": 1} for mode in MODES],
    "maml": [{"meta_episodes": 3}, {"adapt": "last_block", "variant": "fomaml", "meta_episodes": 2, "inner_steps": 2}],
    "matchingnet": [{}, {"fce_steps": 2, "fce_episodes": 3}, {"finetune_episodes": 2}],
}
SETTINGS = [(name, params) for name in list_strategies() for params in SETTINGS_BY_STRATEGY.get(name, [{}])]
FORMATS = ("onnx", "torchscript", "bundle")
BUNDLE_SCRIPT_NAMES = ("predict.py", "predict_onnx.py")
TOLERANCE = 1e-4
pytestmark = pytest.mark.slow  # 19 settings x 2 exports of the tiny backbone, and two fresh processes



def setting_id(setting) -> str:
    name, params = setting
    return "-".join([name] + [f"{key}={value}" for key, value in params.items()])


IDS = [setting_id(setting) for setting in SETTINGS]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export_parity")


@pytest.fixture(scope="module")
def queries(workspace) -> ImageSet:
    """Two unseen digits per class."""
    return ImageSet.from_folder(make_digits_folder(workspace / "queries", per_class=2, offset=6))


@pytest.fixture(scope="module")
def exported(digits_set, tiny_backbone, queries, workspace) -> dict[str, dict]:
    """setting id -> {"expected": probabilities (n_queries, 3), "classes": [...], format: exported path}."""
    cases = {}
    for setting, case in zip(SETTINGS, IDS):
        name, params = setting
        result = train_run(digits_set, create_strategy(name, **params), tiny_backbone, workspace / "runs" / case,
                           protocol="holdout")
        exports = workspace / "exports"
        bundle = export_run(result.run_dir, "bundle", exports / f"{case}.zip", threshold="none")
        with zipfile.ZipFile(bundle) as archive:
            archive.extractall(workspace / "unzipped" / case)
        _, ood = load_predictor(result.run_dir).predict_images([queries.load(i) for i in range(len(queries))])
        cases[case] = {"expected": result.strategy.predict_proba(queries).float(), "ood": ood,
                       "classes": result.strategy.classes_, "bundle": bundle,
                       "onnx": workspace / "unzipped" / case / "model.onnx",
                       "torchscript": export_run(result.run_dir, "torchscript", exports / f"{case}.pt",
                                                 threshold="none")}
    return cases


@pytest.fixture(scope="module")
def bundle_scripts(exported, queries, workspace) -> dict[str, dict]:
    """script path -> its JSON output on the queries; predict.py and predict_onnx.py run in two fresh processes."""
    images = [str(record.path) for record in queries.records]
    processes = {}
    for script in BUNDLE_SCRIPT_NAMES:
        paths = [str(workspace / "unzipped" / case / script) for case in exported]
        processes[script] = subprocess.Popen([sys.executable, "-c", BUNDLE_SCRIPTS, json.dumps(paths), *images],
                                             cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = {}
    for script, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{script} failed:\n{stderr[-3000:]}"
        outputs.update(json.loads(stdout.strip().splitlines()[-1])["results"])
    return outputs


def probabilities_of(output: list[dict], classes: list[str]) -> torch.Tensor:
    """(n_images, n_classes) from `predict --json`-style rows (every class is in top_k: 3 classes, top 3)."""
    return torch.tensor([[next(item["probability"] for item in row["top_k"] if item["label"] == name)
                          for name in classes] for row in output])


def test_every_registered_strategy_has_settings():
    assert {name for name, _ in SETTINGS} == set(list_strategies())
    assert len(SETTINGS) >= 9 + 7 + 3


@pytest.mark.parametrize("export_format", FORMATS)
@pytest.mark.parametrize("case", IDS)
def test_export_gives_the_strategys_probabilities(case, export_format, exported, queries):
    entry = exported[case]
    predictor = load_predictor(entry[export_format])
    assert predictor.classes == entry["classes"] and predictor.threshold is None
    probabilities, ood = predictor.predict_images([queries.load(i) for i in range(len(queries))])
    assert (probabilities - entry["expected"]).abs().max().item() < TOLERANCE
    assert ood is not None and torch.allclose(ood, entry["ood"], rtol=1e-3, atol=1e-4)  # the run's autoencoder


@pytest.mark.parametrize("script", BUNDLE_SCRIPT_NAMES)
@pytest.mark.parametrize("case", IDS)
def test_bundle_scripts_give_the_strategys_probabilities(case, script, exported, bundle_scripts, workspace, queries):
    output = bundle_scripts[str(workspace / "unzipped" / case / script)]
    assert [row["image"] for row in output] == [str(record.path) for record in queries.records]
    probabilities = probabilities_of(output, exported[case]["classes"])
    assert (probabilities - exported[case]["expected"]).abs().max().item() < TOLERANCE
    assert torch.allclose(torch.tensor([row["ood_score"] for row in output]), exported[case]["ood"], rtol=1e-3,
                          atol=1e-4)
