"""MixVPR (Ali-bey et al., WACV 2023): feature mixing on a cut ResNet, and the ``mixvpr`` method.

Written from the description in amaralibey/MixVPR ``models/aggregators/mixvpr.py``,
``models/backbones/resnet.py`` and ``main.py`` (``VPRModel``):

* ``backbone.model``: torchvision ResNet-50 with ``layer4``, ``avgpool`` and ``fc`` removed
  (keys ``backbone.model.{conv1,bn1,layer1,layer2,layer3}.*``): 1024 x 20 x 20 at 320 x 320;
* ``aggregator``: the feature map flattened to ``(N, C, H*W)``; ``mix``: 4 FeatureMixer
  blocks, each ``x + Linear(ReLU(Linear(LayerNorm(x))))`` over the ``H*W`` = 400 axis (keys
  ``aggregator.mix.{i}.mix.{0,1,3}.*``); ``channel_proj`` Linear(1024 -> out_channels) over
  channels, ``row_proj`` Linear(400 -> out_rows) over positions; flatten, L2.

The released configurations (README; VPR-methods-evaluation's ``MODELS_INFO``) are 4096-D =
1024 channels x 4 rows, 512-D = 256 x 2 and 128-D = 64 x 2. Everything (mixer depth and width,
channels, rows, ResNet depth and cut) is read from the file's shapes.

Files: the released ``resnet50_MixVPR_{dim}_channels({c})_rows({r}).ckpt`` is, despite its
extension, a flat state dict (the README and VPR-methods-evaluation deserialize the whole file
and pass it to ``model.load_state_dict``). A Lightning checkpoint of one's own training
(``state_dict`` entry) is read too, if it holds nothing but tensors and plain containers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from methods.imagenet import PILResize
from methods.released import ReleasedMethod
from methods.torchvision_backbones import (
    count_blocks,
    infer_resnet_depth,
    resnet_channels,
    resnet_feature_size,
    run_resnet,
    stages_present,
    truncated_resnet,
)

IMAGE_SIZE = 320
_LAYER_PREFIXES = tuple(f"backbone.model.layer{i}." for i in range(1, 5))


class FeatureMixer(nn.Module):
    """One mixer block over the last axis: ``x + Linear(ReLU(Linear(LayerNorm(x))))``."""

    def __init__(self, size: int, hidden: int):
        super().__init__()
        self.mix = nn.Sequential(
            nn.LayerNorm(size), nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(x)


class MixVPRAggregator(nn.Module):
    """``(N, C, H, W)`` -> L2-normalised ``out_channels * out_rows`` descriptors."""

    def __init__(
        self, channels: int, positions: int, out_channels: int, out_rows: int, depth: int, hidden
    ):
        super().__init__()
        self.positions = positions
        self.mix = nn.Sequential(*[FeatureMixer(positions, hidden) for _ in range(depth)])
        self.channel_proj = nn.Linear(channels, out_channels)
        self.row_proj = nn.Linear(positions, out_rows)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.flatten(2)  # (N, C, HW)
        if x.shape[2] != self.positions:
            raise ValueError(
                f"MixVPR was trained on {self.positions} feature positions, got "
                f"{tuple(features.shape[2:])}: use the image size it was trained for"
            )
        x = self.mix(x)
        x = self.channel_proj(x.transpose(1, 2)).transpose(1, 2)  # (N, out_channels, HW)
        x = self.row_proj(x)  # (N, out_channels, out_rows)
        return F.normalize(x.flatten(1), p=2, dim=-1)


class ResNetBackbone(nn.Module):
    """MixVPR's backbone wrapper: the cut torchvision ResNet as ``self.model``."""

    def __init__(self, depth: int, last_layer: int):
        super().__init__()
        self.model = truncated_resnet(depth, last_layer)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return run_resnet(self.model, images)


@dataclass(frozen=True)
class MixVPRShape:
    """What the file's shapes say about the network."""

    resnet_depth: int
    last_layer: int
    positions: int
    hidden: int
    mix_depth: int
    out_channels: int
    out_rows: int

    @property
    def channels(self) -> int:
        return resnet_channels(self.resnet_depth, self.last_layer)

    @property
    def dim(self) -> int:
        return self.out_channels * self.out_rows


