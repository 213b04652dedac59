"""An out-of-distribution ("none of these") score: a small autoencoder on the frozen features of the labeled images.

The autoencoder learns to reconstruct the (L2-normalized, centred, scaled) backbone features of the run's labeled
images through a narrow bottleneck; features of images unlike them reconstruct worse. Its score is the
reconstruction error divided by a calibrated limit: the ``quantile`` (95 %) of the errors of labeled images that the
autoencoder did not see, measured out of fold (k-fold, one autoencoder per fold), so a score above 1 means "less
familiar than 95 % of the run's own images". It needs no labels, so one class works as well as many. This is the
novelty-detection use of autoencoders (Japkowicz, Myers and Gluck 1995; Sakurada and Yairi 2014).

Saved beside a run's model as ``ood.safetensors`` + ``ood.json`` (never pickle); runs without these files have no
score. Export carries it as a second output ``ood_score`` (n,) of the exported module.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .atomic import write_bytes_atomic, write_json_atomic

OOD_WEIGHTS = "ood.safetensors"
OOD_CONFIG = "ood.json"
OOD_KIND = "autoencoder"
OOD_OUTPUT = "ood_score"  # name of the extra ONNX output
OOD_QUANTILE = 0.95  # the limit (score 1.0) is this quantile of out-of-fold errors of the labeled images
MIN_IMAGES = 4  # fewer labeled images give no autoencoder

__all__ = ["FeatureAutoencoder", "fit_autoencoder", "save_autoencoder", "load_autoencoder", "autoencoder_from_state",
           "image_features", "OodImageClassifier", "OOD_OUTPUT", "OOD_QUANTILE"]


class FeatureAutoencoder(nn.Module):
    """Features (n, d) -> OOD score (n,): reconstruction error of the prepared features / calibrated ``limit``.

    Prepared features: ``(x / ||x|| - center) / scale``; encoder d -> hidden -> bottleneck, decoder back to d (ReLU).
    """

    def __init__(self, in_features: int, hidden: int, bottleneck: int, *, center: torch.Tensor | None = None,
                 scale: float = 1.0, limit: float = 1.0, quantile: float = OOD_QUANTILE):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, bottleneck))
        self.decoder = nn.Sequential(nn.Linear(bottleneck, hidden), nn.ReLU(), nn.Linear(hidden, in_features))
        self.register_buffer("center", torch.zeros(in_features) if center is None else center.float().clone())
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("limit", torch.tensor(float(limit)))
        self.quantile = float(quantile)

    def prepare(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) raw features -> (n, d) L2-normalized, centred and scaled."""
        unit = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (unit - self.center) / self.scale

    def errors(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) raw features -> (n,) mean squared reconstruction error of the prepared features."""
        prepared = self.prepare(features.float())
        return ((self.decoder(self.encoder(prepared)) - prepared) ** 2).mean(dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.errors(features) / self.limit

    def config(self) -> dict:
        return {"kind": OOD_KIND, "in_features": self.encoder[0].in_features, "hidden": self.encoder[0].out_features,
                "bottleneck": self.encoder[2].out_features, "quantile": self.quantile}


def fit_autoencoder(features: torch.Tensor, *, hidden: int = 64, bottleneck: int = 16, steps: int = 200,
                    folds: int = 3, quantile: float = OOD_QUANTILE, seed: int = 0) -> FeatureAutoencoder:
    """Train on features (n, d) of in-distribution images (any number of classes, one included) and calibrate.

    ``folds`` autoencoders, each trained without one fold, give every image an error it was not trained on; the
    final autoencoder (all images) takes the ``quantile`` of those errors as its ``limit``. Raises ValueError with
    fewer than ``MIN_IMAGES`` images.
    """
    features = torch.as_tensor(features).detach().float().cpu()
    if features.ndim != 2 or len(features) < MIN_IMAGES:
        raise ValueError(f"the autoencoder needs features (n, d) of at least {MIN_IMAGES} images, got "
                         f"{tuple(features.shape)}. Label more images.")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: intra-op threads cost far more in synchronisation than they save
    try:
        return _fit_calibrated(features, hidden, bottleneck, steps, folds, quantile, seed)
    finally:
        torch.set_num_threads(threads)


def _fit_calibrated(features: torch.Tensor, hidden: int, bottleneck: int, steps: int, folds: int, quantile: float,
                    seed: int) -> FeatureAutoencoder:
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(features), generator=generator)
    held_out_errors = []
    for fold in order.tensor_split(min(folds, len(features))):
        keep = torch.ones(len(features), dtype=torch.bool)
        keep[fold] = False
        model = _trained(features[keep], hidden, bottleneck, steps, seed)
        with torch.no_grad():
            held_out_errors.append(model.errors(features[fold]))
    final = _trained(features, hidden, bottleneck, steps, seed)
    limit = torch.quantile(torch.cat(held_out_errors), quantile).item()
    final.limit.fill_(max(limit, 1e-12))
    final.quantile = quantile
    return final.eval()


def _trained(features: torch.Tensor, hidden: int, bottleneck: int, steps: int, seed: int) -> FeatureAutoencoder:
    """One autoencoder fitted (Adam, mini-batches of 64, ``steps`` steps) on features (n, d); limit 1."""
    torch.manual_seed(seed)
    unit = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    center = unit.mean(dim=0)
    scale = max(math.sqrt(((unit - center) ** 2).sum(1).mean().item() / unit.shape[1]), 1e-6)
    model = FeatureAutoencoder(features.shape[1], hidden, min(bottleneck, max(1, len(features) - 1)),
                               center=center, scale=scale)
    prepared = model.prepare(features)
    generator = torch.Generator().manual_seed(seed)

    def loss() -> torch.Tensor:
        batch = prepared[torch.randint(len(prepared), (min(64, len(prepared)),), generator=generator)]
        return ((model.decoder(model.encoder(batch)) - batch) ** 2).mean()

    with torch.enable_grad(), torch.inference_mode(False):
        adam_steps(list(model.parameters()), loss, steps, lr=1e-3, weight_decay=1e-4)
    return model.eval()


def adam_steps(params: list[torch.Tensor], loss: Callable[[], torch.Tensor], steps: int, *, lr: float,
               weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
    """``steps`` steps of Adam (Kingma & Ba 2015; L2 ``weight_decay`` added to the gradient, as ``torch.optim.Adam``).

    Written out because constructing any ``torch.optim`` optimizer imports ``torch._dynamo`` (about 1.5 s), longer
    than this whole fit: a frozen-feature run would pay it for its autoencoder alone.
    """
    first = [torch.zeros_like(p) for p in params]
    second = [torch.zeros_like(p) for p in params]
    for step in range(1, steps + 1):
        grads = torch.autograd.grad(loss(), params)
        with torch.no_grad():
            for param, grad, m, v in zip(params, grads, first, second):
                grad = grad + weight_decay * param
                m.mul_(betas[0]).add_(grad, alpha=1 - betas[0])
                v.mul_(betas[1]).addcmul_(grad, grad, value=1 - betas[1])
                denominator = (v / (1 - betas[1] ** step)).sqrt_().add_(eps)
                param.addcdiv_(m, denominator, value=-lr / (1 - betas[0] ** step))


def save_autoencoder(model: FeatureAutoencoder, directory: str | Path) -> None:
    """``ood.safetensors`` (tensors) + ``ood.json`` (config) in ``directory``, each written atomically."""
    from safetensors.torch import save

    directory = Path(directory)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    write_bytes_atomic(directory / OOD_WEIGHTS, save(state))
    write_json_atomic(directory / OOD_CONFIG, model.config())


def load_autoencoder(directory: str | Path) -> FeatureAutoencoder | None:
    """The autoencoder saved in ``directory``; None when the run has none (runs made before it existed)."""
    directory = Path(directory)
    if not (directory / OOD_CONFIG).is_file() or not (directory / OOD_WEIGHTS).is_file():
        return None
    from safetensors.torch import load_file

    config = json.loads((directory / OOD_CONFIG).read_text(encoding="utf-8"))
    return autoencoder_from_state(config, load_file(str(directory / OOD_WEIGHTS)))


def autoencoder_from_state(config: dict, state: dict[str, torch.Tensor]) -> FeatureAutoencoder:
    """Rebuild from ``config()`` and ``state_dict()``; raise ValueError for an unknown kind or mismatched tensors."""
    if not isinstance(config, dict) or config.get("kind") != OOD_KIND:
        raise ValueError(f"unknown out-of-distribution model {config!r}: it is from a newer fsl_app; upgrade it.")
    model = FeatureAutoencoder(config["in_features"], config["hidden"], config["bottleneck"],
                               quantile=config.get("quantile", OOD_QUANTILE))
    model.load_state_dict(state)
    return model.eval()


def autoencoder_state_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the autoencoder ``config`` describes (to check a bundle's tensors)."""
    d, h, k = config["in_features"], config["hidden"], config["bottleneck"]
    return {"encoder.0.weight": (h, d), "encoder.0.bias": (h,), "encoder.2.weight": (k, h), "encoder.2.bias": (k,),
            "decoder.0.weight": (h, k), "decoder.0.bias": (h,), "decoder.2.weight": (d, h), "decoder.2.bias": (d,),
            "center": (d,), "scale": (), "limit": ()}


