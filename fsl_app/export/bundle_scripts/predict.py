"""Classify images with this bundle, without fsl_app: python predict.py IMAGE [IMAGE ...]

Needs only torch and timm (pip install torch timm). Prints a JSON list, one object per image, like
`fsl-app predict --json`; below the threshold in config.json (or, with an autoencoder and ``ood_limit``, above
that limit of its OOD score) an image is labeled "unknown". Refuses to run when
model.safetensors does not match the sha256 that config.json records.
"""
import json
import sys
from pathlib import Path

import timm
import torch
from safetensors.torch import load

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bundle_io.py ships beside this script
from bundle_io import BundleError, draft_size, load_rgb, prediction, read_checked, read_config  # noqa: E402


def backbone(config, state):
    """The timm model: (n, 3, H, W) -> features (n, d), or logits (n, C) for head kind "timm" (fine-tuned)."""
    head = config["head"]
    classes = head["n_classes"] if head["kind"] == "timm" else 0
    model = timm.create_model(config["backbone"]["name"], num_classes=classes)
    model.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
    return model.eval()


def head(x, spec, state):
    """fsl_app's head, features (n, d) -> logits (n, C): CL2N/L2 normalization, then a linear or RBF-kernel layer or
    Matching Networks' attention over the support."""
    if spec["kind"] == "timm":
        return x
    if spec["normalizer"]["subtract_center"]:
        x = x - state["head.normalizer.center"]
    if spec["normalizer"]["l2"]:
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if spec["kind"] == "linear":
        return torch.nn.functional.linear(x, state["head.linear.weight"], state["head.linear.bias"])
    if spec["kind"] == "attention":
        return attention(x, spec, state)
    support = state["head.support"]
    squared = (x * x).sum(1, keepdim=True) - 2 * x @ support.T + (support ** 2).sum(1)[None, :]
    return torch.exp(-spec["gamma"] * squared.clamp_min(0)) @ state["head.coef"] + state["head.intercept"]


def attention(x, spec, state):
    """log of the softmax attention mass per class over the support, after the optional full-context LSTM rounds."""
    support = state["head.support"]
    if spec["fce_steps"] > 0:
        cell = torch.nn.LSTMCell(2 * support.shape[1], support.shape[1])
        cell.load_state_dict({k[len("head.query_cell."):]: v for k, v in state.items()
                              if k.startswith("head.query_cell.")})
        queries, state_c = x, torch.zeros_like(x)
        for _ in range(spec["fce_steps"]):
            read_out = torch.softmax(x @ support.T, dim=1) @ support
            x, state_c = cell(torch.cat((queries, read_out), 1), (x, state_c))
            x = x + queries
    unit = torch.nn.functional.normalize
    similarity = spec["scale"] * unit(x, dim=1, eps=1e-12) @ unit(support, dim=1, eps=1e-12).T
    peak = similarity.max(dim=1, keepdim=True).values
    return torch.log((torch.exp(similarity - peak) @ state["head.coef"]).clamp_min(1e-30)) + peak


def ood_score(x, spec, state):
    """The autoencoder's out-of-distribution score, features (n, d) -> (n,): reconstruction error of the L2-normalized,
    centred, scaled features, divided by the calibrated limit."""
    def linear(x, name):
        return torch.nn.functional.linear(x, state[f"ood.{name}.weight"], state[f"ood.{name}.bias"])

    z = (x / x.norm(dim=1, keepdim=True).clamp_min(1e-12) - state["ood.center"]) / state["ood.scale"]
    code = linear(torch.relu(linear(z, "encoder.0")), "encoder.2")
    rebuilt = linear(torch.relu(linear(code, "decoder.0")), "decoder.2")
    return ((rebuilt - z) ** 2).mean(1) / state["ood.limit"]


def classify(model, images, config, state):
    """(logits (n, C), OOD score (n,) or None) of a preprocessed batch (n, 3, H, W)."""
    if not config.get("ood"):
        return head(model(images), config["head"], state), None
    if config["head"]["kind"] == "timm":  # fine-tuned: the autoencoder sees the pooled pre-logits features
        features = model.forward_head(model.forward_features(images), pre_logits=True)
        return model.get_classifier()(features), ood_score(features, config["ood"], state)
    features = model(images)
    return head(features, config["head"], state), ood_score(features, config["ood"], state)


def main(paths, top_k=3):
    config = read_config(HERE)
    state = load(read_checked(HERE, "model.safetensors"))  # backbone.*, head.* (fsl_app head), ood.* (autoencoder)
    model, transform = backbone(config, state), timm.data.create_transform(**config["preprocessing"])
    classes, threshold, results = config["classes"], config["threshold"], []
    draft = draft_size(config["preprocessing"])
    for path in paths:
        with torch.inference_mode():
            logits, ood = classify(model, transform(load_rgb(path, draft))[None], config, state)
            proba = torch.softmax(logits.float(), 1)[0]
        results.append(prediction(path, proba.tolist(), classes, top_k, threshold,
                                  None if ood is None else float(ood[0]), config.get("ood_limit")))
    print(json.dumps(results, ensure_ascii=False))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except BundleError as error:
        sys.exit(f"error: {error}")
