"""The ``harness eval --method`` hook: produce the feature files of a method on a split.

Files live under ``<out_dir>/<method>-<fingerprint[:12]>[-<precision>]/`` (no suffix for
fp32, so features of different precisions sit side by side): the split's queries in
``<split>/query.h5``, its database in ``database-<key[:16]>/`` in shards of at most
:data:`DATABASE_SHARD_ROWS` images (an interrupted extraction of a large database resumes at
the first unfinished shard). The database folder is keyed by the image set (folder and names)
and the descriptor dtype, so splits that share a database (Indoor-Ams 1 and 2 and
Outdoor-Ams) extract it once. A file is reused only when its recorded fingerprint (method
config and the sha256 of every weight file), images, dtype and precision match; anything else
is extracted again (the log says why).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Mapping

logger = logging.getLogger(__name__)

DATABASE_SHARD_ROWS = 200_000


def feature_folder(
    out_dir: str | os.PathLike, method, split_name: str, precision: str = "fp32"
) -> Path:
    """Where the queries of ``split_name`` go."""
    suffix = "" if precision == "fp32" else f"-{precision}"
    return Path(out_dir) / f"{method.name}-{method.fingerprint_sha256()[:12]}{suffix}" / split_name


def database_folder(out_dir: str | os.PathLike, method, split, dtype: str,
                    precision: str = "fp32") -> Path:
    """Where a split's database goes: one folder per image set and dtype (beside the
    precision's query folders)."""
    from methods.extract import image_list_sha256

    images = image_list_sha256(split.database_root, split.database_names)
    key = hashlib.sha256(f"{images}|{dtype}".encode()).hexdigest()
    return feature_folder(out_dir, method, f"database-{key[:16]}", precision)


def provide_features(
    *,
    method: str,
    split,
    out_dir: str | os.PathLike,
    weights: str | None,
    options: Mapping[str, str],
    device: str | None,
    batch_size: int | None,
    precision: str | None = None,
) -> list[Path]:
    """Extract whatever is missing for ``method`` on ``split``; return every feature file.

    Args:
        method: a registered method name (``harness``'s ``--method``).
        split: the :class:`harness.splits.Split` to embed.
        out_dir: cache folder for feature files.
        weights: checkpoint file, if the method needs one.
        options: method options (``key -> value`` strings); unknown keys are an error.
        device: ``cuda``, ``cpu``, ... (``None``: CUDA when available).
        batch_size: images per batch (``None``: a default for the device).
        precision: ``fp32`` (``None``: the default), ``bf16`` or ``fp16``
            (:mod:`methods.precision`).

    Returns:
        ``query.h5`` followed by the database shard files.
    """
    from methods.extract import (
        ExtractOptions,
        build_for_device,
        differences,
        extract,
        image_list_sha256,
        resolve_device,
        shard_file,
    )
    from methods.precision import check_precision
    from methods.registry import get_method

    precision = check_precision(precision)
    device_obj = resolve_device(device)  # before anything else: a missing GPU is an error
    instance = get_method(method, options, weights=weights)
    folder = feature_folder(out_dir, instance, split.name, precision)
    shards = max(1, math.ceil(split.num_database / DATABASE_SHARD_ROWS))
    # The folder is a cache keyed by the fingerprint: a stale file in it is replaced.
    extract_options = ExtractOptions(
        device=device, batch_size=batch_size, overwrite=True, precision=precision
    )
    fingerprint = instance.fingerprint_sha256()
    query_path = shard_file(folder, "query", None)
    db_folder = database_folder(out_dir, instance, split, extract_options.dtype, precision)
    db_paths = [shard_file(db_folder, "database", (i, shards)) for i in range(shards)]
    images = {
        "query": image_list_sha256(split.query_root, split.query_names),
        "database": image_list_sha256(split.database_root, split.database_names),
    }
    jobs = []
    for path, part, shard in [(query_path, "query", None)] + [
        (p, "database", (i, shards)) for i, p in enumerate(db_paths)
    ]:
        found = ["missing"] if not path.is_file() else differences(
            path,
            fingerprint=fingerprint,
            dtype=extract_options.dtype,
            split_sha256=None,
            parts=(part,),
            precision=precision,
            images_sha256={part: images[part]},
        )
        if found:
            if path.is_file():
                logger.info("%s holds other features (%s): extracting again", path,
                            "; ".join(found))
            jobs.append((path if part == "query" else db_folder, (part,), shard))
    paths = [query_path, *db_paths]
    if not jobs:
        logger.info("reusing %d feature file(s) of %s for %s", len(paths), method, split.name)
        return paths
    logger.info(
        "extracting %d of %d feature file(s) of %s on %s (database in %s)",
        len(jobs),
        len(paths),
        method,
        split.name,
        db_folder,
    )
    model = build_for_device(instance, device_obj)
    for out, parts, shard in jobs:
        extract(
            instance,
            split=split,
            out=out,
            parts=parts,
            shard=shard,
            options=extract_options,
            model=model,
            cache_dir=Path(out_dir) / "cache",
        )
    return paths
