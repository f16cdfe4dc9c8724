"""The teacher's stored rows, padded per batch and attached to the audio batch (KD from a store).

Audio, tokens and the batch itself are :mod:`kdstore.inputs.batches` (shared with dump and eval);
this module adds what only training reads: the store's (B, T, U+1, k) rows for the batch's keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from kdstore.inputs.batches import AudioBatch, collate
from kdstore.store import StoreReader, StoreSet, UtteranceRows


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
    ctc_valid: torch.Tensor | None = None  # bool (B, T): CTC frames that count (None: t < frames); kdstore.distill.delay
    teacher_label: torch.Tensor | None = None  # bool (B,): the utterance's label is the teacher's (kdstore/2 stores)
    # TDT teachers' stores (kdstore/3, store.tdt_durations): log P(durations[i] | t, u) in nats, the D-way
    # distribution of every node, padded with 0 like blank_label; None for an RNN-T teacher's store
    duration_logp: torch.Tensor | None = None  # float32 (B, T, U+1, D)


@dataclass
class KDBatch(AudioBatch):
    """An audio batch with the teacher's rows (None: no store; online KD computes them in the step)."""

    kd: KDRows | None = None


def _pad_stack(arrays: Sequence[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
    shape = [len(arrays)] + [max(a.shape[d] for a in arrays) for d in range(arrays[0].ndim)]
    out = torch.zeros(shape, dtype=dtype)
    for i, array in enumerate(arrays):
        out[(i,) + tuple(slice(0, s) for s in array.shape)] = torch.from_numpy(np.asarray(array)).to(dtype)
    return out


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
        duration_logp=(_pad_stack([r.duration_logp for r in rows], torch.float32)
                       if rows[0].duration_logp is not None else None),
    )


def check_finite_rows(rows: Sequence[UtteranceRows], keys: Sequence[str], store: StoreReader | StoreSet) -> None:
    """Raise ``StoreError`` naming the utterance when a stored node (``stored``; all nodes in a full store)
    holds a NaN or infinite log-prob: the KD term would silently skip it or turn the student into NaN."""
    from kdstore.errors import StoreError

    for row, key in zip(rows, keys, strict=True):
        for name in ("logp", "blank_label", "occupancy", "ctc_logp", "duration_logp"):
            values = getattr(row, name, None)
            if values is None:
                continue
            kept = values[row.stored] if row.stored is not None and name != "ctc_logp" else values
            if not np.isfinite(kept).all():
                raise StoreError(f"store {store.path}: utterance {key} holds NaN or infinite teacher values in {name}; "
                                 "the store is damaged or was written from bad input: kdstore inspect --verify "
                                 "names every such utterance; dump it again (kdstore dump-teacher --overwrite)")


def _is_teacher_label(store, key: str) -> bool:
    label = store.label(key) if isinstance(store, StoreSet) else (store.label_of(key) if store.has_labels else None)
    return label is not None and label.source == "teacher"


class StoreCollate:
    """``collate`` plus the store's rows for the batch (one batch read); picklable (the reader reopens
    lazily in each worker). Without a store the batch's ``kd`` is None."""

    def __init__(self, store: StoreReader | StoreSet | None) -> None:
        self.store = store

    def __call__(self, items: Sequence[dict]) -> KDBatch:
        batch = collate(items)
        rows = None
        if self.store is not None:
            stored = self.store.read_batch(batch.keys)
            check_finite_rows(stored, batch.keys, self.store)
            rows = kd_rows(stored)
        if rows is not None:
            rows.teacher_label = torch.tensor([_is_teacher_label(self.store, key) for key in batch.keys])
        return KDBatch(**{f.name: getattr(batch, f.name) for f in fields(batch)}, kd=rows)