# --- the exported module ------------------------------------------------------------------------------------------

def as_image_classifier(module: nn.Module) -> nn.Module | None:
    """``module`` as ``ImageClassifier(backbone, head)``: itself, a timm network wrapped with an Identity head (its
    own classifier), or None for a module of another shape (it gets no autoencoder)."""
    from .strategies.base import ImageClassifier

    if isinstance(module, ImageClassifier):
        return module
    if hasattr(module, "forward_head") and hasattr(module, "get_classifier"):
        return ImageClassifier(module, nn.Identity())
    return None


def uses_timm_classifier(classifier: nn.Module) -> bool:
    """True for ``ImageClassifier(timm model, Identity)`` (a fine-tuned network keeps its own classifier)."""
    return isinstance(getattr(classifier, "head", None), nn.Identity) and hasattr(classifier.backbone, "forward_head")


def image_features(classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The features (n, d) the classifier's head decides on: the backbone's output, or a fine-tuned timm network's
    pooled pre-logits features."""
    if uses_timm_classifier(classifier):
        network = classifier.backbone
        return network.forward_head(network.forward_features(images), pre_logits=True)
    return classifier.backbone(images)


class OodImageClassifier(nn.Module):
    """(n, 3, H, W) -> (logits (n, C), OOD score (n,)): an ``ImageClassifier`` plus the autoencoder on its features.

    State keys: ``backbone.*``, ``head.*`` (as the classifier's) and ``ood.*``.
    """

    def __init__(self, classifier: nn.Module, autoencoder: FeatureAutoencoder):
        super().__init__()
        self.backbone = classifier.backbone
        self.head = classifier.head
        self.ood = autoencoder
        self.timm_classifier = uses_timm_classifier(classifier)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = image_features(self, images)
        logits = self.backbone.get_classifier()(features) if self.timm_classifier else self.head(features)
        return logits, self.ood(features)


def fit_run_autoencoder(strategy, images, backbone, directory: str | Path, *, seed: int = 0) -> float | None:
    """Fit the autoencoder on the features of a fitted strategy's labeled ``images`` and save it in ``directory``.

    Features: the cached frozen features for a ``FeatureStrategy``, else the fitted module's own (fine-tuned)
    features. Returns the seconds it took, or None (nothing saved) with fewer than ``MIN_IMAGES`` images.
    """
    import time

    from .strategies import FeatureStrategy

    if len(images) < MIN_IMAGES:
        return None
    started = time.perf_counter()
    if isinstance(strategy, FeatureStrategy):  # cached features: neither the module nor timm is needed
        from .features import get_extractor

        features = get_extractor(backbone).extract(images)
    else:
        from .preprocess import working_side

        module = as_image_classifier(strategy.to_module().eval())
        if module is None:
            return None
        side = working_side(backbone.data_config)  # read as training and every predictor read them
        features = module_features(module, [images.load(i, side=side) for i in range(len(images))],
                                   backbone.data_config)
    save_autoencoder(fit_autoencoder(features, seed=seed), directory)
    return time.perf_counter() - started


def module_features(module: nn.Module, images, data_config: dict, *, batch_size: int = 32) -> torch.Tensor:
    """Features (n, d) of PIL ``images`` through :func:`image_features` of ``module`` (eval preprocessing)."""
    from .features import images_to_batch

    chunks = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunks.append(image_features(module, images_to_batch(images[start:start + batch_size], data_config)))
    return torch.cat(chunks).float()
