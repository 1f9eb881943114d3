"""Reading and writing model weights: both OpenIBL layouts and the harness's own.

Layouts read (all with ``torch.load(weights_only=True)``: a file is never unpickled into code):

* **OpenIBL training checkpoint** ``{'state_dict', 'epoch', 'best_recall5'[, 'generation']}``
  with keys prefixed by ``module.`` (DDP): ``module.base_model.base.N.*``,
  ``module.net_vlad.conv.weight``, ``module.net_vlad.centroids``.
* **OpenIBL released hub file**: a flat state dict without prefix, plus
  ``pca_layer.weight`` ``[4096, 32768, 1, 1]`` and ``pca_layer.bias``.
* **harness checkpoint** ``{'format': 'iovpr-harness-checkpoint', 'format_version': 1,
  'state_dict', 'model_config', ...}``: the same key names without prefix, plus the model
  configuration (backbone, clusters, image size), so evaluation needs no extra flags.

Lightning ``.ckpt`` files pickle their hyper-parameters as Lightning's ``AttributeDict``;
:func:`torch_load` reads that one class as a plain ``dict`` (no Lightning code is imported or
run), so such files load; any other Python object is still refused.

Unlike OpenIBL's ``copy_state_dict``, which silently skips keys that do not match (a model
with random layers then evaluates without complaint), loading is strict: missing, unexpected
or mis-shaped keys are one error that lists them.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from harness.errors import HarnessError
from harness.io import MAX_INFLATE_RATIO, atomic_path, require_regular_file
from harness.versions import is_version

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "iovpr-harness-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
LAYOUTS = ("harness", "openibl-training", "openibl-hub")
_LISTED_KEYS = 8


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A checkpoint file read into memory (tensors on the CPU)."""

    path: Path
    layout: str
    state_dict: Mapping[str, Any]
    model_config: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    payload: Mapping[str, Any] = field(default_factory=dict)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


# Lightning stores a module's hyper-parameters as its ``AttributeDict`` (a dict subclass, whose
# module moved between releases). These names are read as a plain ``dict``: nothing of
# Lightning's is imported or run, and a MixVPR/SALAD/BoQ ``.ckpt`` of one's own training loads.
LIGHTNING_DICT_CLASSES = (
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning_lite.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
)


def _plain_dict_aliases():
    """``torch.serialization.safe_globals`` reading Lightning's dict class as ``dict``."""
    import contextlib

    import torch

    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    if (major, minor) < (2, 6):  # no (class, name) aliases before 2.6: such files are refused
        return contextlib.nullcontext()
    return torch.serialization.safe_globals([(dict, name) for name in LIGHTNING_DICT_CLASSES])


