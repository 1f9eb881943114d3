"""``randproj``: a seeded Gaussian random projection of a colour thumbnail.

The image is resized to ``thumbnail`` x ``thumbnail`` pixels (bilinear), each channel's mean
is subtracted (a little invariance to illumination), the ``3 * thumbnail**2`` values are
multiplied by a fixed Gaussian matrix drawn from ``seed`` and the result is L2-normalised.
It needs no weights and is a weak descriptor on purpose: the point is the plugin mechanism.

A method is a subclass of :class:`methods.base.Method` with an options dataclass
(``config_cls``: the keys of ``--option key=value``) and four hooks; the harness runs the
data loading, batching, devices, precision, feature files and caching around it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from methods.base import ImageLoader, Method, PartContext
from methods.transforms import ResizeUint8


@dataclass(frozen=True)
class RandomProjectionOptions:
    """``dim``: descriptor size; ``thumbnail``: side of the thumbnail; ``seed``: the matrix."""

    dim: int = 128
    thumbnail: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.dim < 1 or self.thumbnail < 1:
            raise ValueError("dim and thumbnail must be >= 1")


def projection_matrix(options: RandomProjectionOptions) -> np.ndarray:
    """The ``(3 * thumbnail**2, dim)`` float32 matrix of ``options`` (same on every machine)."""
    rows = 3 * options.thumbnail**2
    rng = np.random.default_rng(options.seed)
    return rng.standard_normal((rows, options.dim)).astype(np.float32)


class RandomProjectionMethod(Method):
    """Seeded random projection of a mean-centred colour thumbnail (an example plugin)."""

    description = "example plugin: seeded random projection of a colour thumbnail (no weights)"
    config_cls = RandomProjectionOptions
    requires_weights = False

    def image_loader(self, context: PartContext) -> ImageLoader:
        side = self.config.thumbnail
        return ImageLoader(ResizeUint8(side, side))  # runs in the data-loader workers

    def build_model(self, device):
        import torch

        return torch.from_numpy(projection_matrix(self.config)).to(device)

    def encode(self, model, images, context: PartContext):
        import torch.nn.functional as F

        pixels = images.float().flatten(2)  # (B, 3, side*side), 0-255
        centred = pixels - pixels.mean(dim=2, keepdim=True)
        return F.normalize(centred.flatten(1) @ model.float(), dim=1)

    @property
    def descriptor_dim(self) -> int:
        return self.config.dim
