"""SFRS (Ge et al., ECCV 2020): region similarities on top of NetVLAD, and the ``sfrs`` method.

At inference an SFRS model *is* a NetVLAD model (OpenIBL releases it as ``vgg16_netvlad.pth``
with its PCA layer), so the ``sfrs`` method only differs in name. Training needs the region
descriptors defined here: the feature map is cut into 2x2 quarters, each aggregated by the
NetVLAD layer; halves (top, bottom, left, right) and the whole image are sums of quarter
VLADs (VLAD is a sum over locations), giving 9 regions, each intra- and L2-normalised.
"""

from __future__ import annotations

import torch

from methods.netvlad import NetVLADMethod, normalize_vlad

NUM_REGIONS = 9  # global, 4 halves, 4 quarters


class SFRSMethod(NetVLADMethod):
    """An SFRS-trained VGG16-NetVLAD (same model and options as ``netvlad``)."""

    description = "SFRS-trained VGG16-NetVLAD (OpenIBL layout; optional PCA-whitening)"


def region_vlads(net_vlad, features: torch.Tensor) -> torch.Tensor:
    """``features`` ``(N, C, H, W)`` -> normalised region descriptors ``(N, 9, K*C)``.

    Region order as OpenIBL: 0 global; 1 top, 2 bottom, 3 left, 4 right halves;
    5 top-left, 6 top-right, 7 bottom-left, 8 bottom-right quarters. ``H`` and ``W`` must
    be even.
    """
    n, c, h, w = features.shape
    if h % 2 or w % 2:
        raise ValueError(
            f"SFRS regions need an even feature map, got {h}x{w}: choose an image size whose "
            "feature map (image size / 16 for VGG16) is even in both directions"
        )
    quarters = features.view(n, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5)
    quarters = quarters.reshape(n * 4, c, h // 2, w // 2)
    vlad_q = net_vlad(quarters)  # (N*4, K, C) unnormalised
    k = vlad_q.shape[1]
    vlad_q = vlad_q.view(n, 4, k, c)
    halves = torch.stack(
        (
            vlad_q[:, 0] + vlad_q[:, 1],
            vlad_q[:, 2] + vlad_q[:, 3],
            vlad_q[:, 0] + vlad_q[:, 2],
            vlad_q[:, 1] + vlad_q[:, 3],
        ),
        dim=1,
    )
    whole = vlad_q.sum(dim=1, keepdim=True)
    return normalize_vlad(torch.cat((whole, halves, vlad_q), dim=1))


def region_similarities(anchor_regions: torch.Tensor, pair_regions: torch.Tensor) -> torch.Tensor:
    """Region-by-region dot products: ``(B, 9, L)`` x ``(B, P, 9, L)`` -> ``(B, P, 9, 9)``.

    Entry ``[b, p, i, j]`` compares region ``i`` of anchor ``b`` with region ``j`` of pair ``p``.
    """
    return torch.einsum("bil,bpjl->bpij", anchor_regions, pair_regions)
