"""Rank/world discovery for multi-process dumps (``torchrun --nproc-per-node N kdstore dump-teacher``).

Only barriers are needed (each rank writes its own part), so a gloo group is enough on CPU or GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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


def local_forwards(model: torch.nn.Module) -> None:
    """Stop NeMo's encoders from synchronising ranks inside ``forward``.

    A Conformer (or Transformer) encoder with ``sync_max_audio_length`` (NeMo's default) all-reduces
    the batch length across ranks in every forward once ``torch.distributed`` is initialised. Dump
    ranks run different numbers of batches (always after ``--resume``, which skips committed ones), so
    one rank's all-reduce meets another's final barrier and both wait forever. Each rank only needs its
    own position buffer, whose values do not depend on its length, so the rows are unchanged.
    """
    for module in model.modules():
        if hasattr(module, "sync_max_audio_length"):
            module.sync_max_audio_length = False
