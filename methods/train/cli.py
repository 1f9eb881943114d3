"""``harness train cluster|netvlad|sfrs``: options generated from the config dataclasses.

Each config field is an option (``out_dir`` -> ``--out-dir``) whose help is the field's;
``--config FILE.json`` supplies values and options override them. Nothing here imports
torch at import time.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import click

from harness.errors import HarnessError
from methods.runtime import set_torch_threads


def config_options(config_cls, *, required=(), defaults=None):
    """Decorator adding one click option per field of ``config_cls`` (values stay strings)."""
    defaults = defaults or {}
    hints = typing.get_type_hints(config_cls)

    def decorate(function):
        for f in reversed(dataclasses.fields(config_cls)):
            if f.name in defaults and f.name == "mode":
                continue
            flag = "--" + f.name.replace("_", "-")
            default = defaults.get(f.name, f.default)
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            help_text = f.metadata.get("help", "")
            if f.name in required:
                help_text += " [required]"
            elif shown not in (None, ""):
                help_text += f" [default: {shown}]"
            if hints[f.name] is bool:
                function = click.option(
                    f"{flag}/--no-{f.name.replace('_', '-')}", f.name, default=None, help=help_text
                )(function)
            else:
                function = click.option(
                    flag, f.name, default=None, help=help_text, metavar="VALUE"
                )(function)
        return function

    return decorate


def collect_values(config_file, values: dict) -> dict:
    """Values from ``--config`` JSON, overridden by the options given."""
    merged = {}
    if config_file:
        try:
            loaded = json.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise HarnessError(f"not a readable JSON config ({exc})", config_file) from None
        if not isinstance(loaded, dict):
            raise HarnessError("a config file holds a JSON object of option values", config_file)
        merged.update(loaded)
    merged.update({k: v for k, v in values.items() if v is not None})
    return merged


def _require(values: dict, names, command: str) -> None:
    missing = [n for n in names if not values.get(n)]
    if missing:
        raise click.UsageError(
            f"{command} needs " + ", ".join("--" + n.replace("_", "-") for n in missing)
        )


def _threads() -> None:
    set_torch_threads()


def _training_command(name: str, help_text: str):
    from methods.train.config import TrainConfig

    @click.command(name, help=help_text)
    @click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        help="JSON file of option values.",
    )
    @config_options(TrainConfig, required=("out_dir", "train_split"), defaults={"mode": name})
    def command(config_file, **values):
        from methods.train.registry import run_training, training_config

        merged = collect_values(config_file, values)
        merged.pop("mode", None)
        _require(merged, ("out_dir", "train_split"), f"harness train {name}")
        config = training_config(name, merged)
        _threads()
        click.echo(str(run_training(name, config)))

    return command


def _cluster_command():
    from methods.train.config import ClusterConfig

    @click.command("cluster")
    @click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        help="JSON file of option values.",
    )
    @config_options(ClusterConfig, required=("split", "out"))
    def command(config_file, **values):
        """k-means on local descriptors of a training split to initialise NetVLAD's centroids."""
        from methods.options import config_from_mapping
        from methods.train.cluster import cluster_init

        merged = collect_values(config_file, values)
        _require(merged, ("split", "out"), "harness train cluster")
        config = config_from_mapping(ClusterConfig, merged, what="harness train cluster")
        _threads()
        click.echo(str(cluster_init(config)))

    return command


commands = [
    _cluster_command(),
    _training_command(
        "netvlad",
        "Train NetVLAD (triplet, sare_ind or sare_joint) with hard negatives mined from cached "
        "features.",
    ),
    _training_command(
        "sfrs",
        "Train SFRS: generations supervised by soft labels on sub-regions of difficult positives.",
    ),
]
