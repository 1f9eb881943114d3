"""A training run's resumable state: what ``last.pt`` holds beyond the model, and reading it back.

``last.pt`` is a harness checkpoint (the student model) whose payload adds ``trainer`` (config,
generation, epoch, best score, history, optimiser, scheduler, negative cache) and, for SFRS,
``cache_state_dict`` (the teacher). A run resumes only with the configuration it was started
with, up to :data:`methods.train.config.RESUMABLE_CHANGES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from harness.errors import HarnessError
from methods.checkpoints import load_state_dict_strict, read_checkpoint, save_checkpoint
from methods.netvlad import ModelConfig, NetVLADModel
from methods.train.config import RESUMABLE_CHANGES, TrainConfig


@dataclass
class RunState:
    """Where a run stands: the generation and epoch to continue with, and what it carries."""

    generation: int = 0
    next_epoch: int | None = None  # None: the generation starts fresh
    best_score: float = -1.0
    history: list = field(default_factory=list)
    optimizer: dict | None = None
    scheduler: dict | None = None
    teacher: dict | None = None
    negative_cache: np.ndarray | None = None  # the miner's, when resumed


def save_run_state(
    path: Path,
    config: TrainConfig,
    model_config: ModelConfig,
    *,
    model,
    teacher,
    optimizer,
    scheduler,
    negative_cache: np.ndarray,
    state: RunState,
    generation: int,
    epoch: int,
) -> None:
    """Write ``last.pt``: the model and everything needed to continue after ``epoch``."""
    trainer_state = {
        "config": config.to_dict(),
        "generation": generation,
        "epoch": epoch,
        "best_score": state.best_score,
        "history": state.history,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "negative_cache": torch.from_numpy(negative_cache.copy()),
    }
    extra = {"trainer": trainer_state, "generation": generation, "epoch": epoch}
    if teacher is not None:
        extra["cache_state_dict"] = {k: v.detach().cpu() for k, v in teacher.state_dict().items()}
    save_checkpoint(
        path,
        state_dict=model.state_dict(),
        model_config=model_config.to_dict(),
        **extra,
    )


def check_resumable(saved: dict, config: TrainConfig, path: Path) -> None:
    """Refuse to resume a run saved with another configuration (beyond the resumable changes)."""
    current = config.to_dict()
    different = sorted(
        k
        for k in set(saved) | set(current)
        if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)
    )
    if different:
        detail = ", ".join(
            f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}" for k in different[:6]
        )
        raise HarnessError(
            f"cannot resume: the run was started with another configuration ({detail}); "
            "use another out_dir or the original settings",
            path,
        )


def read_run_state(path: Path, config: TrainConfig, model: NetVLADModel) -> RunState:
    """Load ``last.pt`` into ``model``; return where to continue (next epoch or generation)."""
    checkpoint = read_checkpoint(path)
    trainer = checkpoint.payload.get("trainer")
    if not isinstance(trainer, dict):
        raise HarnessError("last.pt holds no trainer state", path)
    check_resumable(trainer["config"], config, path)
    load_state_dict_strict(model, checkpoint.state_dict, path)
    generation, epoch = int(trainer["generation"]), int(trainer["epoch"])
    state = RunState(
        best_score=float(trainer["best_score"]),
        history=list(trainer["history"]),
        negative_cache=trainer["negative_cache"].numpy().astype(np.int64).copy(),
    )
    if epoch + 1 < config.epochs_of(generation).stop:
        state.generation, state.next_epoch = generation, epoch + 1
        state.optimizer, state.scheduler = trainer["optimizer"], trainer["scheduler"]
        state.teacher = checkpoint.payload.get("cache_state_dict")
    else:
        state.generation, state.next_epoch = generation + 1, None
    return state
