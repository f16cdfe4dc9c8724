"""Knowledge-distillation losses over transducer lattice nodes (pure torch, no NeMo).

Notation: a node is a lattice point (t, u); at every node the joint network gives a distribution
over V+1 outputs (V tokens + blank). The teacher's row at a node is stored as its top-k log-probs
``q`` with ids; the residual mass r = 1 - sum(exp(q)) is implied. All losses return the KL term
*without* the tau^2 factor: the caller forms ``(1 - alpha) * rnnt + alpha * tau^2 * kd``.

Scale (so ``kd_alpha`` means one thing everywhere): KL in nats per node, averaged over each
utterance's weighted nodes, then averaged over the utterances of the batch.

Memory: the student's log-probs (B, T, U+1, V+1) already exist for the RNN-T loss. The store losses
(``topk_rest``, ``topk_renorm``, ``collapsed``) never allocate another full-size tensor in their forward
pass (they read the student at k (or 2) ids per node and work k-wide), and their backward pass allocates
exactly one: the gradient w.r.t. the student's log-probs. ``full_kl`` is dense (a reference).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.autograd.function import once_differentiable

from kdstore.lattice.posteriors import node_occupancy_batch

KDLossName = Literal["topk_rest", "topk_renorm", "collapsed"]
NodeWeightKind = Literal["uniform", "occupancy", "non_blank"]
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


def _log_rest_from_selected(selected: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(selected))) over the last axis, k-wide, for normalised log-probs.

    Computed as log(-expm1(logsumexp)). When the selected ids hold (to rounding) all the mass, the
    logsumexp is capped just below 0, so the result is floored at about log(eps) of the dtype
    (-36 in float64, -16 in float32): a rest mass smaller than the rounding of the selected
    log-probs cannot be resolved from them anyway.
    """
    lse = torch.logsumexp(selected, dim=-1)
    return torch.log(-torch.expm1(lse.clamp(max=-torch.finfo(selected.dtype).eps)))


class _StudentBuckets(torch.autograd.Function):
    """Student log-probs at k ids per node, optionally with a last "rest" bucket: (..., k[+1]).

    Forward is k-wide: a gather, and the rest from the gathered values (:func:`_log_rest_from_selected`).
    Backward allocates one full-size tensor, the gradient itself (autograd's gather backward allocates
    two: zeros, then an out-of-place scatter_add). For the rest bucket it returns the gradient of
    log(sum_{j not selected} exp(s_j)), which equals the forward's value on normalised rows: through
    the student's log_softmax this gives the exact gradient w.r.t. the raw logits, without the
    cancellation of differentiating log(1 - sum_selected) when the rest mass is tiny (there the
    forward's value is floored, the gradient is not). ``student_logp`` must be normalised log-probs.

    ``valid`` (..., k) bool or None: a slot with valid=False is not a class of its row (output
    ``_FAR_NEGATIVE``, zero gradient) and its id stays in the rest bucket.
    """

    @staticmethod
    def forward(ctx, student_logp: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor | None,
                with_rest: bool) -> torch.Tensor:
        selected = student_logp.gather(-1, ids)
        if valid is not None:
            selected = torch.where(valid, selected, torch.full_like(selected, _FAR_NEGATIVE))
        ctx.with_rest = with_rest
        ctx.save_for_backward(student_logp, ids, valid)
        if not with_rest:
            return selected
        return torch.cat([selected, _log_rest_from_selected(selected)[..., None]], dim=-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        student_logp, ids, valid = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        k = ids.shape[-1]
        grad_selected = grad[..., :k]
        if valid is not None:
            grad_selected = torch.where(valid, grad_selected, torch.zeros_like(grad_selected))
        if not ctx.with_rest:
            out = torch.zeros_like(student_logp, memory_format=torch.contiguous_format)
            return out.scatter_add_(-1, ids, grad_selected), None, None, None
        # One buffer, all in place: softmax over the ids outside the selected ones, times the rest's grad.
        out = student_logp.detach().clone(memory_format=torch.contiguous_format)
        hide = torch.full(ids.shape, float("-inf"), dtype=out.dtype, device=out.device)
        if valid is not None:  # an invalid slot keeps its id in the rest (amin with +inf is a no-op)
            hide = torch.where(valid, hide, torch.full_like(hide, float("inf")))
        out.scatter_reduce_(-1, ids, hide, reduce="amin", include_self=True)
        peak = out.amax(-1, keepdim=True)
        out.sub_(torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))).exp_()
        total = out.sum(-1, keepdim=True)  # >= 1 unless every unselected id has probability 0
        grad_rest = grad[..., k:]
        out.mul_(torch.where(total > 0, grad_rest / total.clamp(min=1.0), torch.zeros_like(total)))
        return out.scatter_add_(-1, ids, grad_selected), None, None, None


