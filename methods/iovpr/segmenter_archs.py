"""The segmenter architectures (``SEGMENTER_ARCHS`` registry): how each is built and which
loadable parts (key prefixes) its pretrained files may cover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from harness.registry import Registry
from methods.iovpr.segmenter_networks import torchvision_segmentation, upernet

NUM_CLASSES = 2  # 0 = not window, 1 = window
DEFAULT_ARCH = "upernet50"


@dataclass(frozen=True)
class PartSpec:
    """A loadable part of a model: its key prefix in the model's state dict.

    ``aliases`` are prefixes that the same weights carry in other files (``features.`` of an
    ImageNet MobileNet is ``backbone.`` here); ``ignored`` are source keys dropped on
    purpose (an ImageNet classifier); ``head`` the classification layers whose class
    count may differ.
    """

    prefix: str
    aliases: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    head: tuple[str, ...] = ()


@dataclass(frozen=True)
class SegmenterArch:
    """A registered architecture: its builder and its loadable parts by name."""

    name: str
    build: Callable[[int], object]
    parts: Mapping[str, PartSpec]
    description: str


SEGMENTER_ARCHS: Registry = Registry("segmenter architecture")


def register_arch(arch: SegmenterArch) -> SegmenterArch:
    """Add ``arch`` to :data:`SEGMENTER_ARCHS` (duplicates raise)."""
    return SEGMENTER_ARCHS.register(arch.name, arch)


def get_arch(name: str) -> SegmenterArch:
    """The architecture called ``name`` (unknown names suggest close ones)."""
    return SEGMENTER_ARCHS.get(name)


def list_archs() -> list[str]:
    """The registered architecture names."""
    return SEGMENTER_ARCHS.names()



_CSAIL_ENCODER = PartSpec("encoder.", ignored=("fc.",))
_CSAIL_DECODER = PartSpec("decoder.", head=("decoder.conv_last.1.",))
for _depth, _dim, _text in (
    (18, 256, "deep-stem ResNet-18 + UPerNet (256 channels); small, for CPU"),
    (50, 512, "deep-stem ResNet-50 + UPerNet (512 channels), CSAIL's ade20k-resnet50-upernet"),
    (101, 512, "deep-stem ResNet-101 + UPerNet (512 channels), CSAIL's ade20k-resnet101-upernet"),
):
    register_arch(SegmenterArch(
        f"upernet{_depth}", upernet(_depth, _dim),
        {"encoder": _CSAIL_ENCODER, "decoder": _CSAIL_DECODER}, _text,
    ))
register_arch(SegmenterArch(
    "upernet-tiny", upernet(10, 32, ppm_dim=32, widths=(16, 32, 64, 128), stem=(16, 16, 32)),
    {"encoder": _CSAIL_ENCODER, "decoder": _CSAIL_DECODER},
    "UPerNet design at 1/4 width on a one-block-per-stage ResNet (0.5M parameters): the "
    "synthetic city on a CPU in minutes, no pretrained weights",
))
register_arch(SegmenterArch(
    "lraspp-mobilenet-v3", torchvision_segmentation("lraspp_mobilenet_v3_large"),
    {
        "backbone": PartSpec("backbone.", aliases=("features.",), ignored=("classifier.",)),
        "classifier": PartSpec(
            "classifier.", head=("classifier.low_classifier.", "classifier.high_classifier.")),
    },
    "torchvision LR-ASPP MobileNetV3-Large; fast on CPU",
))
register_arch(SegmenterArch(
    "deeplabv3-resnet50", torchvision_segmentation("deeplabv3_resnet50"),
    {
        "backbone": PartSpec("backbone.", aliases=("",), ignored=("fc.",)),
        "classifier": PartSpec("classifier.", head=("classifier.4.",)),
    },
    "torchvision DeepLabV3 ResNet-50",
))


class WindowSegmenter:
    """Factory namespace: ``WindowSegmenter.build(arch)`` gives the 2-class network."""

    @staticmethod
    def build(arch: str = DEFAULT_ARCH, num_classes: int = NUM_CLASSES):
        model = get_arch(arch).build(num_classes)
        model.arch_name = arch
        return model


def build_segmenter(arch: str = DEFAULT_ARCH, num_classes: int = NUM_CLASSES):
    """A freshly initialised segmentation network returning ``(N, classes, h, w)`` logits.

    UPerNet outputs logits at 1/4 of the input resolution, torchvision models at the input
    resolution; :func:`segment_logits` upsamples either to a requested size.
    """
    return WindowSegmenter.build(arch, num_classes)

