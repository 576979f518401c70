"""Data parallelism under `torchrun`: who am I, which device, and summing across ranks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ParameterError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(device: str) -> torch.device:
    """"auto" (CUDA when torch sees one, else CPU), "cpu", "cuda" or "cuda:N"."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError("device", f"{device}: no CUDA device is visible to torch")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ParameterError("device", f"must be auto, cpu, cuda or cuda:N, got {device!r}") from None


def setup(device: str) -> Context:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = pick_device(device)
    if world_size <= 1:
        return Context(device=chosen)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if chosen.type == "cuda":
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Context(rank, world_size, dev)


def barrier(ctx: Context) -> None:
    """Wait for every rank (e.g. rank 0 writing the summary) before anyone leaves the group."""
    if ctx.distributed and dist.is_initialized():
        dist.barrier()


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_buffers(module: torch.nn.Module, ctx: Context) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank. DDP sends them only at
    the start of a forward, so after an epoch's last step each rank holds its own batch's."""
    if ctx.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def all_reduce_sum(tensor: torch.Tensor, ctx: Context) -> torch.Tensor:
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
