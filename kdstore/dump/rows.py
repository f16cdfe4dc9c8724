"""Which rows of one batch's teacher lattice a store keeps, per utterance (stage 1).

``batch_rows`` runs the teacher on one collated batch (encoder once, joint in time slices) and turns
each utterance's lattice into the arrays a part writer takes: per node the top-k log-probs and ids
and the (blank, next-label) pair, and with a band only the W label positions per frame that hold
the most of the teacher's own alignment occupancy (docs/store-format.md, "Band"). Hybrid teachers
can add their CTC head's per-frame top-k.

TDT teachers (``RowSpec.durations`` set; :mod:`kdstore.nemo.tdt`): the token top-k and pair come from
the V+1 token log-probs, every node also keeps its D duration log-probs, and the occupancy (band choice)
and the label's log-likelihood (confidence) come from the TDT forward-backward
(:mod:`kdstore.lattice.tdt_posteriors`) instead of the RNN-T one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kdstore.dump.pseudo_labels import decode, mean_token_logp
from kdstore.lattice.posteriors import lattice_posteriors_batch, node_occupancy
from kdstore.lattice.tdt_posteriors import tdt_lattice_posteriors_batch
from kdstore.nemo.tdt import tdt_time_sliced_log_probs
from kdstore.nemo.teacher_forced import EncodedBatch, frames_per_slice_for, lattice_rows, time_sliced_log_probs
from kdstore.store.band import gather_band, select_band, stored_width
from kdstore.store.part_writer import Label


@dataclass(frozen=True)
class RowSpec:
    """What to keep per utterance: ``top_k`` of the ``vocab`` + 1 outputs (``blank`` is their last
    index), the label slot's fill at u = U (``label_fill``), a band of ``band`` label positions per
    frame (None: the full lattice) and, with ``ctc``, the CTC head's top-k per frame. ``durations``: a TDT
    teacher's duration list (its joint's last D outputs); None for RNN-T teachers."""

    top_k: int
    blank: int
    vocab: int
    label_fill: float
    band: int | None = None
    ctc: bool = False
    durations: tuple[int, ...] | None = None


def utterance_rows(values: torch.Tensor, ids: torch.Tensor, blank_label: torch.Tensor, labels: int,
                   band: int | None, occupancy: torch.Tensor | None = None,
                   duration_logp: torch.Tensor | None = None) -> dict:
    """One utterance's per-node top-k and (blank, label) pairs, (T, U+1, ...), -> what a part stores.

    With a band, the teacher's node occupancy (forward-backward over its own blank/label log-probs)
    picks the W label positions per frame to keep (docs/store-format.md, "Band"). ``occupancy`` (T, U+1)
    is that posterior when the caller computed it for the whole batch at once (``batch_occupancy``; a
    TDT teacher's must come from there: the fallback is the RNN-T forward-backward). ``duration_logp``
    (T, U+1, D): a TDT teacher's duration log-probs, banded like the rest (``duration_logp`` (rows, D)).
    """
    frames = values.shape[0]
    arrays = {"logp": values.cpu().numpy(), "ids": ids.cpu().numpy(), "blank_label": blank_label.cpu().numpy()}
    if duration_logp is not None:
        arrays["duration_logp"] = duration_logp.cpu().numpy()
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


def batch_occupancy(blank_labels: dict[int, torch.Tensor]) -> dict[int, tuple[torch.Tensor, float]]:
    """Node occupancy (T_b, U_b+1) float64 and log P(label | audio) (nats) of several utterances from
    one padded forward-backward.

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
    post = lattice_posteriors_batch(padded[..., 0], padded[..., 1], frames, [n - 1 for n in nodes])
    return {b: (post.node[i, : frames[i], : nodes[i]], float(post.log_z[i])) for i, b in enumerate(order)}


def tdt_batch_occupancy(blank_labels: dict[int, torch.Tensor], duration_logps: dict[int, torch.Tensor],
                        durations: tuple[int, ...]) -> dict[int, tuple[torch.Tensor, float]]:
    """:func:`batch_occupancy` for a TDT teacher: node occupancy (T_b, U_b+1) float64 and log P(label | audio)
    (nats) from one padded TDT forward-backward over the token pairs (T, U+1, 2) and the duration log-probs
    (T, U+1, D) of each batch position (the teacher's normalised distributions: no sigma)."""
    if not blank_labels:
        return {}
    order = list(blank_labels)
    frames = [blank_labels[b].shape[0] for b in order]
    nodes = [blank_labels[b].shape[1] for b in order]
    padded = torch.zeros(len(order), max(frames), max(nodes), 2, dtype=torch.float64)
    dur = torch.zeros(len(order), max(frames), max(nodes), len(durations), dtype=torch.float64)
    for i, b in enumerate(order):
        padded[i, : frames[i], : nodes[i]] = blank_labels[b].double().cpu()
        dur[i, : frames[i], : nodes[i]] = duration_logps[b].double().cpu()
    post = tdt_lattice_posteriors_batch(padded[..., 0], padded[..., 1], dur, durations, frames, [n - 1 for n in nodes])
    return {b: (post.node[i, : frames[i], : nodes[i]], float(post.log_z[i])) for i, b in enumerate(order)}


def forced_tokens(model: Any, batch: Any, encoded: torch.Tensor, encoded_len: torch.Tensor, todo: list[bool],
                  texts: list[str] | None, device: str) -> tuple[list[list[int]], list[str], list[str]]:
    """The label each utterance is forced on: its transcript's tokens, or, where ``texts[b]`` is empty
    (an untranscribed line), the teacher's own hypothesis (``kdstore.dump.pseudo_labels``).

    Returns per batch position the token ids, the label text and its source ("person" | "teacher").
    """
    size = len(todo)
    ids = [batch.tokens[b, : int(batch.tokens_len[b])].tolist() for b in range(size)]
    texts = list(texts) if texts is not None else [""] * size
    sources = ["person"] * size
    wanted = [b for b in range(size) if todo[b] and texts[b] == "" and int(batch.tokens_len[b]) == 0]
    if wanted:
        index = torch.tensor(wanted, device=encoded.device)
        for b, hyp in zip(wanted, decode(model, encoded.index_select(0, index), encoded_len.index_select(0, index)),
                          strict=True):
            ids[b], sources[b] = hyp, "teacher"
            texts[b] = model.tokenizer.ids_to_text(hyp) if hyp else ""
    return ids, texts, sources


def _pad(ids: list[list[int]], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(i) for i in ids], dtype=torch.long)
    tokens = torch.zeros(len(ids), max(1, int(lengths.max())), dtype=torch.long)
    for b, seq in enumerate(ids):
        tokens[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return tokens.to(device), lengths.to(device)


def _slices(model: Any, forced: EncodedBatch, slice_frames: int,
            num_durations: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """(t0, token log-probs, duration log-probs or None) per time slice, for RNN-T or TDT teachers."""
    if num_durations:
        yield from tdt_time_sliced_log_probs(model, forced, slice_frames, num_durations)
    else:
        for t0, log_probs in time_sliced_log_probs(model, forced, slice_frames):
            yield t0, log_probs, None


def batch_rows(model: Any, batch: Any, todo: list[bool], spec: RowSpec, device: str,
               texts: list[str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, rows) for each utterance of ``batch`` (an ``inputs.batches.collate`` batch) with ``todo`` set.

    ``texts`` are the manifest transcripts per batch position; an empty one (no tokens in the batch)
    is labelled by the teacher first (:func:`forced_tokens`). ``rows`` are ``utterance_rows``' arrays
    (plus ``ctc_logp``/``ctc_ids`` (T, k) with ``spec.ctc``; ``duration_logp`` (rows, D) and
    ``occupancy_sum`` for a TDT teacher, ``spec.durations``) and ``label`` (a ``Label``: ids, text,
    source, confidence), ready for ``PartWriter.add_utterance``; an empty teacher label has U = 0 and
    is the caller's to drop. Run it under ``torch.inference_mode()`` (and autocast).
    """
    encoded, encoded_len = model.forward(input_signal=batch.signal.to(device),
                                         input_signal_length=batch.signal_len.to(device))  # (B, D, T), (B,)
    label_ids, label_texts, sources = forced_tokens(model, batch, encoded, encoded_len, todo, texts, device)
    tokens, tokens_len = _pad(label_ids, device)
    prediction, _, _ = model.decoder(targets=tokens, target_length=tokens_len)  # (B, H, U+1)
    forced = EncodedBatch(encoded, encoded_len, prediction)
    nodes = forced.prediction.shape[-1]
    size = len(todo)
    num_durations = len(spec.durations) if spec.durations else 0
    slice_frames = frames_per_slice_for(size, nodes, spec.vocab + 1 + num_durations)
    pieces: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in range(size)]
    for t0, log_probs, dur_lp in _slices(model, forced, slice_frames, num_durations):  # (B, t, U+1, V+1), (B, t, U+1, D)
        for b in range(size):
            frames_b = int(encoded_len[b]) - t0
            if todo[b] and frames_b > 0:
                labels_b = int(tokens_len[b])
                rows_b = lattice_rows(log_probs[b, :frames_b, : labels_b + 1].float(), tokens[b].to(log_probs.device),
                                      labels_b, spec.top_k, spec.blank, spec.label_fill)
                if dur_lp is not None:
                    rows_b = (*rows_b, dur_lp[b, :frames_b, : labels_b + 1].float())
                pieces[b].append(rows_b)
    ctc = None
    if spec.ctc:  # (B, T, V+1) log-probs of the CTC head; blank is last, as in the joint
        ctc = model.ctc_decoder(encoder_output=encoded).float().log_softmax(-1).topk(spec.top_k, dim=-1)
    joined = {b: tuple(torch.cat(parts, dim=0) for parts in zip(*pieces[b], strict=True))
              for b in range(size) if todo[b]}  # b -> (values, ids, blank_label[, duration_logp])
    if spec.durations:
        posteriors = tdt_batch_occupancy({b: rows[2] for b, rows in joined.items()},
                                         {b: rows[3] for b, rows in joined.items()}, spec.durations)
    else:
        posteriors = batch_occupancy({b: rows[2] for b, rows in joined.items()})
    for b, key in enumerate(batch.keys):
        if not todo[b]:
            continue
        values, ids, blank_label = joined[b][:3]
        duration_logp = joined[b][3] if spec.durations else None
        occupancy, log_z = posteriors[b]
        labels_b = int(tokens_len[b])
        rows = utterance_rows(values, ids, blank_label, labels_b, spec.band,
                              occupancy if spec.band else None, duration_logp)
        if spec.durations:  # expected visited nodes of the full lattice: what the band's occupancy is a share of
            rows["occupancy_sum"] = float(occupancy.sum())
        if ctc is not None:
            frames_b = int(encoded_len[b])
            rows["ctc_logp"] = ctc.values[b, :frames_b].cpu().numpy()
            rows["ctc_ids"] = ctc.indices[b, :frames_b].cpu().numpy()
        rows["label"] = Label(ids=np.asarray(label_ids[b], dtype=np.int64), text=label_texts[b], source=sources[b],
                              confidence=mean_token_logp(log_z, labels_b))
        yield key, rows
