"""The ``harness`` command: one click group; every subcommand parses options and delegates.

Core commands live in ``harness/commands/``; other packages (methods, leaderboard, slurm,
the synthetic city) contribute theirs through the ``harness.commands`` entry-point group, so
the harness never imports them by name. Only this module configures logging.
"""

from __future__ import annotations

import importlib
import logging
import sys
from importlib import metadata

import click

from harness import __version__

logger = logging.getLogger("harness")

_CORE_COMMAND_MODULES = (
    "harness.commands.splits",
    "harness.commands.validate",
    "harness.commands.evaluate",
    "harness.commands.results",
    "harness.commands.formats",
)
_PLUGIN_GROUP = "harness.commands"


class _HarnessGroup(click.Group):
    """A group that says which plugin failed to load when a command is unknown."""

    failed_plugins: dict[str, str] = {}

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            if self.failed_plugins and args and args[0] not in self.commands:
                detail = "; ".join(f"{k}: {v}" for k, v in self.failed_plugins.items())
                message = f"{exc.message} (plugins not loaded: {detail})"
                raise click.UsageError(message, ctx) from None
            raise


class _StderrHandler(logging.StreamHandler):
    """A stderr handler that survives its stream being closed: an in-process run (a test
    calling ``main``) may install it on a capture stream that is closed afterwards; logging
    to it would print a logging traceback into a later run's output. It then falls back to
    the process's own stderr."""

    def emit(self, record):
        if getattr(self.stream, "closed", False) and sys.__stderr__ is not None:
            self.stream = sys.__stderr__  # not setStream(): it would flush the closed one
        super().emit(record)


@click.group(cls=_HarnessGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="harness")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def cli(verbose: int, quiet: bool) -> None:
    """Inside-Out VPR benchmark harness: splits, features, exact evaluation, leaderboard."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    root = logging.getLogger()
    if any(getattr(h, "_harness", False) for h in root.handlers):
        root.setLevel(level)  # a command run from inside another: the outer one's handler
        return
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    handler._harness = True  # type: ignore[attr-defined]
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(level)

    # The logging set up here lasts as long as the command: run in-process (main() or click's
    # CliRunner, as the tests do), it must not outlive the stderr it writes to.
    def restore_logging() -> None:
        root.removeHandler(handler)
        root.setLevel(previous_level)

    click.get_current_context().call_on_close(restore_logging)


def _add_commands(commands) -> None:
    for command in commands:
        cli.add_command(command)


def _load_commands() -> None:
    for module_name in _CORE_COMMAND_MODULES:
        _add_commands(importlib.import_module(module_name).commands)
    for entry in metadata.entry_points(group=_PLUGIN_GROUP):
        try:
            _add_commands(entry.load())
        except ImportError as exc:  # e.g. the `methods` extra (torch) is not installed
            _HarnessGroup.failed_plugins[entry.name] = f"{type(exc).__name__}: {exc}"
            logger.debug("plugin %s not loaded: %s", entry.name, exc)


_load_commands()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: exit 0 on success, 2 on bad input, 1 on an internal error."""
    try:
        cli.main(args=argv, prog_name="harness", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:
        logger.exception("internal error (a bug in the harness; please report it)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
