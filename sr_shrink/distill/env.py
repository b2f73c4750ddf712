"""Where a distillation runs: the device, the distributed rank and world size, output verbosity."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import SRShrinkError


@dataclass
class Env:
    """Where the run executes: device, distributed rank/world size, output verbosity, precision options."""

    device: torch.device
    rank: int = 0
    world: int = 1
    quiet: bool = False
    amp: bool = False
    channels_last: bool = False

    @property
    def main(self) -> bool:
        """Return True on the process that writes files and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for in one process)."""
        if self.world > 1:
            dist.barrier()


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for ``auto`` (cuda > mps > cpu) or the named one, checking it exists."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SRShrinkError("--device cuda: no CUDA device is available here; use --device cpu.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SRShrinkError("--device mps: no Apple GPU is available here; use --device cpu.")
    return torch.device(name)


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun; return (rank, world size, device for this rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    return rank, world, device


def leave_group() -> None:
    """Leave the process group of a distributed run that stops early (returns nothing; nothing to do in one
    process): a rank that exits with its gloo threads still connected can abort ("terminate called without an
    active exception") as the other ranks close theirs."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank0(value, world: int | None = None):
    """Return rank 0's ``value`` on every rank of a distributed run (``value`` itself in one process: ``world``
    <= 1, or no process group)."""
    if (world is not None and world <= 1) or not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
