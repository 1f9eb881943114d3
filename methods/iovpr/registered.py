"""The IOVPR methods of ``harness eval --method``: ``iovpr-real`` and ``iovpr-gray``.

* ``iovpr-real``: the SFRS model trained with real layouts (``harness train iovpr --layouts
  real``), applied to the raw queries; at inference it is a NetVLAD model like ``sfrs``.
* ``iovpr-gray``: queries -> window segmentation -> gray layout (non-window pixels set to
  the gray of training) -> descriptor of the model trained with gray layouts. Database images
  are always embedded raw.

Checkpoints are explicit: ``--weights`` is the VPR model; ``--option segmenter=PATH`` the
window segmenter (``harness train window-seg``'s ``best.pth``). Both files' checksums enter
the method's fingerprint, so features of another segmenter are never reused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from methods.base import ImageLoader, PartContext, open_rgb
from methods.iovpr import train as _register_iovpr_training  # noqa: F401  (training "iovpr")
from methods.netvlad import NetVLADMethod, NetVLADOptions

logger = logging.getLogger(__name__)


class IOVPRRealMethod(NetVLADMethod):
    """SFRS trained with real layouts; raw queries and database."""

    description = "IOVPR real layouts: SFRS-NetVLAD trained with real ADE20k layouts (raw queries)"


@dataclass(frozen=True)
class IOVPRGrayOptions(NetVLADOptions):
    """``netvlad`` options plus the segmenter and the gray of the layouts.

    ``segmenter``: window-segmenter checkpoint (required). ``gray``: ``128`` (default, as
    ``harness train iovpr``), ``mean`` or ``R,G,B``; it must be the gray the model was trained
    with. ``segment_short_side``: inference size of the segmenter (default: its training size).
    """

    segmenter: str | None = None
    gray: str = "128"
    segment_short_side: int | None = None

    def __post_init__(self):
        super().__post_init__()
        from methods.iovpr.layouts import parse_gray

        parse_gray(self.gray)
        if self.segment_short_side is not None and self.segment_short_side < 16:
            raise ValueError(f"segment_short_side must be >= 16, got {self.segment_short_side}")


@dataclass(frozen=True)
class GrayLayoutOpener:
    """Picklable image opener for data-loader workers: image + cached mask -> gray layout."""

    mask_folder: str
    gray_rgb: tuple[int, int, int]

    def __call__(self, path, name: str):
        import numpy as np
        from PIL import Image

        from methods.iovpr.layouts import composite_gray, read_mask

        image = open_rgb(path)
        mask_path = Path(self.mask_folder) / f"{name}.png"
        if not mask_path.is_file():
            raise HarnessError(
                "no cached window mask for this query (run `harness segment`)", mask_path
            )
        mask = read_mask(mask_path)
        pixels = np.asarray(image)
        if mask.shape != pixels.shape[:2]:
            raise HarnessError(
                f"cached mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                f"{pixels.shape[1]}x{pixels.shape[0]}", mask_path,
            )
        return Image.fromarray(composite_gray(pixels, mask, self.gray_rgb))


class IOVPRGrayMethod(NetVLADMethod):
    """SFRS trained with gray layouts; queries become gray layouts of their predicted windows."""

    description = ("IOVPR gray layouts: queries -> window segmentation -> gray layout -> "
                   "SFRS-NetVLAD trained with gray layouts (database raw)")
    config_cls = IOVPRGrayOptions

    def __init__(self, config: IOVPRGrayOptions, weights=None):
        super().__init__(config, weights)
        if config.segmenter is None:
            raise HarnessError(
                "method iovpr-gray needs --option segmenter=PATH (a window-segmenter checkpoint "
                "from `harness train window-seg`); nothing is downloaded"
            )
        if not Path(config.segmenter).is_file():
            raise HarnessError(
                "segmenter checkpoint (option segmenter) not found", config.segmenter
            )
        self._mask_folders: dict[tuple, Path] = {}

    @property
    def gray_rgb(self) -> tuple[int, int, int]:
        from methods.iovpr.layouts import parse_gray

        return parse_gray(self.config.gray)

    def weight_files(self) -> dict[str, Path]:
        files = super().weight_files()
        files["segmenter"] = Path(self.config.segmenter)
        return files

    def _check_training_gray(self) -> None:
        """Warn when the checkpoint records other layouts than this method assumes."""
        from methods.iovpr.layouts import parse_gray

        trained = self.checkpoint().meta.get("train_config") or {}
        if "layouts" not in trained:
            return
        if trained["layouts"] != "gray":
            logger.warning(
                "%s was trained with %s layouts, not gray ones", self.weights, trained["layouts"]
            )
        elif parse_gray(trained.get("gray", "128")) != self.gray_rgb:
            logger.warning("%s was trained with gray %s but option gray gives %s", self.weights,
                           parse_gray(trained.get("gray", "128")), self.gray_rgb)

    def prepare(self, context: PartContext) -> None:
        """Segment the windows of every query (cached per segmenter checkpoint)."""
        if context.part != "query":
            return
        from methods.iovpr.segment import default_cache_dir, segment_images
        from methods.iovpr.segmentation import load_segmenter

        self._check_training_gray()
        segmenter = load_segmenter(self.config.segmenter, context.device,
                                   input_short_side=self.config.segment_short_side)
        result = segment_images(
            segmenter, context.image_root, context.names,
            cache_dir=context.cache_dir or default_cache_dir(), device=context.device,
            batch_size=max(1, min(context.batch_size, 16)),
        )
        self._mask_folders[(str(context.image_root), context.split_name)] = result.folder

    def image_loader(self, context: PartContext) -> ImageLoader:
        loader = super().image_loader(context)
        if context.part != "query":
            return loader
        key = (str(context.image_root), context.split_name)
        if key not in self._mask_folders:
            self.prepare(context)
        return ImageLoader(
            loader.transform, GrayLayoutOpener(str(self._mask_folders[key]), self.gray_rgb)
        )
