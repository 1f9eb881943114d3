"""CosPlace (Berton et al., CVPR 2022) and EigenPlaces (Berton et al., ICCV 2023).

Both are the same network (EigenPlaces' ``GeoLocalizationNet_`` is CosPlace's
``GeoLocalizationNet``; only the training differs), written here from the authors' description
in gmberton/CosPlace ``cosplace_model/cosplace_network.py`` and ``layers.py``:

* ``backbone``: torchvision ResNet-18/50/101/152 ``children()[:-2]`` or VGG16
  ``features[:-2]``, an ``nn.Sequential`` (keys ``backbone.{i}.*``);
* ``aggregation``: ``Sequential(L2-norm over channels, GeM(p learned, eps 1e-6), flatten,
  Linear(C, dim), L2-norm)`` (keys ``aggregation.1.p``, ``aggregation.3.{weight,bias}``).

The backbone and the dimension are read from the file's shapes (ResNet depth from the block
counts, VGG16 from ``backbone.28.*``, the dimension from ``aggregation.3.weight``); the options
``backbone`` and ``dim`` are only needed where the keys cannot tell, and must agree otherwise.

Files: the released ``{backbone}_{dim}_cosplace.pth`` / ``{backbone}_{dim}_eigenplaces.pth``
(flat state dicts; hubconf.py loads them with ``load_state_dict``), a training run's
``best_model.pth`` (the same) or ``last_checkpoint.pth`` (``model_state_dict`` entry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from methods.imagenet import PILResize, PILShortSide
from methods.released import ReleasedMethod
from methods.torchvision_backbones import (
    VGG16_LAST_CONV,
    infer_resnet_depth,
    resnet_channels,
    resnet_children,
    vgg16_features,
)

BACKBONES = ("ResNet18", "ResNet50", "ResNet101", "ResNet152", "VGG16")
GEM_EPS = 1e-6
_RESNET_LAYER_PREFIXES = tuple(f"backbone.{4 + i}." for i in range(4))


def gem(x: torch.Tensor, p: torch.Tensor, eps: float = GEM_EPS) -> torch.Tensor:
    """Generalised mean over H and W: ``mean(clamp(x, eps) ** p) ** (1 / p)``, ``(N, C, 1, 1)``."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1), keepdim=True).pow(1.0 / p)


class GeM(nn.Module):
    """GeM pooling with a learned exponent ``p`` (initialised to 3)."""

    def __init__(self, p: float = 3.0, eps: float = GEM_EPS):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, self.p, self.eps)


