"""The KD term of one training step: student log-probs vs the teacher's rows (stored or live).

The loss formulas are :mod:`kdstore.distill.losses`; this module gathers the batch's lattice, masks
the nodes that count (valid t < T, u <= U, and kept by the store) and reduces them, per
docs/training.md ("The loss and what kd_alpha means").
"""

from __future__ import annotations

import numpy as np
import torch

from kdstore.distill import losses
from kdstore.distill.config import KDSettings
from kdstore.distill.data import KDRows
from kdstore.errors import IncompatibleStoreError
from kdstore.inputs.batches import AudioBatch
from kdstore.nemo.teacher_forced import full_lattice, lattice_rows
from kdstore.store.layout import label_slot_fill


def kd_node_loss(log_probs: torch.Tensor, rows: KDRows, tokens: torch.Tensor, blank: int,
                 settings: KDSettings, per_utterance: bool = False) -> torch.Tensor:
    """Batch KD term (without tau^2) from student log-probs (B, T, U+1, V+1) and teacher rows: a scalar,
    or (B,) per utterance with ``per_utterance``.

    Only the k stored ids are gathered from the student; the teacher side stays k-wide.
    """
    frames, nodes = rows.logp.shape[1], rows.logp.shape[2]
    device = log_probs.device
    lattice = log_probs[:, :frames, :nodes]  # (B, T, U+1, V+1)
    mask = losses.lattice_mask(rows.frames.to(device), rows.labels.to(device), frames, nodes - 1)
    if rows.stored is not None:
        mask = mask & rows.stored.to(device)  # band stores: only the kept nodes
    teacher_logp, teacher_ids = rows.logp.to(device), rows.ids.to(device)
    if settings.top_k:
        teacher_logp, teacher_ids = losses.truncate_topk(teacher_logp, teacher_ids, settings.top_k)
    if settings.loss == "topk_rest":
        node_kl = losses.topk_rest_kl(lattice, teacher_logp, teacher_ids, settings.temperature)
    elif settings.loss == "topk_renorm":
        node_kl = losses.topk_renorm_kl(lattice, teacher_logp, teacher_ids, settings.temperature)
    else:
        u = torch.arange(nodes, device=device)[None, None, :]
        label_valid = mask & (u < rows.labels.to(device)[:, None, None])
        node_kl = losses.collapsed_kl(lattice, rows.blank_label.to(device), tokens, label_valid, blank,
                                      settings.temperature)
    weights = losses.node_weights(
        settings.weights, mask, blank_label=rows.blank_label.to(device), frames=rows.frames.to(device),
        labels=rows.labels.to(device), occupancy=rows.occupancy.to(device) if rows.occupancy is not None else None)
    return losses.reduce_nodes(node_kl, weights, per_utterance)


def duration_kd_loss(duration_log_probs: torch.Tensor, rows: KDRows, settings: KDSettings,
                     per_utterance: bool = False) -> torch.Tensor:
    """TDT duration KD term (without tau^2): at every node the teacher keeps, KL(teacher || student) between
    the two duration distributions over the D durations, weighted and reduced like the token KD term
    (:func:`kd_node_loss`: same node mask, ``model.kd.weights``, temperature tau); a scalar, or (B,) per
    utterance.

    ``duration_log_probs``: the student's (B, T, U+1, D) duration log-probs (log-softmax over the joint's
    last D outputs, separately from the tokens: Xu et al. 2023, arXiv 2304.06795, eq. 3). ``rows.duration_logp``:
    the teacher's, from a TDT store, (B, T, U+1, D) in nats. Raises ValueError when the rows have none or D
    differs (the two models' duration sets must be the same).
    """
    teacher = getattr(rows, "duration_logp", None)
    if teacher is None:
        raise ValueError("duration KD needs a TDT teacher's store (its rows have no duration log-probs)")
    if teacher.shape[-1] != duration_log_probs.shape[-1]:
        raise ValueError(f"duration KD: the teacher has {teacher.shape[-1]} durations, the student "
                         f"{duration_log_probs.shape[-1]}")
    frames, nodes = teacher.shape[1], teacher.shape[2]
    device = duration_log_probs.device
    mask = losses.lattice_mask(rows.frames.to(device), rows.labels.to(device), frames, nodes - 1)
    if rows.stored is not None:
        mask = mask & rows.stored.to(device)
    node_kl = losses.full_kl(duration_log_probs[:, :frames, :nodes], teacher.to(device).float(), settings.temperature)
    weights = losses.node_weights(
        settings.weights, mask, blank_label=rows.blank_label.to(device), frames=rows.frames.to(device),
        labels=rows.labels.to(device), occupancy=rows.occupancy.to(device) if rows.occupancy is not None else None)
    return losses.reduce_nodes(node_kl, weights, per_utterance)


