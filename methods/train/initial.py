"""The model a training run starts from: k-means centroids, or a complete released model.

``--init FILE`` (:attr:`methods.train.config.TrainConfig.init`) is one of:

* a **cluster file** (HDF5: ``harness train cluster``'s output or OpenIBL's
  ``*_desc_cen.hdf5``; without ``--init`` one is clustered into ``OUT_DIR/cluster.h5``): the
  backbone comes from ``--backbone-weights`` (or a seeded random initialisation) and NetVLAD
  is initialised from the centroids, as the lineage starts a run;
* a **complete NetVLAD/SFRS model** to fine-tune: OpenIBL's released hub file
  (``vgg16_netvlad.pth``: flat keys ``base_model.base.N.*``, ``net_vlad.conv.weight``,
  ``net_vlad.centroids``, ``pca_layer.{weight,bias}``), an OpenIBL training checkpoint
  (``{'state_dict': {'module.base_model.base.N.*', 'module.net_vlad.*'}, 'epoch',
  'best_recall5'}``) or a harness checkpoint. Every backbone and NetVLAD tensor comes from the
  file, strictly (a missing, unexpected or mis-shaped key is an error naming the file and the
  keys). A PCA layer in the file is not trained (training optimises the NetVLAD vectors; the
  lineage fits PCA-whitening afterwards), so it is left out, with a log line; fit it again on
  the fine-tuned model with ``harness pca fit``.

The two are told apart by content (HDF5's signature), not by the file name.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from harness.errors import HarnessError
from harness.io import sha256_file
from methods.checkpoints import load_state_dict_strict, read_checkpoint
from methods.netvlad import build_model, load_backbone_weights
from methods.train.cluster import cluster_attrs, cluster_init, read_clusters
from methods.train.config import ClusterConfig
from methods.train.distributed import agree, barrier

logger = logging.getLogger(__name__)

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
PCA_PREFIX = "pca_layer."


def is_cluster_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an HDF5 file (a cluster init) rather than a model checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError("--init file not found", path)
    with open(path, "rb") as handle:
        return handle.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE


def load_full_model(model, path: str | os.PathLike) -> dict:
    """Load every tensor of ``model`` from the complete model checkpoint ``path``.

    Returns provenance for the run's checkpoints (layout, sha256, the dropped PCA size).
    """
    checkpoint = read_checkpoint(path)
    state = {k: v for k, v in checkpoint.state_dict.items() if not k.startswith(PCA_PREFIX)}
    pca = checkpoint.state_dict.get(PCA_PREFIX + "weight")
    if pca is not None:
        logger.info(
            "%s: its PCA layer (%d -> %d) is not fine-tuned; fit PCA on the trained model",
            path, pca.shape[1], pca.shape[0],
        )
    load_state_dict_strict(model, state, path, what="--init model")
    logger.info(
        "initialised every backbone and NetVLAD tensor (%d) from %s (%s layout)",
        len(state), path, checkpoint.layout,
    )
    return {
        "init_layout": checkpoint.layout,
        "init_sha256": sha256_file(path),
        "init_pca_dropped": None if pca is None else int(pca.shape[0]),
    }


def initial_model(config, model_config, *, env, device, workers: int, out_dir: Path):
    """``(model, provenance)`` of a run's start (see the module docstring).

    ``env``/``device``: the run's distributed environment and device (rank 0 clusters when
    needed, the others wait).
    """
    c = config
    model = build_model(model_config, seed=c.seed)
    if c.init and not is_cluster_file(c.init):
        if c.backbone_weights:
            raise HarnessError(
                "--init is a complete model: it already holds the backbone, so "
                "--backbone-weights would be overwritten; give one of them",
                c.init,
            )
        return model, load_full_model(model, c.init)
    if c.backbone_weights:
        load_backbone_weights(model.base_model, c.backbone_weights)
    cluster_path = Path(c.init) if c.init else out_dir / "cluster.h5"
    if not c.init:
        _cluster_once(c, cluster_path, env=env, device=device, workers=workers)
    _init_from_clusters(model, c, cluster_path)
    return model, {}


def _cluster_once(c, cluster_path: Path, *, env, device, workers: int) -> None:
    if agree(env, cluster_path.exists(), device):
        return
    if env.is_main:
        cluster_init(
            ClusterConfig(
                split=c.train_split,
                out=str(cluster_path),
                data_root=c.data_root,
                backbone=c.backbone,
                backbone_weights=c.backbone_weights,
                num_clusters=c.num_clusters,
                image_height=c.image_height,
                image_width=c.image_width,
                seed=c.seed,
                batch_size=c.batch_size,
                workers=workers,
                device=str(device),
                progress=c.progress,
            )
        )
    barrier(env)


def _init_from_clusters(model, c, cluster_path: Path) -> None:
    centroids, descriptors, attrs = read_clusters(cluster_path)
    expected = cluster_attrs(c.backbone, c.backbone_weights, c.seed, c.num_clusters)
    different = {
        k: (attrs.get(k), v) for k, v in expected.items() if k in attrs and attrs.get(k) != v
    }
    if different:
        detail = "; ".join(f"{k}: file {a!r}, run {b!r}" for k, (a, b) in different.items())
        raise HarnessError(f"cluster init was made with another backbone ({detail})", cluster_path)
    if centroids.shape != (c.num_clusters, model.net_vlad.dim):
        raise HarnessError(
            f"cluster init has centroids {centroids.shape}, the model needs "
            f"({c.num_clusters}, {model.net_vlad.dim})",
            cluster_path,
        )
    alpha = model.net_vlad.init_from_clusters(centroids, descriptors)
    logger.info("NetVLAD initialised from %s (alpha %.2f)", cluster_path, alpha)
