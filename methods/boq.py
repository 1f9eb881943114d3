"""BoQ, Bag-of-Queries (Ali-bey et al., CVPR 2024), and the ``boq`` method (ResNet-50 or DINOv2).

Model, with the module names of amaralibey/Bag-of-Queries (``hubconf.py``'s ``VPRModel``,
``src/backbones.py``, ``src/boq.py``):

* ``backbone.net``: torchvision ResNet-50 cut after layer3, as
  ``Sequential(conv1, bn1, relu, maxpool, layer1, layer2, layer3)`` (keys
  ``backbone.net.{0,1,4,5,6}.*``, since the authors' commit 87ff48c "update ResNet code to match
  state_dict"), 1024 channels; or ``backbone.dino``: the ``torch.hub`` DINOv2 ViT-B/14, all
  blocks, *without* its final norm, CLS token dropped, 768 channels. The released
  ``dinov2_12288.pth`` still carries the unused ``backbone.dino.norm.{weight,bias}``
  (Bag-of-Queries issue 20): exactly those two keys are accepted and ignored.
* ``aggregator``: ``proj_c`` (3x3 conv to 512 for ResNet / 384 for DINOv2), tokens,
  ``norm_input`` (LayerNorm), 2 ``boqs`` blocks. A block: ``encoder`` (a
  ``TransformerEncoderLayer``: post-norm, ReLU, ``dim_feedforward = 4 d``, dropout 0) on the
  tokens; 64 learned ``queries`` refined by ``self_attn`` (residual) and ``norm_q``;
  ``cross_attn`` of the queries on the tokens, ``norm_out``. Heads: ``d / 64`` (8 / 6).
  The 2 x 64 outputs are concatenated, ``fc`` (Linear 128 -> 32) mixes the query axis,
  flatten, L2: 512 x 32 = 16384-D (ResNet-50), 384 x 32 = 12288-D (DINOv2).

Weights: ``resnet50_16384.pth`` and ``dinov2_12288.pth`` from the v1.0 release (plain state
dicts). The variant is read from the file's keys (``backbone.net.*`` or ``backbone.dino.*``)
unless ``backbone=resnet50|dinov2`` is given.

Test-time preprocessing, from the Bag-of-Queries README ("use the following transform for best
results"): ``ToTensor``, ``Resize((384, 384))`` for ResNet-50 / ``Resize((322, 322))`` for
DINOv2 with ``InterpolationMode.BICUBIC, antialias=True`` on the tensor, then
``Normalize(ImageNet mean, std)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from methods.dinov2 import DinoVisionTransformer, vit_config_from_state
from methods.imagenet import TensorResize
from methods.released import ReleasedMethod
from methods.salad import PATCH

BOQ_HEAD_DIM = 64
IMAGE_SIZES = {"resnet50": 384, "dinov2": 322}
BACKBONE_CHANNELS = {"resnet50": 1024, "dinov2": 768}
DINO_UNUSED = ("backbone.dino.norm.weight", "backbone.dino.norm.bias")


class BoQBlock(nn.Module):
    """One Bag-of-Queries block: refine the tokens, let learned queries attend to them."""

    def __init__(self, dim: int, num_queries: int, num_heads: int):
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(
            d_model=dim, nhead=num_heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True
        )
        self.queries = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.self_attn = nn.MultiheadAttention(dim, num_heads=num_heads, batch_first=True)
        self.norm_q = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads=num_heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens (B, N, d)`` -> ``(refined tokens, query outputs (B, Q, d))``."""
        tokens = self.encoder(tokens)
        # The queries do not depend on the image: refine them once, then share them.
        queries = self.queries
        queries = self.norm_q(queries + self.self_attn(queries, queries, queries)[0])
        queries = queries.expand(tokens.shape[0], -1, -1)
        out = self.cross_attn(queries, tokens, tokens, need_weights=False)[0]
        return tokens, self.norm_out(out)


class BoQAggregator(nn.Module):
    """``proj_c``, ``norm_input``, ``boqs``, ``fc``: feature map -> L2 descriptor."""

    def __init__(
        self,
        in_channels: int,
        proj_channels: int,
        num_queries: int = 64,
        num_layers: int = 2,
        row_dim: int = 32,
    ):
        super().__init__()
        if proj_channels % BOQ_HEAD_DIM:
            raise ValueError(f"proj_channels {proj_channels} is not a multiple of {BOQ_HEAD_DIM}")
        self.proj_c = nn.Conv2d(in_channels, proj_channels, kernel_size=3, padding=1)
        self.norm_input = nn.LayerNorm(proj_channels)
        heads = proj_channels // BOQ_HEAD_DIM
        self.boqs = nn.ModuleList(
            BoQBlock(proj_channels, num_queries, heads) for _ in range(num_layers)
        )
        self.fc = nn.Linear(num_layers * num_queries, row_dim)
        self.output_dim = proj_channels * row_dim

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        tokens = self.norm_input(self.proj_c(feature_map).flatten(2).transpose(1, 2))
        outputs = []
        for block in self.boqs:
            tokens, out = block(tokens)
            outputs.append(out)
        mixed = self.fc(torch.cat(outputs, dim=1).transpose(1, 2))  # (B, d, row_dim)
        return F.normalize(mixed.flatten(1), p=2, dim=-1)