def ctc_kd_loss(ctc_log_probs: torch.Tensor, rows: KDRows, settings: KDSettings,
                per_utterance: bool = False) -> torch.Tensor:
    """KD on a hybrid student's CTC head: ``topk_rest`` KL per frame against the teacher's CTC top-k,
    mean over each utterance's frames, then over the batch (same scale as the lattice term); (B,) with
    ``per_utterance``."""
    frames = rows.ctc_logp.shape[1]
    student = ctc_log_probs[:, :frames]  # (B, T, V+1)
    teacher_logp, teacher_ids = rows.ctc_logp.to(student.device), rows.ctc_ids.to(student.device)
    if settings.top_k:
        teacher_logp, teacher_ids = losses.truncate_topk(teacher_logp, teacher_ids, settings.top_k)
    mask = torch.arange(frames, device=student.device)[None, :] < rows.frames.to(student.device)[:, None]
    if rows.ctc_valid is not None:
        mask = mask & rows.ctc_valid.to(student.device)
    return losses.reduce_nodes(losses.topk_rest_kl(student, teacher_logp, teacher_ids, settings.temperature), mask,
                               per_utterance)


def check_alignment(batch: AudioBatch, rows: KDRows, encoded_len: torch.Tensor,
                    extra_frames: tuple[int, ...] = (0,)) -> None:
    """The student's T and U must equal the store's for every utterance (design section 6); ``extra_frames``
    lists the allowed differences T_student - T_store ((0, 1) for a causal student of a symmetric teacher:
    :func:`kdstore.frames.causal_extra_frames`)."""
    for b, key in enumerate(batch.keys):
        if int(encoded_len[b]) - int(rows.frames[b]) not in extra_frames:
            raise IncompatibleStoreError(
                f"utterance {key!r}: student has {int(encoded_len[b])} encoder frames, store has "
                f"{int(rows.frames[b])}; use the teacher's preprocessor and subsampling factor, no speed perturbation"
            )
        if int(batch.tokens_len[b]) != int(rows.labels[b]):
            raise IncompatibleStoreError(
                f"utterance {key!r}: student has {int(batch.tokens_len[b])} tokens, store has {int(rows.labels[b])}; "
                "train with the store's tokenizer"
            )


def online_rows(teacher, batch: AudioBatch, top_k: int = 0) -> KDRows:
    """KDRows from a live teacher on this batch (top_k 0 = the whole vocabulary)."""
    device = next(teacher.parameters()).device
    with torch.no_grad():
        log_probs, enc_len = full_lattice(teacher, batch.signal.to(device), batch.signal_len.to(device),
                                          batch.tokens.to(device), batch.tokens_len.to(device))
    classes = log_probs.shape[-1]
    k = classes if top_k <= 0 else min(top_k, classes)
    blank = int(teacher.decoder.blank_idx)
    fill = label_slot_fill(np.dtype(np.float32))
    per_utt = [lattice_rows(log_probs[b], batch.tokens[b].to(device), int(batch.tokens_len[b]), k, blank, fill)
               for b in range(log_probs.shape[0])]  # each (T, U+1, k), padded lattice
    values = torch.stack([v for v, _, _ in per_utt]).cpu()
    ids = torch.stack([i for _, i, _ in per_utt]).cpu()
    blank_label = torch.stack([bl for _, _, bl in per_utt]).cpu()
    return KDRows(logp=values, ids=ids.long(), blank_label=blank_label, frames=enc_len.cpu().long(),
                  labels=batch.tokens_len.cpu().long())
