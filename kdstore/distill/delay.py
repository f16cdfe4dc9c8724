"""The teacher's rows re-indexed onto the student's frames: delay-aware KD for streaming students.

Per-node KD matches student node (t, u) to teacher node (t, u). An offline teacher has heard the whole
utterance at every frame; a cache-aware streaming student at frame t has heard only up to the end of
t's chunk, so a teacher that emits token u+1 at frame t asks the student to emit it before the sound
has arrived. Kurata & Saon (Interspeech 2022, "Knowledge distillation from offline to streaming RNN
transducer for end-to-end speech recognition") shift the offline teacher's targets later in time for
the streaming student; kdstore does the same with a fixed delay of ``d`` encoder frames
(``model.kd.delay_frames``; d x 80 ms at 8x subsampling and a 10 ms hop):

    student node (t, u)  <-  teacher node (t - d, u)        for d <= t < min(T_student, T_teacher + d)

and no KD at the student's first ``d`` frames (nothing of the teacher maps there) nor past the shifted
teacher. The last ``d`` teacher frames fall off the student's end: an utterance's final tokens must
then come from the RNN-T term (the demo's utterances end in silence; docs/training.md, "Streaming
students"). The hybrid head's CTC rows shift the same way. Node weights (occupancy, non-blank) travel
with their nodes.

The same re-indexing pads the teacher when the student has one frame more (a causal subsampling stack,
:func:`kdstore.frames.causal_extra_frames`) and crops it when the student has one fewer: with d = 0 and
equal T the rows are returned unchanged.
"""

from __future__ import annotations

import dataclasses

import torch

from kdstore.distill.data import KDRows


def _shift_time(values: torch.Tensor, delay: int, frames_out: int, fill: float | bool = 0) -> torch.Tensor:
    """``values`` (B, T, ...) moved ``delay`` frames later on a (B, frames_out, ...) grid, ``fill`` elsewhere."""
    out = torch.full((values.shape[0], frames_out, *values.shape[2:]), fill, dtype=values.dtype, device=values.device)
    kept = max(0, min(values.shape[1], frames_out - delay))
    if kept:
        out[:, delay:delay + kept] = values[:, :kept]
    return out


def frame_mask(teacher_frames: torch.Tensor, student_frames: torch.Tensor, delay: int,
               frames_out: int) -> torch.Tensor:
    """(B, frames_out) bool: student frames t that receive a teacher frame, d <= t < min(T_s, T_t + d)."""
    t = torch.arange(frames_out, device=teacher_frames.device)[None, :]
    return (t >= delay) & (t < student_frames[:, None]) & (t < teacher_frames[:, None] + delay)


def align_rows(rows: KDRows, student_frames: torch.Tensor, frames_out: int, delay: int = 0) -> KDRows:
    """``rows`` (the teacher's, (B, T_t, U+1, k)) on the student's frame grid, ``delay`` frames later.

    Args:
        rows: the batch's teacher rows (stored or live), frames ``rows.frames`` (B,).
        student_frames: (B,) int64, the student's encoder frames per utterance (its ``encoded_len``).
        frames_out: the student's padded T (its lattice's second axis).
        delay: frames (>= 0) the teacher's targets move later for the student.

    Returns:
        KDRows with every per-frame tensor (B, frames_out, ...): ``frames`` = ``student_frames``,
        ``stored`` true only at the nodes that receive a teacher node (and were stored), and
        ``ctc_valid`` (B, frames_out) for the CTC rows; labels and per-utterance fields unchanged.

    Raises:
        ValueError: a negative delay.
    """
    if delay < 0:
        raise ValueError(f"model.kd.delay_frames: expected 0 or more frames, got {delay}")
    student_frames = student_frames.to(rows.frames.device).long()
    if delay == 0 and rows.logp.shape[1] == frames_out and torch.equal(student_frames, rows.frames):
        return rows
    valid = frame_mask(rows.frames, student_frames, delay, frames_out)  # (B, T_out)
    stored = rows.stored if rows.stored is not None else torch.ones(rows.logp.shape[:3], dtype=torch.bool)
    stored = _shift_time(stored.to(valid.device), delay, frames_out, False) & valid[:, :, None]
    shifted = {
        "logp": _shift_time(rows.logp, delay, frames_out, 0.0),
        "ids": _shift_time(rows.ids, delay, frames_out, 0),
        "blank_label": _shift_time(rows.blank_label, delay, frames_out, 0.0),
        "frames": student_frames,
        "stored": stored,
    }
    if rows.occupancy is not None:
        shifted["occupancy"] = _shift_time(rows.occupancy, delay, frames_out, 0.0)
    if getattr(rows, "duration_logp", None) is not None:  # TDT stores: the duration distribution moves with its node
        shifted["duration_logp"] = _shift_time(rows.duration_logp, delay, frames_out, 0.0)
    if rows.ctc_logp is not None:
        shifted["ctc_logp"] = _shift_time(rows.ctc_logp, delay, frames_out, 0.0)
        shifted["ctc_ids"] = _shift_time(rows.ctc_ids, delay, frames_out, 0)
        ctc_valid = valid if rows.ctc_valid is None else \
            _shift_time(rows.ctc_valid.to(valid.device), delay, frames_out, False) & valid
        shifted["ctc_valid"] = ctc_valid
    return dataclasses.replace(rows, **shifted)
