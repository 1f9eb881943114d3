"""IOVPR commands: ``harness layouts build``, ``harness segment``, ``harness train window-seg``,
``harness train iovpr``.

``commands`` (the ``harness.commands`` entry point) holds the top-level ones; the two training
commands join the ``train`` group of :mod:`methods.cli` (``train.add_command``), so that
``methods/cli.py`` needs no knowledge of this package. torch is imported inside the commands.
"""

from __future__ import annotations

import logging

import click

from harness.commands.common import data_root_option
from methods.runtime import resolve_device, set_torch_threads

logger = logging.getLogger(__name__)


def _categories(categories: str | None, categories_file: str | None):
    if categories and categories_file:
        raise click.UsageError("give --categories or --categories-file, not both")
    if categories_file:
        from pathlib import Path

        text = Path(categories_file).read_text(encoding="utf-8")
        return [
            line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
        ]
    if categories:
        return [c.strip() for c in categories.split(",") if c.strip()]
    return None


_category_options = [
    click.option("--categories", help="Comma-separated scene categories counted as indoor "
                                      "(default: the built-in indoor list)."),
    click.option("--categories-file", type=click.Path(exists=True, dir_okay=False),
                 help="File with one indoor scene category a line."),
    click.option("--all-scenes", is_flag=True, help="Use every scene, indoor or not."),
]


def _with(options):
    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


@click.group("layouts")
def layouts_group():
    """IOVPR layouts: ADE20k indoor images and their window masks."""


@layouts_group.command("build")
@click.option("--ade", required=True, type=click.Path(exists=True, file_okay=False),
              help="ADEChallengeData2016 folder (or its parent).")
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Layout folder to write."
)
@click.option("--threshold", "thresholds", type=int, multiple=True,
              help="Minimum window percentage of a set (repeatable; default 10, 20, 30).")
@_with(_category_options)
@click.option("--overwrite", is_flag=True, help="Replace an existing layout folder.")
def layouts_build_command(ade, out, thresholds, categories, categories_file, all_scenes, overwrite):
    """Select indoor ADE20k images, write window masks, the >=10/20/30 % sets and stats."""
    from methods.iovpr.layouts import THRESHOLDS, build_layouts, stats_markdown

    result = build_layouts(
        ade, out, thresholds=thresholds or THRESHOLDS,
        categories=_categories(categories, categories_file), all_scenes=all_scenes,
        overwrite=overwrite,
    )
    click.echo(stats_markdown(result.stats), nl=False)
    click.echo(str(result.path))


@click.command("segment")
@click.option("--split", "-s", "split_name", required=True, help="Split name or .split.npz file.")
@click.option("--segmenter", required=True, type=click.Path(dir_okay=False),
              help="Window-segmenter checkpoint (`harness train window-seg`).")
