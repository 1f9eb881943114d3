"""torch runtime settings shared by the commands and trainers: CPU threads and the device.

torch is imported inside the functions: ``harness --help`` must work without torch.
"""

from __future__ import annotations

import logging
import os

from harness.errors import HarnessError

logger = logging.getLogger(__name__)


def set_torch_threads() -> None:
    """Cap torch's CPU threads at the cores there are (unless ``OMP_NUM_THREADS`` is set)."""
    import torch  # optional and heavy: only once a command runs a model

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))


def resolve_device(device: str | None):
    """``None``/``auto``: CUDA when available, else CPU.

    An explicit ``cuda`` (or ``cuda:N``) that this machine cannot give is an error, never a
    silent CPU run (hours instead of minutes, and a record naming the wrong hardware).
    """
    import torch  # optional and heavy: only once a command runs a model

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise HarnessError(f"invalid device {device!r} ({exc})") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            version, build = torch.__version__, torch.version.cuda
            why = (
                f"no GPU visible to torch {version} (built with CUDA {build})"
                if build
                else f"torch {version} is built without CUDA"
            )
            raise HarnessError(
                f"--device {device}: CUDA is not available ({why}); use --device cpu"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise HarnessError(f"--device {device}: only {count} CUDA device(s) are visible")
    return resolved
