"""Test-time preprocessing of the modern (ImageNet-normalised) methods, split in two halves.

The authors' pipelines are ``[Resize(...)], ToTensor(), Normalize(IMAGENET_MEAN, IMAGENET_STD)``
on PIL images. As in :mod:`methods.transforms`, data-loader workers do the resize and hand over
``uint8`` tensors; :func:`normalize_imagenet` then applies ``ToTensor``'s division by 255 and
``Normalize`` on the device with the same operations, so the pixels equal torchvision's.

torchvision's ``Resize`` on a PIL image calls ``PIL.Image.resize`` with the chosen filter (PIL
filters always antialias when shrinking), so the PIL resizes below give the same pixels
without importing torchvision in every worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.transforms import pil_to_uint8, short_side_size

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")


def pil_filter(name: str):
    """The PIL resampling filter called ``name`` (one of :data:`INTERPOLATIONS`)."""
    from PIL import Image

    filters = {
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "nearest": Image.Resampling.NEAREST,
        "lanczos": Image.Resampling.LANCZOS,
    }
    try:
        return filters[name]
    except KeyError:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {name!r}") from None


@dataclass(frozen=True)
class ResizeExact:
    """Resize a PIL image to exactly ``(height, width)`` (``T.Resize((h, w))``) -> uint8."""

    height: int
    width: int
    interpolation: str = "bilinear"

    def __call__(self, image):
        if (image.width, image.height) != (self.width, self.height):
            image = image.resize((self.width, self.height), pil_filter(self.interpolation))
        return pil_to_uint8(image)

    @property
    def fixed_size(self) -> bool:
        return True


@dataclass(frozen=True)
class ResizeShortSide:
    """Resize so that the short side is ``short_side`` (``T.Resize(int)``) -> uint8.

    ``short_side=None`` keeps the image at its native resolution. Sizes differ between images,
    so batches hold one image.
    """

    short_side: int | None = None
    interpolation: str = "bilinear"

    def __call__(self, image):
        if self.short_side is not None:
            size = short_side_size(image.width, image.height, self.short_side)
            if size != (image.width, image.height):
                image = image.resize(size, pil_filter(self.interpolation))
        return pil_to_uint8(image)

    @property
    def fixed_size(self) -> bool:
        return False


def normalize_imagenet(images):
    """``uint8`` ``(B, 3, H, W)`` -> float32 ``(x / 255 - mean) / std`` with ImageNet statistics.

    The same operations as ``ToTensor()`` then ``Normalize(IMAGENET_MEAN, IMAGENET_STD)``.
    Float input is taken as already normalised and returned unchanged.
    """
    import torch

    if images.dtype != torch.uint8:
        return images
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return images.to(torch.float32).div(255).sub(mean).div(std)
