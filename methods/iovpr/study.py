"""The IOVPR study on a dataset root (the synthetic city, or the real data at scale).

``harness iovpr study --city DIR --data-root DIR --out DIR`` runs, each stage cached in
``OUT`` (a rerun resumes where it stopped):

1. layouts from the city's ADE20k folder;
2. the window segmenter; its window IoU on the ADE20k validation images, and on the indoor
   queries against their true masks when the dataset ships them (the synthetic city does);
3. three VPR trainings of identical settings and length on the same training split: the
   SFRS baseline, IOVPR with real layouts, IOVPR with gray layouts;
4. Recall@N on the indoor (and outdoor) query sets for: the untrained (cluster-initialised)
   model on raw queries and on gray layouts made with the true masks (is the problem posed,
   does a gray layout help a model that never saw one?), the baseline on raw queries, the
   baseline on gray-layout queries (an inference change only; with predicted and with true
   masks), ``iovpr-real``, ``iovpr-gray``, and ``iovpr-gray`` with the true window masks
   (oracles separate segmentation errors from what the training did).

The table goes to ``OUT/study.md`` and ``OUT/study.json``.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.io import write_json_atomic
from methods.options import config_from_mapping, config_to_dict

logger = logging.getLogger(__name__)

TRAININGS = {"baseline": None, "real": "real", "gray": "gray"}


# The study's settings for the demo (`harness demo`, leaderboard.demo) and for the README's
# study report (methods.iovpr.study_report): every stage short enough that the whole demo
# (city, probe, segmenter, three trainings, evaluation, leaderboard) takes under 10 minutes on
# two CPU cores. `harness iovpr study` keeps the study's own (longer) defaults.
DEMO_STUDY: dict[str, object] = {
    "seg_epochs": 18, "image_height": 96, "image_width": 128, "generations": 1,
    "epochs": 3,
    "extra_train_options": ("jitter=0.2,0.2,0.2,0.02",),
}
DEMO_EVAL_SPLITS = ("indoor-ams-1", "indoor-ams-2", "outdoor-ams", "ams30k-test")


@dataclass(frozen=True)
class StudyConfig:
    """Settings of the study; every VPR training shares ``vpr`` settings."""

    city_root: str
    data_root: str
    out_dir: str
    prefix: str = "synth-"
    train_split: str = "ams30k-train"
    val_split: str = "ams30k-val"
    eval_splits: tuple[str, ...] = ("indoor-ams-1", "indoor-ams-2", "outdoor-ams")
    threshold: int = 20
    layout_prob: float = 0.5
    seg_arch: str = "upernet-tiny"
    # upernet-tiny from scratch on the demo city's 200 ADE scenes: window IoU 0.80 after 20
    # of these 40 epochs, 0.84 after 40 (173 s on 2 CPU cores).
    seg_epochs: int = 40
    seg_batch_size: int = 8
    seg_crop_size: int = 128
    seg_scale_min: int = 128
    seg_scale_max: int = 192
    seg_lr: float = 0.003
    seg_short_side: int = 192
    backbone: str = "small"
    num_clusters: int = 16
    image_height: int = 192
    image_width: int = 256
    generations: int = 1
    epochs: int = 6
    first_generation_epochs: int | None = None  # None: as many as ``epochs``
    # Random negatives per query among which the hardest are mined. The lineage's 1000 takes
    # every image of a small city's database: from a random backbone the hardest negatives
    # then hold the loss at log 2 and nothing is learned (measured on the demo city).
    neg_pool: int = 20
    lr: float = 0.001
    seed: int = 43
    workers: int = 1
    device: str = "cpu"
    extra_train_options: tuple[str, ...] = field(default=())

    def split(self, name: str) -> str:
        return self.prefix + name


@dataclass(frozen=True)
class StudyResult:
    table: list
    segmentation: dict
    path: Path


def _train_vpr(config: StudyConfig, kind: str | None, layouts_dir: Path, out: Path) -> Path:
    from harness.options import parse_option_pairs
    from methods.train.registry import run_training, training_config

    values = {
        "out_dir": str(out), "train_split": config.split(config.train_split),
        "val_split": config.split(config.val_split), "data_root": config.data_root,
        "backbone": config.backbone, "num_clusters": config.num_clusters,
        "image_height": config.image_height, "image_width": config.image_width,
        "generations": config.generations, "epochs": config.epochs,
        "first_generation_epochs": config.first_generation_epochs or config.epochs,
        "lr": config.lr,
        "neg_pool": config.neg_pool,
        "seed": config.seed, "workers": config.workers, "device": config.device, "progress": False,
        **parse_option_pairs(config.extra_train_options),
    }
    if kind is None:
        return run_training("sfrs", training_config("sfrs", values))
    values.update(layouts=kind, layouts_dir=str(layouts_dir), threshold=config.threshold,
                  layout_prob=config.layout_prob)
    return run_training("iovpr", training_config("iovpr", values))


def query_mask_iou(
    segmenter_path: Path, split, masks_dir: Path, *, device: str, cache_dir: Path
) -> dict:
    """Window IoU of the segmenter on a split's queries against the true masks."""
    from methods.iovpr.layouts import read_mask
    from methods.iovpr.segment import MaskCache, cache_key, segment_images
    from methods.iovpr.segmentation import load_segmenter
    from methods.iovpr.segtrain import IoUCounter

    segmenter = load_segmenter(segmenter_path, device)
    segment_images(
        segmenter, split.query_root, split.query_names, cache_dir=cache_dir, device=device
    )
    cache = MaskCache(cache_dir, cache_key(segmenter))
    counter = IoUCounter()
    for name in split.query_names:
        truth = read_mask(masks_dir / Path(name).with_suffix(".png"))
        counter.update(read_mask(cache.path(name)), truth)
    return counter.as_dict()


