"""Training tuples as images: the dataset a training round's DataLoader reads, and its collate.

A tuple is one row of image indices: column 0 a training query, the others database images
(positive, negatives, and for SFRS the difficult positives), as :mod:`methods.train.mining`
writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from methods.base import open_rgb
from methods.transforms import TrainTransform

QueryAugment = Callable  # (PIL.Image, numpy Generator) -> PIL.Image, picklable



# ---------------------------------------------------------------------------------- data
class TupleDataset:
    """Training tuples -> ``uint8 (S, 3, H, W)``; column 0 is a query, the rest database images.

    ``query_augment(image, rng)`` (for example a layout composite) is applied to the query
    before the colour jitter. Randomness is seeded per tuple, so results do not depend on the
    number of workers.
    """

    def __init__(
        self,
        split,
        tuples: np.ndarray,
        transform: TrainTransform,
        seed: tuple,
        query_augment: QueryAugment | None = None,
    ):
        self.query_root = Path(split.query_root)
        self.database_root = Path(split.database_root)
        self.query_names = split.query_names
        self.database_names = split.database_names
        self.tuples = np.asarray(tuples, dtype=np.int64)
        self.transform = transform
        self.seed = tuple(int(s) for s in seed)
        self.query_augment = query_augment

    def __len__(self) -> int:
        return int(self.tuples.shape[0])

    def __getitem__(self, index: int):
        from methods.data import describe_image_error

        images = []
        row = self.tuples[index]
        rng = np.random.default_rng(self.seed + (int(index),))
        for column, image_row in enumerate(row.tolist()):
            if column == 0:
                path = self.query_root / self.query_names[image_row]
            else:
                path = self.database_root / self.database_names[image_row]
            try:
                image = open_rgb(path)
            except Exception as exc:
                return index, None, (str(path), describe_image_error(exc))
            if column == 0 and self.query_augment is not None:
                image = self.query_augment(image, rng)
            images.append(self.transform(image, rng))
        return index, torch.stack(images), None


def collate_tuples(items):
    """DataLoader collate: an ``ImageBatch`` of tuples, or the first unreadable image's error."""
    from methods.data import ImageBatch

    for _, _, error in items:
        if error is not None:
            return error
    return ImageBatch(
        rows=torch.tensor([i for i, _, _ in items]), images=torch.stack([x for _, x, _ in items])
    )
