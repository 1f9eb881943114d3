"""A training-free probe descriptor, and the table that shows the synthetic city poses the
inside-out problem.

The probe needs no weights (none can be downloaded): a tiny thumbnail (area-averaged,
mean-centred per channel) and a spatial colour histogram, each L2-normalised, concatenated and
L2-normalised again. With ``mask_dir`` the query pixels outside the true window mask are set to
a uniform gray first: the oracle gray layout of the IOVPR method (what a perfect window
segmentation would give).

:func:`probe_table` evaluates it with the harness evaluator on the outdoor queries, the indoor
queries and the indoor queries as oracle gray layouts, next to the R@1 of a random ranking.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from harness.errors import HarnessError
from harness.features import write_features
from harness.splits import Split

logger = logging.getLogger(__name__)

PROBE_KINDS = ("pixels", "hist", "both")
THUMB_SIZE = (16, 12)  # width, height
HIST_BINS = 4  # per channel: 4 x 4 x 4 colours
HIST_GRID = (2, 2)  # spatial cells (columns, rows)
GRAY_VALUE = 128  # the uniform gray of a gray layout


def _l2(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def probe_descriptor(image: np.ndarray, kind: str = "both") -> np.ndarray:
    """The probe descriptor of one RGB uint8 image (H, W, 3); float32, L2-normalised.

    Pixels of exactly the gray-layout gray carry no information and get no weight (as a model
    trained on gray layouts learns to ignore them); natural images practically never contain
    such pixels, so for them this changes nothing.
    """
    if kind not in PROBE_KINDS:
        raise ValueError(f"kind must be one of {PROBE_KINDS}, got {kind!r}")
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, image.shape
    valid = ~np.all(image == GRAY_VALUE, axis=2)
    if not valid.any():
        return np.zeros(probe_dim(kind), dtype=np.float32)
    parts = []
    if kind in ("pixels", "both"):
        parts.append(_thumbnail(image, valid))
    if kind in ("hist", "both"):
        parts.append(_histogram(image, valid))
    return _l2(np.concatenate(parts)).astype(np.float32)


def _thumbnail(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Area-averaged thumbnail of the valid pixels, standardised per channel (invariant to
    exposure, colour cast and contrast); cells less than half valid are zero."""
    weight = valid.astype(np.float32)
    summed = np.stack([
        np.asarray(Image.fromarray(image[..., c].astype(np.float32) * weight).resize(THUMB_SIZE, Image.BOX))
        for c in range(3)], axis=-1)
    coverage = np.asarray(Image.fromarray(weight).resize(THUMB_SIZE, Image.BOX))
    thumb = summed / np.maximum(coverage, 1e-6)[..., None]
    use = coverage >= 0.5
    if not use.any():
        return np.zeros(THUMB_SIZE[0] * THUMB_SIZE[1] * 3, dtype=np.float32)
    mean = thumb[use].mean(axis=0)
    std = thumb[use].std(axis=0) + 1.0
    thumb = np.where(use[..., None], (thumb - mean) / std, 0.0)
    return _l2(thumb.reshape(-1).astype(np.float32))


