"""The teacher labels untranscribed audio: search, and how sure it is of each label (stage 1).

For a manifest line without ``text`` (or every line, ``--pseudo-label``), ``dump-teacher`` decodes the
encoder output it has already computed with NeMo's own transducer search (greedy batch, or beam with
``--beam-size``), and the hypothesis becomes the path the lattice is teacher-forced on, exactly as a
transcript would be. Its confidence is the teacher's mean log-probability per token of that label,
log P(y | x) / max(U, 1) (nats; 0 is certain), where P(y | x) sums over every alignment of y in the
teacher's lattice (the forward-backward that also picks the band, Graves 2012, arXiv 1211.3711, eq. 7-10).
It is computed the same way for person labels, so a low value there flags a transcript the teacher
disagrees with. Per-frame confidence measures (NeMo's ``confidence_cfg``: max-prob, entropy) need the
search to keep every frame's distribution; this single per-utterance number needs nothing beyond the
lattice the store keeps anyway (docs/decisions.md, "Untranscribed audio").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kdstore.errors import KdstoreError

GREEDY = "greedy_batch"
BEAM = "beam"


def search_name(beam_size: int) -> str:
    """NeMo's decoding strategy for ``beam_size`` (1: greedy batch)."""
    return GREEDY if beam_size <= 1 else BEAM


def configure_search(model: Any, beam_size: int) -> None:
    """Point the teacher's RNN-T decoding at greedy batch search (``beam_size`` 1) or beam search.

    Uses NeMo's ``change_decoding_strategy`` (for a hybrid model, on its transducer head) with the
    model's own decoding config otherwise unchanged. Raises KdstoreError for ``beam_size`` < 1.
    """
    from omegaconf import open_dict

    if beam_size < 1:
        raise KdstoreError(f"--beam-size must be >= 1, got {beam_size}")
    decoding = model.cfg.decoding.copy()
    with open_dict(decoding):
        decoding.strategy = search_name(beam_size)
        if beam_size > 1:
            decoding.setdefault("beam", {})
            decoding.beam.beam_size = beam_size
            decoding.beam.return_best_hypothesis = True
    kwargs = {"decoder_type": "rnnt"} if getattr(model, "ctc_decoder", None) is not None else {}
    model.change_decoding_strategy(decoding, verbose=False, **kwargs)


def decode(model: Any, encoded: torch.Tensor, encoded_len: torch.Tensor) -> list[list[int]]:
    """Token ids of the teacher's best hypothesis per utterance, from its encoder output (B, D, T)
    and lengths (B,) (frames), with NeMo's configured transducer search."""
    hypotheses = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=encoded, encoded_lengths=encoded_len,
                                                                return_hypotheses=True)
    out = []
    for hyp in hypotheses:
        hyp = hyp[0] if isinstance(hyp, list) else hyp
        ids = hyp.y_sequence.tolist() if torch.is_tensor(hyp.y_sequence) else list(hyp.y_sequence)
        out.append([int(i) for i in ids])
    return out


def mean_token_logp(log_z: float, labels: int) -> float:
    """Confidence of a label of ``labels`` tokens whose sequence log-likelihood is ``log_z`` (nats):
    log P(y | x) / max(U, 1), nats per token, at the store's float32 precision (so the value the
    ``--min-confidence`` filter compares is the one the store, the side file and label-quality show)."""
    return float(np.float32(float(log_z) / max(labels, 1)))
