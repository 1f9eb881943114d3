"""The 2-class window / non-window segmentation network: architectures and weight files.

Architectures (``SEGMENTER_ARCHS`` registry):

* ``upernet50`` (default; the seed's network), ``upernet101``: a deep-stem ResNet encoder
  and a UPerNet decoder (PPM + FPN, 512 channels) whose parameter names are those of
  CSAILVision's semantic-segmentation-pytorch, so its ADE20k checkpoints
  (``encoder_epoch_*.pth`` / ``decoder_epoch_*.pth``) and ImageNet encoder
  (``resnet50-imagenet.pth``) load as they are;
* ``upernet18``: the same design on a deep-stem ResNet-18 with a 256-channel decoder;
* ``upernet-tiny``: the same design at a quarter of the width, one block a stage (0.5M
  parameters), for CPU-scale runs such as the synthetic city;
* ``lraspp-mobilenet-v3``, ``deeplabv3-resnet50``: torchvision's segmentation models, loading
  torchvision's segmentation or ImageNet backbone files.

Pretrained files are read with ``torch.load(weights_only=True)`` and matched key by key: a
key of the file that has no place in the model, or a parameter of the loaded part that the
file lacks, is an error listing them. The only tolerated differences are BatchNorm
``num_batches_tracked`` counters, the BatchNorm bookkeeping buffers of CSAIL's synchronized
BatchNorm (``_tmp_running_mean``, ``_tmp_running_var``, ``_running_iter``: exactly these, in a
BatchNorm layer, of its shape), the ImageNet classifier of a backbone file, and a
classification head with another class count (re-initialised; a 150-class ADE20k head is
adapted: the window row gives the window logit, the mean of the other rows the other).

Our own checkpoints (from ``harness train window-seg``) hold ``format``, ``arch``,
``state_dict`` and the training config; :func:`load_segmenter` rebuilds the model from them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from harness.errors import HarnessError
from harness.registry import Registry
from methods.iovpr.ade20k import WINDOW_CLASS

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "iovpr-window-segmenter"
NUM_CLASSES = 2  # 0 = not window, 1 = window
#: ImageNet statistics (0-1 scale), the normalisation of every pretrained segmenter here.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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
    name: str
    build: Callable[[int], object]
    parts: Mapping[str, PartSpec]
    description: str


SEGMENTER_ARCHS: Registry = Registry("segmenter architecture")


def register_arch(arch: SegmenterArch) -> SegmenterArch:
    return SEGMENTER_ARCHS.register(arch.name, arch)


def get_arch(name: str) -> SegmenterArch:
    return SEGMENTER_ARCHS.get(name)


def list_archs() -> list[str]:
    return SEGMENTER_ARCHS.names()


# --------------------------------------------------------------------------- networks


def _modules():
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
    _, nn, _ = _modules()
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
    torch, nn, functional = _modules()
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


def _upernet(depth: int, fpn_dim: int, ppm_dim: int = 512, widths=(64, 128, 256, 512),
             stem=(64, 64, 128)):
    def build(num_classes: int):
        _, nn, _ = _modules()

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


def _torchvision_segmentation(factory_name: str):
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


_CSAIL_ENCODER = PartSpec("encoder.", ignored=("fc.",))
_CSAIL_DECODER = PartSpec("decoder.", head=("decoder.conv_last.1.",))
for _depth, _dim, _text in (
    (18, 256, "deep-stem ResNet-18 + UPerNet (256 channels); small, for CPU"),
    (50, 512, "deep-stem ResNet-50 + UPerNet (512 channels), CSAIL's ade20k-resnet50-upernet"),
    (101, 512, "deep-stem ResNet-101 + UPerNet (512 channels), CSAIL's ade20k-resnet101-upernet"),
):
    register_arch(SegmenterArch(
        f"upernet{_depth}", _upernet(_depth, _dim),
        {"encoder": _CSAIL_ENCODER, "decoder": _CSAIL_DECODER}, _text,
    ))
register_arch(SegmenterArch(
    "upernet-tiny", _upernet(10, 32, ppm_dim=32, widths=(16, 32, 64, 128), stem=(16, 16, 32)),
    {"encoder": _CSAIL_ENCODER, "decoder": _CSAIL_DECODER},
    "UPerNet design at 1/4 width on a one-block-per-stage ResNet (0.5M parameters): the "
    "synthetic city on a CPU in minutes, no pretrained weights",
))
register_arch(SegmenterArch(
    "lraspp-mobilenet-v3", _torchvision_segmentation("lraspp_mobilenet_v3_large"),
    {
        "backbone": PartSpec("backbone.", aliases=("features.",), ignored=("classifier.",)),
        "classifier": PartSpec(
            "classifier.", head=("classifier.low_classifier.", "classifier.high_classifier.")),
    },
    "torchvision LR-ASPP MobileNetV3-Large; fast on CPU",
))
register_arch(SegmenterArch(
    "deeplabv3-resnet50", _torchvision_segmentation("deeplabv3_resnet50"),
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


def segment_logits(model, images, size=None):
    """Logits of ``images`` (normalised ``(N, 3, H, W)``) upsampled to ``size`` (default H, W)."""
    _, _, functional = _modules()
    logits = model(images)
    size = tuple(images.shape[2:]) if size is None else tuple(size)
    if tuple(logits.shape[2:]) != size:
        logits = functional.interpolate(logits, size, mode="bilinear", align_corners=False)
    return logits


# --------------------------------------------------------------------------- weight files


def read_state_dict(path: str | os.PathLike) -> dict:
    """Tensors of a weight file (``torch.load(weights_only=True)``), ``module.`` stripped.

    Accepts a bare state dict or a dict holding one under ``state_dict`` / ``model``.
    """
    import torch

    from methods.checkpoints import torch_load

    path = Path(path)
    payload = torch_load(path)
    if isinstance(payload, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), Mapping):
                payload = payload[key]
                break
    if not isinstance(payload, Mapping) or not payload:
        raise HarnessError("weight file holds no state dict", path)
    state = {}
    for key, value in payload.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise HarnessError(f"weight file entry {key!r} is not a named tensor", path)
        state[key[len("module."):] if key.startswith("module.") else key] = value
    return state


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_pretrained` did with one file."""

    path: Path
    parts: tuple[str, ...]
    loaded: int
    reinitialised: tuple[str, ...]
    adapted: tuple[str, ...]
    ignored: tuple[str, ...]


