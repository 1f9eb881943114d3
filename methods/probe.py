"""``probe``: the synthetic city's training-free descriptor as a registered method.

Wraps :func:`synth.probe.probe_descriptor` (a thumbnail and/or spatial colour
histogram of the image, no weights), so ``harness eval --method probe`` runs the same
extraction path (workers, feature files, provider cache) as the learnt methods. It is the
floor a learnt method must beat on the synthetic city.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from methods.base import ImageLoader, Method, PartContext


@dataclass(frozen=True)
class ProbeOptions:
    """``kind``: ``pixels`` (thumbnail), ``hist`` (spatial colour histogram) or ``both``."""

    kind: Literal["pixels", "hist", "both"] = "hist"


@dataclass(frozen=True)
class ProbeTransform:
    """PIL image -> its probe descriptor (float32 tensor); runs in the data-loader workers."""

    kind: str

    fixed_size = True

    def __call__(self, image):
        import torch

        from synth.probe import probe_descriptor

        return torch.from_numpy(probe_descriptor(np.asarray(image, dtype=np.uint8), self.kind))


class ProbeMethod(Method):
    """Training-free colour descriptor of the synthetic city (no weights)."""

    description = "training-free thumbnail / colour-histogram descriptor (synth.probe)"
    config_cls = ProbeOptions
    requires_weights = False

    def image_loader(self, context: PartContext) -> ImageLoader:
        return ImageLoader(ProbeTransform(self.config.kind))

    def build_model(self, device):
        return None

    def encode(self, model, images, context: PartContext):
        return images.float()

    @property
    def descriptor_dim(self) -> int:
        from synth.probe import probe_dim

        return probe_dim(self.config.kind)
