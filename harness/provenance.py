"""When and from which source tree a record was made: the UTC time and the harness's git commit."""

from __future__ import annotations

import datetime as _dt
import subprocess
from pathlib import Path


def utc_now() -> str:
    """Current UTC time, ISO 8601 with a Z (seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def harness_git_commit() -> str | None:
    """The commit of the harness source tree (``+dirty`` when modified), None outside git."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else (commit or None)