def _shorten(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


#: Buffers that CSAIL's synchronized BatchNorm (its ``lib/nn``) registers beside torch's own and
#: saves in every BatchNorm layer of its released files: moving-average bookkeeping of
#: multi-GPU training, unused at inference and by torch's BatchNorm.
SYNC_BN_BOOKKEEPING = ("_tmp_running_mean", "_tmp_running_var", "_running_iter")


def is_bn_bookkeeping(key: str, value, target: Mapping) -> bool:
    """Whether ``key`` is one of :data:`SYNC_BN_BOOKKEEPING` of a BatchNorm of ``target``."""
    module, _, name = key.rpartition(".")
    running = target.get(f"{module}.running_mean")
    if name not in SYNC_BN_BOOKKEEPING or running is None:
        return False
    expected = (1,) if name == "_running_iter" else tuple(running.shape)
    return tuple(value.shape) == expected


def _map_source_keys(source: dict, arch: SegmenterArch, target: dict) -> tuple[dict, list[str]]:
    """Rename the file's keys into the model's namespace; return (mapped, ignored keys).

    A file is either a whole model (keys carry the part prefixes, as our checkpoints and
    torchvision's segmentation files) or one part (a CSAIL encoder or decoder, an ImageNet
    backbone); the reading under which most keys land on the model's keys wins.
    """
    readings: list[tuple[dict, list[str]]] = []
    whole = {k: v for k, v in source.items() if not k.startswith("aux_classifier.")}
    readings.append((whole, sorted(set(source) - set(whole))))
    for spec in arch.parts.values():
        mapped, ignored = {}, []
        for key, value in source.items():
            if any(key.startswith(p) for p in spec.ignored):
                ignored.append(key)
                continue
            alias = next((a for a in spec.aliases or ("",) if key.startswith(a)), None)
            mapped[key if alias is None else spec.prefix + key[len(alias):]] = value
        readings.append((mapped, ignored))
    return max(readings, key=lambda reading: sum(k in target for k in reading[0]))


def load_pretrained(model, path: str | os.PathLike) -> LoadReport:
    """Load a pretrained file into the parts of ``model`` it covers (see module docstring).

    Raises:
        HarnessError: unreadable file, keys of the file the model does not have, parameters
            of a covered part that the file lacks, or shape mismatches outside a head.
    """
    import torch

    arch = get_arch(model.arch_name)
    path = Path(path)
    source = read_state_dict(path)
    target = model.state_dict()
    mapped, ignored = _map_source_keys(source, arch, target)
    bookkeeping = [k for k, v in mapped.items() if is_bn_bookkeeping(k, v, target)]
    for key in bookkeeping:
        del mapped[key]
    ignored = list(ignored) + bookkeeping

    covered = [name for name, spec in arch.parts.items()
               if any(k.startswith(spec.prefix) for k in mapped)]
    unexpected = [k for k in mapped if k not in target]
    needed = [
        k for k in target
        if any(k.startswith(arch.parts[name].prefix) for name in covered)
        and k not in mapped and not k.endswith("num_batches_tracked")
    ]
    heads = tuple(p for spec in arch.parts.values() for p in spec.head)
    mismatched = [
        k for k in mapped
        if k in target and mapped[k].shape != target[k].shape and not k.startswith(heads)
    ]
    problems = []
    if unexpected:
        problems.append(f"unexpected keys (not in {model.arch_name}): {_shorten(unexpected)}")
    if needed:
        problems.append(f"missing keys: {_shorten(needed)}")
    if mismatched:
        problems.append("shape mismatch: " + _shorten(
            f"{k} {tuple(mapped[k].shape)} vs {tuple(target[k].shape)}" for k in mismatched))
    if problems:
        raise HarnessError(
            f"weights do not fit {model.arch_name} ({'; '.join(problems)})", path
        )

    state, reinitialised, adapted = {}, [], []
    for key, value in mapped.items():
        if value.shape == target[key].shape:
            state[key] = value
            continue
        head_value = _adapt_head(value, target[key])
        if head_value is None:
            reinitialised.append(key)
        else:
            state[key] = head_value
            adapted.append(key)
    with torch.no_grad():
        model.load_state_dict(state, strict=False)
    if reinitialised:
        logger.warning(
            "%s: head re-initialised (other class count): %s", path, _shorten(reinitialised)
        )
    if adapted:
        logger.info(
            "%s: 150-class ADE20k head adapted to window / other: %s", path, _shorten(adapted)
        )
    if ignored:
        logger.info("%s: ignored %d keys (%s)", path, len(ignored), _shorten(ignored, 3))
    logger.info(
        "loaded %d tensors into %s parts %s from %s", len(state), model.arch_name, covered, path
    )
    return LoadReport(path, tuple(covered), len(state), tuple(sorted(reinitialised)),
                      tuple(sorted(adapted)), tuple(sorted(ignored)))


def _adapt_head(source, target):
    """A 150-class ADE20k head as window (class 9) vs the mean of the others; else None."""
    import torch

    if (
        source.shape[0] != 150
        or target.shape[0] != NUM_CLASSES
        or source.shape[1:] != target.shape[1:]
    ):
        return None
    window_row = WINDOW_CLASS - 1  # class indices 1..150 are logits 0..149
    others = torch.cat([source[:window_row], source[window_row + 1:]])
    return torch.stack([others.mean(0), source[window_row]]).to(target.dtype)


# --------------------------------------------------------------------------- our checkpoints


@dataclass
class LoadedSegmenter:
    """A trained window segmenter ready for inference."""

    model: object
    arch: str
    path: Path
    sha256: str
    input_short_side: int
    info: dict


def checkpoint_payload(model, *, config: dict, epoch: int, val_iou: float | None,
                       input_short_side: int, optimizer_state=None, history=None,
                       num_classes: int = NUM_CLASSES) -> dict:
    """A checkpoint dict that ``torch.load(weights_only=True)`` can read back."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": model.arch_name,
        "num_classes": int(num_classes),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": dict(config),
        "epoch": int(epoch),
        "val_iou": None if val_iou is None else float(val_iou),
        "input_short_side": int(input_short_side),
        "history": list(history or []),
    }
    if optimizer_state is not None:
        payload["optimizer"] = optimizer_state
    return payload


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict of a window segmenter; wrong files are clear errors."""
    from methods.checkpoints import torch_load

    path = Path(path)
    payload = torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise HarnessError(
            f"not a window-segmenter checkpoint (no format={CHECKPOINT_FORMAT!r}); train one with "
            "`harness train window-seg`, or pass a pretrained file with --pretrained", path,
        )
    return payload


def load_segmenter(path: str | os.PathLike, device: str = "cpu",
                   input_short_side: int | None = None) -> LoadedSegmenter:
    """Rebuild a trained segmenter from its checkpoint (strict: every key must match)."""
    from harness.io import sha256_file

    path = Path(path)
    payload = read_checkpoint(path)
    arch = payload.get("arch")
    if arch not in SEGMENTER_ARCHS:
        raise HarnessError(f"checkpoint names unknown architecture {arch!r}", path)
    model = build_segmenter(arch, int(payload.get("num_classes", NUM_CLASSES)))
    state = payload.get("state_dict")
    if not isinstance(state, Mapping):
        raise HarnessError("checkpoint has no state_dict", path)
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [k for k in state if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_shorten(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_shorten(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch: {_shorten(shapes)}")
        raise HarnessError(f"checkpoint does not fit {arch} ({'; '.join(parts)})", path)
    model.load_state_dict(state)
    model.eval().to(device)
    side = input_short_side or int(payload.get("input_short_side", 480))
    info = {k: payload.get(k) for k in ("epoch", "val_iou", "config")}
    return LoadedSegmenter(model, arch, path, sha256_file(path), side, info)
