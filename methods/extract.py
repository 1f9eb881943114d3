"""Extraction: run a method over a split (or any image folder) into feature files.

``extract()`` writes the harness feature-file layout (:mod:`harness.features`): batched
loading with workers, a progress bar, the chosen precision (:mod:`methods.precision`: fp32
unless the user asks for bf16 or fp16), atomic files. With
``shard=(i, n)`` the database is cut into ``n`` contiguous row ranges and only range ``i`` is
written (``<out>/database-<i>-of-<n>.h5``; shard 0 also writes ``<out>/query.h5``): a finished
shard whose fingerprint matches is skipped, so an interrupted job array resumes where it
stopped. ``export_hloc()`` rewrites features in hloc's global-descriptor layout.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np

from harness.errors import HarnessError
from harness.features import FeatureWriter, read_info, read_names
from methods.precision import (
    DEFAULT_PRECISION,
    check_precision,
    precision_context,
    recorded_precision,
)
from methods.runtime import resolve_device

logger = logging.getLogger(__name__)

DEFAULT_GPU_BATCH = 32
DEFAULT_CPU_BATCH = 8


@dataclass(frozen=True)
class ExtractOptions:
    """How to run extraction (only ``precision`` and ``dtype`` change the descriptors)."""

    device: str | None = None
    batch_size: int | None = None
    workers: int | None = None
    precision: Literal["fp32", "bf16", "fp16"] = DEFAULT_PRECISION
    dtype: Literal["float32", "float16"] = "float32"
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self):
        if self.batch_size is not None and self.batch_size < 1:
            raise HarnessError(f"batch size must be >= 1, got {self.batch_size}")
        if self.dtype not in ("float32", "float16"):
            raise HarnessError(f"descriptor dtype must be float32 or float16, got {self.dtype!r}")
        check_precision(self.precision)


def image_list_sha256(root: str | os.PathLike, names: Sequence[str]) -> str:
    """Identity of an image set: its folder and its names in order (what extraction reads)."""
    import hashlib

    digest = hashlib.sha256(str(root).encode())
    for name in names:
        digest.update(b"\n" + name.encode())
    return digest.hexdigest()


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` (0-based ``i``) -> ``(i, n)``."""
    if text in (None, ""):
        return None
    index, sep, count = str(text).partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        raise HarnessError(f"--shard must look like i/n (e.g. 0/8), got {text!r}") from None
    if not sep or count < 1 or not 0 <= index < count:
        raise HarnessError(f"--shard {text!r}: need 0 <= i < n")
    return index, count