def topk_rest_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, teacher_ids: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:
    """Per-node KL over k+1 classes: the teacher's k ids plus one "rest" bucket.

    Shapes: student_logp (..., V+1) normalised log-probs; teacher_logp, teacher_ids (..., k). Returns (...).
    At k = V+1 the rest bucket is dropped (it is empty) and this equals the full-vocabulary KL.
    Memory: k-wide in the forward pass (no full-size temporaries); see :class:`_StudentBuckets`.
    """
    teacher_logp = teacher_logp.to(student_logp.dtype)
    ids = teacher_ids.long()
    if ids.shape[-1] >= student_logp.shape[-1]:
        # Every class is stored: no rest bucket (its rounding residue must not count as mass).
        student_sel = _StudentBuckets.apply(student_logp, ids, None, False)
        return _kl_from_log(_temper(teacher_logp, temperature), _temper(student_sel, temperature))
    student = _StudentBuckets.apply(student_logp, ids, None, True)  # (..., k+1)
    teacher = torch.cat([teacher_logp, _log_residual(teacher_logp)[..., None]], -1)
    return _kl_from_log(_temper(teacher, temperature), _temper(student, temperature))


def topk_renorm_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, teacher_ids: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """Per-node KL with both sides renormalised over the teacher's k ids (biased; for comparison)."""
    student_sel = _StudentBuckets.apply(student_logp, teacher_ids.long(), None, False)
    teacher = _temper(teacher_logp.to(student_logp.dtype), temperature)
    return _kl_from_log(teacher, _temper(student_sel, temperature))


