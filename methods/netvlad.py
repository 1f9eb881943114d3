"""NetVLAD on a VGG16 backbone, as in OpenIBL, and the ``netvlad`` method.

Model (module names equal OpenIBL's, so state-dict keys match its checkpoints exactly):

* ``base_model.base``: VGG16 ``features[:-2]``, i.e. cut at conv5_3 before its ReLU
  (512 channels, stride 16);
* ``net_vlad``: 64 clusters; soft-assignment 1x1 conv (``net_vlad.conv.weight``, no bias) and
  centroids (``net_vlad.centroids``); input L2-normalised per location;
* intra-normalisation, flatten, L2 -> 32768-D;
* optional ``pca_layer``: 1x1 conv 32768 -> 4096 (PCA-whitening), then L2.

The residual aggregation ``sum_p a_kp (x_p - c_k)`` is computed as ``A X^T - c_k sum_p a_kp``
(two matrix products) instead of OpenIBL's broadcast over a ``(N, K, C, H*W)`` tensor: the
same sum, 40x less memory. Aggregation runs in float32 even under autocast.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from harness.registry import Registry
from methods.base import ImageLoader, Method, PartContext
from methods.transforms import (
    DEFAULT_HEIGHT,
    DEFAULT_WIDTH,
    TOKYO_SHORT_SIDE,
    ResizeUint8,
    ShortSideUint8,
)

logger = logging.getLogger(__name__)

DEFAULT_CLUSTERS = 64


# ---------------------------------------------------------------------------------- layers
class NetVLAD(nn.Module):
    """The NetVLAD pooling layer; ``forward`` returns unnormalised VLAD ``(N, K, C)``."""

    def __init__(
        self,
        num_clusters: int = DEFAULT_CLUSTERS,
        dim: int = 512,
        alpha: float = 100.0,
        normalize_input: bool = True,
    ):
        super().__init__()
        self.num_clusters = num_clusters
        self.dim = dim
        self.alpha = alpha
        self.normalize_input = normalize_input
        self.conv = nn.Conv2d(dim, num_clusters, kernel_size=(1, 1), bias=False)
        self.centroids = nn.Parameter(torch.rand(num_clusters, dim))

    @torch.no_grad()
    def init_from_clusters(self, centroids: np.ndarray, descriptors: np.ndarray) -> float:
        """Initialise from k-means ``centroids`` (K, C) of L2-normalised ``descriptors`` (n, C).

        As the lineage: ``alpha = -log(0.01) / mean(top1 - top2 dot product)``, the
        assignment conv is ``alpha`` times the normalised centroids. Returns ``alpha``.
        """
        centroids = np.asarray(centroids, dtype=np.float32)
        descriptors = np.asarray(descriptors, dtype=np.float32)
        assert centroids.shape == (self.num_clusters, self.dim), f"centroids {centroids.shape}"
        assert (
            descriptors.ndim == 2 and descriptors.shape[1] == self.dim
        ), f"descriptors {descriptors.shape}"
        assign = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        dots = np.sort(assign @ descriptors.T, axis=0)[::-1]
        self.alpha = float(-np.log(0.01) / np.mean(dots[0] - dots[1]))
        self.centroids.copy_(torch.from_numpy(centroids))
        self.conv.weight.copy_(torch.from_numpy(self.alpha * assign)[:, :, None, None])
        return self.alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        assert c == self.dim, f"expected {self.dim} channels, got {c}"
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            if self.normalize_input:
                x = F.normalize(x, p=2, dim=1)
            soft_assign = F.softmax(self.conv(x).view(n, self.num_clusters, -1), dim=1)  # (N, K, P)
            x_flat = x.view(n, c, -1)  # (N, C, P)
            vlad = torch.bmm(soft_assign, x_flat.transpose(1, 2))  # (N, K, C)
            vlad = vlad - self.centroids.float().unsqueeze(0) * soft_assign.sum(dim=2).unsqueeze(2)
        return vlad


def normalize_vlad(vlad: torch.Tensor) -> torch.Tensor:
    """Intra-normalisation, flatten, L2: ``(..., K, C)`` -> ``(..., K*C)``."""
    vlad = F.normalize(vlad, p=2, dim=-1)
    vlad = vlad.flatten(start_dim=-2)
    return F.normalize(vlad, p=2, dim=-1)


# ------------------------------------------------------------------------------- backbones
@dataclass(frozen=True)
class BackboneSpec:
    """A backbone: ``build()`` returns an ``nn.Sequential`` of layers (OpenIBL's ``base``)."""

    name: str
    feature_dim: int
    build: object
    # Index of the first trainable layer for each ``train_layers`` choice (OpenIBL's __fix_layers).
    trainable_from: dict
    description: str = ""


BACKBONES: Registry = Registry("backbone")


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    return BACKBONES.register(spec.name, spec)


def get_backbone(name: str) -> BackboneSpec:
    return BACKBONES.get(name)


def list_backbones() -> list[str]:
    return BACKBONES.names()


VGG16_LAYERS = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


def _vgg16_layers() -> nn.Sequential:
    # torchvision's vgg16().features (configuration "D": same layers, indices and init) minus
    # its last ReLU and max-pool; built here so that no torchvision import (~10 s) is needed.
    layers: list[nn.Module] = []
    channels = 3
    for width in VGG16_LAYERS:
        if width == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv = nn.Conv2d(channels, width, kernel_size=3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(conv.bias, 0)
            layers += [conv, nn.ReLU(inplace=True)]
            channels = width
    return nn.Sequential(*layers[:-2])


PIXEL_STD = 64.0  # typical standard deviation of natural images on the 0-255 scale


def _small_layers() -> nn.Sequential:
    # A VGG-shaped net for CPU-scale work: five stages, stride 16 like conv5 of VGG16, the
    # last conv without ReLU (as conv5_3 in the lineage), 128 channels.
    # Trained from scratch (no pretrained weights exist offline) on the lineage's 0-255
    # inputs: the first conv's init is scaled by 1/PIXEL_STD so that activations start at unit
    # scale; otherwise gradients are ~60x too large for SGD at the lineage's learning rate.
    widths = (16, 32, 64, 96, 128)
    layers: list[nn.Module] = []
    channels = 3
    for stage, width in enumerate(widths):
        conv = nn.Conv2d(channels, width, 3, padding=1)
        nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
        nn.init.constant_(conv.bias, 0)
        if stage == 0:
            with torch.no_grad():
                conv.weight.mul_(1.0 / PIXEL_STD)
        layers.append(conv)
        if stage < len(widths) - 1:
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2, 2)]
        channels = width
    return nn.Sequential(*layers)


