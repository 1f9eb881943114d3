"""Options shared by the commands of every package, declared once."""

from __future__ import annotations

from pathlib import Path

import click

DATA_ROOT_HELP = "Where splits are registered (default: $HARNESS_DATA or ~/.cache/iovpr-harness)."


def data_root_option(required: bool = False):
    """``--data-root DIR``: where splits are registered (a :class:`~pathlib.Path` or None)."""
    return click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
                        default=None, required=required, help=DATA_ROOT_HELP)
