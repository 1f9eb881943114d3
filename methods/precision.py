"""Numeric precision of extraction: ``fp32`` (default everywhere), ``bf16`` or ``fp16`` autocast.

The default is ``fp32`` on the CPU *and* on CUDA: a benchmark's reference numbers must not
depend on the machine that produced them, and reduced precision (bfloat16 keeps 8 significant
bits) moves descriptors enough to swap near-tied database images. ``fp32`` on CUDA is strict
IEEE float32 (TF32 tensor-core convolutions and matrix products are switched off for the
duration of the extraction); ``bf16`` / ``fp16`` are opt-in speed (``--precision bf16``),
run under ``torch.autocast``. Layers that the methods keep in float32 (NetVLAD aggregation,
PCA) stay so under autocast. ``fp16`` overflows on the lineage's 0-255 VGG16 inputs (Inf,
which extraction reports as an error naming the image); ``bf16`` keeps float32's range.

Feature files record the precision (attribute ``extraction_precision``); files written before
the attribute existed recorded ``extraction_amp`` (bfloat16 autocast on CUDA), which
:func:`recorded_precision` translates.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Mapping

from harness.errors import HarnessError

PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_PRECISION = "fp32"
_AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def check_precision(precision: str | None) -> str:
    """``precision`` validated (``None``: the default, ``fp32``)."""
    if precision in (None, ""):
        return DEFAULT_PRECISION
    if precision not in PRECISIONS:
        raise HarnessError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    return precision


def recorded_precision(attrs: Mapping) -> str | None:
    """The precision a feature file was extracted in (``None``: not recorded)."""
    value = attrs.get("extraction_precision")
    if value is not None:
        return str(value)
    amp = attrs.get("extraction_amp")
    if amp is None:
        return None
    device = str(attrs.get("extraction_device", ""))
    return "bf16" if bool(amp) and device.startswith("cuda") else "fp32"


@contextlib.contextmanager
def precision_context(device, precision: str) -> Iterator[None]:
    """Run the body in ``precision`` on ``device`` (a ``torch.device``).

    Raises:
        HarnessError: ``fp16`` or ``bf16`` autocast is not supported on this device type.
    """
    import torch  # optional and heavy: only once a command runs a model

    precision = check_precision(precision)
    if precision == "fp32":
        with _strict_fp32(device):
            yield
        return
    dtype = getattr(torch, _AUTOCAST_DTYPES[precision])
    with warnings.catch_warnings():
        # torch warns and silently disables autocast for a dtype a device type lacks.
        warnings.simplefilter("ignore")
        autocast = torch.autocast(device_type=device.type, dtype=dtype)
    with autocast:
        active = torch.is_autocast_enabled(device.type)
        if not active or torch.get_autocast_dtype(device.type) != dtype:
            raise HarnessError(
                f"--precision {precision} is not supported on {device} by torch "
                f"{torch.__version__}; choose fp32"
            )
        yield


@contextlib.contextmanager
def _strict_fp32(device) -> Iterator[None]:
    import torch  # optional and heavy: only once a command runs a model

    if device.type != "cuda":
        yield
        return
    # TF32 (10-bit mantissa) is cuDNN's default for convolutions: switch it off while we run.
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