def _check_zip_sizes(path: Path) -> None:
    """Refuse a zip checkpoint whose members claim more than deflate can give (a bomb)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return  # the legacy format, or damage: torch.load reports it
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    for info in members:
        if info.file_size > MAX_INFLATE_RATIO * info.compress_size + (1 << 16):
            raise HarnessError(
                f"checkpoint member {info.filename!r} claims {info.file_size} bytes from "
                f"{info.compress_size} compressed (a decompression bomb)", path)


def torch_load(path: str | os.PathLike):
    """``torch.load`` of a user file with ``weights_only=True``; failures are HarnessErrors."""
    import pickle

    import torch

    path = require_regular_file(path, "checkpoint file")
    if path.stat().st_size == 0:
        raise HarnessError("checkpoint file is empty", path)
    _check_zip_sizes(path)
    try:
        with _plain_dict_aliases():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch < 2.6 words it "Unsupported global: GLOBAL x.y", later ones "Trying to load
        # unsupported GLOBAL x.y whose module ...".
        found = re.search(r"unsupported (?:global:\s*)?GLOBAL (\S+)", str(exc), re.IGNORECASE)
        if found:
            raise HarnessError(
                f"refusing to load: the checkpoint references Python object {found.group(1)} (only "
                "tensors and plain containers are loaded; unpickling it could run code)",
                path,
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(exc), re.S)
        reason = " ".join(detail.group(1).split()) if detail else _first_line(exc)
        raise HarnessError(
            "not a loadable PyTorch checkpoint: corrupt, truncated, or holding more than "
            "tensors and "
            f"plain containers (weights_only unpickler: {reason})",
            path,
        ) from None
    except Exception as exc:  # zip, EOF and storage errors: the file is damaged
        raise HarnessError(
            f"not a readable PyTorch checkpoint, corrupt or truncated ({_first_line(exc)})", path
        ) from None


def _is_tensor_dict(obj) -> bool:
    import torch

    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Remove ``prefix`` from every key when all keys carry it (a DDP-wrapped model's state)."""
    keys = list(state_dict)
    if keys and all(k.startswith(prefix) for k in keys):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read any supported layout; the state dict comes back without the ``module.`` prefix."""
    path = Path(path)
    obj = torch_load(path)
    if not isinstance(obj, Mapping):
        raise HarnessError(f"checkpoint holds a {type(obj).__name__}, expected a dict", path)
    if obj.get("format") == CHECKPOINT_FORMAT:
        version = obj.get("format_version")
        if not is_version(version, CHECKPOINT_FORMAT_VERSION):
            raise HarnessError(
                f"checkpoint format_version {version!r} is not supported (this code reads "
                f"{CHECKPOINT_FORMAT_VERSION})",
                path,
            )
        state = obj.get("state_dict")
        if not _is_tensor_dict(state):
            raise HarnessError("checkpoint 'state_dict' is missing or not a dict of tensors", path)
        meta = {
            k: v
            for k, v in obj.items()
            if k not in ("state_dict", "model_config", "trainer", "cache_state_dict")
        }
        return Checkpoint(
            path=path,
            layout="harness",
            state_dict=strip_prefix(state),
            model_config=dict(obj.get("model_config") or {}),
            meta=meta,
            payload=obj,
        )
    if "state_dict" in obj:
        state = obj["state_dict"]
        if not _is_tensor_dict(state):
            raise HarnessError("checkpoint 'state_dict' is not a dict of tensors", path)
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        return Checkpoint(
            path=path,
            layout="openibl-training",
            state_dict=strip_prefix(state),
            meta=meta,
            payload=obj,
        )
    if _is_tensor_dict(obj):
        return Checkpoint(
            path=path, layout="openibl-hub", state_dict=strip_prefix(dict(obj)), payload=obj
        )
    raise HarnessError(
        "unrecognised checkpoint layout: expected an OpenIBL checkpoint ({'state_dict', ...}), "
        f"a state dict of tensors, or a {CHECKPOINT_FORMAT} file; top-level keys: "
        f"{', '.join(sorted(map(str, obj))[:_LISTED_KEYS])}",
        path,
    )


def _listed(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_LISTED_KEYS])
    return shown + (f" (+{len(keys) - _LISTED_KEYS} more)" if len(keys) > _LISTED_KEYS else "")


def load_state_dict_strict(
    module, state_dict: Mapping[str, Any], path: str | os.PathLike | None, what: str = "checkpoint"
) -> None:
    """Copy ``state_dict`` into ``module``; any key or shape mismatch is one HarnessError."""
    expected = module.state_dict()
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes[:_LISTED_KEYS]))
    if problems:
        raise HarnessError(f"{what} does not fit the model: " + "; ".join(problems), path)
    module.load_state_dict(dict(state_dict), strict=True)


def save_checkpoint(
    path: str | os.PathLike,
    *,
    state_dict: Mapping[str, Any],
    model_config: Mapping[str, Any],
    **extra: Any,
) -> Path:
    """Write a harness checkpoint atomically (tensors moved to the CPU)."""
    import torch

    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in strip_prefix(state_dict).items()},
        "model_config": dict(model_config),
        **extra,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def to_openibl_training(
    state_dict: Mapping[str, Any], *, epoch: int = 0, best_recall5: float = 0.0
) -> dict:
    """The OpenIBL training-checkpoint layout of ``state_dict`` (keys prefixed ``module.``)."""
    return {
        "state_dict": {f"module.{k}": v for k, v in strip_prefix(state_dict).items()},
        "epoch": int(epoch),
        "best_recall5": float(best_recall5),
    }


def to_openibl_hub(state_dict: Mapping[str, Any]) -> dict:
    """The OpenIBL released (hub) layout: a flat state dict without prefix."""
    return dict(strip_prefix(state_dict))
