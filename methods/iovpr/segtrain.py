"""Training the window segmenter on ADE20k window masks, with validation IoU.

``harness train window-seg --ade DIR --out DIR`` fine-tunes a 2-class network (window / not
window) on the indoor images of the ADE20k training set and reports the window IoU on the
indoor validation images after every epoch. Defaults follow CSAIL's UPerNet recipe (SGD,
lr 0.02, momentum 0.9, weight decay 1e-4, poly decay 0.9, random short side 300-600, crops,
flips). ``out/last.pth`` is written every epoch (``--resume`` continues from it),
``out/best.pth`` holds the best validation IoU, ``out/history.json`` the curves.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from harness.errors import HarnessError
from harness.io import atomic_path, write_json_atomic
from methods.iovpr import ade20k
from methods.iovpr.segmentation import (
    DEFAULT_ARCH,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NUM_CLASSES,
    build_segmenter,
    checkpoint_payload,
    load_pretrained,
    read_checkpoint,
    segment_logits,
)
from methods.options import config_from_mapping, config_to_dict
from methods.runtime import resolve_device

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255


@dataclass(frozen=True)
class WindowSegTrainConfig:
    """Settings of ``harness train window-seg`` (unknown keys are rejected)."""

    arch: str = DEFAULT_ARCH
    pretrained: tuple[str, ...] = ()
    epochs: int = 20
    max_steps: int = 0
    batch_size: int = 8
    crop_size: int = 384
    scale_min: int = 300
    scale_max: int = 600
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    window_weight: float = 1.0
    eval_short_side: int = 480
    val_limit: int = 0
    workers: int = 4
    seed: int = 0
    amp: bool = True
    all_scenes: bool = False
    categories: tuple[str, ...] = ()

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.crop_size < 32:
            raise ValueError("epochs and batch_size must be >= 1, crop_size >= 32")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(
                f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}"
            )
        if self.lr <= 0 or self.window_weight <= 0:
            raise ValueError("lr and window_weight must be > 0")


def make_config(**values) -> WindowSegTrainConfig:
    return config_from_mapping(WindowSegTrainConfig, values, what="train window-seg")


# --------------------------------------------------------------------------- IoU


class IoUCounter:
    """Accumulates intersections and unions over a dataset (IoU = sum I / sum U).

    Pixels where ``valid`` is False (e.g. padding) are not counted.
    """

    def __init__(self):
        self.intersection = np.zeros(NUM_CLASSES, dtype=np.int64)
        self.union = np.zeros(NUM_CLASSES, dtype=np.int64)
        self.correct = 0
        self.total = 0

    def update(
        self, predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None
    ) -> None:
        assert predicted.shape == truth.shape and predicted.dtype == bool == truth.dtype, (
            predicted.shape, truth.shape, predicted.dtype, truth.dtype)
        if valid is not None:
            assert valid.shape == truth.shape, (valid.shape, truth.shape)
            predicted, truth = predicted[valid], truth[valid]
        for index, (p, t) in enumerate(((~predicted, ~truth), (predicted, truth))):
            self.intersection[index] += np.count_nonzero(p & t)
            self.union[index] += np.count_nonzero(p | t)
        self.correct += int(np.count_nonzero(predicted == truth))
        self.total += int(predicted.size)

    def iou(self, class_index: int) -> float:
        union = self.union[class_index]
        return float(self.intersection[class_index] / union) if union else math.nan

    @property
    def window_iou(self) -> float:
        return self.iou(1)

    @property
    def mean_iou(self) -> float:
        values = [self.iou(i) for i in range(NUM_CLASSES) if self.union[i]]
        return float(np.mean(values)) if values else math.nan

    @property
    def pixel_accuracy(self) -> float:
        return self.correct / self.total if self.total else math.nan

    def as_dict(self) -> dict:
        return {"window_iou": self.window_iou, "mean_iou": self.mean_iou,
                "pixel_accuracy": self.pixel_accuracy}


def window_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """IoU of the window class of one pair of boolean masks (nan when both are empty)."""
    counter = IoUCounter()
    counter.update(predicted, truth)
    return counter.window_iou


# --------------------------------------------------------------------------- data


def to_tensor(image: np.ndarray):
    """``(H, W, 3)`` uint8 RGB -> ``(3, H, W)`` float tensor with ImageNet normalisation."""
    import torch

    tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return tensor.sub_(mean).div_(std)


def resize_short_side(image: np.ndarray, short_side: int, *, nearest: bool = False) -> np.ndarray:
    """Resize so that the shorter side is ``short_side`` (aspect kept)."""
    from PIL import Image

    height, width = image.shape[:2]
    scale = short_side / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return image
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize(size, method))


def random_crop_pair(image: np.ndarray, labels: np.ndarray, crop: int, rng: random.Random):
    """A ``crop`` x ``crop`` window of image and labels; padding is 0 / IGNORE_INDEX."""
    height, width = labels.shape
    pad_h, pad_w = max(0, crop - height), max(0, crop - width)
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
        labels = np.pad(labels, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
        height, width = labels.shape
    top = rng.randrange(height - crop + 1)
    left = rng.randrange(width - crop + 1)
    return image[top:top + crop, left:left + crop], labels[top:top + crop, left:left + crop]


class WindowSegDataset:
    """ADE20k samples as (normalised image, labels 0/1/255) pairs for training.

    Each item draws its augmentation from a generator seeded by (seed, epoch, index), so a
    resumed run sees the same crops as an uninterrupted one.
    """

    def __init__(self, samples: Sequence[ade20k.AdeSample], config: WindowSegTrainConfig):
        self.samples = list(samples)
        self.config = config
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        import torch

        sample = self.samples[index]
        rng = random.Random(hash((self.config.seed, self.epoch, index)))
        image = ade20k.read_image(sample.image_path)
        labels = ade20k.read_window_mask(sample.annotation_path).astype(np.uint8)
        if image.shape[:2] != labels.shape:
            raise HarnessError(
                f"image and annotation sizes differ for {sample.name}", sample.image_path
            )
        short = rng.randint(self.config.scale_min, self.config.scale_max)
        image = resize_short_side(image, short)
        labels = resize_short_side(labels, short, nearest=True)
        image, labels = random_crop_pair(image, labels, self.config.crop_size, rng)
        if rng.random() < 0.5:
            image, labels = image[:, ::-1], labels[:, ::-1]
        return to_tensor(image), torch.from_numpy(np.ascontiguousarray(labels)).long()


# --------------------------------------------------------------------------- evaluation


def evaluate_iou(model, samples: Sequence[ade20k.AdeSample], *, short_side: int,
                 device: str = "cpu") -> IoUCounter:
    """Window IoU of ``model`` on ``samples`` at their original resolution."""
    import torch
    from tqdm import tqdm

    counter = IoUCounter()
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for sample in tqdm(samples, desc="val IoU", unit="img", leave=False, disable=None):
            image = ade20k.read_image(sample.image_path)
            truth = ade20k.read_window_mask(sample.annotation_path)
            batch = to_tensor(resize_short_side(image, short_side))[None].to(device)
            logits = segment_logits(model, batch, size=truth.shape)
            counter.update(logits.argmax(1)[0].cpu().numpy() == 1, truth)
    model.train(was_training)
    return counter


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class SegTrainResult:
    best_path: Path
    last_path: Path
    best_iou: float
    history: list = field(default_factory=list)


def _save(path: Path, payload: dict) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def train_window_segmenter(
    ade_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: WindowSegTrainConfig = WindowSegTrainConfig(),
    *,
    device: str | None = None,
    resume: bool = False,
) -> SegTrainResult:
    """Train the window segmenter; returns the best and last checkpoint paths and the curves."""
    import torch
    from tqdm import tqdm

    out_dir = Path(out_dir)
    last_path, best_path = out_dir / "last.pth", out_dir / "best.pth"
    if last_path.exists() and not resume:
        raise HarnessError(
            "a training run exists here; pass --resume or choose another --out", out_dir
        )
    device = str(resolve_device(device))
    categories = config.categories or None
    train_samples = ade20k.list_samples(ade_root, subsets=("training",), categories=categories,
                                        all_scenes=config.all_scenes)
    val_samples = ade20k.list_samples(ade_root, subsets=("validation",), categories=categories,
                                      all_scenes=config.all_scenes)
    if not train_samples or not val_samples:
        raise HarnessError("need indoor images in both ADE20k training and validation", ade_root)
    if config.val_limit:
        val_samples = val_samples[: config.val_limit]

    torch.manual_seed(config.seed)
    model = build_segmenter(config.arch)
    for path in config.pretrained:
        load_pretrained(model, path)
    model.to(device).train()
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )

    history: list[dict] = []
    start_epoch, best_iou = 0, -1.0
    if resume and last_path.exists():
        state = read_checkpoint(last_path)
        if state.get("arch") != config.arch:
            raise HarnessError(
                f"--resume: checkpoint is {state.get('arch')}, not {config.arch}", last_path
            )
        model.load_state_dict(state["state_dict"])
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1
        history = list(state.get("history", []))
        best_iou = max(
            (h["window_iou"] for h in history if not math.isnan(h["window_iou"])), default=-1.0
        )
        logger.info("resuming from epoch %d (%s)", start_epoch, last_path)

    dataset = WindowSegDataset(train_samples, config)
    steps_per_epoch = math.ceil(len(dataset) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    step = sum(h["steps"] for h in history)
    use_amp = config.amp and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    class_weight = torch.tensor([1.0, config.window_weight], device=device)
    criterion = torch.nn.CrossEntropyLoss(weight=class_weight, ignore_index=IGNORE_INDEX)
    config_dict = config_to_dict(config)

    for epoch in range(start_epoch, config.epochs):
        if step >= total_steps:
            break
        dataset.epoch = epoch
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=len(dataset) > config.batch_size,
            num_workers=config.workers,
            generator=generator,
            pin_memory=device.startswith("cuda"),
            persistent_workers=False,
        )
        losses, epoch_steps, started = [], 0, time.perf_counter()
        progress = tqdm(loader, desc=f"window-seg epoch {epoch + 1}/{config.epochs}", unit="batch",
                        disable=None)
        for images, labels in progress:
            if step >= total_steps:
                break
            lr = config.lr * (1.0 - step / total_steps) ** config.poly_power
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, labels = (
                images.to(device, non_blocking=True),
                labels.to(device, non_blocking=True),
            )
            with torch.autocast(device_type="cuda", enabled=use_amp):
                loss = criterion(segment_logits(model, images, size=labels.shape[1:]), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            step += 1
            epoch_steps += 1
            progress.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
        counter = evaluate_iou(model, val_samples, short_side=config.eval_short_side, device=device)
        record = {
            "epoch": epoch,
            "steps": epoch_steps,
            "train_loss": float(np.mean(losses)) if losses else math.nan,
            "seconds": round(time.perf_counter() - started, 3),
            **counter.as_dict(),
        }
        history.append(record)
        logger.info("epoch %d: loss %.4f, val window IoU %.4f, mIoU %.4f", epoch + 1,
                    record["train_loss"], record["window_iou"], record["mean_iou"])
        payload = checkpoint_payload(
            model, config=config_dict, epoch=epoch, val_iou=counter.window_iou,
            input_short_side=config.eval_short_side, optimizer_state=optimizer.state_dict(),
            history=history,
        )
        iou = counter.window_iou if not math.isnan(counter.window_iou) else -1.0
        if iou > best_iou or not best_path.exists():
            best_iou = max(iou, best_iou)
            best_payload = dict(payload)
            best_payload.pop("optimizer")
            _save(best_path, best_payload)
        _save(last_path, payload)
        write_json_atomic(out_dir / "history.json", {"config": config_dict, "epochs": history})
    if not best_path.exists():
        raise HarnessError("training ended before its first epoch finished", out_dir)
    return SegTrainResult(best_path, last_path, best_iou, history)
