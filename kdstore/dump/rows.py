"""Which rows of one batch's teacher lattice a store keeps, per utterance (stage 1).

``batch_rows`` runs the teacher on one collated batch (encoder once, joint in time slices) and turns
each utterance's lattice into the arrays a part writer takes: per node the top-k log-probs and ids
and the (blank, next-label) pair, and with a band only the W label positions per frame that hold
the most of the teacher's own alignment occupancy (docs/store-format.md, "Band"). Hybrid teachers
can add their CTC head's per-frame top-k.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kdstore.lattice.posteriors import node_occupancy, node_occupancy_batch
from kdstore.nemo.teacher_forced import encode_teacher_forced, frames_per_slice_for, lattice_rows, time_sliced_log_probs
from kdstore.store.band import gather_band, select_band, stored_width


@dataclass(frozen=True)
class RowSpec:
    """What to keep per utterance: ``top_k`` of the ``vocab`` + 1 outputs (``blank`` is their last
    index), the label slot's fill at u = U (``label_fill``), a band of ``band`` label positions per
    frame (None: the full lattice) and, with ``ctc``, the CTC head's top-k per frame."""

    top_k: int
    blank: int
    vocab: int
    label_fill: float
    band: int | None = None
    ctc: bool = False


def utterance_rows(values: torch.Tensor, ids: torch.Tensor, blank_label: torch.Tensor, labels: int,
                   band: int | None, occupancy: torch.Tensor | None = None) -> dict:
    """One utterance's per-node top-k and (blank, label) pairs, (T, U+1, ...), -> what a part stores.

    With a band, the teacher's node occupancy (forward-backward over its own blank/label log-probs)
    picks the W label positions per frame to keep (docs/store-format.md, "Band"). ``occupancy`` (T, U+1)
    is that posterior when the caller computed it for the whole batch at once (``batch_occupancy``).
    """
    frames = values.shape[0]
    arrays = {"logp": values.cpu().numpy(), "ids": ids.cpu().numpy(), "blank_label": blank_label.cpu().numpy()}
    starts = np.zeros(frames, dtype=np.int32)
    kept_occupancy = None
    if band is not None:
        occ = occupancy if occupancy is not None else node_occupancy(
            blank_label[..., 0].double(), blank_label[..., 1].double(), labels)  # (T, U+1)
        width = stored_width(band, frames, labels)  # W' (U+1 for one frame: every label is emitted in it)
        starts = select_band(occ, width).astype(np.int32)
        arrays = {name: gather_band(array, starts, width) for name, array in arrays.items()}
        kept_occupancy = gather_band(occ.cpu().numpy(), starts, width)
    out = {name: array.reshape(-1, *array.shape[2:]) for name, array in arrays.items()}  # (T * W', ...)
    out["occupancy"] = kept_occupancy.reshape(-1) if kept_occupancy is not None else None
    return {"frames": frames, "labels": labels, "band_start": starts, **out}


def batch_occupancy(blank_labels: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Node occupancy (T_b, U_b+1) float64 of several utterances from one padded forward-backward.

    Per utterance the recursion is T small tensor ops: batching them costs one pass for the whole
    batch instead of one per utterance, which is most of what a band dump adds to the teacher forward.
    ``blank_labels`` maps batch position -> the utterance's (T, U+1, 2) blank/label log-probs.
    """
    if not blank_labels:
        return {}
    order = list(blank_labels)
    frames = [blank_labels[b].shape[0] for b in order]
    nodes = [blank_labels[b].shape[1] for b in order]
    padded = torch.zeros(len(order), max(frames), max(nodes), 2, dtype=torch.float64)
    for i, b in enumerate(order):
        padded[i, : frames[i], : nodes[i]] = blank_labels[b].double().cpu()
    occ = node_occupancy_batch(padded[..., 0], padded[..., 1], frames, [n - 1 for n in nodes])
    return {b: occ[i, : frames[i], : nodes[i]] for i, b in enumerate(order)}


def batch_rows(model: Any, batch: Any, todo: list[bool], spec: RowSpec,
               device: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, rows) for each utterance of ``batch`` (a ``distill.data.collate`` batch) with ``todo`` set.

    ``rows`` are ``utterance_rows``' arrays (plus ``ctc_logp``/``ctc_ids`` (T, k) with ``spec.ctc``),
    ready for ``PartWriter.add_utterance``. Run it under ``torch.inference_mode()`` (and autocast).
    """
    encoded = encode_teacher_forced(model, batch.signal.to(device), batch.signal_len.to(device),
                                    batch.tokens.to(device), batch.tokens_len.to(device))
    nodes = encoded.prediction.shape[-1]
    size = len(todo)
    slice_frames = frames_per_slice_for(size, nodes, spec.vocab + 1)
    pieces: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in range(size)]
    for t0, log_probs in time_sliced_log_probs(model, encoded, slice_frames):  # (B, t, U+1, V+1)
        for b in range(size):
            frames_b = int(encoded.encoded_len[b]) - t0
            if todo[b] and frames_b > 0:
                labels_b = int(batch.tokens_len[b])
                pieces[b].append(lattice_rows(log_probs[b, :frames_b, : labels_b + 1].float(),
                                              batch.tokens[b].to(log_probs.device), labels_b, spec.top_k,
                                              spec.blank, spec.label_fill))
    ctc = None
    if spec.ctc:  # (B, T, V+1) log-probs of the CTC head; blank is last, as in the joint
        ctc = model.ctc_decoder(encoder_output=encoded.encoded).float().log_softmax(-1).topk(spec.top_k, dim=-1)
    joined = {b: tuple(torch.cat(parts, dim=0) for parts in zip(*pieces[b], strict=True))
              for b in range(size) if todo[b]}  # b -> (values, ids, blank_label)
    occupancy = batch_occupancy({b: rows[2] for b, rows in joined.items()}) if spec.band else {}
    for b, key in enumerate(batch.keys):
        if not todo[b]:
            continue
        values, ids, blank_label = joined[b]
        rows = utterance_rows(values, ids, blank_label, int(batch.tokens_len[b]), spec.band, occupancy.get(b))
        if ctc is not None:
            frames_b = int(encoded.encoded_len[b])
            rows["ctc_logp"] = ctc.values[b, :frames_b].cpu().numpy()
            rows["ctc_ids"] = ctc.indices[b, :frames_b].cpu().numpy()
        yield key, rows
