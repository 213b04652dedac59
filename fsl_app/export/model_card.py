"""The model card (``README.md`` of a bundle): what the model was trained on, how well it did, how to run it, and
its limits."""

from __future__ import annotations

import json

from ..intervals import format_accuracy
from .prepare import Exportable

__all__ = ["model_card"]


def model_card(exportable: Exportable, quantize: str | None = None) -> str:
    """README.md of a bundle: what the model was trained on, how well it did, how to run it, and its limits."""
    info, run = exportable.info, exportable.run
    config, metrics = run["config"], run["metrics"] or {}
    counts = config.get("class_counts") or {}
    per_class = metrics.get("per_class_accuracy") or {}
    rows = "\n".join(f"| {name} | {counts.get(name, '?')} | {_percent(per_class.get(name))} |"
                     for name in info["classes"])
    threshold = "none" if info["threshold"] is None else f"{info['threshold']:.4f} ({info['threshold_rule']})"
    return "\n".join([
        f"# {run['name']}: few-shot image classifier",
        "",
        f"Sorts images into {len(info['classes'])} classes: {', '.join(info['classes'])}. Made with fsl_app "
        f"{info['fsl_app_version']} from run `{run['name']}` ({config.get('created_at', 'unknown date')}).",
        "",
        "## Training data and accuracy",
        "",
        "| class | training images | held-out accuracy |",
        "| --- | --- | --- |",
        rows,
        "",
        f"- Evaluation: {metrics.get('protocol', '?')} on {metrics.get('n_test', '?')} held-out predictions, accuracy "
        f"{format_accuracy(metrics)} (95 % interval), balanced accuracy "
        f"{_percent(metrics.get('balanced_accuracy'))}, macro F1 {_number(metrics.get('macro_f1'))}.",
        f"- Backbone: `{info['backbone']['name']}` ({info['backbone']['source']} weights); strategy: "
        f"`{info['strategy']}` with {json.dumps(info['params'])}.",
        f"- Augmentation: {_describe_augment(config.get('augment') or info['params'].get('augment'))}; "
        f"images: {sum(counts.values()) if counts else '?'} (sha256 list in config.json).",
        f"- Preprocessing: {_describe_preprocessing(info['preprocessing'])}.",
        f"- Rejection threshold on the top probability: {threshold}.",
        f"- Out-of-distribution score: {_describe_ood(info)}.",
        "- Answer `unknown` when: " + _unknown_rule(info) + ".",
        "",
        "## Intended use",
        "",
        "Labeling images that look like the training images (same kind of camera, framing and subject) into the "
        "classes above, with a person checking the results that matter. Re-measure accuracy on your own images "
        "before relying on it.",
        "",
        "## Limits",
        "",
        *_card_limits(info, sum(counts.values()), quantize),
        "",
        "## Run it",
        "",
        "```bash",
        "pip install torch timm && python predict.py photo.jpg               # PyTorch, no fsl_app",
        "pip install onnxruntime pillow && python predict_onnx.py photo.jpg  # ONNX Runtime only",
        "fsl-app predict this_bundle.zip photo.jpg --json                    # with fsl_app",
        "```",
        "",
        "Files: `model.safetensors` (all weights: `backbone.*` for the timm model, `head.*` for the classifier), "
        "`config.json` (classes, preprocessing, threshold, metrics, data snapshot, checksums), `model.onnx` "
        "(metadata in its `metadata_props`), `bundle_io.py` (used by both scripts: they refuse model files whose "
        "sha256 differs from config.json).",
        "",
    ])


def _card_limits(info: dict, n_images: int, quantize: str | None) -> list[str]:
    """The model card's "Limits" bullets."""
    limits = [f"- Trained on {n_images or 'few'} images: the accuracy above is an estimate with a wide confidence "
              "interval, not a guarantee.",
              "- Closed set: every image gets one of the classes"
              + (" unless its top probability is below the threshold (then `unknown`); a probability threshold "
                 "catches many, not all, unfamiliar images." if info["threshold"] is not None else
                 "; re-export with `--threshold auto` to report unfamiliar images as `unknown`."),
              "- Images unlike the training data (other lighting, devices, subjects) can be confidently wrong."]
    if str(info["backbone"]["source"]).startswith("random"):
        limits.append("- The backbone had random weights (no pretraining): expect poor accuracy.")
    if info.get("ood"):
        limits.append("- The autoencoder's score flags images unlike the training images as a whole; it can miss an "
                      "unfamiliar image that looks like a known class, and with few training images it also flags "
                      "some familiar ones (about 5 % at the automatic limit).")
    if quantize:
        limits.append(f"- model.onnx is {quantize}-quantized (static QDQ, about 3x smaller): its probabilities differ "
                      "from model.safetensors and can change the top class of borderline images.")
    return limits


def _describe_ood(info: dict) -> str:
    if not info.get("ood"):
        return "none (the run has no autoencoder)"
    ood = info["ood"]
    return (f"autoencoder on the backbone features ({ood['in_features']} -> {ood['hidden']} -> {ood['bottleneck']}, "
            f"weights `ood.*`; output `{ood.get('output', 'ood_score')}` of model.onnx): {info.get('ood_rule')}")


def _unknown_rule(info: dict) -> str:
    """The rule, in words: either score may reject (each only when set)."""
    rules = []
    if info.get("threshold") is not None:
        rules.append(f"the top probability is below {info['threshold']:.4f}")
    if info.get("ood") and info.get("ood_limit") is not None:
        rules.append(f"the OOD score is above {info['ood_limit']:g}")
    return " or ".join(rules) if rules else "never (export with --threshold auto and/or --ood auto to allow it)"


def _describe_augment(spec) -> str:
    if spec is None:
        return "none (frozen features)"
    if isinstance(spec, str):
        return f"albumentations preset `{spec}` (full dict in config.json)"
    return "custom albumentations pipeline (dict in config.json)"


def _percent(value) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, (int, float)) else "n/a"


def _number(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"


def _describe_preprocessing(preprocessing: dict) -> str:
    from ..preprocess import working_side

    _, height, width = preprocessing["input_size"]
    side = working_side(preprocessing)
    return (f"RGB; an image larger than {side} px on its shorter side is first reduced to {side} px (JPEGs decoded "
            f"at 1/2, 1/4 or 1/8 scale down to it, then a bilinear resize; `bundle_io.load_rgb` does this), then "
            f"{preprocessing.get('interpolation')} resize and center crop to {height} x {width} "
            f"(crop_pct {preprocessing.get('crop_pct')}), normalized with mean {preprocessing.get('mean')} and std "
            f"{preprocessing.get('std')} (timm's eval transform)")

