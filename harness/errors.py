"""Errors the CLI turns into one line on stderr and a non-zero exit code."""

from __future__ import annotations

import os

import click


class HarnessError(click.ClickException):
    """A problem with the user's input (a file, a split, an option).

    The CLI prints ``error: <path>: <message>`` on one line, without a traceback, and
    exits with :attr:`exit_code` (2). Internal bugs are any other exception (exit 1).
    It is a ``click.ClickException`` so that click (and ``CliRunner``) report it the same way.
    """

    exit_code = 2

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        super().__init__(str(message))

    def __str__(self) -> str:
        return self.one_line()

    def format_message(self) -> str:
        return self.one_line()

    def show(self, file=None) -> None:
        click.echo(f"error: {self.one_line()}", err=True, file=file)

    def one_line(self) -> str:
        text = " ".join(str(self.message).split())
        return f"{self.path}: {text}" if self.path else text


class ValidationError(HarnessError):
    """A feature file, split or record that breaks its contract; carries every problem."""

    def __init__(self, problems: list[str], path: str | os.PathLike | None = None):
        self.problems = list(problems)
        shown = "; ".join(self.problems[:5])
        more = f" (+{len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
        super().__init__(shown + more, path)
