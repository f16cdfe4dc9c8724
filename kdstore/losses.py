"""Knowledge-distillation losses over transducer lattice nodes (pure torch, no NeMo).

Notation: a node is a lattice point (t, u); at every node the joint network gives a distribution
over V+1 outputs (V tokens + blank). The teacher's row at a node is stored as its top-k log-probs
``q`` with ids; the residual mass r = 1 - sum(exp(q)) is implied. All losses return the KL term
*without* the tau^2 factor: the caller forms ``(1 - alpha) * rnnt + alpha * tau^2 * kd``.

Scale (so ``kd_alpha`` means one thing everywhere): KL in nats per node, averaged over each
utterance's weighted nodes, then averaged over the utterances of the batch.
"""

from __future__ import annotations

from typing import Literal

import torch

KDLossName = Literal["topk_rest", "topk_renorm", "collapsed"]
_FAR_NEGATIVE = -1.0e30  # "minus infinity" that keeps gradients finite


def lattice_mask(frames: torch.Tensor, labels: torch.Tensor, max_frames: int, max_labels: int) -> torch.Tensor:
    """Valid nodes of a padded batch: (B, T, U+1) bool, true where t < T_b and u <= U_b."""
    t = torch.arange(max_frames, device=frames.device)[None, :, None]
    u = torch.arange(max_labels + 1, device=frames.device)[None, None, :]
    return (t < frames[:, None, None]) & (u <= labels[:, None, None])


def _kl_from_log(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum_i p_i (log p_i - log q_i) over the last axis, with 0 log 0 = 0 (teacher side)."""
    p = log_p.exp()
    safe_log_p = torch.where(p > 0, log_p, torch.zeros_like(log_p))
    return (p * (safe_log_p - log_q)).sum(-1)


def _temper(log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Tempered log-distribution over the last axis: p ∝ p^(1/tau)."""
    scaled = log_probs / temperature
    return scaled - torch.logsumexp(scaled, dim=-1, keepdim=True)


def _log_residual(log_probs: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(log_probs))) over the last axis, clamped at 0 mass (fp16 stores overshoot)."""
    mass = log_probs.exp().sum(-1).clamp(max=1.0)
    rest = (1.0 - mass).clamp(min=0.0)
    return torch.where(rest > 0, rest.clamp(min=1e-38).log(), torch.full_like(rest, float("-inf")))


def topk_rest_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, teacher_ids: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:
    """Per-node KL over k+1 classes: the teacher's k ids plus one "rest" bucket.

    Shapes: student_logp (..., V+1) log-probs; teacher_logp, teacher_ids (..., k). Returns (...).
    At k = V+1 the rest bucket is empty and this equals the full-vocabulary KL.
    """
    teacher_logp = teacher_logp.to(student_logp.dtype)
    ids = teacher_ids.long()
    student_sel = student_logp.gather(-1, ids)  # (..., k)
    if ids.shape[-1] >= student_logp.shape[-1]:
        # Every class is stored: no rest bucket (its rounding residue must not count as mass).
        return _kl_from_log(_temper(teacher_logp, temperature), _temper(student_sel, temperature))
    selected = torch.zeros_like(student_logp, dtype=torch.bool).scatter_(-1, ids, True)
    student_rest = torch.logsumexp(
        torch.where(selected, torch.full_like(student_logp, _FAR_NEGATIVE), student_logp), dim=-1
    )  # (...,)
    teacher_rest = _log_residual(teacher_logp)
    teacher = _temper(torch.cat([teacher_logp, teacher_rest[..., None]], -1), temperature)
    student = _temper(torch.cat([student_sel, student_rest[..., None]], -1), temperature)
    return _kl_from_log(teacher, student)


def topk_renorm_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, teacher_ids: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """Per-node KL with both sides renormalised over the teacher's k ids (biased; for comparison)."""
    student_sel = student_logp.gather(-1, teacher_ids.long())
    teacher = _temper(teacher_logp.to(student_logp.dtype), temperature)
    return _kl_from_log(teacher, _temper(student_sel, temperature))


def collapsed_kl(student_logp: torch.Tensor, teacher_blank_label: torch.Tensor, targets: torch.Tensor,
                 label_valid: torch.Tensor, blank_id: int, temperature: float = 1.0) -> torch.Tensor:
    """Panchapagesan et al. (2021): KL over {blank, correct next label, rest} per node.

    Shapes: student_logp (B, T, U+1, V+1); teacher_blank_label (B, T, U+1, 2); targets (B, U);
    label_valid (B, T, U+1) false at u = U_b (no next label). Returns (B, T, U+1).
    """
    batch, frames, nodes, _ = student_logp.shape
    next_token = torch.cat([targets.long(), targets.new_zeros(batch, 1).long()], dim=1)[:, :nodes]
    next_token = next_token[:, None, :, None].expand(batch, frames, nodes, 1)
    student_blank = student_logp[..., blank_id]
    student_label = student_logp.gather(-1, next_token).squeeze(-1)
    neg = torch.full_like(student_label, _FAR_NEGATIVE)
    student_label = torch.where(label_valid, student_label, neg)
    teacher = teacher_blank_label.to(student_logp.dtype)
    teacher_blank = teacher[..., 0]
    teacher_label = torch.where(label_valid, teacher[..., 1], torch.full_like(teacher_blank, float("-inf")))
    def three_way(blank: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        pair = torch.stack([blank, label], -1)
        return torch.cat([pair, _log_residual(pair)[..., None]], -1)
    student3 = three_way(student_blank, student_label)
    student3 = torch.where(torch.isinf(student3), torch.full_like(student3, _FAR_NEGATIVE), student3)
    return _kl_from_log(_temper(three_way(teacher_blank, teacher_label), temperature),
                        _temper(student3, temperature))


def full_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-node KL over the whole vocabulary (reference for tests and online KD with k = V+1)."""
    return _kl_from_log(_temper(teacher_logp.to(student_logp.dtype), temperature),
                        _temper(student_logp, temperature))


def reduce_nodes(node_kl: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over each utterance's nodes (B, T, U+1) -> (B,), then the batch mean."""
    weights = weights.to(node_kl.dtype)
    node_kl = torch.where(weights > 0, node_kl, torch.zeros_like(node_kl))  # padding may hold NaN/inf
    per_utt = (node_kl * weights).flatten(1).sum(-1) / weights.flatten(1).sum(-1).clamp(min=1e-12)
    return per_utt.mean()
