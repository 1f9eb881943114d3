"""A training-free probe descriptor, and the table that shows the synthetic city poses the
inside-out problem.

The probe needs no weights (none can be downloaded). Pixels are first made photometrically
normalised: luminance becomes its rank among the image's pixels (invariant to exposure, gamma,
contrast) and colour becomes chromaticity after a gray-world white balance (invariant to a
colour cast). Descriptors (``kind``):

- ``pixels``: an 8x6 area-averaged thumbnail of those values, centred, L2-normalised;
- ``hist``: a 2x2 spatial histogram of 4x4x4 (rank, chromaticity) bins, square-rooted, each cell
  L2-normalised on its own (like NetVLAD's intra-normalisation), then the whole;
- ``both``: the two concatenated, L2-normalised.

Pixels of exactly the gray-layout gray (128, 128, 128) get no weight. With ``mask_dir`` the
query pixels outside the true window mask are set to that gray first: the oracle gray layout
of the IOVPR method (what a perfect window segmentation would give).

:func:`probe_table` evaluates it with the harness evaluator on the outdoor queries, the indoor
queries and the indoor queries as oracle gray layouts, next to the R@1 of a random ranking and
the R@1 of the indoor queries with at least 10/20/30% window pixels.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
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
THUMB_SIZE = (8, 6)  # width, height
HIST_BINS = 4  # per channel: 4 x 4 x 4 colours
HIST_GRID = (2, 2)  # spatial cells (columns, rows)
GRAY_VALUE = 128  # the uniform gray of a gray layout


def _l2(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def probe_descriptor(image: np.ndarray, kind: str = "hist") -> np.ndarray:
    """The probe descriptor of one RGB uint8 image (H, W, 3); float32, L2-normalised.

    Pixels of exactly the gray-layout gray carry no information and get no weight (as a model
    trained on gray layouts learns to ignore them); natural images practically never contain
    such pixels, so for them this changes nothing.
    """
    if kind not in PROBE_KINDS:
        raise ValueError(f"kind must be one of {PROBE_KINDS}, got {kind!r}")
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, image.shape
    valid = ~np.all(image == GRAY_VALUE, axis=2)
    if not valid.any():  # nothing but gray: no information, but still a unit vector
        return np.full(probe_dim(kind), 1.0 / np.sqrt(probe_dim(kind)), dtype=np.float32)
    colours = _normalised_colours(image, valid)
    parts = []
    if kind in ("pixels", "both"):
        parts.append(_thumbnail(colours, valid))
    if kind in ("hist", "both"):
        parts.append(_histogram(colours, valid))
    descriptor = np.concatenate(parts)
    if not np.any(descriptor):  # e.g. a window within one thumbnail cell: nothing to compare
        return np.full(probe_dim(kind), 1.0 / np.sqrt(probe_dim(kind)), dtype=np.float32)
    return _l2(descriptor).astype(np.float32)


def _normalised_colours(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per pixel (H, W, 3) float32: luminance rank in [0, 1) among the valid pixels (invariant
    to any monotonic change of brightness: exposure, gamma, contrast) and the two chromaticities
    R/(R+G+B), G/(R+G+B) after a gray-world white balance (invariant to a colour cast)."""
    rgb = image.astype(np.float32)
    means = rgb[valid].mean(axis=0) + 1.0
    balanced = rgb * (means.mean() / means)
    luminance = balanced.sum(axis=2)
    # Rank by a cumulative histogram of the integer luminance (exact ties share a rank).
    levels = np.clip(luminance, 0, 765).astype(np.int64)
    below = np.concatenate([[0], np.cumsum(np.bincount(levels[valid], minlength=766))])
    rank = below[levels].astype(np.float32) / max(int(valid.sum()), 1)
    total = luminance + 3.0
    return np.stack([rank, balanced[..., 0] / total, balanced[..., 1] / total], axis=-1)


