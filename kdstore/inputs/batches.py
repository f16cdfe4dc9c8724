"""Manifest entries -> padded audio + token batches, shared by dump (teacher), training and eval.

One code path reads manifests, audio and tokens for every stage, so the keys and token counts the
student sees are exactly those the teacher was forced on.

The one module of ``kdstore.inputs`` that imports torch at import time: it defines a
``torch.utils.data.Dataset`` and builds tensors (docs/decisions.md). Everything else in ``inputs``
stays torch-free, so manifest and audio checks run without torch. The teacher's stored rows are
attached by ``kdstore.distill.data`` (``StoreCollate``), not here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kdstore.errors import ManifestError
from kdstore.inputs.audio import load_audio
from kdstore.inputs.manifest import ManifestEntry

Tokenize = Callable[[str], Sequence[int]]


@dataclass
class AudioBatch:
    signal: torch.Tensor  # (B, S) float32
    signal_len: torch.Tensor  # (B,)
    tokens: torch.Tensor  # (B, U) int64, padded with 0
    tokens_len: torch.Tensor  # (B,)
    keys: list[str]
    indices: list[int]

    def as_nemo_tuple(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The (signal, signal_len, transcript, transcript_len) tuple NeMo's steps unpack."""
        return self.signal, self.signal_len, self.tokens, self.tokens_len


class TranscribedAudioDataset(torch.utils.data.Dataset):
    """Manifest entries -> audio samples (float32 at ``sample_rate``) + token ids.

    ``augment`` (training only: NeMo's AudioAugmentor, ``kdstore.distill.augment``) maps a waveform to
    a waveform. Items are dicts ``{"audio", "tokens", "key", "index"}``; raises ``ManifestError`` for a
    transcript without tokens and ``AudioError`` for unreadable audio.

    ``labels`` maps a key to the token ids to use instead of its transcript's (a store's labels: the
    path the teacher's lattice was forced on). ``untranscribed``: an entry without text gets no tokens
    (``dump-teacher`` labels it with the teacher) instead of an error. ``tokenize`` None: audio only
    (``eval``: the model's own decoding gives the text), every item has no tokens.
    """

    def __init__(self, entries: Sequence[ManifestEntry], tokenize: Tokenize | None, sample_rate: int,
                 augment: Callable[[np.ndarray], np.ndarray] | None = None,
                 labels: Mapping[str, Sequence[int]] | None = None, untranscribed: bool = False) -> None:
        self.entries = list(entries)
        self.tokenize = tokenize
        self.sample_rate = sample_rate
        self.augment = augment
        self.labels = labels
        self.untranscribed = untranscribed

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        if self.tokenize is None:
            tokens: list[int] = []
        elif self.labels is not None and entry.key in self.labels:
            tokens = list(self.labels[entry.key])
        elif self.untranscribed and not entry.text:
            tokens = []
        else:
            tokens = list(self.tokenize(entry.text))
        if (not tokens and self.tokenize is not None and not (self.untranscribed and not entry.text)
                and (self.labels is None or entry.key not in self.labels)):
            raise ManifestError(f"{entry.where}: transcript {entry.text!r} has no tokens")
        audio = load_audio(entry, self.sample_rate)
        if self.augment is not None:
            audio = self.augment(audio)
        return {
            "audio": torch.from_numpy(audio),
            "tokens": torch.tensor(tokens, dtype=torch.long),
            "key": entry.key,
            "index": index,
        }


def collate(items: Sequence[dict]) -> AudioBatch:
    """Pad audio (B, S) and tokens (B, U) of ``TranscribedAudioDataset`` items into one batch."""
    signal_len = torch.tensor([item["audio"].numel() for item in items], dtype=torch.long)
    tokens_len = torch.tensor([item["tokens"].numel() for item in items], dtype=torch.long)
    signal = torch.zeros(len(items), int(signal_len.max()))
    tokens = torch.zeros(len(items), int(tokens_len.max()), dtype=torch.long)
    for i, item in enumerate(items):
        signal[i, : signal_len[i]] = item["audio"]
        tokens[i, : tokens_len[i]] = item["tokens"]
    return AudioBatch(signal, signal_len, tokens, tokens_len, [item["key"] for item in items],
                      [item["index"] for item in items])


def collate_nemo_tuple(items: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Collate for NeMo's own validation step, which unpacks (signal, len, tokens, len)."""
    return collate(items).as_nemo_tuple()


def duration_sorted_batches(entries: Sequence[ManifestEntry], batch_size: int) -> list[list[int]]:
    """A fixed batch plan: indices sorted by duration (stable), cut into batches of ``batch_size``."""
    order = sorted(range(len(entries)), key=lambda i: (entries[i].duration, i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