def _oracle_cache(segmenter_path: Path, split, masks_dir: Path, cache_dir: Path) -> None:
    """A mask cache for the segmenter's key that holds the true masks instead."""
    from methods.iovpr.segment import MaskCache, cache_key
    from methods.iovpr.segmentation import load_segmenter

    cache = MaskCache(cache_dir, cache_key(load_segmenter(segmenter_path)))
    for name in split.query_names:
        target = cache.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(masks_dir / Path(name).with_suffix(".png"), target)


def _database_key(method_name: str, weights: Path, split) -> str:
    """Which database features a row and split can share: same method and weights, same
    database images (the indoor query sets and Outdoor-Ams share one database)."""
    import hashlib

    digest = hashlib.sha256("\n".join((split.database_root, *split.database_names)).encode())
    return f"{method_name}|{Path(weights).resolve()}|{digest.hexdigest()[:16]}"


class _Features:
    """Feature files of the study: queries per row and split, the database once per method,
    weights and database (its images are always raw, so query-side variants such as the true
    masks share it). The demo's 26 evaluations (8 rows, 4 splits) extract 11 databases."""

    def __init__(self, out: Path, device: str):
        self.out, self.device = out, device
        self.databases: dict[str, Path] = {}

    def evaluate(self, method_name: str, weights: Path, options: dict, split, slug: str,
                 cache_dir: Path) -> tuple[dict, list[Path], Path]:
        """Scores, feature files and the written result record (with its predictions
        sidecar, so that rows can be compared query by query)."""
        from harness.config import EvalConfig
        from harness.evaluate import evaluate
        from methods.extract import ExtractOptions, extract
        from methods.registry import get_method

        method = get_method(method_name, options, weights=weights)
        extract_options = ExtractOptions(device=self.device, workers=0, progress=False,
                                         overwrite=True)
        query = extract(method, split=split, out=self.out / slug / f"{split.name}.query.h5",
                        parts=("query",), cache_dir=cache_dir, options=extract_options)
        key = _database_key(method_name, weights, split)
        if key not in self.databases:
            weights_slug = _slug(Path(weights).parent.name + "-" + Path(weights).stem)
            self.databases[key] = extract(
                method, split=split, parts=("database",), options=extract_options,
                out=self.out / "database" / f"{method_name}-{weights_slug}" / f"{split.name}.h5")
        paths = [query, self.databases[key]]
        result = evaluate(paths, split, EvalConfig(ngpu=0, progress=False, checksums=False))
        record = result.write(self.out / slug / f"{split.name}.json")
        return dict(result.scores), paths, record


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c == "-" else "_" for c in label)


