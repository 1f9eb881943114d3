"""Released third-party checkpoints as published: reading them, strict loading, a method base.

Files are read without running code: PyTorch files with ``torch.load(weights_only=True)``
(:func:`methods.checkpoints.torch_load`), ``.safetensors`` files with the ``safetensors``
package. A PyTorch file may hold the state dict itself (``torch.save(model.state_dict())``,
e.g. SALAD's ``dino_salad.ckpt`` and BoQ's ``*.pth``) or a Lightning-style dict with a
``state_dict`` entry. Keys are taken as they are: no prefix is stripped and nothing is
skipped, except keys a method lists as known-unused (BoQ-DINOv2's ``backbone.dino.norm.*``);
every missing, unexpected or mis-shaped key is one :class:`HarnessError` naming the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from harness.errors import HarnessError
from methods.base import Method, PartContext

logger = logging.getLogger(__name__)

_SAFETENSORS_SUFFIXES = (".safetensors",)
_LISTED = 8


def _looks_like_safetensors(path: Path) -> bool:
    # safetensors: an 8-byte little-endian header length, then a JSON object.
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """Tensors of a ``.safetensors`` file (CPU); an unreadable file is a HarnessError."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError("weights file not found", path)
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise HarnessError(
            "reading .safetensors needs the 'safetensors' package (pip install "
            "'iovpr-harness[methods]')",
            path,
        ) from None
    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError) as exc:  # header or data damaged
        first = str(exc).strip().splitlines()
        raise HarnessError(
            f"not a readable safetensors file, corrupt or truncated ({type(exc).__name__}: "
            f"{first[0] if first else ''})",
            path,
        ) from None


def _is_tensor_dict(obj) -> bool:
    import torch

    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def read_state_dict(
    path: str | os.PathLike, wrappers: tuple[str, ...] = ("state_dict",)
) -> dict[str, Any]:
    """The state dict of a released checkpoint (PyTorch or safetensors), keys unchanged.

    A PyTorch file may hold the tensors directly or under one of ``wrappers`` (Lightning's
    ``state_dict``; CosPlace's training checkpoint ``model_state_dict``).
    """
    from methods.checkpoints import torch_load

    path = Path(path)
    if not path.is_file():
        raise HarnessError("weights file not found", path)
    if path.stat().st_size == 0:
        raise HarnessError("weights file is empty", path)
    if path.suffix in _SAFETENSORS_SUFFIXES or _looks_like_safetensors(path):
        return read_safetensors(path)
    obj = torch_load(path)
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for wrapper in wrappers:
            if _is_tensor_dict(obj.get(wrapper)):
                return dict(obj[wrapper])
        keys = ", ".join(sorted(map(str, obj))[:_LISTED])
        entries = " or ".join(repr(wrapper) for wrapper in wrappers)
        raise HarnessError(
            f"expected a state dict of tensors or a dict with a {entries} of tensors; "
            f"top-level keys: {keys}",
            path,
        )
    raise HarnessError(f"checkpoint holds a {type(obj).__name__}, expected a state dict", path)


def load_released(
    module,
    state_dict: Mapping[str, Any],
    path: str | os.PathLike | None,
    *,
    unused: Iterable[str] = (),
    what: str = "weights",
) -> None:
    """Strictly copy ``state_dict`` into ``module``; keys in ``unused`` may also be present.

    ``unused`` names keys that the released file carries but the network does not use
    (checked for nothing but their presence; dropped).
    """
    from methods.checkpoints import load_state_dict_strict

    unused = set(unused)
    state = {k: v for k, v in state_dict.items() if k not in unused}
    dropped = sorted(set(state_dict) & unused)
    if dropped:
        logger.debug("%s: ignoring unused keys %s", path, ", ".join(dropped))
    load_state_dict_strict(module, state, path, what=what)


class ReleasedMethod(Method):
    """Base of methods that load an authors' released file and take ImageNet-normalised input.

    Subclasses implement :meth:`make_model` (an untrained network shaped after the file's
    tensors), :meth:`unused_keys` and :meth:`transform`; the file is read once, lazily.
    """

    description: ClassVar[str] = ""
    # Entries of a PyTorch file that may hold the state dict (see read_state_dict).
    wrappers: ClassVar[tuple[str, ...]] = ("state_dict",)

    def __init__(self, config, weights=None):
        super().__init__(config, weights)
        self._state: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The weights file's tensors (read on first use)."""
        if self._state is None:
            self._state = read_state_dict(self.weights, self.wrappers)
        return self._state

    # -- to implement ---------------------------------------------------------------------
    def make_model(self, state: Mapping[str, Any]):
        raise NotImplementedError

    def unused_keys(self, state: Mapping[str, Any]) -> Iterable[str]:
        return ()

    def transform(self):
        """The picklable worker transform (PIL image -> ``(3, H, W)`` tensor)."""
        raise NotImplementedError

    # -- hooks ----------------------------------------------------------------------------
    def image_loader(self, context: PartContext):
        from methods.base import ImageLoader

        return ImageLoader(self.transform())

    def build_model(self, device):
        state = self.state_dict()
        model = self.make_model(state)
        load_released(model, state, self.weights, unused=self.unused_keys(state))
        return model.to(device).eval()

    def encode(self, model, images, context: PartContext):
        from methods.imagenet import normalize_for_method

        return model(normalize_for_method(images))
