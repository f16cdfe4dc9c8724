"""A vectorised Token-and-Duration Transducer (TDT) loss for CPU training.

TDT (Xu et al. 2023, "Efficient Sequence Transduction by Jointly Predicting Tokens and Durations",
arXiv 2304.06795) extends RNN-T: the joint emits V+1 token logits followed by D duration logits, the
two parts are normalised by *separate* softmaxes, and from lattice node (t, u)

* token ``y_{u+1}`` with duration ``d`` (any ``d`` in ``durations``, 0 included) goes to (t+d, u+1),
* blank with duration ``d >= 1`` goes to (t+d, u) (a blank never has duration 0),

each arc weighing ``log P_tok(v | t, u) - sigma + log P_dur(d | t, u)``. The forward variable is

    alpha[0, 0] = 0
    alpha[t, u] = logsumexp(  alpha[t-d, u]   + blank[t-d, u]   + dur[t-d, u, d]    for d in D, d >= 1,
                              alpha[t-d, u-1] + emit[t-d, u-1]  + dur[t-d, u-1, d]  for d in D       )

and the utterance log-likelihood sums the blanks that land exactly on the last frame T (none may
overshoot it; a token may not end the utterance):

    log P(y | x) = logsumexp_{d in D, 1 <= d <= T} alpha[T-d, U] + blank[T-d, U] + dur[T-d, U, d].

This is the paper's forward recursion as NeMo 3.0 implements it (``compute_tdt_alphas_kernel`` in
``nemo/collections/asr/parts/numba/rnnt_loss/utils/cuda_utils/gpu_rnnt_kernel.py``, and the reference
``TDTLossPytorch.compute_forward_prob`` in ``nemo/collections/asr/losses/rnnt_pytorch.py``, which cites
it as Eq. 7 of the paper). NeMo's TDT loss runs only on CUDA: ``_TDTNumba.forward`` raises
``ValueError("TDT is not yet implemented for non CUDA computation.")`` for CPU tensors, and
``TDTLossPytorch`` is a Python loop over (b, t, u) that calls ``.cuda()``.

How it is computed here, with torch ops only (no Python loop over lattice nodes):

* One pass over the joint gives three float64 tables: ``log P_tok(blank | t, u)``,
  ``log P_tok(y_{u+1} | t, u)`` (from one ``logsumexp`` over the V+1 token logits) and the D-way
  duration log-softmax. A custom backward writes the logit gradient in one pass.
* The loop runs over frames t. Arcs with ``d >= 1`` come from frames already computed and are summed
  with one ``logsumexp`` over (duration, blank/token) per frame; the ``d = 0`` token arcs stay inside
  frame t and form the same linear log-semiring chain as RNN-T's label arcs, solved in closed form
  with one ``logcumsumexp`` (see ``kdstore.lattice.rnnt_loss``).
* Autograd through that loop touches tensors of size [B, 2K, U+1] per frame (K positive durations).

Importing this module does not import NeMo.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Sequence

import torch

from kdstore.errors import ConfigError
from kdstore.lattice.rnnt_loss import REDUCTIONS, _log_alphas, _reduce

__all__ = ["VectorizedTDTLoss", "check_durations", "tdt_loss"]

# Log-weight of impossible states (frames before 0). Finite, so no logsumexp ever sees only -inf
# (whose gradient is NaN); exp(NEG - anything reachable) is exactly 0 in float64.
NEG = -1.0e30


def check_durations(durations: Sequence[int]) -> tuple[int, ...]:
    """Validate a TDT duration list (``tdt_durations`` / ``joint.num_extra_outputs`` of a NeMo model).

    NeMo's CUDA TDT loss assumes a strictly ascending list that contains 0 and 1 (its docstrings say
    "must include 0 and 1"; its alpha kernel stops at the first duration that overshoots, and its
    beta kernel reads the duration-1 blank at ``durations[0]`` or ``durations[1]``). The list may skip
    values (``[0, 1, 2, 4, 8]``); sherpa-onnx additionally wants it contiguous from 0, which is an
    export concern, not a loss one.

    Returns:
        The durations as a tuple of ints.

    Raises:
        ConfigError: the list is empty, holds a non-integer or negative value, is not strictly
            ascending, or lacks 0 or 1.
    """
    values = tuple(durations)
    if not values or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) for d in values):
        raise ConfigError(f"TDT durations must be a non-empty list of ints, got {list(values)!r}; "
                          "use the model's tdt_durations, e.g. [0, 1, 2, 3, 4]")
    values = tuple(int(d) for d in values)
    if any(b <= a for a, b in itertools.pairwise(values)) or 0 not in values or 1 not in values:
        raise ConfigError(f"TDT durations must be strictly ascending and contain 0 and 1 (as NeMo's TDT "
                          f"loss requires), got {list(values)!r}; e.g. [0, 1, 2, 3, 4]")
    return values


class _TDTLatticeLogProbs(torch.autograd.Function):
    """Token and duration log-probs of every lattice node, with a single-pass backward.

    Forward: ``acts`` [B, T, U+1, V+1+D] (raw logits) ->
    ``blank_lp`` [B, T, U+1], ``emit_lp`` [B, T, U], ``dur_lp`` [B, T, U+1, D], all float64, where
    the token part is normalised over the first V+1 logits and the duration part over the last D.

    Backward: with ``g = g_blank + g_emit`` per node, the token-logit gradient is
    ``-g * softmax_tok + g_blank * onehot(blank) + g_emit * onehot(label)`` and the duration-logit
    gradient is ``g_dur - softmax_dur * sum(g_dur)``, written into one tensor of the shape of ``acts``.
    """

    @staticmethod
    def forward(ctx, acts: torch.Tensor, labels: torch.Tensor, blank: int, num_durations: int):  # type: ignore[override]
        tokens = acts[..., :-num_durations]
        lse = torch.logsumexp(tokens, dim=-1)
        lse64 = lse.double()
        index = labels[:, None, :, None].expand(-1, acts.shape[1], -1, 1)
        blank_lp = tokens[..., blank].double() - lse64
        emit_lp = tokens[:, :, :-1].gather(-1, index).squeeze(-1).double() - lse64[:, :, :-1]
        dur_lp = torch.log_softmax(acts[..., -num_durations:].double(), dim=-1)
        ctx.save_for_backward(acts, lse, index, dur_lp)
        ctx.blank, ctx.num_durations = blank, num_durations
        return blank_lp, emit_lp, dur_lp

    @staticmethod
    def backward(ctx, g_blank: torch.Tensor, g_emit: torch.Tensor, g_dur: torch.Tensor):  # type: ignore[override]
        acts, lse, index, dur_lp = ctx.saved_tensors
        num_durations = ctx.num_durations
        grad = torch.empty_like(acts)
        tokens = grad[..., :-num_durations]
        total = g_blank.clone()
        total[:, :, :-1] += g_emit
        tokens.copy_(acts[..., :-num_durations]).sub_(lse.unsqueeze(-1))
        tokens.exp_().mul_(total.neg_().to(acts.dtype).unsqueeze(-1))
        tokens[..., ctx.blank] += g_blank.to(acts.dtype)
        tokens[:, :, :-1].scatter_add_(-1, index, g_emit.to(acts.dtype).unsqueeze(-1))
        g_dur = g_dur - dur_lp.exp() * g_dur.sum(-1, keepdim=True)
        grad[..., -num_durations:] = g_dur.to(acts.dtype)
        return grad, None, None, None


def _tdt_log_likelihood(
    blank_lp: torch.Tensor,
    emit_lp: torch.Tensor,
    dur_lp: torch.Tensor,
    durations: tuple[int, ...],
    input_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
) -> torch.Tensor:
    """TDT log-likelihood [B] (nats) from the float64 tables of ``_TDTLatticeLogProbs`` (sigma applied).

    ``blank_lp`` [B, T, U+1], ``emit_lp`` [B, T, U], ``dur_lp`` [B, T, U+1, D]; durations as checked by
    ``check_durations`` (ascending, so ``durations[0] == 0``).
    """
    batch, frames, nodes_u = blank_lp.shape
    positive = [i for i, d in enumerate(durations) if d > 0]
    shifts = [durations[i] for i in positive]
    max_d = max(shifts)
    # Arc weights by source node: blank with duration d_k [B, T, U+1, K]; token with d_k [B, T, U, K].
    blank_w = blank_lp.unsqueeze(-1) + dur_lp[..., positive]
    emit_w = emit_lp.unsqueeze(-1) + dur_lp[:, :, :-1, positive]
    # Token arcs of duration 0 stay in their frame: C[t, u] = sum_{j<u} emit[t, j] + dur[t, j, 0].
    emit0 = emit_lp + dur_lp[:, :, :-1, 0]
    cum_emit = torch.cat([emit0.new_zeros(batch, frames, 1), emit0.cumsum(-1)], dim=-1)
    # Token arcs land one label further: shift them to their target u (no token lands on u = 0).
    emit_w = torch.nn.functional.pad(emit_w, (0, 0, 1, 0))
    # Weights by target frame: arc[:, t, k] is the arc of duration d_k leaving frame t - d_k (0 where
    # t - d_k < 0: those sources have alpha = NEG). [B, T, 2K, U+1]: blanks first, then tokens.
    arcs = torch.cat([blank_w, emit_w], dim=-1).movedim(-1, 2)
    arcs = torch.nn.functional.pad(arcs, (0, 0, 0, 0, max_d, 0))
    arcs = torch.stack([arcs[:, max_d - d: max_d - d + frames, k] for k, d in enumerate(shifts)]
                       + [arcs[:, max_d - d: max_d - d + frames, len(shifts) + k] for k, d in enumerate(shifts)],
                       dim=2)

    impossible = blank_lp.new_full((batch, nodes_u), NEG)
    history = [impossible] * max_d  # alpha of frames -max_d .. -1
    start = torch.full_like(impossible, NEG)
    start[:, 0] = 0.0
    # unbind once: indexing [:, t] inside the loop would make autograd build a full-size gradient per frame
    arcs_t, cum_emit_t = arcs.unbind(1), cum_emit.unbind(1)
    for t in range(frames):
        if t == 0:
            arrivals = start
        else:
            sources = torch.stack([history[max_d + t - d] for d in shifts], dim=1)  # [B, K, U+1]
            moved = torch.nn.functional.pad(sources[..., :-1], (1, 0), value=NEG)
            arrivals = torch.logsumexp(torch.cat([sources, moved], dim=1) + arcs_t[t], dim=1)
        # alpha[t, u] = logsumexp_{k<=u} arrivals[k] + C[t, u] - C[t, k]   (duration-0 token chain)
        history.append(torch.logcumsumexp(arrivals - cum_emit_t[t], dim=-1) + cum_emit_t[t])

    alphas = torch.stack(history, dim=1)  # [B, max_d + T, U+1], frame t at max_d + t
    batch_idx = torch.arange(batch, device=blank_lp.device)
    padded_blank = torch.nn.functional.pad(blank_w, (0, 0, 0, 0, max_d, 0))
    ends = []
    for k, d in enumerate(shifts):
        row = input_lengths - d + max_d  # frame T_b - d; rows < max_d are impossible frames
        ends.append(alphas[batch_idx, row, target_lengths] + padded_blank[batch_idx, row, target_lengths, k])
    return torch.logsumexp(torch.stack(ends, dim=-1), dim=-1)


def tdt_loss(
    acts: torch.Tensor,
    labels: torch.Tensor,
    act_lens: torch.Tensor,
    label_lens: torch.Tensor,
    *,
    blank: int,
    durations: Sequence[int],
    sigma: float = 0.0,
    omega: float = 0.0,
    reduction: str | None = "mean_batch",
) -> torch.Tensor:
    """TDT negative log-likelihood in nats, vectorised over batch and labels.

    Args:
        acts: raw joint logits [B, T, U+1, V+1+D]: V+1 token logits (blank included) then D duration
            logits, one per entry of ``durations`` (NeMo's TDT joint layout). Tokens and durations are
            log-softmaxed separately inside. float16/bfloat16 are computed in float32.
        labels: targets [B, U]; entries past ``label_lens`` are ignored.
        act_lens: frames per utterance [B], 1 <= T_b <= T.
        label_lens: labels per utterance [B], 0 <= U_b <= U.
        blank: index of blank among the V+1 token logits (NeMo: ``blank = V``, the last token).
        durations: the model's ``tdt_durations``, strictly ascending, containing 0 and 1
            (see ``check_durations``); logit ``V+1+i`` is duration ``durations[i]`` frames.
        sigma: logit under-normalisation (the paper's; NeMo's ``TDTLossNumba`` docstring recommends
            0.05): subtracted from every token log-prob (blank and labels alike), not from durations,
            exactly as NeMo's kernels do (``logp(...) - sigma``); the loss is then an un-normalised score.
        omega: weight of a plain RNN-T loss on the token logits (no sigma, no durations). NeMo draws
            one ``random.uniform(0, 1)`` per call and uses the RNN-T loss for the whole batch when it
            falls below omega (``GPUTDT.compute_cost_and_score`` in ``gpu_rnnt.py``); this function
            returns that choice's expectation, deterministically: ``(1 - omega) * tdt + omega * rnnt``
            per utterance, and so the expected gradient too.
        reduction: None for per-utterance losses [B], else one of ``REDUCTIONS`` (NeMo's semantics).

    Returns:
        The loss in the dtype of ``acts`` (float32 for half inputs). Internals run in float64.
        NeMo's ``fastemit_lambda`` and ``clamp`` are not supported.

    Raises:
        ConfigError: invalid ``durations``, ``sigma`` < 0, ``omega`` outside [0, 1], or a last axis of
            ``acts`` too small for ``blank`` and the D durations.
        ValueError: unknown ``reduction``.
    """
    durations = check_durations(durations)
    num_durations = len(durations)
    if not 0.0 <= omega <= 1.0:
        raise ConfigError(f"TDT omega (weight of the plain RNN-T loss) must be in [0, 1], got {omega!r}")
    if sigma < 0.0:
        raise ConfigError(f"TDT sigma must be >= 0, got {sigma!r}; NeMo's TDTLossNumba recommends 0.05")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    num_tokens = acts.shape[-1] - num_durations
    if not 0 <= blank < num_tokens:
        raise ConfigError(f"acts has {acts.shape[-1]} joint outputs, so with {num_durations} durations only "
                          f"{num_tokens} token logits, and blank={blank} is not one of them; pass the joint's "
                          "V+1+D outputs and blank = V")
    if acts.dtype in (torch.float16, torch.bfloat16):
        acts = acts.float()
    act_lens = act_lens.long().to(acts.device)
    label_lens = label_lens.long().to(acts.device)
    max_t, max_u = int(act_lens.max()), int(label_lens.max())
    acts = acts[:, :max_t, : max_u + 1]  # drop padding beyond the longest utterance, as NeMo does
    positions = torch.arange(max_u, device=acts.device)
    targets = labels[:, :max_u].long().to(acts.device)
    targets = torch.where(positions < label_lens[:, None], targets, 0)  # padding may be out of range

    blank_lp, emit_lp, dur_lp = _TDTLatticeLogProbs.apply(acts, targets, blank, num_durations)
    log_likelihood = _tdt_log_likelihood(blank_lp - sigma, emit_lp - sigma, dur_lp, durations, act_lens, label_lens)
    if omega > 0.0:
        alphas = _log_alphas(blank_lp, emit_lp)
        batch = torch.arange(acts.shape[0], device=acts.device)
        last_t = act_lens - 1
        rnnt_ll = alphas[batch, last_t, label_lens] + blank_lp[batch, last_t, label_lens]
        log_likelihood = (1.0 - omega) * log_likelihood + omega * rnnt_ll
    return _reduce(-log_likelihood.to(acts.dtype), label_lens, reduction)


class VectorizedTDTLoss(torch.nn.Module):
    """CPU replacement for NeMo's ``RNNTLoss(loss_name="tdt")`` (``TDTLossNumba``, CUDA only).

    ``forward`` takes the keyword arguments of NeMo's ``RNNTLoss.forward``. ``omega`` is applied as
    an expectation, not sampled (see ``tdt_loss``).
    """

    def __init__(
        self,
        blank: int,
        durations: Sequence[int],
        sigma: float = 0.0,
        omega: float = 0.0,
        reduction: str | None = "mean_batch",
    ) -> None:
        """Args as in ``tdt_loss``. Raises ``ConfigError`` for invalid durations, ``ValueError`` for a bad reduction."""
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.blank = blank
        self.durations = list(check_durations(durations))
        self.sigma = float(sigma)
        self.omega = float(omega)
        self.reduction = reduction

    def forward(
        self,
        log_probs: torch.Tensor,
        targets: torch.Tensor,
        input_lengths: torch.Tensor,
        target_lengths: torch.Tensor,
    ) -> torch.Tensor:
        """Loss (nats) of raw joint logits ``log_probs`` [B, T, U+1, V+1+D]; see ``tdt_loss``."""
        return tdt_loss(log_probs, targets, input_lengths, target_lengths, blank=self.blank,
                        durations=self.durations, sigma=self.sigma, omega=self.omega, reduction=self.reduction)

    def extra_repr(self) -> str:
        return (f"blank={self.blank}, durations={self.durations}, sigma={self.sigma}, omega={self.omega}, "
                f"reduction={self.reduction!r}")
