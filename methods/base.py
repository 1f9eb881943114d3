"""What a method is: preprocessing, a descriptor network, weights, and a fingerprint.

A method turns images into L2-normalised global descriptors. Extraction
(:mod:`methods.extract`) drives it through four hooks, so that a method can change one step
without copying the others:

* :meth:`Method.prepare` runs once before a part (``query`` / ``database``) is extracted
  (e.g. segment windows and cache masks).
* :meth:`Method.image_loader` returns the picklable per-image callable that data-loader
  workers run: open the file, optionally edit the image (a gray layout), resize, ``uint8``.
* :meth:`Method.build_model` builds the network on a device with the weights loaded.
* :meth:`Method.encode` maps a ``uint8`` batch to descriptors (normalise, forward).

:meth:`Method.fingerprint` names everything that determines the descriptors (config,
checksums of weight files); feature files record it, and the provider reuses a file only when
it matches. This module imports no torch at import time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

from harness.errors import HarnessError
from methods.options import config_from_mapping, config_to_dict

PARTS = ("query", "database")


def open_rgb(path: str | os.PathLike):
    """Open an image file as RGB (PIL); errors propagate to the caller."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


@dataclass(frozen=True)
class ImageLoader:
    """Picklable per-image loader run in data-loader workers: path -> ``uint8 (3, H, W)``.

    ``open_image`` opens (and may edit) the image; ``transform`` resizes it. A method that
    needs another image source (for instance a gray layout from a cached window mask)
    replaces ``open_image`` with its own picklable callable taking ``(path, name)``.
    """

    transform: Callable
    open_image: Callable | None = None

    def __call__(self, path: Path, name: str):
        image = open_rgb(path) if self.open_image is None else self.open_image(path, name)
        return self.transform(image)

    @property
    def fixed_size(self) -> bool:
        """Whether every output has the same size (else batches hold one image)."""
        return bool(getattr(self.transform, "fixed_size", True))


@dataclass(frozen=True)
class PartContext:
    """What a hook knows about the part being extracted."""

    part: str
    names: Sequence[str]
    image_root: Path
    split_name: str | None = None
    device: str = "cpu"
    batch_size: int = 32
    workers: int = 0
    cache_dir: Path | None = None


def sha256_of_file(path: str | os.PathLike) -> str:
    from harness.io import sha256_file

    return sha256_file(path)


def fingerprint_digest(fingerprint: Mapping[str, Any]) -> str:
    """sha256 of a fingerprint dict (canonical JSON)."""
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Method:
    """Base class of registered methods; subclasses set ``config_cls`` and the hooks.

    Subclasses are registered as entry points of the group ``harness.methods`` (or in-process
    with :func:`methods.registry.register_method`) and built with
    :func:`methods.registry.get_method`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_cls: ClassVar[type]
    requires_weights: ClassVar[bool] = True

    def __init__(self, config, weights: str | os.PathLike | None = None):
        self.config = config
        self.weights = None if weights is None else Path(weights)
        if self.requires_weights and self.weights is None:
            raise HarnessError(
                f"method {self.name} needs --weights (a checkpoint file); nothing is downloaded"
            )
        if self.weights is not None and not self.weights.is_file():
            raise HarnessError("weights file not found", self.weights)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], weights: str | os.PathLike | None = None):
        """Build from user options (``key -> value`` strings); unknown keys are an error."""
        config = config_from_mapping(cls.config_cls, dict(options), what=f"method {cls.name}")
        return cls(config, weights=weights)

    @classmethod
    def option_names(cls) -> list[str]:
        return sorted(f.name for f in dataclasses.fields(cls.config_cls))

    # -- hooks ---------------------------------------------------------------------------
    def prepare(self, context: PartContext) -> None:
        """Run once before ``context.part`` is extracted (default: nothing)."""

    def image_loader(self, context: PartContext) -> ImageLoader:
        raise NotImplementedError

    def build_model(self, device):
        """The descriptor network on ``device`` in eval mode, weights loaded."""
        raise NotImplementedError

    def encode(self, model, images, context: PartContext):
        """``uint8 (B, 3, H, W)`` on the device -> ``(B, D)`` L2-normalised descriptors."""
        from methods.transforms import normalize_batch

        return model(normalize_batch(images))

    @property
    def descriptor_dim(self) -> int:
        raise NotImplementedError

    # -- provenance ----------------------------------------------------------------------
    def weight_files(self) -> dict[str, Path]:
        """Files whose content determines the descriptors (role -> path)."""
        return {} if self.weights is None else {"weights": self.weights}

    def fingerprint(self) -> dict:
        """Everything that determines the descriptors, as JSON-ready data."""
        return {
            "method": self.name,
            "config": config_to_dict(self.config),
            "files": {
                role: sha256_of_file(path) for role, path in sorted(self.weight_files().items())
            },
        }

    def fingerprint_sha256(self) -> str:
        if not hasattr(self, "_fingerprint_sha256"):
            self._fingerprint_sha256 = fingerprint_digest(self.fingerprint())
        return self._fingerprint_sha256

    def __repr__(self) -> str:
        kind = type(self).__name__
        return f"{kind}(name={self.name!r}, config={self.config!r}, weights={self.weights})"
