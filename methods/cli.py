"""``harness extract``, ``harness pca fit``, ``harness train ...``, ``harness methods list``.

Commands parse options and delegate; torch is imported inside the commands only, so that
``harness --help`` stays fast and works without torch. Other packages add training commands
to the ``train`` group (``from methods.cli import train; train.add_command(...)``).
"""

from __future__ import annotations

import click

from harness.commands.common import data_root_option
from harness.errors import HarnessError
from methods.runtime import set_torch_threads
from methods.train.cli import commands as train_commands

# The choices are methods.precision.PRECISIONS, spelled out so that --help imports no torch.
PRECISION_CHOICES = ("fp32", "bf16", "fp16")
_precision_help = (
    "Network precision: fp32 (strict float32, also on CUDA: machine-independent results), or "
    "bf16/fp16 autocast (faster on GPUs; descriptors move). Recorded in the feature file."
)
_option_help = (
    "Method option key=value (repeatable), e.g. --option pca=pca_params.h5 "
    "--option image_height=240."
)


def _load_split(split_name: str, data_root):
    from harness.splits import get_split

    return get_split(split_name, data_root)


def _method(method_name: str, weights, option_pairs):
    from harness.options import parse_option_pairs
    from methods.registry import get_method

    return get_method(method_name, parse_option_pairs(option_pairs), weights=weights)


@click.command("extract")
@click.option(
    "--method",
    "-m",
    "method_name",
    required=True,
    help="Registered method (see `harness methods list`).",
)
@click.option(
    "--weights",
    "-w",
    type=click.Path(dir_okay=False),
    help="Checkpoint file (OpenIBL or harness layout).",
)
@click.option("--split", "-s", "split_name", help="Split name or .split.npz file.")
@click.option(
    "--images", type=click.Path(), help="Instead of --split: a folder of images or a list file."
)
@click.option(
    "--out",
    "-o",
    "out",
    required=True,
    type=click.Path(),
    help="Feature file (.h5); a folder with --shard.",
)
@click.option(
    "--part",
    type=click.Choice(["query", "database", "both"]),
    default=None,
    help="Parts to extract (default: both for a split, database for --images).",
)
@click.option(
    "--shard",
    help="Database shard i/n (0-based): writes OUT/database-i-of-n.h5; shard 0 also OUT/query.h5.",
)
@click.option(
    "--device",
    help="cuda, cuda:1, cpu (default: CUDA when available; an explicit cuda without one is an "
    "error).",
)
@click.option("--batch-size", type=int, help="Images per batch (default 32 on GPU, 8 on CPU).")
@click.option("--workers", type=int, help="Data-loader worker processes.")
@click.option(
    "--precision",
    type=click.Choice(PRECISION_CHOICES),
    default="fp32",
    show_default=True,
    help=_precision_help,
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="Storage dtype of the descriptors.",
)
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE", help=_option_help)
@click.option(
    "--hloc",
    "hloc_out",
    type=click.Path(dir_okay=False),
    help="Also export in hloc's global-descriptor layout.",
)
@data_root_option()
@click.option("--overwrite", is_flag=True, help="Replace an existing file holding other features.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def extract_command(
    method_name,
    weights,
    split_name,
    images,
    out,
    part,
    shard,
    device,
    batch_size,
    workers,
    precision,
    dtype,
    option_pairs,
    hloc_out,
    data_root,
    overwrite,
    no_progress,
):
    """Embed a split's (or a folder's) images with a method into feature files."""
    from methods.extract import ExtractOptions, export_hloc, extract, extract_images, parse_shard

    if (split_name is None) == (images is None):
        raise click.UsageError("give exactly one of --split or --images")
    shard_spec = parse_shard(shard)
    set_torch_threads()
    method = _method(method_name, weights, option_pairs)
    options = ExtractOptions(
        device=device,
        batch_size=batch_size,
        workers=workers,
        precision=precision,
        dtype=dtype,
        progress=not no_progress,
        overwrite=overwrite,
    )
    if images is not None:
        if shard_spec is not None:
            raise click.UsageError("--shard works with --split only")
        path = extract_images(
            method,
            images=images,
            out=out,
            part=part if part not in (None, "both") else "database",
            options=options,
        )
        written = [path]
    else:
        split = _load_split(split_name, data_root)
        parts = ("query", "database") if part in (None, "both") else (part,)
        path = extract(method, split=split, out=out, parts=parts, shard=shard_spec, options=options)
        written = [path]
    if hloc_out:
        if shard_spec is not None:
            raise click.UsageError("--hloc needs a single feature file (no --shard)")
        written.append(export_hloc(written, hloc_out))
    for item in written:
        click.echo(str(item))


