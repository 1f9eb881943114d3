"""The segmentation networks themselves: CSAIL-named deep-stem ResNet + UPerNet, and
torchvision's segmentation models adapted to return their logits tensor.

torch is imported on first use (:func:`torch_modules`), so that importing the architecture
registry stays light.
"""

from __future__ import annotations


def torch_modules():
    """torch modules, imported on first use (so importing this file stays light)."""
    import torch
    from torch import nn
    from torch.nn import functional

    return torch, nn, functional


def _conv_bn_relu(nn, in_channels: int, out_channels: int, kernel_size: int):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


_RESNET_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def _build_resnet_encoder(depth: int, widths=(64, 128, 256, 512), stem=(64, 64, 128)):
    """Deep-stem ResNet (three 3x3 stem convs, 128 channels into layer1), CSAIL's naming.

    ``widths`` and ``stem`` shrink it for CPU-scale variants (CSAIL's: the defaults).
    """
    _, nn, _ = torch_modules()
    bottleneck = depth >= 50
    blocks = _RESNET_BLOCKS[depth]
    expansion = 4 if bottleneck else 1

    class Block(nn.Module):
        def __init__(self, in_channels: int, width: int, stride: int):
            super().__init__()
            out_channels = width * expansion
            if bottleneck:
                self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
                self.bn1 = nn.BatchNorm2d(width)
                self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
                self.bn2 = nn.BatchNorm2d(width)
                self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
                self.bn3 = nn.BatchNorm2d(out_channels)
            else:
                self.conv1 = nn.Conv2d(in_channels, width, 3, stride, 1, bias=False)
                self.bn1 = nn.BatchNorm2d(width)
                self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
                self.bn2 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or in_channels != out_channels:
                self.downsample = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                    nn.BatchNorm2d(out_channels),
                )

        def forward(self, x):
            shortcut = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if bottleneck:
                out = self.bn3(self.conv3(self.relu(out)))
            return self.relu(out + shortcut)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, stem[0], 3, 2, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(stem[0])
            self.conv2 = nn.Conv2d(stem[0], stem[1], 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(stem[1])
            self.conv3 = nn.Conv2d(stem[1], stem[2], 3, 1, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(stem[2])
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            channels = stem[2]
            self.out_channels = []
            for index, (count, width) in enumerate(zip(blocks, widths), 1):
                layer = []
                for block in range(count):
                    stride = 2 if (block == 0 and index > 1) else 1
                    layer.append(Block(channels, width, stride))
                    channels = width * expansion
                setattr(self, f"layer{index}", nn.Sequential(*layer))
                self.out_channels.append(channels)
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.maxpool(self.relu(self.bn3(self.conv3(x))))
            features = []
            for index in range(1, 5):
                x = getattr(self, f"layer{index}")(x)
                features.append(x)
            return features

    return Encoder()


def _build_upernet_decoder(in_channels: list[int], fpn_dim: int, num_classes: int,
                           pool_scales=(1, 2, 3, 6), ppm_dim: int = 512):
    torch, nn, functional = torch_modules()
    top = in_channels[-1]

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.ppm_pooling = nn.ModuleList(nn.AdaptiveAvgPool2d(s) for s in pool_scales)
            self.ppm_conv = nn.ModuleList(_conv_bn_relu(nn, top, ppm_dim, 1) for _ in pool_scales)
            self.ppm_last_conv = _conv_bn_relu(nn, top + len(pool_scales) * ppm_dim, fpn_dim, 3)
            self.fpn_in = nn.ModuleList(_conv_bn_relu(nn, c, fpn_dim, 1) for c in in_channels[:-1])
            self.fpn_out = nn.ModuleList(
                nn.Sequential(_conv_bn_relu(nn, fpn_dim, fpn_dim, 3)) for _ in in_channels[:-1]
            )
            self.conv_last = nn.Sequential(
                _conv_bn_relu(nn, len(in_channels) * fpn_dim, fpn_dim, 3),
                nn.Conv2d(fpn_dim, num_classes, 1),
            )

        def forward(self, features):
            top_feature = features[-1]
            size = top_feature.shape[2:]
            pyramid = [top_feature]
            for pool, conv in zip(self.ppm_pooling, self.ppm_conv):
                pooled = functional.interpolate(pool(top_feature), size, mode="bilinear",
                                                align_corners=False)
                pyramid.append(conv(pooled))
            fused = self.ppm_last_conv(torch.cat(pyramid, 1))
            outputs = [fused]
            for level in reversed(range(len(features) - 1)):
                lateral = self.fpn_in[level](features[level])
                fused = lateral + functional.interpolate(
                    fused, lateral.shape[2:], mode="bilinear", align_corners=False)
                outputs.append(self.fpn_out[level](fused))
            outputs.reverse()
            size = outputs[0].shape[2:]
            stacked = [outputs[0]] + [
                functional.interpolate(o, size, mode="bilinear", align_corners=False)
                for o in outputs[1:]
            ]
            return self.conv_last(torch.cat(stacked, 1))

    return Decoder()


def upernet(depth: int, fpn_dim: int, ppm_dim: int = 512, widths=(64, 128, 256, 512),
             stem=(64, 64, 128)):
    """A builder ``num_classes -> model`` of a deep-stem ResNet-``depth`` + UPerNet."""

    def build(num_classes: int):
        _, nn, _ = torch_modules()

        class UperNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = _build_resnet_encoder(depth, widths, stem)
                self.decoder = _build_upernet_decoder(
                    self.encoder.out_channels, fpn_dim, num_classes, ppm_dim=ppm_dim
                )

            def forward(self, x):
                return self.decoder(self.encoder(x))

        return UperNet()

    return build


def torchvision_segmentation(factory_name: str):
    """A builder ``num_classes -> model`` of torchvision's ``factory_name``, returning logits."""

    def build(num_classes: int):
        from torchvision.models import segmentation

        factory = getattr(segmentation, factory_name)
        kwargs = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
        if factory_name.startswith(("deeplabv3", "fcn")):
            kwargs["aux_loss"] = False
        return _OutAdapter.wrap(factory(**kwargs))

    return build


_LOGIT_CLASSES: dict = {}


class _OutAdapter:
    """Make torchvision's dict-returning models return the ``out`` tensor.

    The model's class is swapped for a subclass whose ``forward`` returns ``["out"]``, so the
    parameter names stay torchvision's and the model still deep-copies and pickles.
    """

    @staticmethod
    def wrap(model):
        base = type(model)
        if base not in _LOGIT_CLASSES:
            def forward(self, x):
                return base.forward(self, x)["out"]

            _LOGIT_CLASSES[base] = type(f"{base.__name__}Logits", (base,), {"forward": forward})
        model.__class__ = _LOGIT_CLASSES[base]
        return model
