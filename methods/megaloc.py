"""MegaLoc (Berton & Masone, CVPRW 2025), and the ``megaloc`` method.

Model, as gmberton/MegaLoc's ``megaloc_model.py`` (``MegaLoc``): DINOv2 ViT-B/14 with its final
norm at ``backbone`` (MegaLoc's own copy of the network: no ``mask_token``), a SALAD
aggregator at ``aggregator.agg`` with 64 clusters x 256 + a 256-D token = 16640-D (itself
L2-normalised), ``aggregator.linear`` (16640 -> 8448), then L2: 8448-D.

Weights: ``model.safetensors`` from the Hugging Face repository ``gberton/MegaLoc`` (keys
``backbone.*``, ``aggregator.agg.*``, ``aggregator.linear.*``), read with the ``safetensors``
package. The older ``megaloc.torch`` (a PyTorch state dict whose backbone was the ``torch.hub``
DINOv2, keys ``backbone.model.*`` including ``mask_token``) loads too.

Test-time preprocessing: ``ToTensor``, ``Normalize(ImageNet mean, std)``, the image at its own
size; ``MegaLoc.forward`` then rounds H and W to the nearest multiples of 14 (Python ``round``)
with ``torchvision.transforms.functional.resize(..., antialias=True)`` (bilinear) when either is
not a multiple. That is VPR-methods-evaluation's default (no ``--image_size``), so images come
one per batch. With ``image_height`` and ``image_width`` the image is first resized to that size
(bilinear, antialias), as VPR-methods-evaluation's ``--image_size H W``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from methods.dinov2 import DinoVisionTransformer, vit_config_from_state
from methods.imagenet import RoundToMultiple
from methods.released import ReleasedMethod
from methods.salad import PATCH, SaladAggregator, salad_shape

MEGALOC_DIM = 8448
MEGALOC_CLUSTER_DIM = 256
OLD_BACKBONE_PREFIX = "backbone.model."


class MegaLocHead(nn.Module):
    """``agg`` (SALAD, L2-normalised output) then ``linear``."""

    def __init__(self, aggregator: SaladAggregator, out_dim: int):
        super().__init__()
        self.agg = aggregator
        self.linear = nn.Linear(aggregator.output_dim, out_dim)

    def forward(self, features):
        return self.linear(self.agg(features))


class MegaLocModel(nn.Module):
    """``backbone`` (DINOv2 with final norm) + ``aggregator`` (SALAD + linear), then L2."""

    def __init__(self, vit: DinoVisionTransformer, head: MegaLocHead):
        super().__init__()
        self.backbone = vit
        self.aggregator = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.aggregator(self.backbone(images)), p=2, dim=-1)


def current_layout(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with the old ``megaloc.torch`` backbone keys renamed to the current ones."""
    if not any(key.startswith(OLD_BACKBONE_PREFIX) for key in state):
        return dict(state)
    return {
        ("backbone." + key[len(OLD_BACKBONE_PREFIX) :])
        if key.startswith(OLD_BACKBONE_PREFIX)
        else key: value
        for key, value in state.items()
    }


def is_old_layout(state: Mapping[str, Any]) -> bool:
    return any(key.startswith(OLD_BACKBONE_PREFIX) for key in state)


def build_megaloc(state: Mapping[str, Any], path=None, *, mask_token: bool = False):
    """A MegaLoc model shaped after ``state`` (current key layout)."""
    config = vit_config_from_state(state, "backbone.", mask_token=mask_token, path=path)
    vit = DinoVisionTransformer(config, final_norm=True)
    aggregator = SaladAggregator(
        num_channels=config.embed_dim,
        **salad_shape(state, "aggregator.agg.", cluster_dim=MEGALOC_CLUSTER_DIM),
    )
    linear = state.get("aggregator.linear.weight")
    out_dim = int(linear.shape[0]) if linear is not None and linear.ndim == 2 else MEGALOC_DIM
    return MegaLocModel(vit, MegaLocHead(aggregator, out_dim))


@dataclass(frozen=True)
class MegaLocOptions:
    """Optional resize before the rounding to multiples of 14 (both or neither)."""

    image_height: int | None = None
    image_width: int | None = None

    def __post_init__(self):
        if (self.image_height is None) != (self.image_width is None):
            raise ValueError("give both image_height and image_width, or neither")
        for key in ("image_height", "image_width"):
            value = getattr(self, key)
            if value is not None and value < PATCH:
                raise ValueError(f"{key} must be >= {PATCH}, got {value}")


class MegaLocMethod(ReleasedMethod):
    """MegaLoc, DINOv2 ViT-B/14 + SALAD 16640 -> 8448, from ``model.safetensors``."""

    description = "MegaLoc (DINOv2 ViT-B/14 + SALAD + linear), 8448-D, model.safetensors"
    config_cls = MegaLocOptions

    def __init__(self, config, weights=None):
        super().__init__(config, weights)
        self._old_layout = False

    def state_dict(self):
        if self._state is None:
            state = super().state_dict()
            self._old_layout = is_old_layout(state)
            self._state = current_layout(state)
        return self._state

    def make_model(self, state):
        return build_megaloc(state, self.weights, mask_token=self._old_layout)

    def transform(self):
        return RoundToMultiple(PATCH, self.config.image_height, self.config.image_width)

    @property
    def descriptor_dim(self) -> int:
        linear = self.state_dict().get("aggregator.linear.weight")
        return int(linear.shape[0]) if linear is not None and linear.ndim == 2 else MEGALOC_DIM