register_backbone(
    BackboneSpec(
        name="vgg16",
        feature_dim=512,
        build=_vgg16_layers,
        trainable_from={"none": 29, "conv5": 24, "conv4": 17, "conv3": 10, "conv2": 5, "full": 0},
        description="VGG16 features[:-2] (conv5_3 before ReLU), 512-D, the lineage's backbone",
    )
)
register_backbone(
    BackboneSpec(
        name="small",
        feature_dim=128,
        build=_small_layers,
        # stage k starts at layer 3*(k-1): conv, relu, pool per stage.
        trainable_from={"none": 13, "conv5": 12, "conv4": 9, "conv3": 6, "conv2": 3, "full": 0},
        description="5-stage VGG-shaped CNN (16-128 channels), 128-D, for CPU-scale runs and tests",
    )
)


class Backbone(nn.Module):
    """OpenIBL's ``VGG`` wrapper: ``self.base`` holds the layers (keys ``base.N.*``)."""

    def __init__(self, spec: BackboneSpec):
        super().__init__()
        self.spec = spec
        self.feature_dim = spec.feature_dim
        self.base = spec.build()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x)

    def freeze(self, train_layers: str) -> None:
        """Freeze the layers before ``train_layers`` (``conv5``: only conv5_x train)."""
        try:
            first = self.spec.trainable_from[train_layers]
        except KeyError:
            raise HarnessError(
                f"train_layers {train_layers!r} unknown for backbone {self.spec.name}; "
                f"valid: {', '.join(self.spec.trainable_from)}"
            ) from None
        for index, layer in enumerate(self.base):
            for parameter in layer.parameters():
                parameter.requires_grad = index >= first


def load_backbone_weights(backbone: Backbone, path: str | os.PathLike) -> None:
    """Load pretrained backbone weights from a user file (nothing is downloaded).

    Accepted key layouts: torchvision's ``vgg16-*.pth`` (``features.N.*``; ``classifier.*``
    ignored), OpenIBL's MatConvNet conversion ``vd16_offtheshelf_conv5_3_max.pth`` (``N.*``),
    ``base.N.*``, or a full NetVLAD checkpoint (``base_model.base.N.*``).
    """
    from methods.checkpoints import load_state_dict_strict, read_checkpoint

    checkpoint = read_checkpoint(path)
    state = dict(checkpoint.state_dict)
    expected = set(backbone.base.state_dict())
    for prefix in ("base_model.base.", "base.", "features.", ""):
        candidate = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if expected <= set(candidate):
            # torchvision's features hold layers past the cut (none with weights for VGG16),
            # OpenIBL's checkpoints hold net_vlad: keep only what the backbone has.
            candidate = {k: v for k, v in candidate.items() if k in expected}
            load_state_dict_strict(backbone.base, candidate, path, what="backbone weights")
            logger.info("loaded backbone weights (%d tensors) from %s", len(candidate), path)
            return
    load_state_dict_strict(backbone.base, state, path, what="backbone weights")