@click.option(
    "--part", type=click.Choice(["query", "database"]), default="query", show_default=True
)
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Mask cache (default: <data root>/cache/window-masks).")
@click.option("--short-side", type=int, help="Inference short side (default: the segmenter's).")
@click.option("--device", help="cuda, cpu (default: CUDA when available).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@data_root_option()
def segment_command(
    split_name, segmenter, part, cache_dir, short_side, device, batch_size, data_root
):
    """Predict and cache the window mask of every image of a split part."""
    from harness.splits import get_split
    from methods.iovpr.segment import segment_split
    from methods.iovpr.segmentation import load_segmenter
    split = get_split(split_name, data_root)
    device = str(resolve_device(device))
    loaded = load_segmenter(segmenter, device, input_short_side=short_side)
    result = segment_split(split, loaded, part=part, cache_dir=cache_dir, device=device,
                           batch_size=batch_size)
    click.echo(f"{result.computed} masks computed, {result.reused} cached")
    click.echo(str(result.folder))


@click.group("segmenter")
def segmenter_group():
    """Window segmenters: import released models."""


@segmenter_group.command("import")
@click.option("--encoder", required=True, type=click.Path(dir_okay=False),
              help="CSAIL's encoder_epoch_N.pth (e.g. ade20k-resnet50-upernet).")
@click.option("--decoder", required=True, type=click.Path(dir_okay=False),
              help="CSAIL's decoder_epoch_N.pth (the 150-class ADE20k head is kept).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Segmenter checkpoint to write (for `harness segment --segmenter`).")
@click.option("--arch", default="upernet50", show_default=True,
              help="upernet50 (ade20k-resnet50-upernet) or upernet101 (ade20k-resnet101-upernet).")
@click.option("--short-side", type=int, default=480, show_default=True,
              help="Inference short side recorded in the checkpoint.")
def segmenter_import_command(encoder, decoder, out, arch, short_side):
    """Make a segmenter checkpoint from released encoder/decoder files, without training."""
    from methods.iovpr.segimport import import_segmenter

    click.echo(str(import_segmenter(encoder, decoder, out, arch=arch,
                                    input_short_side=short_side)))


@click.command("window-seg")
@click.option("--ade", required=True, type=click.Path(exists=True, file_okay=False),
              help="ADEChallengeData2016 folder (or its parent).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: best.pth, last.pth, history.json.")
@click.option(
    "--arch",
    default="upernet50",
    show_default=True,
    help="upernet50 (the seed's), upernet101, upernet18, lraspp-mobilenet-v3, deeplabv3-resnet50.",
)
@click.option("--pretrained", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Pretrained weight file(s), e.g. CSAIL's encoder and decoder (repeatable).")
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--max-steps", type=int, default=0, help="Stop after this many steps (0: no limit).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--crop-size", type=int, default=384, show_default=True)
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True)
@click.option("--lr", type=float, default=0.02, show_default=True)
@click.option("--workers", type=int, default=4, show_default=True)
@click.option("--device", help="cuda, cpu (default: CUDA when available).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out from last.pth.")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="Any other training setting (scale_min, scale_max, eval_short_side, "
                   "window_weight, val_limit, weight_decay, ...).")
@_with(_category_options)
def train_window_seg_command(ade, out, arch, pretrained, epochs, max_steps, batch_size, crop_size,
                             optimizer, lr, workers, device, seed, resume, option_pairs,
                             categories, categories_file, all_scenes):
    """Train the 2-class window segmenter on ADE20k window masks (validation IoU each epoch)."""
    from harness.options import parse_option_pairs
    from methods.iovpr.segtrain import make_config, train_window_segmenter

    values = dict(arch=arch, pretrained=tuple(pretrained), epochs=epochs, max_steps=max_steps,
                  batch_size=batch_size, crop_size=crop_size, optimizer=optimizer, lr=lr,
                  workers=workers, seed=seed, all_scenes=all_scenes,
                  categories=tuple(_categories(categories, categories_file) or ()))
    extra = parse_option_pairs(option_pairs)
    clash = sorted(set(extra) & set(values))
    if clash:
        raise click.UsageError(f"set {', '.join(clash)} with its own flag, not --option")
    result = train_window_segmenter(ade, out, make_config(**values, **extra), device=device,
                                    resume=resume)
    click.echo(f"best validation window IoU {result.best_iou:.4f}")
    click.echo(str(result.best_path))


def _train_iovpr_command():
    """``harness train iovpr``: one option per field of IOVPRTrainConfig (D's generator)."""
    from methods.iovpr.train import IOVPRTrainConfig
    from methods.train.cli import collect_values, config_options

    required = ("out_dir", "train_split", "layouts_dir")

    @click.command("iovpr")
    @click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        help="JSON file of option values.",
    )
    @config_options(IOVPRTrainConfig, required=required)
    def command(config_file, **values):
        """Train IOVPR: SFRS with real or gray ADE20k layouts replacing training queries.

        Example: harness train iovpr --layouts gray --threshold 20 --layouts-dir LAYOUTS
        --train-split ams30k-train --val-split ams30k-val --out-dir runs/iovpr-gray
        """
        from methods.train.registry import run_training, training_config

        merged = collect_values(config_file, values)
        missing = [name for name in required if not merged.get(name)]
        if missing:
            raise click.UsageError("harness train iovpr needs " + ", ".join(
                "--" + name.replace("_", "-") for name in missing))
        config = training_config("iovpr", merged)
        set_torch_threads()
        click.echo(str(run_training("iovpr", config)))

    return command


