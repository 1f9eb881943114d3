"""torch runtime settings shared by the commands and trainers: CPU threads and the device.

torch is imported inside the functions: ``harness --help`` must work without torch.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def set_torch_threads() -> None:
    """Cap torch's CPU threads at the cores there are (unless ``OMP_NUM_THREADS`` is set)."""
    import torch  # optional and heavy: only once a command runs a model

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))


def resolve_device(device: str | None) -> str:
    """``auto``/empty -> ``cuda`` where available, else ``cpu``; CUDA asked for without a GPU
    falls back to the CPU with a warning."""
    import torch  # optional and heavy: only once a command runs a model

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available; training on the CPU")
        return "cpu"
    return device
