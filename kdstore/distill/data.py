"""Dataset and collate shared by dump (teacher), training (student + store rows) and eval.

One code path reads manifests, audio and tokens for every stage, so the keys and token counts the
student sees are exactly those the teacher was forced on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kdstore.inputs.audio import load_audio
from kdstore.errors import ManifestError
from kdstore.inputs.manifest import ManifestEntry
from kdstore.store import StoreReader, UtteranceRows

Tokenize = Callable[[str], Sequence[int]]


@dataclass
class KDRows:
    """Teacher rows for a batch, padded to the batch's lattice: (B, T, U+1, k)."""

    logp: torch.Tensor  # float32 (B, T, U+1, k)
    ids: torch.Tensor  # int64 (B, T, U+1, k)
    blank_label: torch.Tensor  # float32 (B, T, U+1, 2)
    frames: torch.Tensor  # int64 (B,) stored T per utterance
    labels: torch.Tensor  # int64 (B,) stored U per utterance
    stored: torch.Tensor | None = None  # bool (B, T, U+1): nodes the store kept (band stores); None = all
    occupancy: torch.Tensor | None = None  # float32 (B, T, U+1): the teacher's node posterior (band stores)
    ctc_logp: torch.Tensor | None = None  # float32 (B, T, k_ctc): hybrid teacher's CTC top-k per frame
    ctc_ids: torch.Tensor | None = None  # int64 (B, T, k_ctc)


@dataclass
class AudioBatch:
    signal: torch.Tensor  # (B, S) float32
    signal_len: torch.Tensor  # (B,)
    tokens: torch.Tensor  # (B, U) int64, padded with 0
    tokens_len: torch.Tensor  # (B,)
    keys: list[str]
    indices: list[int]
    kd: KDRows | None = None

    def as_nemo_tuple(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The (signal, signal_len, transcript, transcript_len) tuple NeMo's steps unpack."""
        return self.signal, self.signal_len, self.tokens, self.tokens_len


class TranscribedAudioDataset(torch.utils.data.Dataset):
    """Manifest entries -> audio samples + token ids (+ the teacher's stored rows)."""

    def __init__(self, entries: Sequence[ManifestEntry], tokenize: Tokenize, sample_rate: int,
                 store: StoreReader | None = None,
                 augment: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.entries = list(entries)
        self.tokenize = tokenize
        self.sample_rate = sample_rate
        self.store = store
        self.augment = augment  # training only: NeMo's AudioAugmentor (kdstore.distill.augment)
        if store is not None:
            missing = [e for e in self.entries if e.key not in store]
            if missing:
                raise ManifestError(
                    f"{missing[0].where}: utterance {missing[0].key!r} (and {len(missing) - 1} more) is not "
                    f"in store {store.path}; dump the teacher over this manifest first"
                )

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        tokens = list(self.tokenize(entry.text))
        if not tokens:
            raise ManifestError(f"{entry.where}: transcript {entry.text!r} has no tokens")
        audio = load_audio(entry, self.sample_rate)
        if self.augment is not None:
            audio = self.augment(audio)
        item = {
            "audio": torch.from_numpy(audio),
            "tokens": torch.tensor(tokens, dtype=torch.long),
            "key": entry.key,
            "index": index,
        }
        return item


def _pad_stack(arrays: Sequence[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
    shape = [len(arrays)] + [max(a.shape[d] for a in arrays) for d in range(arrays[0].ndim)]
    out = torch.zeros(shape, dtype=dtype)
    for i, array in enumerate(arrays):
        out[(i,) + tuple(slice(0, s) for s in array.shape)] = torch.from_numpy(np.asarray(array)).to(dtype)
    return out


def collate(items: Sequence[dict], store: StoreReader | None = None) -> AudioBatch:
    """Pad audio and tokens into one batch; with a store, add the teacher rows (one batch read)."""
    signal_len = torch.tensor([item["audio"].numel() for item in items], dtype=torch.long)
    tokens_len = torch.tensor([item["tokens"].numel() for item in items], dtype=torch.long)
    signal = torch.zeros(len(items), int(signal_len.max()))
    tokens = torch.zeros(len(items), int(tokens_len.max()), dtype=torch.long)
    for i, item in enumerate(items):
        signal[i, : signal_len[i]] = item["audio"]
        tokens[i, : tokens_len[i]] = item["tokens"]
    keys = [item["key"] for item in items]
    kd = kd_rows(store.read_batch(keys)) if store is not None else None
    return AudioBatch(signal, signal_len, tokens, tokens_len, keys, [item["index"] for item in items], kd)


def kd_rows(rows: Sequence[UtteranceRows]) -> KDRows:
    """Dense store rows of a batch, padded to (B, T, U+1, k)."""
    return KDRows(
        logp=_pad_stack([r.logp for r in rows], torch.float32),
        ids=_pad_stack([r.ids.astype(np.int64) for r in rows], torch.long),
        blank_label=_pad_stack([r.blank_label for r in rows], torch.float32),
        frames=torch.tensor([r.num_frames for r in rows], dtype=torch.long),
        labels=torch.tensor([r.num_labels for r in rows], dtype=torch.long),
        stored=_pad_stack([r.stored for r in rows], torch.bool),
        occupancy=_pad_stack([r.occupancy for r in rows], torch.float32) if rows[0].occupancy is not None else None,
        ctc_logp=_pad_stack([r.ctc_logp for r in rows], torch.float32) if rows[0].ctc_logp is not None else None,
        ctc_ids=_pad_stack([r.ctc_ids.astype(np.int64) for r in rows], torch.long) if rows[0].ctc_ids is not None else None,
    )


class StoreCollate:
    """``collate`` bound to a store; picklable (the reader reopens lazily in each worker)."""

    def __init__(self, store: StoreReader | None) -> None:
        self.store = store

    def __call__(self, items: Sequence[dict]) -> AudioBatch:
        return collate(items, self.store)


def duration_sorted_batches(entries: Sequence[ManifestEntry], batch_size: int) -> list[list[int]]:
    """A fixed batch plan: indices sorted by duration (stable), cut into batches of ``batch_size``."""
    order = sorted(range(len(entries)), key=lambda i: (entries[i].duration, i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


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
    points move by a random shift, so batch composition varies between epochs.
    """

    def __init__(self, positions: Sequence[tuple[int, int]], batch_size: int, seed: int = 0) -> None:
        super().__init__([0.0] * len(positions), batch_size, seed)
        self.positions = list(positions)

    def _batches(self, gen: torch.Generator) -> list[list[int]]:
        order = sorted(range(len(self.positions)), key=lambda i: self.positions[i])
        shift = int(torch.randint(0, self.batch_size, (1,), generator=gen))
        cuts = [order[:shift]] + [order[i : i + self.batch_size] for i in range(shift, len(order), self.batch_size)]
        return [batch for batch in cuts if batch]


def _rank_and_world() -> tuple[int, int]:
    """Under DDP each rank takes every world-th batch of the same shuffled plan (same seed everywhere)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
