"""Feature extraction (fsl_app.features): engines agree, the cache is hit and keyed by weights, device choice."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from fsl_app import features as features_module
from fsl_app.backbones import Backbone, weights_hash
from fsl_app.dataset import ImageSet
from fsl_app.features import (FeatureCache, FeatureExtractor, eval_transform, get_extractor, images_to_batch,
                              pick_device)


def reference_features(backbone: Backbone, images: ImageSet) -> torch.Tensor:
    """Ground truth without the extractor: timm's eval transform per image, then the torch model."""
    transform = eval_transform(backbone.data_config)
    batch = torch.stack([transform(images.load(i)) for i in range(len(images))])
    with torch.inference_mode():
        return copy.deepcopy(backbone.model).eval()(batch)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


class Spy:
    """Counts images read by the extractor (``fsl_app.features.load_working``)."""

    def __init__(self, monkeypatch):
        self.decoded = 0
        original = features_module.load_working

        def counting(path, *args, **kwargs):
            self.decoded += 1
            return original(path, *args, **kwargs)

        monkeypatch.setattr(features_module, "load_working", counting)


def with_other_weights(backbone: Backbone) -> Backbone:
    model = copy.deepcopy(backbone.model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1.5)
    return Backbone(name=backbone.name, model=model.eval(), data_config=backbone.data_config,
                    num_features=backbone.num_features, id=f"{backbone.name}-{weights_hash(model)[:16]}",
                    source="test", weights="test")


@pytest.fixture(scope="module")
def torch_reference(tiny_backbone, digits_set):
    return reference_features(tiny_backbone, digits_set)


# --- engines ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("engine, parallel", [("torch", "auto"), ("onnx", "data"), ("onnx", "intra")])
def test_engines_match_the_torch_model(tiny_backbone, digits_set, torch_reference, engine, parallel):
    extractor = FeatureExtractor(tiny_backbone, engine=engine, parallel=parallel, cache=FeatureCache(enabled=False),
                                 batch_size=8)
    assert extractor.engine == engine  # no silent fallback to torch
    features = extractor.extract(digits_set)
    assert features.shape == (len(digits_set), tiny_backbone.num_features) and features.dtype == torch.float32
    assert relative_error(features, torch_reference) < 1e-3
    # the features tell images apart (a constant output would pass any tolerance)
    assert float(torch.cdist(features, features).max()) > 1e-3 * float(features.abs().max())


def test_torch_and_onnx_engines_agree(tiny_backbone, digits_set):
    onnx = FeatureExtractor(tiny_backbone, engine="onnx", cache=FeatureCache(enabled=False)).extract(digits_set)
    eager = FeatureExtractor(tiny_backbone, engine="torch", cache=FeatureCache(enabled=False)).extract(digits_set)
    assert relative_error(onnx, eager) < 1e-3


def test_auto_engine_on_cpu_is_onnx_and_env_can_force_torch(tiny_backbone, monkeypatch):
    monkeypatch.delenv("FSL_APP_ENGINE", raising=False)
    monkeypatch.setenv("FSL_APP_DEVICE", "cpu")
    assert FeatureExtractor(tiny_backbone, cache=FeatureCache(enabled=False)).engine == "onnx"
    monkeypatch.setenv("FSL_APP_ENGINE", "torch")
    assert FeatureExtractor(tiny_backbone, cache=FeatureCache(enabled=False)).engine == "torch"


def test_onnx_failure_falls_back_to_torch_with_the_reason_logged(tiny_backbone, digits_set, torch_reference,
                                                                  monkeypatch, caplog):
    from fsl_app import onnx_engine

    def broken(*args, **kwargs):
        raise RuntimeError("simulated exporter failure")

    monkeypatch.setattr(onnx_engine.OnnxBackbone, "for_backbone", classmethod(broken))
    with caplog.at_level(logging.WARNING, logger="fsl_app.features"):
        extractor = FeatureExtractor(tiny_backbone, engine="onnx", cache=FeatureCache(enabled=False))
    assert extractor.engine == "torch"
    assert "simulated exporter failure" in caplog.text
    assert relative_error(extractor.extract(digits_set.subset([0, 7])), torch_reference[[0, 7]]) < 1e-5


def test_unknown_engine_is_refused(tiny_backbone):
    with pytest.raises(ValueError, match="engine must be one of"):
        FeatureExtractor(tiny_backbone, engine="tensorrt")


# --- preprocessing ------------------------------------------------------------------------------------------------

def test_batched_preprocessing_equals_timm_eval_transform(tiny_backbone, digits_set):
    images = [digits_set.load(i) for i in range(4)]
    transform = eval_transform(tiny_backbone.data_config)
    expected = torch.stack([transform(image) for image in images])
    assert torch.equal(images_to_batch(images, tiny_backbone.data_config), expected)
    extractor = FeatureExtractor(tiny_backbone, engine="torch", cache=FeatureCache(enabled=False))
    assert torch.equal(extractor.preprocess(images), expected)


def test_extract_pil_equals_extract(tiny_backbone, digits_set):
    extractor = FeatureExtractor(tiny_backbone, engine="torch", cache=FeatureCache(enabled=False), batch_size=4)
    subset = digits_set.subset(range(6))
    from_pil = extractor.extract_pil([subset.load(i) for i in range(len(subset))])
    assert torch.allclose(from_pil, extractor.extract(subset), atol=1e-6)


