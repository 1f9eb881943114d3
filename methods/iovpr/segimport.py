"""``harness segmenter import``: a window-segmenter checkpoint from released CSAIL files.

CSAIL's semantic-segmentation-pytorch releases a model as two state dicts saved with
``torch.save(net.state_dict(), ...)`` by its ``train.py``: ``encoder_epoch_N.pth`` (the
deep-stem ResNet: ``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ...) and
``decoder_epoch_N.pth`` (UPerNet: ``ppm_conv.*``, ``ppm_last_conv.*``, ``fpn_in.*``,
``fpn_out.*``, ``conv_last.0.*``, and the 150-class ADE20k head ``conv_last.1.{weight,bias}``),
each BatchNorm with its synchronized-BatchNorm bookkeeping buffers. Importing loads both
strictly into the architecture (:func:`methods.iovpr.segmentation.load_pretrained`), keeps
the head as it is (a 150-class head predicts a window where ADE20k class 9, *windowpane*,
wins the argmax, as CSAIL's own inference; :func:`methods.iovpr.segment.window_from_logits`)
and writes our checkpoint format, which ``harness segment`` and ``iovpr-gray`` read. No
training happens, so the result is CSAIL's model exactly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from harness.errors import HarnessError
from harness.io import atomic_path, sha256_file
from methods.iovpr.segmentation import (
    build_segmenter,
    checkpoint_payload,
    load_pretrained,
    read_state_dict,
)

logger = logging.getLogger(__name__)

HEAD_KEY = "conv_last.1.weight"
IMPORTABLE_CLASSES = (2, 150)


def _head_classes(path: Path) -> int:
    state = read_state_dict(path)
    head = state.get(HEAD_KEY, state.get("decoder." + HEAD_KEY))
    if head is None:
        raise HarnessError(
            f"not a UPerNet decoder file: no {HEAD_KEY} (give CSAIL's decoder_epoch_N.pth)", path
        )
    classes = int(head.shape[0])
    if classes not in IMPORTABLE_CLASSES:
        raise HarnessError(
            f"the decoder's head has {classes} classes; an imported segmenter needs ADE20k's 150 "
            "(window = class 9) or our 2; fine-tune it with `harness train window-seg "
            "--pretrained` instead",
            path,
        )
    return classes


def import_segmenter(
    encoder: str | os.PathLike,
    decoder: str | os.PathLike,
    out: str | os.PathLike,
    *,
    arch: str = "upernet50",
    input_short_side: int = 480,
) -> Path:
    """Write ``out``, a segmenter checkpoint holding CSAIL's ``encoder`` and ``decoder`` files."""
    import torch  # optional and heavy: only once a command runs

    encoder, decoder, out = Path(encoder), Path(decoder), Path(out)
    if not arch.startswith("upernet"):
        raise HarnessError(f"--arch {arch}: CSAIL's encoder/decoder files are UPerNet models")
    if input_short_side < 32:
        raise HarnessError(f"--short-side must be >= 32, got {input_short_side}")
    classes = _head_classes(decoder)
    model = build_segmenter(arch, classes)
    for path, part in ((encoder, "encoder"), (decoder, "decoder")):
        report = load_pretrained(model, path)
        if report.parts != (part,):
            raise HarnessError(
                f"given as --{part}, but its keys fit the {'/'.join(report.parts)} of {arch}", path
            )
    config = {
        "imported_from": "CSAIL semantic-segmentation-pytorch",
        "encoder": str(encoder),
        "encoder_sha256": sha256_file(encoder),
        "decoder": str(decoder),
        "decoder_sha256": sha256_file(decoder),
    }
    payload = checkpoint_payload(
        model, config=config, epoch=-1, val_iou=None, input_short_side=input_short_side,
        num_classes=classes,
    )
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)
    logger.info("imported %s + %s as %s (%d classes)", encoder, decoder, arch, classes)
    return out
