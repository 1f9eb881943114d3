"""DDP plumbing, torchrun-compatible: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the environment.

``torchrun --nproc_per_node=4 $(which harness) train sfrs ...`` (or submitit's
``TorchDistributedEnvironment().export()``) sets the variables; a plain run is world size 1.
NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_request: str | None) -> tuple[DistEnv, "object"]:
    """Initialise the process group when ``WORLD_SIZE`` > 1; return the env and the device."""
    import torch
    import torch.distributed as dist

    from methods.extract import resolve_device

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    env = DistEnv(rank=rank, world_size=world_size, local_rank=local_rank)
    device = resolve_device(device_request)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if env.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        logger.info("DDP: rank %d of %d (%s, %s)", rank, world_size, backend, device)
    return env, device


def barrier(env: DistEnv) -> None:
    import torch.distributed as dist

    if env.enabled and dist.is_initialized():
        dist.barrier()


def gather_rows(env: DistEnv, local, total: int):
    """Concatenate per-rank contiguous row blocks (rank order) into ``(total, D)`` on every rank."""
    import torch
    import torch.distributed as dist

    if not env.enabled:
        return local
    size = torch.tensor([local.shape[0]], device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(env.world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(
        (longest,) + tuple(local.shape[1:]), dtype=local.dtype, device=local.device
    )
    padded[: local.shape[0]] = local
    blocks = [torch.zeros_like(padded) for _ in range(env.world_size)]
    dist.all_gather(blocks, padded)
    result = torch.cat([b[: int(s.item())] for b, s in zip(blocks, sizes)])
    assert result.shape[0] == total, f"gathered {result.shape[0]} rows, expected {total}"
    return result


def broadcast_array(env: DistEnv, array, device):
    """Rank 0's int64 numpy array on every rank."""
    import numpy as np
    import torch
    import torch.distributed as dist

    if not env.enabled:
        return array
    shape = torch.tensor(
        list(array.shape) if env.is_main else [0, 0], dtype=torch.long, device=device
    )
    dist.broadcast(shape, 0)
    data = (
        torch.as_tensor(array, dtype=torch.long, device=device)
        if env.is_main
        else torch.zeros(tuple(shape.tolist()), dtype=torch.long, device=device)
    )
    dist.broadcast(data, 0)
    return data.cpu().numpy().astype(np.int64)


def all_reduce_mean(env: DistEnv, value: float, device) -> float:
    import torch
    import torch.distributed as dist

    if not env.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / env.world_size


def agree(env: DistEnv, flag: bool, device) -> bool:
    """Rank 0's ``flag`` on every rank (decisions from the file system must not race)."""
    import torch
    import torch.distributed as dist

    if not env.enabled:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.long, device=device)
    dist.broadcast(tensor, 0)
    return bool(tensor.item())
