"""Helpers for the untrusted-input corpus: run a command under a memory cap, measure it.

Not a test module (no ``test_`` prefix). Every corpus case runs the real ``harness`` command
in a child process under ``prlimit --as`` (the address space a hostile file may make the
process reserve) with a wall-clock timeout (a FIFO or device read forever is a failure, not
a hang of the test session); its peak resident memory comes from ``wait4``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from badinputs import HARNESS, subprocess_env

#: The address-space cap of every corpus command: a 10 KB file must not need more.
MEMORY_CAP_BYTES = 768 << 20
PEAKS: dict[str, int] = {}  # case id -> peak RSS of its command (reported by the last test)


@dataclass
class Bounded:
    exit_code: int
    stdout: str
    stderr: str
    peak_rss_bytes: int

    @property
    def error_lines(self) -> list[str]:
        return [part.strip() for line in self.stderr.splitlines() for part in line.split("\r")
                if part.strip().startswith(("error: ", "Error: "))]


def run_bounded(argv: Sequence, *, cap_bytes: int = MEMORY_CAP_BYTES, timeout_s: float = 120,
                cwd: Path | None = None, env: dict | None = None) -> Bounded:
    """``harness ARGV`` under ``prlimit --as=cap_bytes``: exit code, output, peak RSS.

    ``prlimit`` sets the limit and execs the command, so the child's own ``wait4`` usage is
    the command's peak resident memory.
    """
    import tempfile

    prlimit = shutil.which("prlimit")
    assert prlimit, "prlimit (util-linux) is needed to cap the memory of the corpus commands"
    command = [prlimit, f"--as={cap_bytes}", "--", *HARNESS, *map(str, argv)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            open(os.devnull, "rb") as stdin:
        process = subprocess.Popen(command, stdin=stdin, stdout=out, stderr=err, cwd=cwd,
                                   env=env or subprocess_env(), start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                os.wait4(process.pid, 0)
                process.returncode = -9
                err.seek(0)
                raise AssertionError(
                    f"`harness {' '.join(map(str, argv))}` still ran after {timeout_s} s "
                    f"(blocked on a FIFO or device?)\n{err.read().decode(errors='replace')}")
            time.sleep(0.02)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Bounded(process.returncode, out.read().decode("utf-8", "replace"),
                       err.read().decode("utf-8", "replace"), usage.ru_maxrss * 1024)