# --- cache --------------------------------------------------------------------------------------------------------

def test_second_extraction_is_a_cache_hit(tiny_backbone, digits_set, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    extractor = FeatureExtractor(tiny_backbone, engine="torch", cache=FeatureCache(tmp_path))
    forwards = []
    original_forward = extractor._forward
    extractor._forward = lambda batch: forwards.append(len(batch)) or original_forward(batch)

    first = extractor.extract(digits_set)
    assert spy.decoded == len(digits_set) and sum(forwards) == len(digits_set)
    second = extractor.extract(digits_set)
    assert spy.decoded == len(digits_set) and sum(forwards) == len(digits_set)  # nothing decoded or run again
    assert torch.equal(first, second)
    assert len(list(tmp_path.rglob("*.npy"))) == len(set(digits_set.shas))


def test_cache_survives_a_new_process_via_disk(tiny_backbone, digits_set, tmp_path, monkeypatch):
    FeatureExtractor(tiny_backbone, engine="onnx", cache=FeatureCache(tmp_path)).extract(digits_set)
    spy = Spy(monkeypatch)
    fresh = FeatureExtractor(tiny_backbone, engine="onnx", cache=FeatureCache(tmp_path))  # empty memory layer
    again = fresh.extract(digits_set)
    assert spy.decoded == 0
    assert again.shape == (len(digits_set), tiny_backbone.num_features)


def test_cache_is_keyed_by_backbone_weights(tiny_backbone, digits_set, tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    original = FeatureExtractor(tiny_backbone, engine="torch", cache=cache).extract(digits_set)
    other = with_other_weights(tiny_backbone)
    assert other.id != tiny_backbone.id
    spy = Spy(monkeypatch)
    changed = FeatureExtractor(other, engine="torch", cache=cache).extract(digits_set)
    assert spy.decoded == len(digits_set)  # recomputed, not served from the first backbone's cache
    assert relative_error(changed, reference_features(other, digits_set)) < 1e-5
    assert not torch.allclose(changed, original)


def test_cache_is_keyed_by_preprocessing(tiny_backbone, digits_set, tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    FeatureExtractor(tiny_backbone, engine="torch", cache=cache).extract(digits_set)
    smaller = copy.copy(tiny_backbone)
    smaller.data_config = {**tiny_backbone.data_config, "input_size": (3, 96, 96)}
    spy = Spy(monkeypatch)
    FeatureExtractor(smaller, engine="torch", cache=cache).extract(digits_set)
    assert spy.decoded == len(digits_set)


def test_duplicate_images_are_computed_once_and_returned_in_order(tiny_backbone, digits_set, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    images = ImageSet([digits_set[3], digits_set[0], digits_set[3]])
    features = FeatureExtractor(tiny_backbone, engine="torch", cache=FeatureCache(tmp_path)).extract(images)
    assert spy.decoded == 2
    assert torch.equal(features[0], features[2]) and not torch.equal(features[0], features[1])


def test_empty_image_set_gives_an_empty_matrix(tiny_backbone):
    extractor = FeatureExtractor(tiny_backbone, engine="torch", cache=FeatureCache(enabled=False))
    assert extractor.extract(ImageSet([])).shape == (0, tiny_backbone.num_features)


def test_disabled_cache_writes_nothing(tiny_backbone, digits_set, tmp_path):
    FeatureExtractor(tiny_backbone, engine="torch", cache=FeatureCache(tmp_path, enabled=False)).extract(
        digits_set.subset([0, 1]))
    assert not list(tmp_path.rglob("*.npy"))


def test_corrupt_cache_file_is_recomputed(tiny_backbone, digits_set, tmp_path, monkeypatch):
    subset = digits_set.subset([0])
    expected = FeatureExtractor(tiny_backbone, engine="torch", cache=FeatureCache(tmp_path)).extract(subset)
    (path,) = tmp_path.rglob("*.npy")
    path.write_bytes(b"garbage")
    spy = Spy(monkeypatch)
    again = FeatureExtractor(tiny_backbone, engine="torch", cache=FeatureCache(tmp_path)).extract(subset)
    assert spy.decoded == 1 and torch.allclose(again, expected)
    assert np.load(path).shape == (tiny_backbone.num_features,)


def test_get_extractor_is_shared_per_backbone(tiny_backbone):
    assert get_extractor(tiny_backbone) is get_extractor(tiny_backbone)
    assert get_extractor(tiny_backbone) is not get_extractor(tiny_backbone, engine="torch")


# --- device -------------------------------------------------------------------------------------------------------

def test_pick_device_is_cpu_here(monkeypatch):
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("an accelerator is present")
    monkeypatch.delenv("FSL_APP_DEVICE", raising=False)
    assert pick_device() == torch.device("cpu")


def test_pick_device_honours_the_environment(monkeypatch):
    monkeypatch.setenv("FSL_APP_DEVICE", "meta")
    assert pick_device() == torch.device("meta")
    assert pick_device("cpu") == torch.device("cpu")  # an explicit choice wins over the environment


def test_extractor_uses_the_requested_device(tiny_backbone, monkeypatch):
    monkeypatch.setenv("FSL_APP_DEVICE", "meta")
    extractor = FeatureExtractor(tiny_backbone, device="cpu", engine="torch", cache=FeatureCache(enabled=False))
    assert extractor.device == torch.device("cpu")
