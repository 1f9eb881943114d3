"""Registry of trainings (``netvlad``, ``sfrs``, and those other packages add, e.g. ``iovpr``).

An entry couples a frozen config class with a run function ``run(config) -> Path`` (the best
checkpoint). Launchers (the CLI, SLURM jobs) build configs with :func:`training_config` and
call :func:`run_training`; a resubmitted run resumes from its ``last.pt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from harness.registry import Registry
from methods.options import config_from_mapping


@dataclass(frozen=True)
class TrainingEntry:
    name: str
    config_cls: type
    run: Callable[[Any], Path]
    defaults: Mapping[str, Any]
    description: str = ""


TRAININGS: Registry = Registry("training", ("methods.train.trainer", "methods.iovpr.registered"),
                               optional_modules=("methods.iovpr.registered",))


def register_training(
    name: str, config_cls: type, *, defaults: Mapping[str, Any] | None = None, description: str = ""
):
    """Decorator for ``run(config) -> Path``; ``defaults`` override the config class's defaults."""

    def wrap(run):
        TRAININGS.register(
            name, TrainingEntry(name, config_cls, run, dict(defaults or {}), description)
        )
        return run

    return wrap


def get_training(name: str) -> TrainingEntry:
    return TRAININGS.get(name)


def list_trainings() -> list[str]:
    return TRAININGS.names()


def training_config(name: str, values: Mapping[str, Any]):
    """The config of training ``name``: ``values`` (strings or JSON values) over its defaults."""
    entry = get_training(name)
    merged = {**entry.defaults, **dict(values)}
    return config_from_mapping(entry.config_cls, merged, what=f"training {name}")


def run_training(name: str, config) -> Path:
    """Run (or resume) training ``name``; a module-level function, so SLURM jobs can submit it."""
    entry = get_training(name)
    if not isinstance(config, entry.config_cls):
        config = training_config(name, config)
    return entry.run(config)
