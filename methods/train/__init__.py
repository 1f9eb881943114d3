"""Training: NetVLAD cluster initialisation, NetVLAD (triplet / SARE) and SFRS generations.

Entry points (the SLURM launcher and other methods call these):

* :func:`methods.train.trainer.train` ``(config: TrainConfig, *, query_augment=None) -> Path``
  trains, resuming from ``<out_dir>/last.pt`` when it exists; returns the best checkpoint.
* :func:`methods.train.registry.run_training` ``(name, config) -> Path`` for any registered
  training (``netvlad``, ``sfrs``, and those other packages register).
* :func:`methods.train.cluster.cluster_init` ``(config: ClusterConfig) -> Path``.

Configs (:mod:`methods.train.config`) import without torch.
"""

from methods.train.config import ClusterConfig, TrainConfig

__all__ = ["ClusterConfig", "TrainConfig"]
