"""Image datasets for extraction and training, with errors that name the image.

Workers never raise for a bad image: they return the error as data, and the main process
raises one :class:`HarnessError` naming the file (an exception raised inside a worker would
reach the user wrapped in a multi-line traceback from the data loader).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from harness.errors import HarnessError

logger = logging.getLogger(__name__)


def default_workers() -> int:
    """Data-loader workers: up to 8, leaving a core for the main process."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def describe_image_error(exc: BaseException) -> str:
    """One line for why an image could not be read (for ``error: <file>: <problem>``)."""
    if isinstance(exc, FileNotFoundError):
        return "image file not found"
    if isinstance(exc, IsADirectoryError):
        return "image path is a directory"
    if isinstance(exc, PermissionError):
        return "image file is not readable (permission denied)"
    text = " ".join(str(exc).split())
    return (
        f"unreadable image ({type(exc).__name__}: {text})"
        if text
        else f"unreadable image ({type(exc).__name__})"
    )


class ImageListDataset:
    """``names`` (relative to ``root``) -> ``(row, uint8 image or None, error or None)``."""

    def __init__(self, root: str | os.PathLike, names: Sequence[str], loader: Callable):
        self.root = Path(root)
        self.names = list(names)
        self.loader = loader

    def __len__(self) -> int:
        return len(self.names)

    def path(self, row: int) -> Path:
        return self.root / self.names[row]

    def __getitem__(self, row: int):
        path = self.path(row)
        try:
            return row, self.loader(path, self.names[row]), None
        except Exception as exc:  # reported by the main process, naming the file
            return row, None, (str(path), describe_image_error(exc))


@dataclass
class ImageBatch:
    rows: "object"  # LongTensor (B,)
    images: "object"  # uint8 (B, 3, H, W)


def collate_images(items):
    import torch

    for _, _, error in items:
        if error is not None:
            return error
    rows = torch.tensor([row for row, _, _ in items], dtype=torch.long)
    return ImageBatch(rows=rows, images=torch.stack([image for _, image, _ in items]))


def raise_if_error(batch) -> None:
    if isinstance(batch, tuple):
        path, message = batch
        raise HarnessError(message, path)


def image_batches(
    dataset: ImageListDataset,
    *,
    batch_size: int,
    workers: int = 0,
    rows: Sequence[int] | None = None,
    pin_memory: bool = False,
) -> Iterator[ImageBatch]:
    """Batches of ``dataset`` (all rows in order, or ``rows``); a bad image raises HarnessError."""
    from torch.utils.data import DataLoader, Subset

    source = dataset if rows is None else Subset(dataset, list(rows))
    loader = DataLoader(
        source,
        batch_size=max(1, int(batch_size)),
        shuffle=False,
        num_workers=max(0, int(workers)),
        collate_fn=collate_images,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
    for batch in loader:
        raise_if_error(batch)
        yield batch


def read_image_list(path: str | os.PathLike) -> tuple[Path, list[str]]:
    """``--images``: a folder (every image below it, sorted) or a text file of paths.

    Returns the root the names are relative to, and the names. A list file holds one path a
    line (``#`` comments and blank lines skipped), relative to the list's folder or absolute
    under it.
    """
    path = Path(path)
    if path.is_dir():
        extensions = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
        names = sorted(
            p.relative_to(path).as_posix()
            for p in path.rglob("*")
            if p.suffix.lower() in extensions and p.is_file()
        )
        if not names:
            raise HarnessError("folder holds no images (.jpg, .png, ...)", path)
        return path, names
    if not path.is_file():
        raise HarnessError("image folder or list file not found", path)
    root = path.parent.resolve()
    names = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise HarnessError("image list is not a UTF-8 text file", path) from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = Path(line)
        if entry.is_absolute():
            try:
                entry = entry.resolve().relative_to(root)
            except ValueError:
                raise HarnessError(
                    f"line {number}: {line} is not below the list's folder {root}", path
                ) from None
        names.append(entry.as_posix())
    if not names:
        raise HarnessError("image list is empty", path)
    if len(set(names)) != len(names):
        raise HarnessError("image list names an image twice", path)
    return root, names


@dataclass(frozen=True, eq=False)
class SampledPart:
    """The sampled rows of one part of a split, with what it takes to load their images."""

    part: str
    rows: np.ndarray
    names: tuple[str, ...]
    root: str


def sample_split_images(split, count: int, rng: np.random.Generator) -> list[SampledPart]:
    """``count`` images drawn without replacement (with ``rng``) from the split's queries and
    database together, per part in row order: what PCA fitting and cluster initialisation
    embed."""
    total = split.num_queries + split.num_database
    chosen = np.sort(rng.choice(total, size=min(count, total), replace=False))
    parts = []
    for part, offset, size in (("query", 0, split.num_queries),
                               ("database", split.num_queries, split.num_database)):
        rows = chosen[(chosen >= offset) & (chosen < offset + size)] - offset
        if rows.size:
            names = split.query_names if part == "query" else split.database_names
            root = split.query_root if part == "query" else split.database_root
            parts.append(SampledPart(part, rows, names, root))
    return parts
