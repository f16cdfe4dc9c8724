"""A vectorised RNN-T loss for CPU training.

Why this exists: NeMo's default RNN-T loss (``warprnnt_numba``) only compiles for CUDA. On CPU it
falls back to a port of warp-transducer written as plain Python loops over every (t, u) lattice
node, which costs seconds per batch and dominates the training step of a small student model.

This module computes the same quantity with torch ops only:

* The lattice is reduced once to two float64 tables, ``log P(blank | t, u)`` and
  ``log P(y_{u+1} | t, u)``, from one ``logsumexp`` over the vocabulary (no full-size log-softmax
  tensor is built, and a custom backward writes the logit gradient in one pass).
* The forward variables are computed with a loop over t only. Within a frame the recurrence
  ``alpha[t, u] = logaddexp(alpha[t-1, u] + blank[t-1, u], alpha[t, u-1] + emit[t, u-1])``
  is linear in the log semiring, so it has the closed form
  ``alpha[t, u] = C[t, u] + logcumsumexp_k(alpha[t-1, k] + blank[t-1, k] - C[t, k])[u]``
  with ``C[t, u] = sum_{j<u} emit[t, j]``: one ``logcumsumexp`` per frame, batched over B and U.
* Autograd through that loop is cheap (tensors of size [B, U+1]), so no hand-written beta pass.

Importing this module does not import NeMo.
"""

from __future__ import annotations

import torch

__all__ = ["REDUCTIONS", "VectorizedRNNTLoss", "rnnt_loss"]

REDUCTIONS = (None, "mean_batch", "mean", "sum", "mean_volume")


class _LatticeLogProbs(torch.autograd.Function):
    """Blank and next-label log-probs of every lattice node, with a single-pass backward.

    Forward: ``acts`` [B, T, U+1, V+1] (logits) -> ``blank_lp`` [B, T, U+1], ``emit_lp`` [B, T, U],
    both float64, where ``x_lp = acts[..., x] - logsumexp(acts, -1)``.

    Backward: with ``g = g_blank + g_emit`` per node, the logit gradient is
    ``-g * softmax(acts) + g_blank * onehot(blank) + g_emit * onehot(label)``. Autograd would build
    that from three full-size tensors (logsumexp, index and gather backward); here it is one.
    """

    @staticmethod
    def forward(ctx, acts: torch.Tensor, labels: torch.Tensor, blank: int):  # type: ignore[override]
        lse = torch.logsumexp(acts, dim=-1)
        index = labels[:, None, :, None].expand(-1, acts.shape[1], -1, 1)
        lse64 = lse.double()
        blank_lp = acts[..., blank].double() - lse64
        emit_lp = acts[:, :, :-1].gather(-1, index).squeeze(-1).double() - lse64[:, :, :-1]
        ctx.save_for_backward(acts, lse, index)
        ctx.blank = blank
        return blank_lp, emit_lp

    @staticmethod
    def backward(ctx, g_blank: torch.Tensor, g_emit: torch.Tensor):  # type: ignore[override]
        acts, lse, index = ctx.saved_tensors
        total = g_blank.clone()
        total[:, :, :-1] += g_emit
        grad = torch.sub(acts, lse.unsqueeze(-1)).exp_()
        grad.mul_(total.neg_().to(acts.dtype).unsqueeze(-1))
        grad[..., ctx.blank] += g_blank.to(acts.dtype)
        grad[:, :, :-1].scatter_add_(-1, index, g_emit.to(acts.dtype).unsqueeze(-1))
        return grad, None, None


def _log_alphas(blank_lp: torch.Tensor, emit_lp: torch.Tensor) -> torch.Tensor:
    """Forward variables ``alpha[b, t, u]`` [B, T, U+1] from blank [B, T, U+1] and emit [B, T, U] log-probs.

    ``alpha[t, u]`` is the log-probability of reaching node (t, u), i.e. having emitted ``u`` labels
    and ``t`` blanks. The loop runs over t; each frame is one ``logcumsumexp`` over u.
    """
    batch, frames, _ = blank_lp.shape
    # C[t, u]: log-prob of emitting y_1..y_u inside frame t, starting from u = 0.
    cum_emit = torch.cat([blank_lp.new_zeros(batch, frames, 1), emit_lp.cumsum(-1)], dim=-1)
    # Loop on shifted variables a[t, u] = alpha[t, u] - C[t, u], so each step is add + logcumsumexp.
    step = cum_emit[:, :-1] + blank_lp[:, :-1] - cum_emit[:, 1:]
    shifted = [cum_emit.new_zeros(cum_emit.shape[0], cum_emit.shape[2])]  # alpha[0, u] = C[0, u]
    for t in range(1, frames):
        shifted.append(torch.logcumsumexp(shifted[-1] + step[:, t - 1], dim=-1))
    return torch.stack(shifted, dim=1) + cum_emit