def run_study(config: StudyConfig) -> StudyResult:
    """Run (or resume) the study; returns the recall table and the segmentation IoUs."""
    from harness.splits import get_split
    from methods.iovpr.layouts import build_layouts
    from methods.iovpr.segtrain import make_config, train_window_segmenter

    out = Path(config.out_dir)
    city = Path(config.city_root)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    ade = city / "ADEChallengeData2016"
    masks_dir = city / "raw" / "Amsterdam" / "query_masks"
    layouts_dir = out / "layouts"
    if not (layouts_dir / "index.json").is_file():
        build_layouts(ade, layouts_dir, overwrite=True)

    seg_dir = out / "segmenter"
    seg_config = make_config(
        arch=config.seg_arch,
        epochs=config.seg_epochs,
        batch_size=config.seg_batch_size,
        crop_size=config.seg_crop_size,
        scale_min=config.seg_scale_min,
        scale_max=config.seg_scale_max,
        optimizer="adamw",
        lr=config.seg_lr,
        eval_short_side=config.seg_short_side,
        workers=config.workers,
        seed=config.seed,
    )
    seconds["layouts"] = time.perf_counter() - started
    started = time.perf_counter()
    seg = train_window_segmenter(ade, seg_dir, seg_config, device=config.device,
                                 resume=(seg_dir / "last.pth").exists())
    segmentation = {
        "ade_val": seg.history[-1] if seg.history else {},
        "best_ade_val_window_iou": seg.best_iou,
    }
    mask_cache = out / "masks"
    if masks_dir.is_dir():
        for name in config.eval_splits:
            if "indoor" in name:
                split = get_split(config.split(name), config.data_root)
                segmentation[name] = query_mask_iou(seg.best_path, split, masks_dir,
                                                    device=config.device, cache_dir=mask_cache)
    logger.info("segmentation: %s", segmentation)
    seconds["segmenter"] = time.perf_counter() - started

    weights = {}
    for kind, layouts in TRAININGS.items():
        started = time.perf_counter()
        weights[kind] = _train_vpr(config, layouts, layouts_dir, out / f"train-{kind}")
        seconds[f"train-{kind}"] = time.perf_counter() - started
        logger.info("training %s: %.0f s", kind, seconds[f"train-{kind}"])
    started = time.perf_counter()
    init = out / "train-baseline" / "init.pt"  # the cluster-initialised, untrained model
    segmenter = {"segmenter": str(seg.best_path)}
    rows = [
        ("untrained init", "sfrs", init, {}, None),
        ("untrained init + gray queries, true masks", "iovpr-gray", init, segmenter, "oracle"),
        ("sfrs (baseline)", "sfrs", weights["baseline"], {}, None),
        (
            "sfrs + gray queries",
            "iovpr-gray",
            weights["baseline"],
            {"segmenter": str(seg.best_path)},
            None,
        ),
        (
            "sfrs + gray queries, true masks",
            "iovpr-gray",
            weights["baseline"],
            {"segmenter": str(seg.best_path)},
            "oracle",
        ),
        ("iovpr-real", "iovpr-real", weights["real"], {}, None),
        ("iovpr-gray", "iovpr-gray", weights["gray"], {"segmenter": str(seg.best_path)}, None),
        (
            "iovpr-gray, true masks",
            "iovpr-gray",
            weights["gray"],
            {"segmenter": str(seg.best_path)},
            "oracle",
        ),
    ]
    table = []
    features = _Features(out / "features", config.device)
    for label, method, weight, options, variant in rows:
        if not Path(weight).is_file():
            continue
        row = {"method": label, "features": {}, "records": {}}
        for name in config.eval_splits:
            split = get_split(config.split(name), config.data_root)
            cache_dir = mask_cache
            if variant == "oracle":
                if "indoor" not in name or not masks_dir.is_dir():
                    continue
                cache_dir = out / "masks-oracle"
                _oracle_cache(seg.best_path, split, masks_dir, cache_dir)
            scores, paths, record = features.evaluate(method, weight, options, split,
                                                      _slug(label), cache_dir)
            row[name] = {k: scores[k] for k in ("recall@1", "recall@5", "recall@10") if k in scores}
            row["features"][name] = [str(p) for p in paths]
            row["records"][name] = str(record)
        table.append(row)
    seconds["evaluation"] = time.perf_counter() - started
    logger.info("study stages (s, this run; cached stages take ~0): %s",
                {k: round(v, 1) for k, v in seconds.items()})
    path = out / "study.json"
    write_json_atomic(path, {"config": config_to_dict(config), "segmentation": segmentation,
                             "table": table, "seconds": seconds})
    (out / "study.md").write_text(study_markdown(table, segmentation, config), encoding="utf-8")
    return StudyResult(table, segmentation, path)


def study_markdown(table: list, segmentation: dict, config: StudyConfig) -> str:
    """The recall table (R@1 / R@5 / R@10 per query set) and the segmentation IoUs."""
    lines = [f"Window segmenter ({config.seg_arch}): ADE20k validation window IoU "
             f"{segmentation.get('best_ade_val_window_iou', math.nan):.3f}"]
    for name in config.eval_splits:
        if name in segmentation:
            lines.append(f"; {name} queries vs true masks: {segmentation[name]['window_iou']:.3f}")
    lines = ["".join(lines), ""]
    header = (
        "| method | " + " | ".join(f"{name} R@1 / R@5 / R@10" for name in config.eval_splits) + " |"
    )
    lines += [header, "|---|" + "---|" * len(config.eval_splits)]
    for row in table:
        cells = []
        for name in config.eval_splits:
            scores = row.get(name)
            cells.append("-" if not scores else " / ".join(
                f"{100 * scores[k]:.1f}" for k in ("recall@1", "recall@5", "recall@10")))
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def make_study_config(**values) -> StudyConfig:
    return config_from_mapping(StudyConfig, values, what="iovpr study")


__all__ = [
    "DEMO_EVAL_SPLITS",
    "DEMO_STUDY",
    "StudyConfig",
    "StudyResult",
    "make_study_config",
    "query_mask_iou",
    "run_study",
    "study_markdown",
]