class ResNetTrunk(nn.Module):
    """torchvision ResNet-50 up to layer3 at ``net`` (keys ``net.{0,1,4,5,6}``)."""

    def __init__(self):
        super().__init__()
        from methods.torchvision_backbones import resnet_children

        self.net = resnet_children(50, last_layer=3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class DinoTrunk(nn.Module):
    """The hub DINOv2 at ``dino``; patch tokens after the last block, no final norm."""

    def __init__(self, vit: DinoVisionTransformer):
        super().__init__()
        self.dino = vit

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        tokens = self.dino.forward_tokens(images)[:, 1:]
        rows, cols = height // self.dino.patch_size, width // self.dino.patch_size
        return tokens.reshape(batch, rows, cols, -1).permute(0, 3, 1, 2)


class BoQModel(nn.Module):
    def __init__(self, backbone: nn.Module, aggregator: BoQAggregator):
        super().__init__()
        self.backbone = backbone
        self.aggregator = aggregator

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.aggregator(self.backbone(images))


def detect_backbone(state: Mapping[str, Any], path=None) -> str:
    """``resnet50`` or ``dinov2`` from the key prefixes of a released file."""
    found = {
        name
        for name, prefix in (("resnet50", "backbone.net."), ("dinov2", "backbone.dino."))
        if any(key.startswith(prefix) for key in state)
    }
    if len(found) != 1:
        raise HarnessError(
            "cannot tell the BoQ backbone from the keys (expected backbone.net.* for ResNet-50 "
            "or backbone.dino.* for DINOv2): pass --method-option backbone=resnet50|dinov2",
            path,
        )
    return found.pop()


def boq_shape(state: Mapping[str, Any], backbone: str) -> dict:
    """Aggregator sizes from the tensors (the released ones where absent)."""

    def get(name: str, axis: int, default: int) -> int:
        tensor = state.get("aggregator." + name)
        return int(tensor.shape[axis]) if tensor is not None and tensor.ndim > axis else default

    pattern = re.compile(r"aggregator\.boqs\.(\d+)\.")
    layers = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return {
        "proj_channels": get("proj_c.weight", 0, 512 if backbone == "resnet50" else 384),
        "num_queries": get("boqs.0.queries", 1, 64),
        "num_layers": max(layers) + 1 if layers else 2,
        "row_dim": get("fc.weight", 0, 32),
    }


def build_boq(state: Mapping[str, Any], backbone: str, path=None) -> BoQModel:
    if backbone == "resnet50":
        trunk: nn.Module = ResNetTrunk()
        channels = BACKBONE_CHANNELS["resnet50"]
    else:
        config = vit_config_from_state(state, "backbone.dino.", mask_token=True, path=path)
        trunk = DinoTrunk(DinoVisionTransformer(config, final_norm=False))
        channels = config.embed_dim
    shape = boq_shape(state, backbone)
    if shape["proj_channels"] % BOQ_HEAD_DIM:
        raise HarnessError(
            f"aggregator.proj_c has {shape['proj_channels']} output channels, not a multiple "
            f"of BoQ's head dimension {BOQ_HEAD_DIM}",
            path,
        )
    return BoQModel(trunk, BoQAggregator(channels, **shape))


@dataclass(frozen=True)
class BoQOptions:
    """``backbone`` (``auto``: from the file's keys); input size (default 384 / 322)."""

    backbone: Literal["auto", "resnet50", "dinov2"] = "auto"
    image_height: int | None = None
    image_width: int | None = None

    def __post_init__(self):
        for key in ("image_height", "image_width"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")


class BoQMethod(ReleasedMethod):
    """Bag-of-Queries on ResNet-50 (16384-D) or DINOv2 ViT-B/14 (12288-D)."""

    description = "BoQ (ResNet-50 16384-D at 384 px, DINOv2 ViT-B/14 12288-D at 322 px)"
    config_cls = BoQOptions

    def backbone_name(self) -> str:
        if self.config.backbone != "auto":
            return self.config.backbone
        return detect_backbone(self.state_dict(), self.weights)

    def make_model(self, state):
        return build_boq(state, self.backbone_name(), self.weights)

    def unused_keys(self, state):
        return DINO_UNUSED if self.backbone_name() == "dinov2" else ()

    def image_size(self) -> tuple[int, int]:
        default = IMAGE_SIZES[self.backbone_name()]
        height = self.config.image_height or default
        width = self.config.image_width or default
        if self.backbone_name() == "dinov2" and (height % PATCH or width % PATCH):
            raise HarnessError(
                f"BoQ-DINOv2 needs an input size in multiples of {PATCH}, got {height}x{width}"
            )
        return height, width

    def transform(self):
        height, width = self.image_size()
        return TensorResize(height, width, interpolation="bicubic", antialias=True)

    @property
    def descriptor_dim(self) -> int:
        shape = boq_shape(self.state_dict(), self.backbone_name())
        return shape["proj_channels"] * shape["row_dim"]