def _reduce(losses: torch.Tensor, target_lengths: torch.Tensor, reduction: str | None) -> torch.Tensor:
    """Reduce per-utterance losses exactly like NeMo's ``RNNTLoss.reduce``."""
    if reduction is None:
        return losses
    if reduction == "mean_batch":
        return losses.mean()
    if reduction == "mean":
        return torch.div(losses, target_lengths).mean()
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean_volume":
        return losses.sum() / target_lengths.sum()
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def rnnt_loss(
    acts: torch.Tensor,
    targets: torch.Tensor,
    input_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int,
    reduction: str | None = "mean_batch",
) -> torch.Tensor:
    """RNN-T negative log-likelihood, vectorised over batch and labels.

    Args:
        acts: joint output [B, T, U+1, V+1], raw logits or log-probs (``log_softmax`` is applied
            inside, which leaves log-probs unchanged). float16/bfloat16 are computed in float32.
        targets: labels [B, U]; entries past ``target_lengths`` are ignored.
        input_lengths: frames per utterance [B], 1 <= T_b <= T.
        target_lengths: labels per utterance [B], 0 <= U_b <= U.
        blank: index of blank in the last axis of ``acts`` (NeMo puts it last: ``blank = V``).
        reduction: None for per-utterance losses [B], else one of ``REDUCTIONS`` (NeMo semantics).

    Returns:
        The loss in the dtype of ``acts`` (float32 for half inputs). Internals run in float64.
    """
    if acts.dtype in (torch.float16, torch.bfloat16):
        acts = acts.float()
    input_lengths = input_lengths.long().to(acts.device)
    target_lengths = target_lengths.long().to(acts.device)
    max_t, max_u = int(input_lengths.max()), int(target_lengths.max())
    # Drop padding beyond the longest utterance, as NeMo does.
    acts = acts[:, :max_t, : max_u + 1]
    positions = torch.arange(max_u, device=acts.device)
    labels = targets[:, :max_u].long().to(acts.device)
    labels = torch.where(positions < target_lengths[:, None], labels, 0)  # padding may be out of range

    blank_lp, emit_lp = _LatticeLogProbs.apply(acts, labels, blank)
    alphas = _log_alphas(blank_lp, emit_lp)
    batch = torch.arange(acts.shape[0], device=acts.device)
    last_t = input_lengths - 1
    log_likelihood = alphas[batch, last_t, target_lengths] + blank_lp[batch, last_t, target_lengths]
    return _reduce(-log_likelihood.to(acts.dtype), target_lengths, reduction)


class VectorizedRNNTLoss(torch.nn.Module):
    """Drop-in CPU replacement for ``nemo.collections.asr.losses.rnnt.RNNTLoss``.

    ``forward`` takes the same keyword arguments as NeMo's ``RNNTLoss.forward``, so a NeMo
    transducer can use it via ``model.loss = VectorizedRNNTLoss(blank=model.joint.num_classes_with_blank - 1)``.
    """

    def __init__(self, blank: int, reduction: str | None = "mean_batch") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.blank = blank
        self.reduction = reduction

    def forward(
        self,
        log_probs: torch.Tensor,
        targets: torch.Tensor,
        input_lengths: torch.Tensor,
        target_lengths: torch.Tensor,
    ) -> torch.Tensor:
        """Loss of joint output ``log_probs`` [B, T, U+1, V+1] (logits or log-probs)."""
        return rnnt_loss(log_probs, targets, input_lengths, target_lengths, self.blank, self.reduction)

    def extra_repr(self) -> str:
        return f"blank={self.blank}, reduction={self.reduction!r}"
