"""Prototypes kept by the strategies whose head is a prototype classifier: shown on the embedding map and saved."""

from __future__ import annotations

import torch


class KeepsPrototypes:
    """Mixin for a FeatureStrategy that sets ``prototypes_`` (n_classes, d), in the space of ``embed``, when fitted."""

    def map_points(self) -> list[tuple[str, str, torch.Tensor]]:
        """The class prototypes as ("prototype", class, vector) points of the embedding map."""
        self.check_is_fitted()
        prototypes = getattr(self, "prototypes_", None)
        return [] if prototypes is None else [("prototype", name, prototypes[i])
                                              for i, name in enumerate(self.classes_)]

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {**super()._state_tensors(), "prototypes": self.prototypes_}

    def _restore(self, meta: dict, tensors: dict[str, torch.Tensor], backbone) -> None:
        super()._restore(meta, tensors, backbone)
        self.prototypes_ = tensors.get("prototypes")  # absent from models saved before prototypes were kept