def truncate_topk(teacher_logp: torch.Tensor, teacher_ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Use only the first k of the stored ids (rows are stored sorted by descending log-prob): a slice.

    The dropped ids' mass joins the rest bucket of :func:`topk_rest_kl` (the residual is implied).
    """
    stored = teacher_logp.shape[-1]
    if teacher_ids.shape != teacher_logp.shape:
        raise ValueError(f"teacher_logp {tuple(teacher_logp.shape)} and teacher_ids {tuple(teacher_ids.shape)} differ")
    if not 1 <= k <= stored:
        raise ValueError(f"top_k must lie in [1, {stored}] (the store's k), got {k}")
    return teacher_logp[..., :k], teacher_ids[..., :k]


def collapsed_kl(student_logp: torch.Tensor, teacher_blank_label: torch.Tensor, targets: torch.Tensor,
                 label_valid: torch.Tensor, blank_id: int, temperature: float = 1.0) -> torch.Tensor:
    """Panchapagesan et al. (2021): KL over {blank, correct next label, rest} per node.

    Shapes: student_logp (B, T, U+1, V+1); teacher_blank_label (B, T, U+1, 2); targets (B, U);
    label_valid (B, T, U+1) false at u = U_b (no next label; the classes are then blank and rest).
    Returns (B, T, U+1). Memory: 3-wide in the forward pass; see :class:`_StudentBuckets`.
    """
    batch, frames, nodes, _ = student_logp.shape
    next_token = torch.cat([targets.long(), targets.new_zeros(batch, 1).long()], dim=1)[:, :nodes]
    ids = torch.stack([torch.full_like(next_token, blank_id), next_token], -1)  # (B, U+1, 2)
    ids = ids[:, None].expand(batch, frames, nodes, 2)
    valid = torch.stack([torch.ones_like(label_valid), label_valid], -1)
    student3 = _StudentBuckets.apply(student_logp, ids, valid, True)  # blank, label, rest
    teacher = teacher_blank_label.to(student_logp.dtype)
    teacher_label = torch.where(label_valid, teacher[..., 1], torch.full_like(teacher[..., 1], float("-inf")))
    pair = torch.stack([teacher[..., 0], teacher_label], -1)
    teacher3 = torch.cat([pair, _log_residual(pair)[..., None]], -1)
    return _kl_from_log(_temper(teacher3, temperature), _temper(student3, temperature))


def full_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-node KL over the whole vocabulary (reference for tests and online KD with k = V+1).

    Dense: allocates several full-size (..., V+1) temporaries in both passes.
    """
    return _kl_from_log(_temper(teacher_logp.to(student_logp.dtype), temperature),
                        _temper(student_logp, temperature))


def reduce_nodes(node_kl: torch.Tensor, weights: torch.Tensor, per_utterance: bool = False) -> torch.Tensor:
    """Weighted mean over each utterance's nodes (B, T, U+1) -> (B,), then the batch mean (or the (B,)
    per-utterance values with ``per_utterance``)."""
    weights = weights.to(node_kl.dtype)
    node_kl = torch.where(weights > 0, node_kl, torch.zeros_like(node_kl))  # padding may hold NaN/inf
    per_utt = (node_kl * weights).flatten(1).sum(-1) / weights.flatten(1).sum(-1).clamp(min=1e-12)
    return per_utt if per_utterance else per_utt.mean()


def weighted_reduce(per_utt: torch.Tensor, weights: torch.Tensor, target_lengths: torch.Tensor,
                    reduction: str) -> torch.Tensor:
    """NeMo's reductions of per-utterance losses (B,) (``RNNTLoss.reduce``, ``CTCLoss.reduce``) with a
    weight per utterance (B,): with all weights 1 it is NeMo's value. ``mean_batch``: mean of w*l;
    ``mean``: mean of w*l/U; ``sum``: sum of w*l; ``mean_volume``: sum of w*l / sum of U."""
    weighted = per_utt * weights.to(per_utt.dtype)
    lengths = target_lengths.to(per_utt.dtype)
    if reduction == "mean_batch":
        return weighted.mean()
    if reduction == "mean":
        return (weighted / lengths.clamp(min=1)).mean()
    if reduction == "sum":
        return weighted.sum()
    if reduction == "mean_volume":
        return weighted.sum() / lengths.sum().clamp(min=1)
    raise ValueError(f"unknown reduction {reduction!r}")


def node_weights(kind: NodeWeightKind, mask: torch.Tensor, blank_label: torch.Tensor | None = None,
                 frames: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 occupancy: torch.Tensor | None = None) -> torch.Tensor:
    """Per-node weights (B, T, U+1) for :func:`reduce_nodes`, 0 wherever ``mask`` is false.

    ``uniform``: the mask as float (each valid or stored node counts once). ``occupancy``: the teacher's
    node occupancy P(alignment visits (t, u)): ``occupancy`` (B, T, U+1) when given (the store's), else
    computed from the teacher's blank/label log-probs ``blank_label`` (B, T, U+1, 2) and the lattice
    sizes ``frames``, ``labels`` (B,) by :func:`kdstore.lattice.posteriors.node_occupancy_batch` (float64).
    ``non_blank``: 1 - p_teacher(blank | t, u) = 1 - exp(``blank_label[..., 0]``), so nodes where the
    teacher is sure of a blank count little and nodes where it would emit count fully (the per-node
    weighting of NVIDIA's MCR-RNNT lattice self-distillation, arXiv 2604.19079). The weights carry
    no gradient. Raises ValueError for another kind or a missing input.
    """
    if kind == "uniform":
        return mask.float()
    if kind == "non_blank":
        if blank_label is None:
            raise ValueError("non_blank node weights need the teacher's `blank_label` log-probs")
        blank_logp = blank_label[..., 0].detach().to(mask.device).float()
        weight = -torch.expm1(blank_logp.clamp(max=0.0))  # 1 - exp(x), accurate for p(blank) near 1
        return torch.where(mask, weight, torch.zeros_like(weight))
    if kind != "occupancy":
        raise ValueError(f"node weights: expected 'uniform', 'occupancy' or 'non_blank', got {kind!r}")
    if occupancy is None:
        if blank_label is None or frames is None or labels is None:
            raise ValueError("occupancy node weights need `occupancy`, or `blank_label`, `frames` and `labels`")
        occupancy = node_occupancy_batch(blank_label[..., 0], blank_label[..., 1], frames, labels)
    occupancy = occupancy.detach().to(mask.device)
    if occupancy.shape != mask.shape:
        raise ValueError(f"occupancy {tuple(occupancy.shape)} does not match the node mask {tuple(mask.shape)}")
    if not occupancy.is_floating_point() or occupancy.dtype in (torch.float16, torch.bfloat16):
        occupancy = occupancy.float()
    return torch.where(mask, occupancy, torch.zeros_like(occupancy))  # padding may hold garbage


def mix_per_utterance(hard: torch.Tensor, kd: torch.Tensor, alphas: torch.Tensor, target_lengths: torch.Tensor,
                      reduction: str, temperature: float) -> torch.Tensor:
    """(1 - a_b) * hard_b reduced like NeMo + tau^2 * mean_b(a_b * kd_b), from per-utterance (B,) hard-label
    losses (RNN-T or CTC, nats), KD terms (nats per node) and alphas. With one alpha for the whole batch
    and ``mean_batch`` it equals ``(1 - a) * hard.mean() + a * tau^2 * kd.mean()``, the batch-level mix."""
    alphas = alphas.to(hard.dtype)
    return weighted_reduce(hard, 1 - alphas, target_lengths, reduction) + temperature**2 * (alphas * kd).mean()
