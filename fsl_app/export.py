"""Export and prediction: one image->logits module per strategy; predictors over run folders (and exports)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .images import ImageError, load_image


class Predictor:
    """Top-k predictions from preprocessed batches; subclasses provide ``logits(batch (n,3,H,W)) -> (n, C)``."""

    def __init__(self, classes: list[str], data_config: dict):
        self.classes = list(classes)
        self.data_config = data_config

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict_proba_images(self, images) -> torch.Tensor:
        from .features import images_to_batch

        return torch.softmax(self.logits(images_to_batch(images, self.data_config)).float(), dim=1)

    def predict_paths(self, paths: Sequence[Path], *, top_k: int = 3, progress: bool = False,
                      batch_size: int = 32) -> list[dict]:
        """One dict per image: image, label, probability, top_k [{label, probability}] (or error)."""
        from tqdm.auto import tqdm

        results: list[dict] = []
        bar = tqdm(total=len(paths), disable=not progress, desc="predict", unit="img", leave=False)
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            loaded, good = [], []
            for path in chunk:
                try:
                    loaded.append(load_image(path))
                    good.append(path)
                except ImageError as error:
                    results.append({"image": str(path), "error": str(error)})
            if loaded:
                proba = self.predict_proba_images(loaded)
                results.extend(self._describe(str(path), row, top_k) for path, row in zip(good, proba))
            bar.update(len(chunk))
        bar.close()
        order = {str(p): i for i, p in enumerate(paths)}
        return sorted(results, key=lambda item: order[item["image"]])

    def _describe(self, image: str, probabilities: torch.Tensor, top_k: int) -> dict:
        values, indices = probabilities.topk(min(top_k, len(self.classes)))
        top = [{"label": self.classes[i], "probability": float(v)} for v, i in zip(values.tolist(), indices.tolist())]
        return {"image": image, "label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}


class RunPredictor(Predictor):
    """Predictions with the fitted strategy of a run folder."""

    def __init__(self, run_dir: str | Path):
        from .runs import load_run

        strategy, backbone = load_run(run_dir)
        super().__init__(strategy.classes_, backbone.data_config)
        self.module = strategy.to_module().eval()

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(batch)


def load_predictor(path: str | Path) -> Predictor:
    path = Path(path)
    if path.is_dir():
        return RunPredictor(path)
    raise FileNotFoundError(f"{path} is not a run folder. Pass the folder written by `fsl-app train`.")


def add_export_command(commands) -> None:
    """Register ``fsl-app export`` (filled in by the export module)."""