def _histogram(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Spatial colour histogram of the valid pixels after a gray-world white balance (so that a
    colour cast does not move every bin); Hellinger (square-root) normalised."""
    height, width = image.shape[:2]
    pixels = image[valid].astype(np.float32)
    balanced = np.clip(image.astype(np.float32) * (110.0 / (pixels.mean(axis=0) + 1.0)), 0, 255)
    colour = (balanced.astype(np.int64) * HIST_BINS) // 256
    code = (colour[..., 0] * HIST_BINS + colour[..., 1]) * HIST_BINS + colour[..., 2]
    cols, rows = HIST_GRID
    cell_x = np.minimum(np.arange(width) * cols // width, cols - 1)
    cell_y = np.minimum(np.arange(height) * rows // height, rows - 1)
    cell = cell_y[:, None] * cols + cell_x[None, :]
    bins = HIST_BINS**3
    hist = np.bincount((cell * bins + code)[valid], minlength=cols * rows * bins)
    hist = np.sqrt(hist.astype(np.float32)).reshape(cols * rows, bins)
    # Intra-normalisation (as NetVLAD normalises each cluster): every cell counts the same
    # however many valid pixels it holds; an empty cell counts nothing.
    norms = np.linalg.norm(hist, axis=1, keepdims=True)
    hist = np.where(norms > 0, hist / np.maximum(norms, 1e-12), 0.0)
    return _l2(hist.reshape(-1))


def gray_layout(image: np.ndarray, window_mask: np.ndarray) -> np.ndarray:
    """The image with every non-window pixel set to :data:`GRAY_VALUE`."""
    assert window_mask.shape == image.shape[:2], (window_mask.shape, image.shape)
    out = np.full_like(image, GRAY_VALUE)
    out[window_mask] = image[window_mask]
    return out


def _load_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise HarnessError("image not found", path) from None
    except OSError as exc:
        raise HarnessError(f"unreadable image ({exc})", path) from None


def _load_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as img:
            mask = np.asarray(img.convert("L")) > 127
    except FileNotFoundError:
        raise HarnessError("window mask not found (oracle gray layouts need one per query)", path) from None
    except OSError as exc:
        raise HarnessError(f"unreadable window mask ({exc})", path) from None
    if mask.shape != shape:
        raise HarnessError(f"window mask is {mask.shape[::-1]}, its image is {shape[::-1]}", path)
    return mask


def describe_images(root: str | os.PathLike, names: Sequence[str], kind: str = "both",
                    mask_dir: str | os.PathLike | None = None, desc: str = "probe") -> np.ndarray:
    """Probe descriptors (len(names), D) of images under ``root``; with ``mask_dir``, of their
    oracle gray layouts (mask of ``a/b.jpg`` at ``mask_dir/a/b.png``)."""
    rows = []
    for name in tqdm(names, desc=desc, unit="img", leave=False):
        image = _load_rgb(Path(root) / name)
        if mask_dir is not None:
            mask = _load_mask(Path(mask_dir) / Path(name).with_suffix(".png"), image.shape[:2])
            image = gray_layout(image, mask)
        rows.append(probe_descriptor(image, kind))
    if not rows:
        return np.zeros((0, probe_dim(kind)), dtype=np.float32)
    return np.stack(rows)


def probe_dim(kind: str = "both") -> int:
    pixels = THUMB_SIZE[0] * THUMB_SIZE[1] * 3
    hist = HIST_GRID[0] * HIST_GRID[1] * HIST_BINS**3
    return {"pixels": pixels, "hist": hist, "both": pixels + hist}[kind]


def probe_method_name(kind: str = "both", oracle: bool = False) -> str:
    return f"probe-{kind}" + ("-oracle-gray" if oracle else "")


def write_probe_features(split: Split, out_path: str | os.PathLike,
                         mask_dir: str | os.PathLike | None = None, kind: str = "both",
                         database: np.ndarray | None = None) -> Path:
    """Compute the probe descriptors of a split's queries and database into a feature file.

    Args:
        split: the split (its ``query_root``/``database_root`` locate the images).
        out_path: the HDF5 feature file to write (atomically).
        mask_dir: folder of true window masks: queries become oracle gray layouts.
        kind: ``pixels``, ``hist`` or ``both``.
        database: precomputed database descriptors (rows in ``split.database_names`` order),
            to share them between splits with the same database.

    Returns:
        ``out_path``.
    """
    if not split.query_root or not split.database_root:
        raise HarnessError(f"split {split.name} has no image folders (query_root/database_root)")
    queries = describe_images(split.query_root, split.query_names, kind, mask_dir,
                              desc=f"{split.name} queries")
    if database is None:
        database = describe_images(split.database_root, split.database_names, kind,
                                   desc=f"{split.name} database")
    assert database.shape == (split.num_database, probe_dim(kind)), database.shape
    attrs = {"descriptor": kind, "thumb_size": list(THUMB_SIZE), "hist_bins": HIST_BINS,
             "gray_layout": "oracle" if mask_dir is not None else "none"}
    return write_features(
        out_path, split=split.name, method=probe_method_name(kind, mask_dir is not None),
        query=(list(split.query_names), queries), database=(list(split.database_names), database),
        attrs=attrs,
    )


@dataclass(frozen=True)
class ProbeRow:
    """One line of the probe table."""

    queries: str  # e.g. "Indoor-Ams 1 (oracle gray layout)"
    split: str
    num_queries: int
    num_database: int
    recalls: dict  # {1: r, 5: r, 10: r} as fractions
    chance_r1: float


def chance_recall_at_1(split: Split) -> float:
    """Expected R@1 of a random ranking: the mean fraction of the database that is positive."""
    from harness.ground_truth import positives_within_radius

    positives = positives_within_radius(split.database_utm, split.query_utm, split.radius_m)
    return float(np.mean(positives.counts / max(split.num_database, 1)))


def evaluate_probe(feature_path: Path, split: Split, ns: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@N of a probe feature file, computed by the harness evaluator."""
    from harness.config import EvalConfig
    from harness.evaluate import evaluate

    result = evaluate([feature_path], split, EvalConfig(recall_ns=tuple(ns), ngpu=0, checksums=False))
    return {n: float(result.scores[f"recall@{n}"]) for n in ns}


PROBE_SETS = (
    ("Outdoor-Ams (outdoor)", "outdoor-ams", False),
    ("Indoor-Ams 1 (raw)", "indoor-ams-1", False),
    ("Indoor-Ams 1 (oracle gray layout)", "indoor-ams-1", True),
    ("Indoor-Ams 2 (raw)", "indoor-ams-2", False),
    ("Indoor-Ams 2 (oracle gray layout)", "indoor-ams-2", True),
    ("Ams30k test (outdoor)", "ams30k-test", False),
)


def probe_table(city_root: str | os.PathLike, data_root: str | os.PathLike, out_dir: str | os.PathLike,
                prefix: str = "synth-", kind: str = "both", ns: Sequence[int] = (1, 5, 10)) -> list[ProbeRow]:
    """Write probe feature files for the city's evaluation splits and evaluate them.

    The splits must be registered (``harness splits prepare --root CITY --prefix synth-``).
    """
    from harness.splits import get_split
    from harness.synth.dataset import MASKS_DIR

    out_dir = Path(out_dir)
    masks = Path(city_root) / MASKS_DIR
    rows = []
    database_cache: dict[tuple, np.ndarray] = {}
    for label, builtin, oracle in PROBE_SETS:
        split = get_split(prefix + builtin, data_root)
        key = (split.database_root, split.database_names)
        if key not in database_cache:
            database_cache[key] = describe_images(split.database_root, split.database_names, kind,
                                                  desc=f"{split.name} database")
        path = out_dir / f"{split.name}.{probe_method_name(kind, oracle)}.h5"
        write_probe_features(split, path, masks if oracle else None, kind, database_cache[key])
        rows.append(ProbeRow(label, split.name, split.num_queries, split.num_database,
                             evaluate_probe(path, split, ns), chance_recall_at_1(split)))
    return rows


def format_table(rows: Sequence[ProbeRow], title: str = "") -> str:
    """The probe table in Markdown."""
    ns = sorted(rows[0].recalls) if rows else []
    head = ["Queries", "Split", "#Q", "#DB"] + [f"R@{n}" for n in ns] + ["R@1 chance"]
    lines = ([f"**{title}**", ""] if title else []) + [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|",
    ]
    for row in rows:
        cells = [row.queries, f"`{row.split}`", str(row.num_queries), str(row.num_database)]
        cells += [f"{100 * row.recalls[n]:.1f}" for n in ns] + [f"{100 * row.chance_r1:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
