"""DINOv2 vision transformer (ViT-S/B/L with patch 14), written once for SALAD, MegaLoc and BoQ.

The module and parameter names equal facebookresearch/dinov2's ``DinoVisionTransformer`` (as
``torch.hub.load("facebookresearch/dinov2", "dinov2_vitb14")`` builds it), so a released state
dict loads key for key: ``patch_embed.proj``, ``cls_token``, ``pos_embed`` (518 px: 37 x 37 + 1
positions), ``mask_token`` (hub models only; MegaLoc's own copy of the network has none),
``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``,
``norm``. Blocks are pre-norm with LayerScale, LayerNorm eps 1e-6, exact GELU, biases
everywhere, head dimension 64 (dinov2 ``vit_small/base/large``: 6/12/16 heads).

Own code rather than ``timm``: timm would be a new dependency, its ViT has no ``mask_token``
(its DINOv2 loader drops it), and its ``resample_abs_pos_embed`` resamples to an output size
with ``antialias=True`` instead of dinov2's scale factor with the 0.1 offset and no
antialiasing, so positions at 322 px would differ from the reference. The network is about 150
lines, and its key names map 1:1.

Positional embeddings for other input sizes follow dinov2's ``interpolate_pos_encoding``
(also MegaLoc's since its commit 4a23a2b, which fixed the order of H and W): the 37 x 37 grid
is resampled bicubically, without antialiasing, with ``scale_factor=((rows + 0.1) / 37,
(cols + 0.1) / 37)`` (the "0.1 offset" kludge of DINO issue 8: the result size is
``floor(37 * scale) = rows``, and the sampling positions follow the scale factor, not
``37 / rows``). The grid is returned unchanged when the input is square with 37 x 37 patches.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError

HEAD_DIM = 64
LAYER_NORM_EPS = 1e-6
INTERPOLATE_OFFSET = 0.1
# Released DINOv2 sizes (patch 14): width -> (depth, heads). A file of one of these widths must
# have that depth; other widths (test-size networks) take their depth from the file.
DINOV2_SIZES = {384: (12, 6), 768: (12, 12), 1024: (24, 16)}


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a DINOv2 ViT; the default is ViT-B/14 at 518 px."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    patch_size: int = 14
    grid_size: int = 37
    mask_token: bool = True

    @property
    def num_positions(self) -> int:
        return self.grid_size * self.grid_size + 1


VIT_B14 = ViTConfig()


def vit_config_from_state(
    state: Mapping[str, torch.Tensor], prefix: str, *, mask_token: bool, path=None
) -> ViTConfig:
    """The ViT shape that the tensors under ``prefix`` describe (ViT-B/14 where they are absent).

    Keys that are missing or of the wrong shape are left to strict loading to report.
    """
    default = ViTConfig(mask_token=mask_token)

    def shape(name: str):
        tensor = state.get(prefix + name)
        return None if tensor is None else tuple(tensor.shape)

    cls_shape = shape("cls_token")
    proj_shape = shape("patch_embed.proj.weight")
    pos_shape = shape("pos_embed")
    fc1_shape = shape("blocks.0.mlp.fc1.weight")
    if cls_shape is None or len(cls_shape) != 3:
        return default
    embed_dim = int(cls_shape[-1])
    block_pattern = re.compile(re.escape(prefix) + r"blocks\.(\d+)\.")
    indices = {int(m.group(1)) for key in state if (m := block_pattern.match(key))}
    depth = max(indices) + 1 if indices else default.depth
    if embed_dim % HEAD_DIM:
        raise HarnessError(
            f"{prefix}cls_token has width {embed_dim}, not a multiple of DINOv2's head "
            f"dimension {HEAD_DIM}",
            path,
        )
    if embed_dim in DINOV2_SIZES and DINOV2_SIZES[embed_dim][0] != depth:
        raise HarnessError(
            f"a DINOv2 ViT of width {embed_dim} has {DINOV2_SIZES[embed_dim][0]} blocks, "
            f"the file has {prefix}blocks.0-{depth - 1}",
            path,
        )
    grid = default.grid_size
    if pos_shape is not None and len(pos_shape) == 3:
        side = math.isqrt(max(int(pos_shape[1]) - 1, 0))
        if side * side + 1 == pos_shape[1]:
            grid = side
    return ViTConfig(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // HEAD_DIM,
        mlp_dim=int(fc1_shape[0]) if fc1_shape else 4 * embed_dim,
        patch_size=int(proj_shape[-1]) if proj_shape and len(proj_shape) == 4 else 14,
        grid_size=grid,
        mask_token=mask_token,
    )


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens (``proj`` is a stride-``patch`` convolution)."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class LayerScale(nn.Module):
    """Per-channel learned scale (``gamma``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, config.num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, config.mlp_dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def interpolate_grid(
    grid: torch.Tensor, rows: int, cols: int, offset: float = INTERPOLATE_OFFSET
) -> torch.Tensor:
    """Resample a ``(1, M*M, C)`` positional grid to ``(1, rows*cols, C)`` as dinov2 does."""
    side = math.isqrt(grid.shape[1])
    assert side * side == grid.shape[1], f"positional grid of {grid.shape[1]} is not square"
    dim = grid.shape[-1]
    resampled = F.interpolate(
        grid.reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=((rows + offset) / side, (cols + offset) / side),
        mode="bicubic",
        antialias=False,
    )
    assert tuple(resampled.shape[-2:]) == (rows, cols), f"{tuple(resampled.shape)} vs {rows, cols}"
    return resampled.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)


class DinoVisionTransformer(nn.Module):
    """DINOv2's ViT; :meth:`forward_tokens` gives ``(B, 1 + rows*cols, C)`` after the blocks."""

    def __init__(self, config: ViTConfig = VIT_B14, *, final_norm: bool = True):
        super().__init__()
        self.config = config
        self.patch_size = config.patch_size
        self.embed_dim = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, config.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_positions, config.embed_dim))
        if config.mask_token:
            # Used by DINOv2's masked training only; present in hub models' state dicts.
            self.mask_token = nn.Parameter(torch.zeros(1, config.embed_dim))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.embed_dim, eps=LAYER_NORM_EPS) if final_norm else None

    def positional_embedding(self, height: int, width: int, dtype=None) -> torch.Tensor:
        """Positions for an ``height x width`` input (pixels).

        As dinov2: the stored grid as it is at the native size, else resampled in float32 and
        cast to ``dtype`` (the tokens' dtype, e.g. under autocast).
        """
        rows, cols = height // self.patch_size, width // self.patch_size
        grid_patches = self.pos_embed.shape[1] - 1
        if rows * cols == grid_patches and height == width:
            return self.pos_embed
        pos = self.pos_embed.float()
        patches = interpolate_grid(pos[:, 1:], rows, cols)
        return torch.cat((pos[:, :1], patches), dim=1).to(dtype or self.pos_embed.dtype)

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"input {height}x{width} is not a multiple of the patch size {self.patch_size}"
            )
        x = self.patch_embed(images)
        x = torch.cat((self.cls_token.expand(batch, -1, -1), x), dim=1)
        x = x + self.positional_embedding(height, width, x.dtype)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(patch map (B, C, H/14, W/14), CLS (B, C))``, after the final norm when it exists."""
        batch, _, height, width = images.shape
        x = self.forward_tokens(images)
        if self.norm is not None:
            x = self.norm(x)
        rows, cols = height // self.patch_size, width // self.patch_size
        patches = x[:, 1:].reshape(batch, rows, cols, self.embed_dim).permute(0, 3, 1, 2)
        return patches, x[:, 0]