def shard_rows(total: int, shard: tuple[int, int] | None) -> range:
    """Contiguous rows of shard ``i`` of ``n`` (sizes differ by at most one)."""
    if shard is None:
        return range(total)
    index, count = shard
    return range(index * total // count, (index + 1) * total // count)


def shard_file(out_dir: str | os.PathLike, part: str, shard: tuple[int, int] | None) -> Path:
    out_dir = Path(out_dir)
    if shard is None or part == "query":
        return out_dir / f"{part}.h5"
    return out_dir / f"{part}-{shard[0]:05d}-of-{shard[1]:05d}.h5"


# -------------------------------------------------------------------------------- encoding
def encode_rows(
    method,
    model,
    context,
    *,
    device,
    rows: Sequence[int] | None = None,
    precision: str = DEFAULT_PRECISION,
    progress: bool = True,
    description: str | None = None,
    to_numpy: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(rows, descriptors float32)`` batches for ``context.names`` (or ``rows`` of it).

    Rows come in order. Batches hold one image when the method's loader keeps aspect ratios.
    The network runs in ``precision`` (:mod:`methods.precision`); descriptors come out as
    float32. With ``to_numpy=False`` they stay tensors on the device.
    """
    import torch
    from tqdm.auto import tqdm

    from methods.data import ImageListDataset, image_batches

    loader = method.image_loader(context)
    dataset = ImageListDataset(context.image_root, context.names, loader)
    batch_size = context.batch_size if loader.fixed_size else 1
    total = len(dataset) if rows is None else len(rows)
    bar = tqdm(
        total=total, unit="img", desc=description or context.part, disable=not progress, leave=False
    )
    batches = image_batches(
        dataset,
        batch_size=batch_size,
        workers=context.workers,
        rows=rows,
        pin_memory=device.type == "cuda",
    )
    # channels-last: oneDNN's and cuDNN's fast convolutions take NHWC (the model is converted
    # to match in build_for_device).
    memory_format = torch.channels_last
    try:
        with torch.inference_mode(), precision_context(device, precision):
            for batch in batches:
                images = batch.images.to(device, non_blocking=True)
                if images.ndim == 4:
                    images = images.contiguous(memory_format=memory_format)
                descriptors = method.encode(model, images, context).float()
                yield batch.rows.numpy(), (
                    descriptors.cpu().numpy() if to_numpy else descriptors.clone()
                )
                bar.update(len(batch.rows))
    finally:
        bar.close()


def build_for_device(method, device):
    import torch

    model = method.build_model(device)
    if device.type == "cuda" and model is not None:
        torch.backends.cudnn.benchmark = True
    # A method's "model" is whatever its encode() takes (a plugin may hand over a tensor).
    if isinstance(model, torch.nn.Module):
        model = model.to(memory_format=torch.channels_last)
    return model


# ------------------------------------------------------------------------------- provenance
def feature_attrs(
    method,
    *,
    split_name: str,
    split_sha256: str | None,
    options: ExtractOptions,
    device,
    extra=None,
) -> dict:
    from harness import __version__

    fingerprint = method.fingerprint()
    attrs = {
        "method_fingerprint": method.fingerprint_sha256(),
        "method_config": json.dumps(fingerprint, sort_keys=True, default=str),
        "descriptor_dtype": options.dtype,
        "harness_version": __version__,
        "extraction_device": str(device),
        "extraction_precision": options.precision,
        "extraction_hardware": device_hardware(device),
    }
    weights = fingerprint.get("files", {}).get("weights")
    if weights:
        attrs["weights_sha256"] = weights
    if split_sha256:
        attrs["split_sha256"] = split_sha256
    attrs.update(extra or {})
    return attrs


def device_hardware(device) -> str:
    """What ran the network: the GPU's name on CUDA, the CPU's model (and cores) otherwise."""
    from harness.hardware import cpu_cores, cpu_model

    if device.type == "cuda":
        import torch

        try:
            return torch.cuda.get_device_name(device)
        except (RuntimeError, AssertionError):
            return "cuda"
    return f"{cpu_model()} ({cpu_cores()} cores)"


def is_complete(
    path: Path,
    *,
    fingerprint: str,
    dtype: str,
    split_sha256: str | None,
    parts: Sequence[str],
    precision: str = DEFAULT_PRECISION,
    images_sha256: dict[str, str] | None = None,
) -> bool:
    """Whether ``path`` is a finished feature file of the same method, weights, split, dtype
    and precision (see :func:`differences`)."""
    return path.is_file() and not differences(
        path,
        fingerprint=fingerprint,
        dtype=dtype,
        split_sha256=split_sha256,
        parts=parts,
        precision=precision,
        images_sha256=images_sha256,
    )


def differences(
    path: Path,
    *,
    fingerprint: str,
    dtype: str,
    split_sha256: str | None,
    parts: Sequence[str],
    precision: str = DEFAULT_PRECISION,
    images_sha256: dict[str, str] | None = None,
) -> list[str]:
    """What makes the existing feature file ``path`` other than the one asked for (empty: same).

    With ``images_sha256`` (part -> :func:`image_list_sha256`) the images of each part must be
    the same (a database shared by several splits: ``split_sha256`` is then ``None``).
    """
    try:
        info = read_info(path)
    except HarnessError as exc:
        return [f"unreadable: {exc.message}"]
    found = []
    if info.attrs.get("method_fingerprint") != fingerprint:
        found.append("another method, options or weights")
    if split_sha256 is not None and info.attrs.get("split_sha256") != split_sha256:
        found.append("another split")
    if info.attrs.get("descriptor_dtype") != dtype:
        found.append(f"dtype {info.attrs.get('descriptor_dtype')} (this run: {dtype})")
    recorded = recorded_precision(info.attrs)
    if recorded != precision:
        found.append(f"precision {recorded or 'unrecorded'} (this run: {precision})")
    for part, sha in (images_sha256 or {}).items():
        if info.attrs.get(f"{part}_images_sha256") != sha:
            found.append(f"other {part} images")
    missing = [p for p in parts if p not in info.parts]
    if missing:
        found.append(f"no {'/'.join(missing)} part")
    return found


def _check_existing(path: Path, method, options: ExtractOptions, split_sha256, parts) -> bool:
    """True to skip (finished, same fingerprint); raises if a different file is in the way."""
    if not path.exists():
        return False
    found = differences(
        path,
        fingerprint=method.fingerprint_sha256(),
        dtype=options.dtype,
        split_sha256=split_sha256,
        parts=parts,
        precision=options.precision,
    )
    if not found:
        logger.info("%s is complete with the same method, weights, split and precision: skipped",
                    path)
        return True
    if options.overwrite:
        logger.warning("%s holds other features (%s): overwriting it", path, "; ".join(found))
        return False
    raise HarnessError(
        f"exists with other features ({'; '.join(found)}); remove it, choose another --out or "
        "pass --overwrite",
        path,
    )


def _write_part(
    writer, method, model, context, *, device, rows: range, options: ExtractOptions
) -> int:
    written = 0
    for batch_rows, descriptors in encode_rows(
        method,
        model,
        context,
        device=device,
        rows=rows,
        precision=options.precision,
        progress=options.progress,
    ):
        if not np.all(np.isfinite(descriptors)):
            bad = context.names[
                int(batch_rows[np.flatnonzero(~np.isfinite(descriptors).all(axis=1))[0]])
            ]
            hint = (
                f" (in {options.precision}: try --precision bf16 or fp32)"
                if options.precision == "fp16"
                else ""
            )
            raise HarnessError(
                f"the model produced NaN/Inf descriptors for {bad}{hint}", context.image_root / bad
            )
        start = int(batch_rows[0]) - rows.start
        assert np.array_equal(batch_rows, np.arange(batch_rows[0], batch_rows[0] + len(batch_rows)))
        writer.write(context.part, start, descriptors.astype(options.dtype, copy=False))
        written += len(batch_rows)
    return written


def batching_for(options: ExtractOptions, device):
    """(batch size, loader workers) for ``options`` on ``device``."""
    from methods.data import default_workers

    batch_size = options.batch_size or (
        DEFAULT_GPU_BATCH if device.type == "cuda" else DEFAULT_CPU_BATCH
    )
    workers = default_workers() if options.workers is None else options.workers
    return batch_size, workers


def extract(
    method,
    *,
    split,
    out: str | os.PathLike,
    parts: Sequence[str] = ("query", "database"),
    shard: tuple[int, int] | None = None,
    options: ExtractOptions = ExtractOptions(),
    cache_dir: str | os.PathLike | None = None,
    model=None,
) -> Path:
    """Extract ``parts`` of ``split`` with ``method``; returns the feature file written.

    Without ``shard``, ``out`` is one ``.h5`` file holding the requested parts. With
    ``shard=(i, n)``, ``out`` is a folder: the database rows of shard ``i`` go to
    ``database-i-of-n.h5`` (the returned path) and shard 0 also writes ``query.h5`` when the
    query part is requested. Finished files with the same fingerprint are skipped.
    """
    parts = tuple(dict.fromkeys(parts))
    unknown = set(parts) - {"query", "database"}
    if unknown or not parts:
        raise HarnessError(f"unknown part(s) {sorted(unknown)}; choose query and/or database")
    device = resolve_device(options.device)
    out = Path(out)
    if shard is None:
        jobs = [(out, parts, None)]
    else:
        if out.suffix in (".h5", ".hdf5"):
            raise HarnessError(
                "with --shard, --out is a folder (shard files are written into it)", out
            )
        jobs = []
        if "query" in parts and shard[0] == 0:
            jobs.append((shard_file(out, "query", shard), ("query",), None))
        if "database" in parts:
            jobs.append((shard_file(out, "database", shard), ("database",), shard))
        if not jobs:
            raise HarnessError(
                f"shard {shard[0]}/{shard[1]}: the query part is written by shard 0 only"
            )
    result = jobs[-1][0]
    batch_size, workers = batching_for(options, device)
    for path, job_parts, job_shard in jobs:
        if _check_existing(path, method, options, split.sha256, job_parts):
            continue
        if model is None:
            model = build_for_device(method, device)
        contexts, rows = {}, {}
        for part in job_parts:
            names = split.query_names if part == "query" else split.database_names
            root = split.query_root if part == "query" else split.database_root
            if not root:
                raise HarnessError(
                    f"split {split.name} has no {part} image folder ({part}_root is empty)"
                )
            rows[part] = shard_rows(len(names), job_shard)
            contexts[part] = part_context(
                part, names, root, split.name, device, batch_size, workers, cache_dir
            )
        extra = {"shard": f"{job_shard[0]}/{job_shard[1]}"} if job_shard else {}
        for part in job_parts:
            extra[f"{part}_images_sha256"] = image_list_sha256(
                contexts[part].image_root, contexts[part].names
            )
        attrs = feature_attrs(
            method,
            split_name=split.name,
            split_sha256=split.sha256,
            options=options,
            device=device,
            extra=extra,
        )
        started = time.perf_counter()
        count = 0
        with FeatureWriter(
            path,
            split=split.name,
            method=method.name,
            parts={p: [contexts[p].names[r] for r in rows[p]] for p in job_parts},
            dim=method.descriptor_dim,
            dtype=options.dtype,
            attrs=attrs,
        ) as writer:
            for part in job_parts:
                method.prepare(contexts[part])
                count += _write_part(
                    writer,
                    method,
                    model,
                    contexts[part],
                    device=device,
                    rows=rows[part],
                    options=options,
                )
            writer.set_attrs(extraction_timing(count, time.perf_counter() - started))
        seconds = time.perf_counter() - started
        logger.info(
            "%s: %d images in %.1f s (%.1f images/s) on %s",
            path,
            count,
            seconds,
            count / max(seconds, 1e-9),
            device,
        )
    return result


def extraction_timing(images: int, seconds: float) -> dict:
    """Root attributes of a feature file: how long its images took to embed, as measured here
    (reading, decoding, the network and writing; not building the model)."""
    return {
        "extraction_images": int(images),
        "extraction_seconds": float(seconds),
        "extraction_ms_per_image": 1000.0 * seconds / images if images else 0.0,
    }


def part_context(part, names, root, split_name, device, batch_size, workers, cache_dir):
    """The :class:`methods.base.PartContext` a method encodes one split part in."""
    from methods.base import PartContext

    return PartContext(
        part=part,
        names=tuple(names),
        image_root=Path(root),
        split_name=split_name,
        device=str(device),
        batch_size=batch_size,
        workers=workers,
        cache_dir=None if cache_dir is None else Path(cache_dir),
    )


def extract_images(
    method,
    *,
    images: str | os.PathLike,
    out: str | os.PathLike,
    part: str = "database",
    options: ExtractOptions = ExtractOptions(),
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Embed every image of a folder (or a list file) into ``out`` as ``part``.

    Names are relative to the folder (or to the list file's folder); the file's ``split``
    attribute is ``images:<folder name>``.
    """
    from methods.data import read_image_list

    if part not in ("query", "database"):
        raise HarnessError(f"unknown part {part!r}; choose query or database")
    root, names = read_image_list(images)
    device = resolve_device(options.device)
    batch_size, workers = batching_for(options, device)
    out = Path(out)
    split_name = f"images:{root.name}"
    if _check_existing(out, method, options, None, (part,)):
        return out
    context = part_context(part, names, root, split_name, device, batch_size, workers, cache_dir)
    model = build_for_device(method, device)
    attrs = feature_attrs(
        method,
        split_name=split_name,
        split_sha256=None,
        options=options,
        device=device,
        extra={"image_root": str(root), f"{part}_images_sha256": image_list_sha256(root, names)},
    )
    started = time.perf_counter()
    with FeatureWriter(
        out,
        split=split_name,
        method=method.name,
        parts={part: names},
        dim=method.descriptor_dim,
        dtype=options.dtype,
        attrs=attrs,
    ) as writer:
        method.prepare(context)
        count = _write_part(
            writer, method, model, context, device=device, rows=range(len(names)), options=options
        )
        writer.set_attrs(extraction_timing(count, time.perf_counter() - started))
    return out


def export_hloc(
    features: Sequence[str | os.PathLike], out: str | os.PathLike, block_rows: int = 4096
) -> Path:
    """Rewrite feature files in hloc's layout: a group per image name with ``global_descriptor``.

    Query and database names go to the same file (as hloc's retrieval pairs expect); a name
    present in both parts is an error.
    """
    import h5py

    from harness.features import iter_descriptor_blocks
    from harness.io import atomic_path

    out = Path(out)
    seen: set[str] = set()
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w", libver="latest") as handle:
            for path in features:
                info = read_info(path)
                for part in info.parts:
                    names = read_names(path, part)
                    for start, block in iter_descriptor_blocks(path, part, block_rows):
                        for offset, descriptor in enumerate(block):
                            name = names[start + offset]
                            if name in seen:
                                raise HarnessError(
                                    f"image {name} appears twice; hloc needs unique names", path
                                )
                            seen.add(name)
                            handle.create_dataset(f"{name}/global_descriptor", data=descriptor)
    return out
