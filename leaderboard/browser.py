"""Headless Chromium for checking the generated page: DOM dump and screenshot.

Debian's ``chromium`` package (``.ci/browser.sh`` installs it). Every run gets a fresh
profile folder and the flags that keep a headless browser off the network and quiet.
``$HARNESS_CHROMIUM`` names another binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None."""
    wanted = os.environ.get("HARNESS_CHROMIUM")
    for name in ((wanted,) if wanted else ()) + CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(binary: str, args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"chromium exited {completed.returncode}: {tail}")
    return completed


def dump_dom(
    url: str, *, binary: str | None = None, timeout_s: float = 60.0, budget_ms: int = 5000
) -> str:
    """The serialised DOM after the page's scripts ran (``--dump-dom``)."""
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary found")
    return _run(binary, [f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout_s).stdout


def screenshot(
    url: str,
    png: str | os.PathLike,
    *,
    binary: str | None = None,
    width: int = 1400,
    height: int = 1800,
    timeout_s: float = 60.0,
) -> Path:
    """A PNG of the page's first ``width`` x ``height`` pixels."""
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary found")
    png = Path(png).resolve()
    _run(
        binary,
        [
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            "--virtual-time-budget=5000",
            url,
        ],
        timeout_s,
    )
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {png}")
    return png
