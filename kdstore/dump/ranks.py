"""Rank/world discovery for multi-process dumps (``torchrun --nproc-per-node N kdstore dump-teacher``).

Only barriers are needed (each rank writes its own part), so a gloo group is enough on CPU or GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def owns(self, batch_number: int) -> bool:
        """Batches are dealt round-robin, so every rank gets short and long ones alike."""
        return batch_number % self.world == self.rank


def discover() -> Ranks:
    """Read torchrun's environment; start a gloo group when there is more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=rank, world_size=world)
    return Ranks(rank=rank, world=world)


def shutdown(ranks: Ranks) -> None:
    if ranks.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
