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

This module holds our checkpoints and inference logits; the registry is in
:mod:`~methods.iovpr.segmenter_archs`, the networks in :mod:`~methods.iovpr.segmenter_networks`
and the pretrained-file loading in :mod:`~methods.iovpr.segmenter_weights` (all re-exported).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from harness.errors import HarnessError
from methods.iovpr.segmenter_archs import (
    DEFAULT_ARCH,
    NUM_CLASSES,
    SEGMENTER_ARCHS,
    PartSpec,
    SegmenterArch,
    WindowSegmenter,
    build_segmenter,
    get_arch,
    list_archs,
    register_arch,
)
from methods.iovpr.segmenter_networks import torch_modules
from methods.iovpr.segmenter_weights import (
    SYNC_BN_BOOKKEEPING,
    LoadReport,
    is_bn_bookkeeping,
    load_pretrained,
    read_state_dict,
    shorten_keys,
)

# Re-exported: the architectures (segmenter_archs), networks (segmenter_networks) and
# pretrained files (segmenter_weights) live in their own modules.
__all__ = [
    "CHECKPOINT_FORMAT",
    "DEFAULT_ARCH",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NUM_CLASSES",
    "SEGMENTER_ARCHS",
    "SYNC_BN_BOOKKEEPING",
    "LoadReport",
    "LoadedSegmenter",
    "PartSpec",
    "SegmenterArch",
    "WindowSegmenter",
    "build_segmenter",
    "checkpoint_payload",
    "get_arch",
    "is_bn_bookkeeping",
    "list_archs",
    "load_pretrained",
    "load_segmenter",
    "read_checkpoint",
    "read_state_dict",
    "register_arch",
    "segment_logits",
]

CHECKPOINT_FORMAT = "iovpr-window-segmenter"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def segment_logits(model, images, size=None):
    """Logits of ``images`` (normalised ``(N, 3, H, W)``) upsampled to ``size`` (default H, W)."""
    _, _, functional = torch_modules()
    logits = model(images)
    size = tuple(images.shape[2:]) if size is None else tuple(size)
    if tuple(logits.shape[2:]) != size:
        logits = functional.interpolate(logits, size, mode="bilinear", align_corners=False)
    return logits


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
            parts.append(f"missing keys: {shorten_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {shorten_keys(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch: {shorten_keys(shapes)}")
        raise HarnessError(f"checkpoint does not fit {arch} ({'; '.join(parts)})", path)
    model.load_state_dict(state)
    model.eval().to(device)
    side = input_short_side or int(payload.get("input_short_side", 480))
    info = {k: payload.get(k) for k in ("epoch", "val_iou", "config")}
    return LoadedSegmenter(model, arch, path, sha256_file(path), side, info)

