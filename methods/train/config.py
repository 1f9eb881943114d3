"""Training configs: frozen dataclasses, lineage defaults, unknown keys rejected.

Defaults are OpenIBL's (``scripts/train_sfrs_dist.sh``): SARE-ind loss, 4 generations with
temperatures 0.07 0.07 0.06 0.05, soft weight 0.5, 10 positives (from a pool of 20) and 10
negatives (from a pool of 1000) per tuple, margin 0.1, lr 0.001 (SGD, momentum 0.9, weight
decay 0.001, halved every 5 epochs), 5 epochs a generation (the first generation trains one
epoch, as OpenIBL's loop does), conv5 trainable, 480x640 images, positives within 10 m and
negatives beyond 25 m. Each field's ``help`` becomes a command-line option.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from methods.options import config_from_mapping, config_to_dict

LOSSES = ("triplet", "sare_ind", "sare_joint")
# Fields that may change when a run is resumed (they do not change what is learnt).
RESUMABLE_CHANGES = frozenset(
    {"device", "workers", "batch_size", "progress", "data_root", "val_split", "eval_every"}
)


def _f(default, help: str, **kwargs):
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a NetVLAD / SFRS training run depends on."""

    out_dir: str = _f("", "Run folder: checkpoints, last.pt (resume), best.pt, history.json.")
    train_split: str = _f("", "Training split (name or .split.npz), e.g. ams30k-train.")
    val_split: str | None = _f(None, "Validation split for best-checkpoint selection (recall@5).")
    data_root: str | None = _f(None, "Where imported splits live (default $HARNESS_DATA).")
    mode: Literal["netvlad", "sfrs"] = _f(
        "sfrs", "netvlad: one stage of triplet/SARE; sfrs: generations with soft region labels."
    )
    init: str | None = _f(
        None,
        "Where the run starts: a cluster init h5 (`harness train cluster`; default: clustered "
        "into OUT_DIR/cluster.h5), or a complete NetVLAD/SFRS model to fine-tune (OpenIBL's "
        "released vgg16_netvlad.pth, an OpenIBL training checkpoint or a harness checkpoint; "
        "its PCA layer is left out).",
    )
    backbone: str = _f("vgg16", "Backbone: vgg16 (lineage) or small (CPU-scale).")
    backbone_weights: str | None = _f(
        None,
        "Pretrained backbone weights file (torchvision vgg16 or OpenIBL's MatConvNet conversion).",
    )
    num_clusters: int = _f(64, "NetVLAD clusters.")
    train_layers: str = _f(
        "conv5",
        "First trainable block: conv5 (lineage), conv4, conv3, conv2, full, or none (only "
        "NetVLAD trains).",
    )
    image_height: int = _f(480, "Training/validation image height.")
    image_width: int = _f(640, "Training/validation image width.")
    loss: Literal["triplet", "sare_ind", "sare_joint"] = _f(
        "sare_ind", "Loss: triplet, sare_ind or sare_joint."
    )
    margin: float = _f(
        0.1, "Triplet margin on squared distances (the triplet loss uses sqrt(margin))."
    )
    lr: float = _f(0.001, "SGD learning rate.")
    momentum: float = _f(0.9, "SGD momentum.")
    weight_decay: float = _f(0.001, "SGD weight decay.")
    lr_step_epochs: int = _f(5, "Halve (lr_gamma) the learning rate every this many epochs.")
    lr_gamma: float = _f(0.5, "Learning-rate decay factor.")
    epochs: int = _f(5, "Epochs (per generation for sfrs).")
    generations: int = _f(4, "SFRS generations (mode sfrs).")
    first_generation_epochs: int = _f(
        1, "Epochs of SFRS generation 0 (OpenIBL trains its last epoch only)."
    )
    temperatures: tuple[float, ...] = _f(
        (0.07, 0.07, 0.06, 0.05), "SFRS temperature per generation (the first also scales SARE)."
    )
    soft_weight: float = _f(0.5, "Weight of the soft-label loss from generation 1 on.")
    pos_radius_m: float = _f(10.0, "Training positives lie within this distance (m).")
    neg_radius_m: float = _f(25.0, "Training negatives lie beyond this distance (m).")
    pos_num: int = _f(10, "Difficult positives per tuple (sfrs).")
    pos_pool: int = _f(20, "Nearest positives among which difficult ones are chosen (sfrs).")
    neg_num: int = _f(10, "Negatives per tuple.")
    neg_pool: int = _f(1000, "Random negatives per query among which the hardest are mined.")
    tuples_per_batch: int = _f(1, "Tuples per optimisation step and process.")
    cache_size: int = _f(1000, "Queries per mining round (features are re-extracted before each).")
    max_queries_per_epoch: int | None = _f(
        None, "Train on at most this many queries an epoch (short runs)."
    )
    rerank_k1: int = _f(
        20, "k1 of k-reciprocal re-ranking for difficult positives (sfrs generations > 0)."
    )
    rerank_lambda: float = _f(0.1, "Weight of the original distance in re-ranking.")
    jitter: tuple[float, ...] = _f(
        (0.7, 0.7, 0.7, 0.5),
        "ColorJitter brightness, contrast, saturation, hue of training images.",
    )
    seed: int = _f(43, "Random seed (also the seed of a random backbone).")
    batch_size: int = _f(32, "Images per batch when extracting features for mining and validation.")
    workers: int | None = _f(None, "Data-loader workers (default: cores - 1, at most 8).")
    device: str | None = _f(
        None, "cuda, cpu (default: CUDA when available; torchrun sets the GPU per rank)."
    )
    amp: bool = _f(
        False,
        "Mixed precision (bfloat16 autocast) on GPU, for training steps and for the feature "
        "extraction of mining and validation (else strict float32).",
    )
    eval_every: int = _f(1, "Validate every this many epochs (and after the last).")
    keep_epoch_checkpoints: bool = _f(
        True, "Keep a checkpoint of every epoch (else only last and best)."
    )
    progress: bool = _f(True, "Progress bars.")

    def __post_init__(self):
        if not self.out_dir:
            raise ValueError("out_dir is required")
        if not self.train_split:
            raise ValueError("train_split is required")
        for key in (
            "num_clusters",
            "image_height",
            "image_width",
            "epochs",
            "generations",
            "pos_num",
            "pos_pool",
            "neg_num",
            "neg_pool",
            "tuples_per_batch",
            "cache_size",
            "batch_size",
            "eval_every",
            "lr_step_epochs",
            "rerank_k1",
            "first_generation_epochs",
        ):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.mode == "sfrs" and len(self.temperatures) < self.generations:
            raise ValueError(
                f"temperatures needs one value per generation ({self.generations}), "
                f"got {len(self.temperatures)}"
            )
        if self.first_generation_epochs > self.epochs:
            raise ValueError("first_generation_epochs cannot exceed epochs")
        if self.pos_radius_m <= 0 or self.neg_radius_m < self.pos_radius_m:
            raise ValueError("need 0 < pos_radius_m <= neg_radius_m")
        if len(self.jitter) != 4:
            raise ValueError("jitter takes 4 values: brightness, contrast, saturation, hue")

    @property
    def num_generations(self) -> int:
        return self.generations if self.mode == "sfrs" else 1

    def epochs_of(self, generation: int) -> range:
        """Epoch numbers of ``generation`` (OpenIBL numbers generation 0's epoch as the last)."""
        if self.mode == "sfrs" and generation == 0:
            return range(self.epochs - self.first_generation_epochs, self.epochs)
        return range(self.epochs)

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values) -> "TrainConfig":
        return config_from_mapping(cls, dict(values), what="training config")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ClusterConfig:
    """NetVLAD centroid initialisation by k-means on local descriptors (OpenIBL's cluster.py)."""

    split: str = _f("", "Training split whose images are clustered.")
    out: str = _f(
        "", "Output h5 (datasets centroids and descriptors, OpenIBL's *_desc_cen.hdf5 layout)."
    )
    data_root: str | None = _f(None, "Where imported splits live (default $HARNESS_DATA).")
    backbone: str = _f("vgg16", "Backbone: vgg16 or small.")
    backbone_weights: str | None = _f(None, "Pretrained backbone weights file.")
    num_clusters: int = _f(64, "Clusters.")
    image_height: int = _f(480, "Image height.")
    image_width: int = _f(640, "Image width.")
    num_descriptors: int = _f(50_000, "Local descriptors clustered.")
    per_image: int = _f(100, "Local descriptors sampled per image.")
    iterations: int = _f(100, "k-means iterations.")
    seed: int = _f(43, "Random seed (also the seed of a random backbone).")
    batch_size: int = _f(32, "Images per batch.")
    workers: int | None = _f(None, "Data-loader workers.")
    device: str | None = _f(None, "cuda or cpu (default: CUDA when available).")
    progress: bool = _f(True, "Progress bars.")

    def __post_init__(self):
        if not self.split or not self.out:
            raise ValueError("split and out are required")
        for key in ("num_clusters", "num_descriptors", "per_image", "iterations", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1")
        if self.num_descriptors < self.num_clusters:
            raise ValueError("num_descriptors must be >= num_clusters")

    def to_dict(self) -> dict:
        return config_to_dict(self)
