"""NetVLAD centroid initialisation: k-means on local descriptors (OpenIBL's ``cluster.py``).

``nDescriptors / perImage`` training images (queries and database together) are drawn,
``per_image`` L2-normalised conv5 descriptors sampled from each, and clustered with k-means
(k-means++ seeding, Lloyd iterations, in torch so that it runs on the GPU too). The h5 file
has OpenIBL's layout (``centroids`` (K, C), ``descriptors`` (n, C)) plus attributes saying
which backbone produced it, which training checks.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.io import atomic_path

logger = logging.getLogger(__name__)


def kmeans(
    points: torch.Tensor, num_clusters: int, *, iterations: int = 100, seed: int = 43
) -> torch.Tensor:
    """k-means (k-means++ init, Lloyd) of ``points`` ``(n, d)``; returns centroids ``(k, d)``."""
    n = points.shape[0]
    if n < num_clusters:
        raise HarnessError(f"k-means needs at least {num_clusters} points, got {n}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    points = points.float()
    norms = (points * points).sum(dim=1)
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [points[first]]
    closest = ((points - points[first]) ** 2).sum(dim=1)
    for _ in range(1, num_clusters):
        weights = closest.clamp_min(0).cpu().double()
        index = (
            int(torch.multinomial(weights, 1, generator=generator))
            if weights.sum() > 0
            else int(torch.randint(n, (1,), generator=generator))
        )
        centroids.append(points[index])
        closest = torch.minimum(closest, ((points - points[index]) ** 2).sum(dim=1))
    centroids = torch.stack(centroids)
    for _ in range(iterations):
        distances = (
            norms[:, None] - 2 * points @ centroids.T + (centroids * centroids).sum(dim=1)[None]
        )
        assignment = distances.argmin(dim=1)
        counts = torch.bincount(assignment, minlength=num_clusters)
        # One-hot product: far faster than index_add_ on CPUs for these shapes.
        one_hot = torch.zeros(num_clusters, n, dtype=points.dtype, device=points.device)
        one_hot[assignment, torch.arange(n, device=points.device)] = 1
        sums = one_hot @ points
        updated = sums / counts.clamp_min(1)[:, None].to(sums.dtype)
        empty = counts == 0
        if empty.any():
            # Re-seed empty clusters at the points worst served by their centroid.
            worst = (
                distances.gather(1, assignment[:, None]).squeeze(1).topk(int(empty.sum())).indices
            )
            updated[empty] = points[worst]
        if torch.allclose(updated, centroids):
            centroids = updated
            break
        centroids = updated
    return centroids


def cluster_init(config) -> Path:
    """Run :class:`methods.train.config.ClusterConfig`; returns the h5 path."""
    from harness.splits import get_split
    from methods.base import ImageLoader
    from methods.data import (
        ImageListDataset,
        default_workers,
        image_batches,
        sample_split_images,
    )
    from methods.extract import resolve_device
    from methods.netvlad import ModelConfig, build_model, load_backbone_weights
    from methods.transforms import ResizeUint8, normalize_batch

    split = get_split(config.split, config.data_root)
    device = resolve_device(config.device)
    model = build_model(
        ModelConfig(backbone=config.backbone, num_clusters=config.num_clusters), seed=config.seed
    )
    backbone = model.base_model
    if config.backbone_weights:
        load_backbone_weights(backbone, config.backbone_weights)
    backbone = backbone.to(device).eval()
    num_images = math.ceil(config.num_descriptors / config.per_image)
    rng = np.random.default_rng(config.seed)
    sampled = sample_split_images(split, num_images, rng)
    loader = ImageLoader(ResizeUint8(config.image_height, config.image_width))
    workers = default_workers() if config.workers is None else config.workers
    samples = []
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(s.rows.size for s in sampled), unit="img", desc="cluster",
               disable=not config.progress, leave=False)
    for sample in sampled:
        rows, names, root = sample.rows, sample.names, sample.root
        dataset = ImageListDataset(root, names, loader)
        with torch.inference_mode():
            for batch in image_batches(
                dataset, batch_size=config.batch_size, workers=workers, rows=rows.tolist()
            ):
                features = backbone(normalize_batch(batch.images.to(device)))
                features = F.normalize(features, p=2, dim=1).flatten(2).transpose(1, 2)  # (B, P, C)
                for local in features:
                    pick = rng.choice(
                        local.shape[0], size=min(config.per_image, local.shape[0]), replace=False
                    )
                    samples.append(local[torch.as_tensor(pick, device=local.device)].float())
                bar.update(len(batch.rows))
    bar.close()
    descriptors = torch.cat(samples)[: config.num_descriptors]
    if descriptors.shape[0] < config.num_descriptors:
        logger.warning(
            "only %d local descriptors available (asked for %d): %d images of %d locations",
            descriptors.shape[0],
            config.num_descriptors,
            sum(s.rows.size for s in sampled),
            samples[0].shape[0],
        )
    logger.info(
        "k-means: %d descriptors of dimension %d into %d clusters",
        descriptors.shape[0],
        descriptors.shape[1],
        config.num_clusters,
    )
    centroids = kmeans(
        descriptors, config.num_clusters, iterations=config.iterations, seed=config.seed
    )
    attrs = cluster_attrs(
        config.backbone, config.backbone_weights, config.seed, config.num_clusters
    )
    attrs.update(split=split.name, image_height=config.image_height, image_width=config.image_width)
    return save_clusters(config.out, centroids.cpu().numpy(), descriptors.cpu().numpy(), attrs)


def cluster_attrs(
    backbone: str, backbone_weights: str | None, seed: int, num_clusters: int
) -> dict:
    """What identifies the backbone the descriptors came from."""
    from harness.io import sha256_file

    attrs = {"backbone": backbone, "num_clusters": int(num_clusters)}
    if backbone_weights:
        attrs["backbone_weights_sha256"] = sha256_file(backbone_weights)
    else:
        attrs["backbone_seed"] = int(seed)
    return attrs


def save_clusters(path, centroids: np.ndarray, descriptors: np.ndarray, attrs: dict) -> Path:
    import h5py

    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as handle:
            handle.create_dataset("centroids", data=centroids.astype(np.float32))
            handle.create_dataset("descriptors", data=descriptors.astype(np.float32))
            for key, value in attrs.items():
                handle.attrs[key] = value
    return path


def read_clusters(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(centroids, descriptors, attrs)`` of a cluster file (harness or OpenIBL)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise HarnessError("cluster init file not found", path)
    try:
        with h5py.File(path, "r") as handle:
            if "centroids" not in handle or "descriptors" not in handle:
                raise HarnessError(
                    "cluster file needs datasets 'centroids' and 'descriptors'", path
                )
            centroids = np.asarray(handle["centroids"][()], dtype=np.float32)
            descriptors = np.asarray(handle["descriptors"][()], dtype=np.float32)
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in handle.attrs.items()}
    except OSError as exc:
        raise HarnessError(f"not a readable HDF5 file ({exc})", path) from None
    if centroids.ndim != 2 or descriptors.ndim != 2 or centroids.shape[1] != descriptors.shape[1]:
        raise HarnessError(
            f"inconsistent shapes: centroids {centroids.shape}, descriptors {descriptors.shape}",
            path,
        )
    return centroids, descriptors, attrs
