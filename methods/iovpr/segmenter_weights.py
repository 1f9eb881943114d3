"""Pretrained weight files for the segmenters: reading them and loading them strictly, key by
key, into the parts of a model they cover (see :mod:`methods.iovpr.segmentation`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from harness.errors import HarnessError
from methods.iovpr.ade20k import WINDOW_CLASS
from methods.iovpr.segmenter_archs import NUM_CLASSES, SegmenterArch, get_arch

logger = logging.getLogger(__name__)


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


def shorten_keys(keys, limit: int = 8) -> str:
    """The first ``limit`` of ``keys``, sorted, and how many more (for error messages)."""
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
        problems.append(f"unexpected keys (not in {model.arch_name}): {shorten_keys(unexpected)}")
    if needed:
        problems.append(f"missing keys: {shorten_keys(needed)}")
    if mismatched:
        problems.append("shape mismatch: " + shorten_keys(
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
            "%s: head re-initialised (other class count): %s", path, shorten_keys(reinitialised)
        )
    if adapted:
        logger.info(
            "%s: 150-class ADE20k head adapted to window / other: %s", path, shorten_keys(adapted)
        )
    if ignored:
        logger.info("%s: ignored %d keys (%s)", path, len(ignored), shorten_keys(ignored, 3))
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
