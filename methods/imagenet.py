"""Preprocessing of ImageNet-pretrained methods: resizes in workers, normalisation on device.

The authors' test transforms are torchvision pipelines: ``ToTensor`` (divide by 255), an
optional ``Resize``, ``Normalize(IMAGENET_MEAN, IMAGENET_STD)``. Two kinds of resize occur:

* on the PIL image, before ``ToTensor`` (SALAD's ``T.Resize((322, 322), BILINEAR)``, MixVPR's
  ``(320, 320)``, CosPlace's optional short side): torchvision calls PIL's own resampling on
  ``uint8`` (antialiased when shrinking) -> :class:`methods.transforms.ResizeUint8` (bilinear),
  :class:`PILResize` and :class:`PILShortSide` (any PIL filter, or the native size);
* on the float tensor, after ``ToTensor`` (BoQ's bicubic ``antialias=True``, MegaLoc's rounding
  to a multiple of 14, VPR-methods-evaluation's ``--image_size``): ``F.interpolate`` on the
  0-1 image, which is what torchvision's tensor ``Resize`` calls -> :class:`TensorResize`,
  :class:`RoundToMultiple`. These hand float tensors on the 0-1 scale to the device.

Resizing (weights summing to one) and the per-channel affine ``Normalize`` commute, so resizing
the 0-1 image in a worker equals the authors' resize of the normalised tensor up to float
rounding. :func:`imagenet_normalize` then divides ``uint8`` input by 255 and normalises.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.transforms import pil_to_uint8, short_side_size

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic")


def imagenet_normalize(images):
    """Float ``(B, 3, H, W)`` on the 0-1 scale -> float32 ``Normalize(IMAGENET_MEAN, STD)``."""
    import torch

    assert images.ndim == 4 and images.shape[1] == 3, (
        f"expected (B, 3, H, W), got {tuple(images.shape)}"
    )
    images = images.to(torch.float32)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return images.sub(mean).div(std)


def normalize_for_method(images):
    """Method input: ``uint8`` pixels become 0-1 first; float input is already 0-1."""
    import torch

    if images.dtype == torch.uint8:
        images = images.to(torch.float32).div(255)
    return imagenet_normalize(images)


def resize_tensor(image, height: int, width: int, interpolation: str, antialias: bool):
    """``(3, H, W)`` float -> ``(3, height, width)``, as torchvision's tensor ``Resize``.

    torchvision clamps only ``uint8`` results, so a float bicubic result may leave 0-1.
    """
    import torch.nn.functional as F

    if tuple(image.shape[-2:]) == (height, width):
        return image
    resized = F.interpolate(
        image.unsqueeze(0),
        size=(height, width),
        mode=interpolation,
        align_corners=False,
        antialias=antialias,
    )
    return resized.squeeze(0)


def pil_filter(name: str):
    """The PIL resampling filter that torchvision's ``InterpolationMode`` ``name`` selects."""
    from PIL import Image

    filters = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
    try:
        return filters[name]
    except KeyError:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {name!r}") from None


@dataclass(frozen=True)
class PILResize:
    """Worker transform: ``T.Resize((height, width), interpolation)`` on the PIL image -> uint8."""

    height: int
    width: int
    interpolation: str = "bilinear"

    def __post_init__(self):
        pil_filter(self.interpolation)

    def __call__(self, image):
        if (image.width, image.height) != (self.width, self.height):
            image = image.resize((self.width, self.height), pil_filter(self.interpolation))
        return pil_to_uint8(image)

    @property
    def fixed_size(self) -> bool:
        return True


@dataclass(frozen=True)
class PILShortSide:
    """Worker transform: ``T.Resize(short_side)`` on the PIL image (aspect kept) -> uint8.

    ``short_side=None`` keeps the native resolution (no resize at all). Sizes differ between
    images, so batches hold one image.
    """

    short_side: int | None = None
    interpolation: str = "bilinear"

    def __post_init__(self):
        pil_filter(self.interpolation)

    def __call__(self, image):
        if self.short_side is not None:
            size = short_side_size(image.width, image.height, self.short_side)
            if size != (image.width, image.height):
                image = image.resize(size, pil_filter(self.interpolation))
        return pil_to_uint8(image)

    @property
    def fixed_size(self) -> bool:
        return False


def pil_to_unit_float(image):
    """PIL RGB image -> float32 ``(3, H, W)`` in 0-1 (``ToTensor``)."""
    import torch

    return pil_to_uint8(image).to(torch.float32).div(255)


@dataclass(frozen=True)
class TensorResize:
    """Worker transform: ``ToTensor`` then a tensor resize to ``(height, width)``."""

    height: int
    width: int
    interpolation: str = "bicubic"
    antialias: bool = True

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}")

    def __call__(self, image):
        return resize_tensor(
            pil_to_unit_float(image), self.height, self.width, self.interpolation, self.antialias
        )

    @property
    def fixed_size(self) -> bool:
        return True


def nearest_multiple(size: int, multiple: int) -> int:
    """``round(size / multiple) * multiple`` with Python's rounding, as the ViT wrappers do."""
    return max(multiple, round(size / multiple) * multiple)


@dataclass(frozen=True)
class RoundToMultiple:
    """Worker transform: optional resize to ``(height, width)``, then H and W to multiples.

    As MegaLoc's ``forward`` (and VPR-methods-evaluation's ``ResizingWrapper``): when H or W is
    not a multiple of ``multiple``, both are rounded to the nearest multiple and the tensor is
    resized (bilinear, antialias). Without ``height``/``width`` images keep their own size.
    """

    multiple: int = 14
    height: int | None = None
    width: int | None = None

    def __call__(self, image):
        tensor = pil_to_unit_float(image)
        if self.height is not None and self.width is not None:
            tensor = resize_tensor(tensor, self.height, self.width, "bilinear", True)
        height, width = tensor.shape[-2:]
        if height % self.multiple or width % self.multiple:
            tensor = resize_tensor(
                tensor,
                nearest_multiple(height, self.multiple),
                nearest_multiple(width, self.multiple),
                "bilinear",
                True,
            )
        return tensor

    @property
    def fixed_size(self) -> bool:
        return self.height is not None and self.width is not None
