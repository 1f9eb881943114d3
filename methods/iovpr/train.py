"""``harness train iovpr``: SFRS training whose training queries become layouts.

The run is the methods' trainer (:func:`methods.train.trainer.train`: mining, generations,
checkpoints, resume, DDP) with a :class:`~methods.iovpr.layouts.LayoutTransform` as its
``query_augment``: with probability ``layout_prob`` a training query (an outdoor street view)
is replaced by a layout of it, drawn from the ``threshold`` set of ``layouts_dir``. The
augmentation runs before the lineage's colour jitter; positives and negatives stay raw, as
do validation queries. The layout settings are part of the config, so they are recorded in
every checkpoint (``train_config``) and a resume with other settings is refused.

Registered as training ``iovpr`` (:func:`methods.train.registry.run_training`), which SLURM
jobs submit like ``sfrs``. Importing this module does not import torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from methods.iovpr.layouts import LAYOUT_KINDS, THRESHOLDS, make_layout_transform, parse_gray
from methods.train.config import TrainConfig
from methods.train.registry import register_training

logger = logging.getLogger(__name__)


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class IOVPRTrainConfig(TrainConfig):
    """:class:`~methods.train.config.TrainConfig` plus the layout augmentation."""

    layouts: Literal["real", "gray"] = _f(
        "real", "Layout kind: real (the room stays) or gray (non-window pixels gray)."
    )
    layouts_dir: str = _f("", "Layout folder from `harness layouts build`.")
    threshold: int = _f(
        10, "Layout set: rooms with at least this many percent window pixels (10, 20 or 30)."
    )
    layout_prob: float = _f(0.5, "Probability that a training query becomes a layout.")
    gray: str = _f(
        "128", "Gray of gray layouts: a level (128), R,G,B, or 'mean' (the normalisation mean)."
    )
    layout_flip: bool = _f(True, "Mirror the drawn room (and its mask) half of the time.")

    def __post_init__(self):
        super().__post_init__()
        if not self.layouts_dir:
            raise ValueError("layouts_dir is required (build one with `harness layouts build`)")
        if self.layouts not in LAYOUT_KINDS:
            raise ValueError(f"layouts must be one of {LAYOUT_KINDS}, got {self.layouts!r}")
        if not 0.0 <= self.layout_prob <= 1.0:
            raise ValueError(f"layout_prob must be in [0, 1], got {self.layout_prob}")
        if not 0 < self.threshold < 100:
            raise ValueError(f"threshold is a percentage, got {self.threshold}")
        parse_gray(self.gray)

    @property
    def gray_rgb(self) -> tuple[int, int, int]:
        return parse_gray(self.gray)


def layout_augment(config: IOVPRTrainConfig):
    """The ``query_augment`` of a run: the layout transform of ``config``."""
    if config.threshold not in THRESHOLDS:
        logger.warning(
            "threshold %d is not one of the method's sets %s", config.threshold, THRESHOLDS
        )
    return make_layout_transform(
        config.layouts_dir, kind=config.layouts, threshold=config.threshold,
        probability=config.layout_prob, seed=config.seed, gray=config.gray, flip=config.layout_flip,
    )


@register_training(
    "iovpr",
    IOVPRTrainConfig,
    defaults={"mode": "sfrs"},
    description="IOVPR: SFRS with real or gray ADE20k layouts on the training queries",
)
def train_iovpr(config: IOVPRTrainConfig) -> Path:
    """Train (or resume) an IOVPR model; returns the best checkpoint."""
    from methods.train.trainer import train

    augment = layout_augment(config)
    logger.info("IOVPR training with %s", augment.describe())
    return train(config, query_augment=augment)