class L2Normalize(nn.Module):
    """L2-normalisation along ``dim`` (channels by default)."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2.0, dim=self.dim)


class SqueezeSpatial(nn.Module):
    """``(N, C, 1, 1)`` -> ``(N, C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def backbone_channels(backbone: str) -> int:
    return 512 if backbone == "VGG16" else resnet_channels(int(backbone[len("ResNet") :]))


def build_backbone(backbone: str) -> nn.Sequential:
    if backbone == "VGG16":
        return vgg16_features()
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    return resnet_children(int(backbone[len("ResNet") :]), last_layer=4)


class CosPlaceNet(nn.Module):
    """Images (ImageNet-normalised) -> L2-normalised ``dim``-D descriptors."""

    def __init__(self, backbone: str, dim: int):
        super().__init__()
        self.backbone_name = backbone
        self.dim = dim
        self.backbone = build_backbone(backbone)
        self.aggregation = nn.Sequential(
            L2Normalize(),
            GeM(),
            SqueezeSpatial(),
            nn.Linear(backbone_channels(backbone), dim),
            L2Normalize(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        # GeM raises values in [0, 1] to p ~ 3 and averages them: kept in float32 under
        # autocast, where bfloat16's 8-bit mantissa would round the small powers.
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.aggregation(features.float())


def infer_backbone(state) -> str | None:
    """The backbone a CosPlace-layout state dict holds, or None when its keys cannot tell."""
    if f"backbone.{VGG16_LAST_CONV}.weight" in state:
        return "VGG16"
    depth = infer_resnet_depth(state.keys(), _RESNET_LAYER_PREFIXES)
    if depth is None or f"ResNet{depth}" not in BACKBONES:
        return None
    return f"ResNet{depth}"


def infer_dim(state) -> int | None:
    """The descriptor dimension (rows of the final Linear), or None without its keys."""
    for key in ("aggregation.3.weight", "aggregation.3.bias"):
        if key in state and state[key].ndim >= 1:
            return int(state[key].shape[0])
    return None


@dataclass(frozen=True)
class CosPlaceOptions:
    """Options of ``cosplace`` / ``eigenplaces`` (``--method-option key=value``).

    ``backbone`` and ``dim`` come from the file; give them only when its keys cannot tell.
    Images are used at full resolution unless ``short_side`` (CosPlace's ``--resize_test_imgs
    --image_size N``: short side N, aspect kept) or ``image_height`` and ``image_width`` are set.
    """

    backbone: Literal["ResNet18", "ResNet50", "ResNet101", "ResNet152", "VGG16"] | None = None
    dim: int | None = None
    short_side: int | None = None
    image_height: int | None = None
    image_width: int | None = None
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"

    def __post_init__(self):
        for key in ("dim", "short_side", "image_height", "image_width"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        if (self.image_height is None) != (self.image_width is None):
            raise ValueError("give image_height and image_width together")
        if self.short_side is not None and self.image_height is not None:
            raise ValueError("give short_side or image_height/image_width, not both")


class CosPlaceMethod(ReleasedMethod):
    """CosPlace: a torchvision CNN, GeM and a linear layer, from the released ``.pth`` file.

    Preprocessing as the authors test (gmberton/CosPlace ``datasets/test_dataset.py``): the
    image at full resolution, ``ToTensor()``, ``Normalize(ImageNet mean, std)``; the optional
    ``Resize(image_size, antialias=True)`` of ``--resize_test_imgs`` is option ``short_side``
    (off by default, as there). Full-resolution images differ in size, so batches hold one.
    """

    description = "CosPlace (ResNet/VGG16 + GeM + linear; released .pth, full resolution)"
    config_cls = CosPlaceOptions
    wrappers = ("model_state_dict", "state_dict")

    def __init__(self, config: CosPlaceOptions, weights=None):
        super().__init__(config, weights)
        self._shape: tuple[str, int] | None = None

    def shape(self) -> tuple[str, int]:
        """``(backbone, dim)`` from the file's keys, or from the options where they cannot tell."""
        if self._shape is None:
            self._shape = self._resolve_shape(self.state_dict())
        return self._shape

    def _resolve_shape(self, state) -> tuple[str, int]:
        resolved = []
        for key, found, hint in (
            ("backbone", infer_backbone(state), "backbone.{i}.* keys of a ResNet or VGG16"),
            ("dim", infer_dim(state), "aggregation.3.weight / aggregation.3.bias"),
        ):
            given = getattr(self.config, key)
            if given is not None and found is not None and given != found:
                raise HarnessError(
                    f"option {key}={given} contradicts the file, whose keys hold {key} {found}",
                    self.weights,
                )
            if given is None and found is None:
                keys = ", ".join(sorted(state)[:5])
                raise HarnessError(
                    f"cannot tell the {key} from the file (no {hint}; its keys start "
                    f"{keys}); pass --method-option {key}=...",
                    self.weights,
                )
            resolved.append(given if given is not None else found)
        return resolved[0], int(resolved[1])

    def transform(self):
        config = self.config
        if config.image_height is not None:
            return PILResize(config.image_height, config.image_width, config.interpolation)
        return PILShortSide(config.short_side, config.interpolation)

    def make_model(self, state) -> CosPlaceNet:
        return CosPlaceNet(*self.shape())

    @property
    def descriptor_dim(self) -> int:
        return self.shape()[1]


class EigenPlacesMethod(CosPlaceMethod):
    """EigenPlaces: CosPlace's network trained with EigenPlaces' losses; the same loader.

    Preprocessing as the authors test (gmberton/EigenPlaces ``datasets/test_dataset.py``):
    full resolution, ``ToTensor()``, ``Normalize(ImageNet mean, std)``, no resize.
    """

    description = "EigenPlaces (CosPlace's network; released .pth, full resolution)"
