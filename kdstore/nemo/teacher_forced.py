"""Teacher-forced joint log-probs over the T x (U+1) lattice of a NeMo RNN-T model.

What a NeMo transducer computes on the reference tokens, for ``dump-teacher`` (kdstore.dump.rows)
and for online KD (kdstore.distill.kd_term): NeMo-adapter code, so both stages may use it. Works for EncDecRNNTBPEModel and the hybrid RNNT-CTC model (its transducer head). The joint is
computed in time slices so peak memory stays bounded on long batches: B x T x (U+1) x (V+1)
floats would otherwise be tens of GB for LibriSpeech-length utterances at V = 1025.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class EncodedBatch:
    encoded: torch.Tensor  # (B, D, T) encoder output
    encoded_len: torch.Tensor  # (B,)
    prediction: torch.Tensor  # (B, H, U+1) prediction-net output (blank/SOS prepended)


def encode_teacher_forced(model, signal: torch.Tensor, signal_len: torch.Tensor, tokens: torch.Tensor,
                          tokens_len: torch.Tensor) -> EncodedBatch:
    """Encoder and prediction network on the reference tokens (teacher forcing)."""
    encoded, encoded_len = model.forward(input_signal=signal, input_signal_length=signal_len)
    prediction, _, _ = model.decoder(targets=tokens, target_length=tokens_len)
    return EncodedBatch(encoded, encoded_len, prediction)


def joint_log_probs(model, encoded: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """(B, D, T) x (B, H, U+1) -> (B, T, U+1, V+1) log-probs (log_softmax applied here, always:
    NeMo's joint emits raw logits on GPU and after export)."""
    logits = model.joint.joint(encoded.transpose(1, 2), prediction.transpose(1, 2))
    return logits.float().log_softmax(dim=-1)


def time_sliced_log_probs(model, batch: EncodedBatch, frames_per_slice: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (t0, log-probs[:, t0:t0+n]) so callers can reduce each slice (top-k) before the next."""
    total = batch.encoded.shape[-1]
    for t0 in range(0, total, frames_per_slice):
        yield t0, joint_log_probs(model, batch.encoded[..., t0 : t0 + frames_per_slice], batch.prediction)


def frames_per_slice_for(batch_size: int, nodes_per_frame: int, vocab_plus_blank: int,
                         budget_bytes: int = 512 << 20) -> int:
    """How many frames of joint output fit the memory budget (float32, x3 for temporaries)."""
    per_frame = batch_size * nodes_per_frame * vocab_plus_blank * 4 * 3
    return max(1, budget_bytes // max(1, per_frame))


@torch.no_grad()
def full_lattice(model, signal, signal_len, tokens, tokens_len) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole (B, T, U+1, V+1) log-prob lattice and encoded lengths (online KD, tests)."""
    batch = encode_teacher_forced(model, signal, signal_len, tokens, tokens_len)
    return joint_log_probs(model, batch.encoded, batch.prediction), batch.encoded_len


def lattice_rows(log_probs: torch.Tensor, tokens: torch.Tensor, labels: int, top_k: int, blank: int,
                 label_fill: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One utterance's (T, U+1, V+1) log-probs -> what the store keeps per node.

    Returns top-k values (T, U+1, k) sorted descending, their ids, and (T, U+1, 2) pairs of
    log p(blank) and log p(next reference token); at u = U the label slot holds ``label_fill``.
    """
    values, ids = log_probs.topk(top_k, dim=-1)
    blank_lp = log_probs[..., blank]
    label_lp = torch.full_like(blank_lp, label_fill)
    if labels > 0:
        index = tokens[:labels].long()[None, :, None].expand(log_probs.shape[0], labels, 1)
        label_lp[:, :labels] = log_probs[:, :labels, :].gather(-1, index).squeeze(-1)
    return values, ids, torch.stack([blank_lp, label_lp], dim=-1)