def _thumbnail(colours: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Area-averaged thumbnail of the normalised colours of the valid pixels, centred;
    cells less than half valid are zero (unless no cell is half valid)."""
    weight = valid.astype(np.float32)
    coverage = np.asarray(Image.fromarray(weight).resize(THUMB_SIZE, Image.BOX))
    summed = np.stack(
        [
            np.asarray(Image.fromarray(colours[..., c] * weight).resize(THUMB_SIZE, Image.BOX))
            for c in range(3)
        ],
        axis=-1,
    )
    thumb = summed / np.maximum(coverage, 1e-6)[..., None]
    use = coverage >= 0.5
    if not use.any():  # a tiny window: take whatever cells it touches
        use = coverage > 0
    # Chromaticities vary less than ranks: scale them to comparable spread.
    thumb = (thumb - thumb[use].mean(axis=0)) * np.array([1.0, 3.0, 3.0], dtype=np.float32)
    thumb = np.where(use[..., None], thumb, 0.0)
    return _l2(thumb.reshape(-1).astype(np.float32))


def _histogram(colours: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Spatial histogram of the normalised colours (luminance rank x 2 chromaticities) of the
    valid pixels, square-rooted, each cell normalised on its own."""
    height, width = colours.shape[:2]
    rank_bin = np.minimum((colours[..., 0] * HIST_BINS).astype(np.int64), HIST_BINS - 1)
    # Chromaticities of natural colours lie in ~[0.2, 0.5]: bin that range.
    chroma = np.clip((colours[..., 1:] - 0.2) / 0.3, 0, 0.999)
    chroma_bin = (chroma * HIST_BINS).astype(np.int64)
    code = (rank_bin * HIST_BINS + chroma_bin[..., 0]) * HIST_BINS + chroma_bin[..., 1]
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
        raise HarnessError(
            "window mask not found (oracle gray layouts need one per query)", path
        ) from None
    except OSError as exc:
        raise HarnessError(f"unreadable window mask ({exc})", path) from None
    if mask.shape != shape:
        raise HarnessError(f"window mask is {mask.shape[::-1]}, its image is {shape[::-1]}", path)
    return mask


def describe_images(
    root: str | os.PathLike,
    names: Sequence[str],
    kind: str = "hist",
    mask_dir: str | os.PathLike | None = None,
    desc: str = "probe",
) -> np.ndarray:
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


def write_probe_features(
    split: Split,
    out_path: str | os.PathLike,
    mask_dir: str | os.PathLike | None = None,
    kind: str = "hist",
    database: np.ndarray | None = None,
) -> Path:
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
    queries = describe_images(
        split.query_root, split.query_names, kind, mask_dir, desc=f"{split.name} queries"
    )
    if database is None:
        database = describe_images(
            split.database_root, split.database_names, kind, desc=f"{split.name} database"
        )
    assert database.shape == (split.num_database, probe_dim(kind)), database.shape
    attrs = {
        "descriptor": kind,
        "thumb_size": list(THUMB_SIZE),
        "hist_bins": HIST_BINS,
        "gray_layout": "oracle" if mask_dir is not None else "none",
    }
    return write_features(
        out_path,
        split=split.name,
        method=probe_method_name(kind, mask_dir is not None),
        query=(list(split.query_names), queries),
        database=(list(split.database_names), database),
        attrs=attrs,
    )


@dataclass(frozen=True)
class ProbeRow:
    """One line of the probe table.

    ``r1_by_window``: for indoor queries, {fraction: R@1 over the queries whose true window
    fraction is at least that} (the 10/20/30% thresholds of the IOVPR layout sets).
    """

    queries: str  # e.g. "Indoor-Ams 1 (oracle gray layout)"
    split: str
    num_queries: int
    num_database: int
    recalls: dict  # {1: r, 5: r, 10: r} as fractions
    chance_r1: float
    r1_by_window: dict = field(default_factory=dict)


WINDOW_THRESHOLDS = (0.1, 0.2, 0.3)


def chance_recall_at_1(split: Split) -> float:
    """Expected R@1 of a random ranking: the mean fraction of the database that is positive."""
    from harness.ground_truth import positives_within_radius

    positives = positives_within_radius(split.database_utm, split.query_utm, split.radius_m)
    return float(np.mean(positives.counts / max(split.num_database, 1)))


def evaluate_probe(feature_path: Path, split: Split, ns: Sequence[int] = (1, 5, 10)):
    """Recall@N of a probe feature file by the harness evaluator, and the 0-based rank of each
    query's first positive (-1: none in the top-K)."""
    from harness.config import EvalConfig
    from harness.evaluate import evaluate

    result = evaluate(
        [feature_path], split, EvalConfig(recall_ns=tuple(ns), ngpu=0, checksums=False)
    )
    recalls = {n: float(result.scores[f"recall@{n}"]) for n in ns}
    return recalls, np.asarray(result.prediction_data.first_positive_rank)


PROBE_SETS = (
    ("Outdoor-Ams (outdoor queries)", "outdoor-ams", False),
    ("Indoor-Ams 1 (raw)", "indoor-ams-1", False),
    ("Indoor-Ams 1 (oracle gray layout)", "indoor-ams-1", True),
    ("Indoor-Ams 2 (raw)", "indoor-ams-2", False),
    ("Indoor-Ams 2 (oracle gray layout)", "indoor-ams-2", True),
    ("Ams30k test (outdoor queries)", "ams30k-test", False),
)


def probe_table(
    city_root: str | os.PathLike,
    data_root: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    prefix: str = "synth-",
    kind: str = "hist",
    ns: Sequence[int] = (1, 5, 10),
) -> list[ProbeRow]:
    """Write probe feature files for the city's evaluation splits and evaluate them.

    The splits must be registered (``harness splits prepare --root CITY --prefix synth-``).
    """
    from harness.splits import get_split
    from synth.dataset import CityInfo

    info = CityInfo.load(city_root)
    fractions = {
        q["name"]: q["window_fraction"] for q in info.query_metadata() if "window_fraction" in q
    }
    out_dir = Path(out_dir)
    rows = []
    database_cache: dict[tuple, np.ndarray] = {}
    for label, builtin, oracle in PROBE_SETS:
        split = get_split(prefix + builtin, data_root)
        key = (split.database_root, split.database_names)
        if key not in database_cache:
            database_cache[key] = describe_images(
                split.database_root, split.database_names, kind, desc=f"{split.name} database"
            )
        path = out_dir / f"{split.name}.{probe_method_name(kind, oracle)}.h5"
        write_probe_features(
            split, path, info.masks_dir if oracle else None, kind, database_cache[key]
        )
        recalls, first_rank = evaluate_probe(path, split, ns)
        by_window = {}
        if all(name in fractions for name in split.query_names):
            window = np.array([fractions[name] for name in split.query_names])
            for threshold in WINDOW_THRESHOLDS:
                chosen = window >= threshold
                by_window[threshold] = (
                    float(np.mean(first_rank[chosen] == 0)) if chosen.any() else float("nan")
                )
        rows.append(
            ProbeRow(
                label,
                split.name,
                split.num_queries,
                split.num_database,
                recalls,
                chance_recall_at_1(split),
                by_window,
            )
        )
    return rows


def format_table(rows: Sequence[ProbeRow], title: str = "") -> str:
    """The probe table in Markdown."""
    ns = sorted(rows[0].recalls) if rows else []
    head = ["Queries", "Split", "#Q", "#DB"] + [f"R@{n}" for n in ns] + ["R@1 chance"]
    head += [f"R@1, window >= {int(100 * t)}%" for t in WINDOW_THRESHOLDS]
    lines = ([f"**{title}**", ""] if title else []) + [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|",
    ]
    for row in rows:
        cells = [row.queries, f"`{row.split}`", str(row.num_queries), str(row.num_database)]
        cells += [f"{100 * row.recalls[n]:.1f}" for n in ns] + [f"{100 * row.chance_r1:.1f}"]
        cells += [
            f"{100 * row.r1_by_window[t]:.1f}" if t in row.r1_by_window else ""
            for t in WINDOW_THRESHOLDS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
