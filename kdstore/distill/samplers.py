"""Training batch samplers: duration buckets (plain training) and store order (KD from a store).

Both are deterministic given the seed (``run.seed`` seeds torch, the loader passes
``torch.initial_seed()``) and shard batches by rank under DDP, so Lightning's distributed sampler
stays off (``use_distributed_sampler=False``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class DurationBucketSampler(torch.utils.data.Sampler[list[int]]):
    """Shuffled batches of similar duration: less padding, so less wasted encoder compute.

    Each epoch shuffles the utterances, sorts them by duration within pools of ``pool_batches``
    batches, cuts batches, and shuffles the batch order. Deterministic given the epoch's seed; under
    DDP every rank builds the same plan and takes its own share of the batches.
    """

    def __init__(self, durations: Sequence[float], batch_size: int, seed: int = 0, pool_batches: int = 50) -> None:
        self.durations = list(durations)
        self.batch_size = batch_size
        self.seed = seed
        self.pool = batch_size * pool_batches
        self.epoch = 0

    def _batches(self, gen: torch.Generator) -> list[list[int]]:
        order = torch.randperm(len(self.durations), generator=gen).tolist()
        batches: list[list[int]] = []
        for start in range(0, len(order), self.pool):
            pool = sorted(order[start : start + self.pool], key=lambda i: self.durations[i])
            batches.extend(pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size))
        return batches

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        batches = self._batches(gen)
        order = torch.randperm(len(batches), generator=gen).tolist()
        rank, world = _rank_and_world()
        usable = len(order) - len(order) % world if world > 1 else len(order)  # equal batch counts per rank
        for index in order[rank:usable:world]:
            yield batches[index]

    def __len__(self) -> int:
        batches = (len(self.durations) + self.batch_size - 1) // self.batch_size
        _, world = _rank_and_world()
        return batches // world if world > 1 else batches


class StoreOrderBatchSampler(DurationBucketSampler):
    """Batches of utterances that are neighbours in the store, in shuffled batch order.

    A dump writes utterances in duration-sorted batches, so store neighbours have similar durations
    (bucketing for free) and a batch is one contiguous read per array: a chunk is decoded once for
    many utterances instead of once per utterance (docs/benchmarks.md, "Store"). Each epoch the cut
    points move by a random shift, so batch composition varies between epochs; the utterances before
    the first cut join the last batch (wrapping around the store order), so an epoch is always
    ``ceil(n / batch_size)`` batches, the length Lightning reads, and every utterance is in one of them.
    """

    def __init__(self, positions: Sequence[tuple[int, int]], batch_size: int, seed: int = 0) -> None:
        super().__init__([0.0] * len(positions), batch_size, seed)
        self.positions = list(positions)

    def _batches(self, gen: torch.Generator) -> list[list[int]]:
        order = sorted(range(len(self.positions)), key=lambda i: self.positions[i])
        shift = int(torch.randint(0, self.batch_size, (1,), generator=gen)) if len(order) > self.batch_size else 0
        order = order[shift:] + order[:shift]  # the last batch wraps around: at most two contiguous runs
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]


def _rank_and_world() -> tuple[int, int]:
    """Under DDP each rank takes every world-th batch of the same shuffled plan (same seed everywhere)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
