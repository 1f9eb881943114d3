"""torchvision ResNet and VGG16 trunks, built without weights, and reading their shape from keys.

The modern CNN methods keep torchvision's module names, so their released state dicts hold
torchvision's parameter names under a method-specific prefix. Three layouts occur:

* ``children()`` of a ResNet cut before ``avgpool`` as an ``nn.Sequential``: keys ``0.*``
  (conv1), ``1.*`` (bn1), ``4.*`` .. ``7.*`` (layer1..layer4) (CosPlace, EigenPlaces; BoQ's
  ``backbone.net`` cut after layer3);
* the ResNet object itself with the layers after the cut set to ``None``: keys ``conv1.*``,
  ``bn1.*``, ``layer1.*`` .. (MixVPR's ``backbone.model``);
* VGG16 ``features[:-2]`` (conv5_3 without its ReLU and pool): keys ``0.*`` .. ``28.*``.

Nothing is downloaded: every model is built with ``weights=None`` and gets its values from the
method's checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from torch import nn

# Residual blocks per stage (layer1..layer4) and whether the blocks are bottlenecks.
RESNET_BLOCKS = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}
VGG16_LAST_CONV = 28  # index of conv5_3 in VGG16 features (the last kept by features[:-2])


def resnet_channels(depth: int, last_layer: int = 4) -> int:
    """Output channels of a ResNet cut after ``layer{last_layer}``."""
    _, bottleneck = RESNET_BLOCKS[depth]
    return (256 if bottleneck else 64) * 2 ** (last_layer - 1)


def torchvision_resnet(depth: int):
    """torchvision's ``resnet{depth}`` with random weights (``weights=None``)."""
    import torchvision.models

    if depth not in RESNET_BLOCKS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_BLOCKS)}, got {depth}")
    return getattr(torchvision.models, f"resnet{depth}")(weights=None)


def resnet_children(depth: int, last_layer: int = 4) -> nn.Sequential:
    """``nn.Sequential`` of a ResNet's children up to ``layer{last_layer}`` (keys ``0.*``..).

    ``last_layer=4`` is ``list(resnet.children())[:-2]`` (without avgpool and fc).
    """
    if not 1 <= last_layer <= 4:
        raise ValueError(f"last_layer must be 1..4, got {last_layer}")
    return nn.Sequential(*list(torchvision_resnet(depth).children())[: 4 + last_layer])


def truncated_resnet(depth: int, last_layer: int = 4):
    """The torchvision ResNet object with avgpool, fc and the layers after the cut set to None.

    Its state dict holds ``conv1``, ``bn1`` and ``layer1..layer{last_layer}`` only; run it with
    :func:`run_resnet`.
    """
    model = torchvision_resnet(depth)
    model.avgpool = None
    model.fc = None
    for index in range(last_layer + 1, 5):
        setattr(model, f"layer{index}", None)
    return model


def run_resnet(model, x):
    """Forward through the stem and the layers a :func:`truncated_resnet` kept."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    for index in range(1, 5):
        layer = getattr(model, f"layer{index}")
        if layer is None:
            break
        x = layer(x)
    return x


def vgg16_features() -> nn.Sequential:
    """VGG16 ``features[:-2]`` (conv5_3 without ReLU and pool): 512 channels, stride 16.

    The NetVLAD lineage's backbone builder, which makes torchvision's layers, indices and init
    without building VGG16's 120M-parameter classifier.
    """
    from methods.netvlad import get_backbone

    return get_backbone("vgg16").build()


def resnet_feature_size(size: int, last_layer: int) -> int:
    """Spatial size after ``layer{last_layer}`` for an input side of ``size`` pixels.

    conv1 (7x7, stride 2, pad 3), max-pool (3x3, stride 2, pad 1), then layer2..layer4 halve
    with 3x3 stride-2 convs (pad 1): each step is ``floor((n - 1) / 2) + 1``.
    """
    size = (size + 2 * 3 - 7) // 2 + 1
    size = (size - 1) // 2 + 1
    for _ in range(2, last_layer + 1):
        size = (size - 1) // 2 + 1
    return size


def count_blocks(keys: Iterable[str], prefix: str) -> int:
    """How many residual blocks ``{prefix}{j}.*`` the keys hold (0 when none)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for key in keys if (m := pattern.match(key))}
    return max(found) + 1 if found else 0


def infer_resnet_depth(keys: Iterable[str], layer_prefixes: Sequence[str]) -> int | None:
    """The ResNet depth whose block counts match the keys under ``layer_prefixes``.

    ``layer_prefixes`` name layer1, layer2, ... in the file's layout (e.g. ``backbone.4.``,
    ``backbone.5.``, .. or ``backbone.model.layer1.``, ..); trailing stages without keys are
    taken as cut off. Bottleneck blocks are told from basic ones by ``conv3`` keys. Returns
    None when no depth fits.
    """
    keys = list(keys)
    counts = [count_blocks(keys, prefix) for prefix in layer_prefixes]
    while counts and counts[-1] == 0:
        counts.pop()
    if not counts or 0 in counts:
        return None
    bottleneck = any(
        key.startswith(prefix) and ".conv3." in key for key in keys for prefix in layer_prefixes
    )
    for depth, (blocks, is_bottleneck) in RESNET_BLOCKS.items():
        if is_bottleneck == bottleneck and tuple(counts) == blocks[: len(counts)]:
            return depth
    return None


def stages_present(keys: Iterable[str], layer_prefixes: Sequence[str]) -> int:
    """How many leading ResNet stages (layer1, layer2, ..) have keys."""
    keys = list(keys)
    present = 0
    for prefix in layer_prefixes:
        if not any(key.startswith(prefix) for key in keys):
            break
        present += 1
    return present
