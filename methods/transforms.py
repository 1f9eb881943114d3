"""Image preprocessing of the NetVLAD/OpenIBL lineage, split in two halves.

The lineage's test transform is ``Resize((480, 640))``, ``ToTensor()``,
``Normalize(mean, std=1/255)``: images on a 0-255 scale minus the VGG (MatConvNet) mean. Here
the data-loader workers resize and hand over ``uint8`` tensors (4x less memory and transfer
than float), and :func:`normalize_batch` applies ``ToTensor``'s division and ``Normalize``
on the device with the same operations, so the result equals torchvision's pipeline.

Tokyo 24/7 queries keep their aspect ratio with the short side at 640 (the lineage's
``Resize(max(height, width))``), so they come one per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MEAN = (0.48501960784313836, 0.4579568627450961, 0.4076039215686255)
STD = (0.00392156862745098, 0.00392156862745098, 0.00392156862745098)
DEFAULT_HEIGHT = 480
DEFAULT_WIDTH = 640
TOKYO_SHORT_SIDE = 640


def pil_to_uint8(image):
    """PIL RGB image -> ``uint8`` tensor ``(3, H, W)`` (ToTensor without the division)."""
    import torch

    array = np.asarray(image, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got array shape {array.shape}")
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _pil_bilinear():
    from PIL import Image

    return Image.Resampling.BILINEAR


@dataclass(frozen=True)
class ResizeUint8:
    """Resize a PIL image to exactly ``(height, width)`` (bilinear, as ``T.Resize``) -> uint8.

    PIL's own resize, which is what torchvision's ``Resize`` calls for PIL images (so the
    lineage's pixels come out), without importing torchvision in every worker.
    """

    height: int = DEFAULT_HEIGHT
    width: int = DEFAULT_WIDTH

    def __call__(self, image):
        return pil_to_uint8(image.resize((self.width, self.height), _pil_bilinear()))

    @property
    def fixed_size(self) -> bool:
        return True


def short_side_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """``(width, height)`` with the short side ``short_side``, as ``T.Resize(int)`` computes it."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = short_side, int(short_side * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


@dataclass(frozen=True)
class ShortSideUint8:
    """Resize so that the short side is ``short_side``, keeping the aspect ratio -> uint8."""

    short_side: int = TOKYO_SHORT_SIDE

    def __call__(self, image):
        size = short_side_size(image.width, image.height, self.short_side)
        if size != (image.width, image.height):
            image = image.resize(size, _pil_bilinear())
        return pil_to_uint8(image)

    @property
    def fixed_size(self) -> bool:
        return False


def adjust_hue(image, hue_factor: float):
    """Shift the hue by ``hue_factor`` of a turn (wrapping), as torchvision's PIL ``adjust_hue``."""
    from PIL import Image

    h, s, v = image.convert("HSV").split()
    hue = np.array(h, dtype=np.uint8)
    hue += np.int32(hue_factor * 255).astype(np.uint8)  # wraps around, as intended
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert(image.mode)


def color_jitter(
    image,
    rng: np.random.Generator,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
):
    """torchvision's ``ColorJitter`` on a PIL image, drawing from ``rng``.

    The four adjustments (PIL ``ImageEnhance`` Brightness, Contrast, Color, and a hue shift)
    run in random order with factors uniform in ``[max(0, 1 - x), 1 + x]`` (hue in
    ``[-hue, hue]``).
    """
    from PIL import ImageEnhance

    order = rng.permutation(4)
    factors = [
        rng.uniform(max(0.0, 1 - x), 1 + x) if x else None
        for x in (brightness, contrast, saturation)
    ]
    hue_factor = rng.uniform(-hue, hue) if hue else None
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    for index in order:
        if index < 3 and factors[index] is not None:
            image = enhancers[index](image).enhance(factors[index])
        elif index == 3 and hue_factor is not None:
            image = adjust_hue(image, hue_factor)
    return image


@dataclass(frozen=True)
class TrainTransform:
    """The lineage's training transform: ColorJitter(0.7, 0.7, 0.7, 0.5), then resize -> uint8."""

    height: int = DEFAULT_HEIGHT
    width: int = DEFAULT_WIDTH
    jitter: tuple[float, float, float, float] = (0.7, 0.7, 0.7, 0.5)

    def __call__(self, image, rng: np.random.Generator | None = None):
        if any(self.jitter):
            image = color_jitter(
                image, rng if rng is not None else np.random.default_rng(), *self.jitter
            )
        return ResizeUint8(self.height, self.width)(image)


def normalize_batch(images):
    """``uint8`` ``(B, 3, H, W)`` -> float32 on a 0-255 scale minus the VGG mean.

    The same operations as ``ToTensor`` (divide by 255) then ``Normalize(MEAN, STD)``.
    Float input is taken as already normalised and returned unchanged.
    """
    import torch

    if images.dtype != torch.uint8:
        return images
    assert (
        images.ndim == 4 and images.shape[1] == 3
    ), f"expected (B, 3, H, W), got {tuple(images.shape)}"
    mean = torch.tensor(MEAN, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return images.to(torch.float32).div(255).sub(mean).div(std)


def denormalize_batch(images):
    """Inverse of :func:`normalize_batch` as float in 0-255 (for hooks that need pixels)."""
    import torch

    mean = torch.tensor(MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * std + mean) * 255