@click.group("pca")
def pca_group():
    """PCA-whitening of NetVLAD descriptors (OpenIBL's pca_params h5 layout)."""


@pca_group.command("fit")
@click.option("--method", "-m", "method_name", required=True)
@click.option("--weights", "-w", required=True, type=click.Path(dir_okay=False))
@click.option(
    "--split",
    "-s",
    "split_name",
    required=True,
    help="Training split (descriptors are drawn from it).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Output h5 (default: pca_params_<checkpoint>.h5 beside it).",
)
@click.option("--dim", type=int, default=4096, show_default=True, help="Components kept.")
@click.option(
    "--max-images",
    type=int,
    default=10_000,
    show_default=True,
    help="At most this many training images.",
)
@click.option("--seed", type=int, default=43, show_default=True)
@click.option("--device")
@click.option("--batch-size", type=int)
@click.option("--workers", type=int)
@click.option(
    "--precision",
    type=click.Choice(PRECISION_CHOICES),
    default="fp32",
    show_default=True,
    help=_precision_help,
)
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE", help=_option_help)
@data_root_option()
@click.option("--no-progress", is_flag=True)
def pca_fit_command(
    method_name,
    weights,
    split_name,
    out,
    dim,
    max_images,
    seed,
    device,
    batch_size,
    workers,
    precision,
    option_pairs,
    data_root,
    no_progress,
):
    """Fit PCA-whitening on at most 10,000 training descriptors and save it."""
    from methods.extract import ExtractOptions
    from methods.pca import fit_method_pca

    if dim < 1 or max_images < 2:
        raise click.UsageError("--dim must be >= 1 and --max-images >= 2")
    set_torch_threads()
    method = _method(method_name, weights, option_pairs)
    split = _load_split(split_name, data_root)
    options = ExtractOptions(
        device=device,
        batch_size=batch_size,
        workers=workers,
        precision=precision,
        progress=not no_progress,
    )
    path = fit_method_pca(
        method, split, out, num_components=dim, max_images=max_images, seed=seed, options=options
    )
    click.echo(str(path))


@click.group("methods")
def methods_group():
    """Registered methods."""


@methods_group.command("list")
def methods_list_command():
    """List the methods, where each comes from (package and module) and their options."""
    from methods.registry import get_method_class, list_methods, method_failures, method_origin

    for name in list_methods():
        cls = get_method_class(name)
        click.echo(f"{name:16s} {cls.description}")
        click.echo(f"{'':16s} from: {method_origin(name).describe()}")
        click.echo(f"{'':16s} options: {', '.join(cls.option_names())}")
    for name, (origin, reason) in sorted(method_failures().items()):
        click.echo(f"{name:16s} FAILED TO LOAD: {reason}")
        click.echo(f"{'':16s} from: {origin.describe()}")


@click.group("train")
def train():
    """Train NetVLAD / SFRS models (cluster init, then netvlad or sfrs)."""


for _command in train_commands:
    train.add_command(_command)

commands = [extract_command, pca_group, methods_group, train]

__all__ = ["commands", "train", "HarnessError"]