@click.group("iovpr")
def iovpr_group():
    """The IOVPR method: studies on a dataset root."""


@iovpr_group.command("study")
@click.option("--city", "city_root", required=True, type=click.Path(exists=True, file_okay=False),
              help="Dataset root with raw/ and ADEChallengeData2016/ (e.g. a synthetic city).")
@data_root_option(required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Study folder (every stage is cached; a rerun resumes).")
@click.option(
    "--option",
    "option_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Study setting (prefix, threshold, layout_prob, seg_epochs, epochs, generations, "
    "image_height, device, ...).",
)
@click.option("--train-option", "train_pairs", multiple=True, metavar="KEY=VALUE",
              help="Any other `harness train sfrs` setting, the same for the three trainings "
                   "(e.g. --train-option jitter=0.2,0.2,0.2,0.02).")
def study_command(city_root, data_root, out_dir, option_pairs, train_pairs):
    """Segmenter IoU, and SFRS vs IOVPR real/gray trained alike: the Recall@N table."""
    from harness.options import parse_option_pairs
    from methods.iovpr.study import make_study_config, run_study

    values = parse_option_pairs(option_pairs)
    if train_pairs:
        parse_option_pairs(train_pairs)  # reject malformed pairs now, not after an hour
        values["extra_train_options"] = tuple(train_pairs)
    config = make_study_config(city_root=city_root, data_root=str(data_root), out_dir=out_dir,
                               **values)
    set_torch_threads()
    result = run_study(config)
    click.echo((result.path.parent / "study.md").read_text(encoding="utf-8"), nl=False)


@iovpr_group.command("study-report")
@click.option("--city", "city_root", required=True, type=click.Path(exists=True, file_okay=False),
              help="Dataset root with raw/ and ADEChallengeData2016/ (e.g. data/demo/city).")
@click.option("--data-root", required=True, type=click.Path(file_okay=False),
              help="Where the dataset's splits are registered (e.g. data/demo/harness).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Report folder: one cached study per seed, and report.md.")
@click.option("--seeds", default="43,44", show_default=True, help="Study seeds, comma separated.")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="Override a study setting of the report (default: the demo's settings).")
@click.option("--readme", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Also replace the README's iovpr-study section with the report.")
def study_report_command(city_root, data_root, out_dir, seeds, option_pairs, readme):
    """The study per seed with intervals and paired tests against the baseline (report.md)."""
    from harness.options import parse_option_pairs
    from methods.iovpr.study_report import run_study_report

    try:
        seed_list = tuple(int(part) for part in seeds.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected integers like 43,44, got {seeds!r}",
                                 param_hint="--seeds") from None
    if not seed_list:
        raise click.BadParameter("give at least one seed", param_hint="--seeds")
    overrides = parse_option_pairs(option_pairs)
    command = "harness iovpr study-report --seeds " + ",".join(str(s) for s in seed_list) + "".join(
        f" --option {pair}" for pair in option_pairs)
    set_torch_threads()
    path = run_study_report(city_root, data_root, out_dir, seeds=seed_list, overrides=overrides,
                            readme=readme, command=command)
    click.echo(path.read_text(encoding="utf-8"), nl=False)


commands = [layouts_group, segment_command, segmenter_group, iovpr_group]
train_commands = [train_window_seg_command]


def _attach_training_commands() -> None:
    try:
        from methods.cli import train
    except ImportError as exc:  # methods' CLI unavailable: the IOVPR training commands are too
        logger.debug("methods.cli.train not available: %s", exc)
        return
    try:
        iovpr_command = _train_iovpr_command()
    except ImportError as exc:  # the methods' trainer is not importable
        logger.debug("harness train iovpr unavailable: %s", exc)
        iovpr_command = None
    for command in (*train_commands, *([iovpr_command] if iovpr_command else [])):
        if command.name not in train.commands:
            train.add_command(command)


_attach_training_commands()
