"""Shared builders for the format tests: downloader-layout folders with real JPEG files and
an MSLS-layout folder with its CSVs (small enough to write in milliseconds)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def downloader_name(east: float, north: float, *, zone: int = 17, letter: str = "T",
                    pano: str = "p", tile: int = 0, note: str = "") -> str:
    """A VPR-datasets-downloader file name (14 @-fields, then the extension)."""
    return (f"@{east:010.2f}@{north:010.2f}@{zone:02d}@{letter}@40.44000@-80.00000@{pano}"
            f"@{tile:02d}@000@000@@@20200101@{note}@.jpg")


def write_jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def write_downloader_folder(folder: Path, database_utm, query_utm) -> tuple[list[str], list[str]]:
    """``folder/{database,queries}/`` with one JPEG per position; returns (db, query) names."""
    names = {}
    for part, utm in (("database", database_utm), ("queries", query_utm)):
        names[part] = []
        for i, (east, north) in enumerate(utm):
            name = downloader_name(east, north, tile=i % 100, note=f"{part}{i}")
            write_jpeg(folder / part / name, seed=i)
            names[part].append(name)
    return names["database"], names["queries"]


def write_msls_city(root: Path, city: str, parts: dict) -> None:
    """``root/train_val/<city>/{query,database}/`` with images and the four CSVs.

    ``parts[part]`` is a list of (key, easting, northing, pano, in_subtask_all) rows.
    """
    for part, rows in parts.items():
        folder = root / "train_val" / city / part
        folder.mkdir(parents=True, exist_ok=True)
        tables = {
            "postprocessed.csv": (["", "key", "easting", "northing", "night", "control_panel",
                                   "view_direction", "unique_cluster"],
                                  lambda i, r: [i, r[0], r[1], r[2], False, False, "Forward", i]),
            "raw.csv": (["", "key", "lon", "lat", "ca", "captured_at", "pano"],
                        lambda i, r: [i, r[0], 12.5, 55.6, 90.0, "2016-01-01 10:00:00", r[3]]),
            "subtask_index.csv": (["", "all", "s2w", "w2s", "o2n", "n2o", "d2n", "n2d"],
                                  lambda i, r: [i, r[4], False, False, False, False, False,
                                                False]),
            "seq_info.csv": (["", "key", "sequence_key", "frame_number"],
                             lambda i, r: [i, r[0], f"seq-{city}", i]),
        }
        for file_name, (header, make_row) in tables.items():
            with open(folder / file_name, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(header)
                for i, row in enumerate(rows):
                    writer.writerow(make_row(i, row))
        for i, row in enumerate(rows):
            write_jpeg(folder / "images" / f"{row[0]}.jpg", seed=i)