# ----------------------------------------------------------------------------------- model
class NetVLADModel(nn.Module):
    """OpenIBL's ``EmbedNet`` / ``EmbedNetPCA``: images -> L2-normalised global descriptors."""

    def __init__(self, backbone: Backbone, net_vlad: NetVLAD, pca_dim: int | None = None):
        super().__init__()
        self.base_model = backbone
        self.net_vlad = net_vlad
        self.vlad_dim = net_vlad.num_clusters * net_vlad.dim
        if pca_dim is not None:
            self.pca_layer = nn.Conv2d(self.vlad_dim, pca_dim, 1, stride=1, padding=0)
        else:
            self.pca_layer = None

    @property
    def descriptor_dim(self) -> int:
        return self.vlad_dim if self.pca_layer is None else self.pca_layer.out_channels

    def local_features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone feature map ``(N, C, H/16, W/16)``."""
        return self.base_model(images)

    def vlad(self, images: torch.Tensor) -> torch.Tensor:
        """The 32768-D (K*C) normalised NetVLAD descriptor, before PCA."""
        return normalize_vlad(self.net_vlad(self.local_features(images)))

    def project(self, vlad: torch.Tensor) -> torch.Tensor:
        """PCA-whitening as the lineage's 1x1 conv, then L2 (identity without a PCA layer)."""
        if self.pca_layer is None:
            return vlad
        with torch.autocast(device_type=vlad.device.type, enabled=False):
            n = vlad.shape[0]
            reduced = self.pca_layer(vlad.float().view(n, -1, 1, 1)).view(n, -1)
            return F.normalize(reduced, p=2, dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.vlad(images))

    def set_pca(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Install PCA-whitening parameters (from :func:`methods.pca.pca_conv_parameters`)."""
        out_dim, in_dim = weight.shape[:2]
        if in_dim != self.vlad_dim:
            raise HarnessError(
                f"PCA input dimension {in_dim} does not match the {self.vlad_dim}-D NetVLAD "
                "descriptor"
            )
        device = self.net_vlad.centroids.device
        self.pca_layer = nn.Conv2d(in_dim, out_dim, 1).to(device)
        with torch.no_grad():
            self.pca_layer.weight.copy_(weight.reshape(out_dim, in_dim, 1, 1))
            self.pca_layer.bias.copy_(bias)


@dataclass(frozen=True)
class ModelConfig:
    """What determines the model's shape and input (saved in harness checkpoints)."""

    backbone: str = "vgg16"
    num_clusters: int = DEFAULT_CLUSTERS
    image_height: int = DEFAULT_HEIGHT
    image_width: int = DEFAULT_WIDTH
    pca_dim: int | None = None

    def to_dict(self) -> dict:
        return {
            "backbone": self.backbone,
            "num_clusters": self.num_clusters,
            "image_height": self.image_height,
            "image_width": self.image_width,
            "pca_dim": self.pca_dim,
        }

    @classmethod
    def from_dict(cls, values) -> "ModelConfig":
        from methods.options import config_from_mapping

        return config_from_mapping(cls, dict(values), what="model_config")


def build_model(config: ModelConfig, *, seed: int | None = None) -> NetVLADModel:
    """A NetVLAD model with random weights (seeded when ``seed`` is given)."""
    spec = get_backbone(config.backbone)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = Backbone(spec)
            net_vlad = NetVLAD(config.num_clusters, spec.feature_dim)
    else:
        backbone = Backbone(spec)
        net_vlad = NetVLAD(config.num_clusters, spec.feature_dim)
    return NetVLADModel(backbone, net_vlad, pca_dim=config.pca_dim)


def resolve_model_config(checkpoint, overrides: dict | None = None) -> ModelConfig:
    """The model shape a checkpoint describes, with user ``overrides`` (None = keep).

    Harness checkpoints record their ``model_config``; OpenIBL files imply VGG16 at 480x640,
    the cluster count comes from ``net_vlad.centroids`` and the PCA size from
    ``pca_layer.weight``. An override that contradicts the tensors fails at loading, with the
    mismatching keys listed.
    """
    values = dict(ModelConfig().to_dict())
    values.update(checkpoint.model_config or {})
    try:
        ModelConfig.from_dict(values)
    except HarnessError as exc:
        # The checkpoint's own record is wrong, not the user's options: name the file.
        raise HarnessError(" ".join(str(exc.message).split()), checkpoint.path) from None
    state = checkpoint.state_dict
    if "net_vlad.centroids" in state:
        values["num_clusters"] = int(state["net_vlad.centroids"].shape[0])
    values["pca_dim"] = (
        int(state["pca_layer.weight"].shape[0]) if "pca_layer.weight" in state else None
    )
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    return ModelConfig.from_dict(values)


def model_from_checkpoint(checkpoint, config: ModelConfig | None = None) -> NetVLADModel:
    """Build the model of ``config`` (default: what the checkpoint describes), load strictly."""
    from methods.checkpoints import load_state_dict_strict

    config = config or resolve_model_config(checkpoint)
    model = build_model(config)
    load_state_dict_strict(model, checkpoint.state_dict, checkpoint.path)
    return model


# ---------------------------------------------------------------------------------- method
@dataclass(frozen=True)
class NetVLADOptions:
    """Options of the ``netvlad`` and ``sfrs`` methods (``--option key=value``).

    Shape options left unset come from the checkpoint (harness checkpoints record them;
    OpenIBL files imply VGG16 with 64 clusters at 480x640).
    """

    backbone: str | None = None
    num_clusters: int | None = None
    image_height: int | None = None
    image_width: int | None = None
    pca: str | None = None
    pca_dim: int | None = None
    whiten: bool = True
    query_keep_aspect: Literal["auto", "true", "false"] = "auto"
    short_side: int = TOKYO_SHORT_SIDE

    def __post_init__(self):
        for key in ("num_clusters", "image_height", "image_width", "pca_dim", "short_side"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")


class NetVLADMethod(Method):
    """VGG16 + NetVLAD (+ PCA-whitening), weights from an OpenIBL or harness checkpoint."""

    description = "VGG16-NetVLAD (OpenIBL layout; optional PCA-whitening)"
    config_cls = NetVLADOptions

    def __init__(self, config: NetVLADOptions, weights=None):
        super().__init__(config, weights)
        if config.pca is not None and not Path(config.pca).is_file():
            raise HarnessError("PCA parameter file (option pca) not found", config.pca)
        self._checkpoint = None
        self._model_config: ModelConfig | None = None

    # The checkpoint is read lazily: fingerprints and listings need no tensors.
    def checkpoint(self):
        if self._checkpoint is None:
            from methods.checkpoints import read_checkpoint

            self._checkpoint = read_checkpoint(self.weights)
        return self._checkpoint

    def model_config(self) -> ModelConfig:
        if self._model_config is None:
            overrides = {
                k: getattr(self.config, k)
                for k in ("backbone", "num_clusters", "image_height", "image_width")
            }
            self._model_config = resolve_model_config(self.checkpoint(), overrides)
        return self._model_config

    def weight_files(self) -> dict[str, Path]:
        files = super().weight_files()
        if self.config.pca is not None:
            files["pca"] = Path(self.config.pca)
        return files

    def keep_aspect(self, context: PartContext) -> bool:
        if context.part != "query":
            return False
        if self.config.query_keep_aspect == "auto":
            return bool(context.split_name) and "tokyo" in context.split_name.lower()
        return self.config.query_keep_aspect == "true"

    def image_loader(self, context: PartContext) -> ImageLoader:
        config = self.model_config()
        if self.keep_aspect(context):
            return ImageLoader(ShortSideUint8(self.config.short_side))
        return ImageLoader(ResizeUint8(config.image_height, config.image_width))

    def build_model(self, device) -> NetVLADModel:
        model = model_from_checkpoint(self.checkpoint(), self.model_config())
        if self.config.pca is not None:
            if model.pca_layer is not None:
                raise HarnessError(
                    "the checkpoint already holds a PCA layer (pca_layer.*); "
                    "do not pass option pca",
                    self.weights,
                )
            from methods.pca import load_pca, pca_conv_parameters

            weight, bias = pca_conv_parameters(
                load_pca(self.config.pca), self.config.pca_dim, self.config.whiten
            )
            model.set_pca(weight, bias)
        elif (
            self.config.pca_dim is not None
            and model.pca_layer is not None
            and self.config.pca_dim != model.descriptor_dim
        ):
            raise HarnessError(
                f"option pca_dim={self.config.pca_dim} differs from the checkpoint's PCA layer "
                f"({model.descriptor_dim})",
                self.weights,
            )
        return model.to(device).eval()

    @property
    def descriptor_dim(self) -> int:
        config = self.model_config()
        if self.config.pca is not None:
            if self.config.pca_dim is not None:
                return self.config.pca_dim
            from methods.pca import load_pca

            return load_pca(self.config.pca).num_components
        if config.pca_dim is not None:
            return config.pca_dim
        return config.num_clusters * get_backbone(config.backbone).feature_dim
