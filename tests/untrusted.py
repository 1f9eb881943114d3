"""Helpers for the untrusted-input corpus: run a command under a memory cap, measure it.

Not a test module (no ``test_`` prefix). Every corpus case runs the real ``harness`` command
in a child process under ``prlimit --as`` (the address space a hostile file may make the
process reserve) with a wall-clock timeout (a FIFO or device read forever is a failure, not
a hang of the test session); its peak resident memory (VmHWM) is written by the child at exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from badinputs import subprocess_env

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

    ``prlimit`` sets the limit and execs Python, which runs the ``harness`` CLI and writes
    its peak resident memory (``VmHWM``) at exit.
    """
    import tempfile

    prlimit = shutil.which("prlimit")
    assert prlimit, "prlimit (util-linux) is needed to cap the memory of the corpus commands"
    peak_file = Path(tempfile.mkdtemp(prefix="untrusted-peak-")) / "peak"
    command = [prlimit, f"--as={cap_bytes}", "--", sys.executable, "-c", _MEASURED,
               *map(str, argv)]
    environment = dict(env or subprocess_env(), UNTRUSTED_PEAK_FILE=str(peak_file))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            open(os.devnull, "rb") as stdin:
        process = subprocess.Popen(command, stdin=stdin, stdout=out, stderr=err, cwd=cwd,
                                   env=environment, start_new_session=True)
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
        peak = int(peak_file.read_text()) if peak_file.is_file() else -1
        shutil.rmtree(peak_file.parent, ignore_errors=True)
        return Bounded(process.returncode, out.read().decode("utf-8", "replace"),
                       err.read().decode("utf-8", "replace"), peak)


# ``harness`` as ``python -m harness.cli`` would run it, writing the process's own peak
# resident memory (VmHWM) at exit. (``wait4``'s ru_maxrss is no use: a forked child starts
# with the parent's high-water mark, and the parent here is the whole test session.)
_MEASURED = """
import atexit, os, runpy, sys
def _peak():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    with open(os.environ["UNTRUSTED_PEAK_FILE"], "w") as out:
        out.write(str(int(line.split()[1]) * 1024))
atexit.register(_peak)
sys.argv[0] = "harness"
runpy.run_module("harness.cli", run_name="__main__", alter_sys=True)
"""
