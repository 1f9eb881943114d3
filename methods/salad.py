"""SALAD (Izquierdo & Civera, CVPR 2024): optimal-transport aggregation, and the ``salad`` method.

Model, with the module names of serizba/salad's ``VPRModel`` (keys ``backbone.model.*`` for the
``torch.hub`` DINOv2 ViT-B/14, ``aggregator.*``):

* DINOv2 ViT-B/14 with its final norm; the CLS token and the 768-D patch tokens;
* ``token_features`` (Linear 768->512, ReLU, Linear 512->256) on the CLS token;
* ``cluster_features`` (1x1 conv 768->512, dropout, ReLU, 1x1 conv 512->128) and ``score``
  (the same shape, 512->64) on the patch map; dropout is inactive at test time;
* the 64 x n score matrix plus a row of the learned ``dust_bin`` score goes through 3 log-domain
  Sinkhorn iterations towards uniform marginals (the dust bin's row takes mass ``n - m``);
  ``exp`` of the result, dust-bin row dropped, weights the cluster features;
* ``[L2(token), L2-per-cluster(128 x 64), flattened channel-major]``, then L2: 8448-D.

Weights: ``dino_salad.ckpt`` from serizba/salad's release v1.0.0 -- a plain state dict
(``hubconf.py`` passes it to ``load_state_dict`` as it is); a Lightning checkpoint of the same
model (``{'state_dict': ...}``) loads too.

Test-time preprocessing, from serizba/salad ``eval.py`` (``input_transform``):
``T.Resize((322, 322), interpolation=BILINEAR)`` on the PIL image (PIL resampling, which
antialiases), ``ToTensor``, ``Normalize(ImageNet mean, std)``. The authors evaluate under fp16
autocast on GPU; here the network runs in the precision chosen with ``--precision`` (fp32 by
default, :mod:`methods.precision`) and the Sinkhorn step in float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from methods.dinov2 import DinoVisionTransformer, vit_config_from_state
from methods.released import ReleasedMethod
from methods.transforms import ResizeUint8

SINKHORN_ITERATIONS = 3
SALAD_IMAGE_SIZE = 322
PATCH = 14


def log_sinkhorn(scores: torch.Tensor, dust_bin, iterations: int = SINKHORN_ITERATIONS):
    """Log transport plan ``(B, m + 1, n)`` for scores ``(B, m, n)`` plus a dust-bin row.

    Marginals (in log space, before the final shift): every row and column ``-log(m + n)``,
    the dust-bin row ``log(n - m) - log(m + n)``. ``u`` and ``v`` start at zero; each
    iteration sets ``u = log_a - logsumexp_j(S + v)`` then ``v = log_b - logsumexp_i(S + u)``.
    The result ``S + u + v + log(m + n)`` is what SALAD exponentiates.
    """
    batch, m, n = scores.shape
    augmented = torch.cat(
        (
            scores,
            torch.as_tensor(dust_bin, dtype=scores.dtype, device=scores.device).expand(batch, 1, n),
        ),
        dim=1,
    )
    log_norm = -math.log(m + n)
    log_a = torch.full((batch, m + 1), log_norm, dtype=scores.dtype, device=scores.device)
    log_a[:, -1] += math.log(n - m)
    log_b = torch.full((batch, n), log_norm, dtype=scores.dtype, device=scores.device)
    u = torch.zeros_like(log_a)
    v = torch.zeros_like(log_b)
    for _ in range(iterations):
        u = log_a - torch.logsumexp(augmented + v.unsqueeze(1), dim=2)
        v = log_b - torch.logsumexp(augmented + u.unsqueeze(2), dim=1)
    return augmented + u.unsqueeze(2) + v.unsqueeze(1) - log_norm


def _mlp_conv(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    # Index 1 is the training-time dropout: keeping the slot keeps the keys at .0 and .3.
    return nn.Sequential(
        nn.Conv2d(in_dim, hidden, 1), nn.Identity(), nn.ReLU(), nn.Conv2d(hidden, out_dim, 1)
    )


class SaladAggregator(nn.Module):
    """SALAD's aggregation head: ``(patch map (B, C, h, w), CLS (B, C))`` -> L2 descriptor."""

    def __init__(
        self,
        num_channels: int = 768,
        num_clusters: int = 64,
        cluster_dim: int = 128,
        token_dim: int = 256,
        mlp_dim: int = 512,
    ):
        super().__init__()
        self.num_clusters = num_clusters
        self.cluster_dim = cluster_dim
        self.token_dim = token_dim
        self.token_features = nn.Sequential(
            nn.Linear(num_channels, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, token_dim)
        )
        self.cluster_features = _mlp_conv(num_channels, mlp_dim, cluster_dim)
        self.score = _mlp_conv(num_channels, mlp_dim, num_clusters)
        self.dust_bin = nn.Parameter(torch.tensor(1.0))

    @property
    def output_dim(self) -> int:
        return self.num_clusters * self.cluster_dim + self.token_dim

    def forward(self, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        patch_map, cls_token = features
        patches = patch_map.shape[-2] * patch_map.shape[-1]
        if patches <= self.num_clusters:
            raise HarnessError(
                f"SALAD needs more patches than its {self.num_clusters} clusters; the input "
                f"gives {patch_map.shape[-2]}x{patch_map.shape[-1]} = {patches} (use larger "
                "images)"
            )
        local = self.cluster_features(patch_map).flatten(2)  # (B, l, n)
        scores = self.score(patch_map).flatten(2)  # (B, m, n)
        token = self.token_features(cls_token)
        with torch.autocast(device_type=patch_map.device.type, enabled=False):
            plan = log_sinkhorn(scores.float(), self.dust_bin.float()).exp()[:, :-1, :]
            # sum_n f[b, l, n] * p[b, m, n]: SALAD's repeat-multiply-sum as one product.
            clusters = torch.einsum("bln,bmn->blm", local.float(), plan)
            clusters = F.normalize(clusters, p=2, dim=1).flatten(1)
            out = torch.cat((F.normalize(token.float(), p=2, dim=-1), clusters), dim=-1)
            return F.normalize(out, p=2, dim=-1)


def salad_shape(state: Mapping[str, Any], prefix: str, *, cluster_dim: int = 128) -> dict:
    """Aggregator sizes from the tensors under ``prefix`` (the released ones where absent)."""

    def rows(name: str, default: int) -> int:
        tensor = state.get(prefix + name)
        return int(tensor.shape[0]) if tensor is not None and tensor.ndim >= 1 else default

    return {
        "num_clusters": rows("score.3.weight", 64),
        "cluster_dim": rows("cluster_features.3.weight", cluster_dim),
        "token_dim": rows("token_features.2.weight", 256),
        "mlp_dim": rows("token_features.0.weight", 512),
    }


class SaladBackbone(nn.Module):
    """serizba/salad's DINOv2 wrapper: the hub ViT sits at ``model``."""

    def __init__(self, vit: DinoVisionTransformer):
        super().__init__()
        self.model = vit

    def forward(self, images):
        return self.model(images)


class SaladModel(nn.Module):
    """``backbone.model`` (DINOv2 with final norm) + ``aggregator`` (SALAD)."""

    def __init__(self, vit: DinoVisionTransformer, aggregator: SaladAggregator):
        super().__init__()
        self.backbone = SaladBackbone(vit)
        self.aggregator = aggregator

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.aggregator(self.backbone(images))


def build_salad(state: Mapping[str, Any], path=None) -> SaladModel:
    """A SALAD model shaped after ``state`` (ViT-B/14 and 64 x 128 + 256 for the release)."""
    config = vit_config_from_state(state, "backbone.model.", mask_token=True, path=path)
    vit = DinoVisionTransformer(config, final_norm=True)
    aggregator = SaladAggregator(num_channels=config.embed_dim, **salad_shape(state, "aggregator."))
    return SaladModel(vit, aggregator)


def check_patch_multiple(height: int | None, width: int | None) -> None:
    for key, value in (("image_height", height), ("image_width", width)):
        if value is not None and (value < PATCH or value % PATCH):
            raise ValueError(f"{key} must be a positive multiple of {PATCH}, got {value}")


@dataclass(frozen=True)
class SaladOptions:
    """Input size (default 322 x 322 as the authors evaluate; multiples of 14)."""

    image_height: int = SALAD_IMAGE_SIZE
    image_width: int = SALAD_IMAGE_SIZE

    def __post_init__(self):
        check_patch_multiple(self.image_height, self.image_width)


class SaladMethod(ReleasedMethod):
    """SALAD, DINOv2 ViT-B/14, 8448-D, from serizba/salad's ``dino_salad.ckpt``."""

    description = "SALAD (DINOv2 ViT-B/14 + optimal transport), 8448-D, dino_salad.ckpt"
    config_cls = SaladOptions

    def make_model(self, state):
        return build_salad(state, self.weights)

    def transform(self):
        return ResizeUint8(self.config.image_height, self.config.image_width)

    @property
    def descriptor_dim(self) -> int:
        shape = salad_shape(self.state_dict(), "aggregator.")
        return shape["num_clusters"] * shape["cluster_dim"] + shape["token_dim"]