class MixVPRNet(nn.Module):
    """Images (ImageNet-normalised, the trained size) -> descriptors."""

    def __init__(self, shape: MixVPRShape):
        super().__init__()
        self.backbone = ResNetBackbone(shape.resnet_depth, shape.last_layer)
        self.aggregator = MixVPRAggregator(
            shape.channels,
            shape.positions,
            shape.out_channels,
            shape.out_rows,
            shape.mix_depth,
            shape.hidden,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        # The aggregator is a few small matrix products: float32 even under autocast.
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.aggregator(features.float())


def _dims(state, key: str, path) -> tuple[int, ...]:
    if key not in state:
        raise HarnessError(f"MixVPR weights lack key {key} (its shape sets the model)", path)
    return tuple(state[key].shape)


def infer_shape(state, path) -> MixVPRShape:
    """The network a MixVPR-layout state dict describes; missing shape keys are errors."""
    depth = infer_resnet_depth(state.keys(), _LAYER_PREFIXES)
    if depth is None:
        keys = ", ".join(sorted(state)[:5])
        raise HarnessError(
            "cannot tell the ResNet from the file (no backbone.model.layer{1..}.{block}.* keys "
            f"of a torchvision ResNet; its keys start {keys})",
            path,
        )
    out_channels, _ = _dims(state, "aggregator.channel_proj.weight", path)
    out_rows, positions = _dims(state, "aggregator.row_proj.weight", path)
    hidden = _dims(state, "aggregator.mix.0.mix.1.weight", path)[0]
    return MixVPRShape(
        resnet_depth=depth,
        last_layer=stages_present(state.keys(), _LAYER_PREFIXES),
        positions=positions,
        hidden=hidden,
        mix_depth=count_blocks(state.keys(), "aggregator.mix."),
        out_channels=out_channels,
        out_rows=out_rows,
    )


@dataclass(frozen=True)
class MixVPROptions:
    """Options of ``mixvpr``: the input size (the trained 320 x 320 by default), the filter."""

    image_height: int = IMAGE_SIZE
    image_width: int = IMAGE_SIZE
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"

    def __post_init__(self):
        for key in ("image_height", "image_width"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


class MixVPRMethod(ReleasedMethod):
    """MixVPR from the released ``.ckpt`` (4096, 512 or 128-D), images resized to 320 x 320.

    Preprocessing as the published numbers were measured (amaralibey/MixVPR ``main.py``:
    ``GSVCitiesDataModule(image_size=(320, 320))``, whose ``valid_transform`` in
    ``dataloaders/GSVCitiesDataloader.py`` is ``Resize((320, 320), BILINEAR)``, ``ToTensor()``,
    ``Normalize(ImageNet mean, std)`` on PIL images, so antialiased). The repository's
    ``demo.py`` uses BICUBIC instead: ``interpolation=bicubic``. The aspect ratio is not kept.
    """

    description = "MixVPR (ResNet-50 layer3 + 4 feature mixers; released .ckpt, 320x320)"
    config_cls = MixVPROptions

    def __init__(self, config: MixVPROptions, weights=None):
        super().__init__(config, weights)
        self._shape: MixVPRShape | None = None

    def shape(self) -> MixVPRShape:
        """The network the file's shapes describe, checked against the image size."""
        if self._shape is None:
            shape = infer_shape(self.state_dict(), self.weights)
            rows = resnet_feature_size(self.config.image_height, shape.last_layer)
            cols = resnet_feature_size(self.config.image_width, shape.last_layer)
            if rows * cols != shape.positions:
                raise HarnessError(
                    f"image size {self.config.image_height}x{self.config.image_width} gives "
                    f"{rows}x{cols} feature positions but the file's mixer expects "
                    f"{shape.positions} (MixVPR is tied to its training size, 320x320)",
                    self.weights,
                )
            self._shape = shape
        return self._shape

    def transform(self):
        config = self.config
        return PILResize(config.image_height, config.image_width, config.interpolation)

    def make_model(self, state) -> MixVPRNet:
        return MixVPRNet(self.shape())

    @property
    def descriptor_dim(self) -> int:
        return self.shape().dim
