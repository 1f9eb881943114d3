"""Precision checks shared by the methods' tests: bf16 autocast keeps the head in float32,
and a CUDA fp32 forward equals the CPU one."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def check_bf16_autocast_keeps_float32_output(method, model, images) -> None:
    """Under CPU bf16 autocast the descriptors stay float32, unit-norm and close to fp32."""
    from methods.precision import precision_context

    with torch.no_grad():
        reference = method.encode(model, images, None)
        with precision_context(torch.device("cpu"), "bf16"):
            reduced = method.encode(model, images, None)
    assert reduced.dtype == torch.float32
    np.testing.assert_allclose(reduced.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert (reduced * reference).sum(dim=1).min().item() > 0.98  # bf16 backbone, close


def check_cuda_fp32_matches_the_cpu(method, model, images) -> None:
    """fp32 on CUDA (TF32 off) gives the CPU's descriptors up to float32 rounding."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from methods.precision import precision_context

    device = torch.device("cuda")
    with torch.no_grad():
        cpu = method.encode(model, images, None)
        model = model.to(device)
        with precision_context(device, "fp32"):
            cuda = method.encode(model, images.to(device), None).cpu()
    assert torch.allclose(cuda, cpu, atol=1e-4)
