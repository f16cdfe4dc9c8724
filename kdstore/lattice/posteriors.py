"""Teacher lattice posteriors: where the teacher's own alignments go (RNN-T forward-backward).

Why this exists: a full store keeps the teacher's top-k at every node of an utterance's T x (U+1)
lattice, but the teacher's alignments stay near one monotone path, so a **band** of W' = min(W, U+1)
consecutive label positions per frame (docs/store-format.md, section 1 "Band") keeps almost all of
the distillation signal at W'/(U+1) of the size. Choosing that band needs to know where the
teacher's alignments go, which is what this module provides (the band geometry itself, numpy only,
is :mod:`kdstore.store.band`):

* :func:`lattice_posteriors` / :func:`node_occupancy`: an RNN-T forward-backward over the teacher's
  OWN blank/label log-probs, in float64, vectorised over u within a frame exactly as
  :mod:`kdstore.lattice.rnnt_loss` does it (one loop over t; the within-frame label recurrence is linear in
  the log semiring, so each frame is one ``logcumsumexp``, forward or reversed).
* :func:`kdstore.store.band.select_band` then picks the band starts s_t that keep the most node
  occupancy, exactly, by dynamic programming under the store-format rules.

Lattice and identities. Nodes are (t, u), t in [0, T), u in [0, U]. From (t, u) a blank moves to
(t+1, u) and a label moves to (t, u+1) (u < U); an alignment starts at (0, 0) and ends with the blank
emitted at (T-1, U), so it has exactly T blanks and U labels. With ``alpha``, ``beta`` the forward and
backward log-variables (``beta`` includes the node's own outgoing transition; the final blank leads
to a terminal with beta = 0) and ``logZ = alpha[T-1, U] + blank[T-1, U] = beta[0, 0]``, the posteriors

* ``node[t, u]  = exp(alpha[t, u] + beta[t, u] - logZ)``            P(alignment visits (t, u)),
* ``blank[t, u] = exp(alpha[t, u] + blank_lp[t, u] + beta[t+1, u] - logZ)``
  P(alignment emits frame t's blank at u),
* ``label[t, u] = exp(alpha[t, u] + label_lp[t, u] + beta[t, u+1] - logZ)``
  P(alignment emits label u+1 at frame t)

satisfy, exactly (each is a count that is the same for every alignment, or a flow balance):

1. ``sum_u blank[t, u] = 1`` for every t: every alignment emits exactly one blank per frame.
2. ``sum_t label[t, u] = 1`` for every u < U: every label is emitted exactly once.
3. ``node[t, u] = blank[t, u] + label[t, u]`` (a visited node is left by exactly one transition) and
   ``node[t, u] = blank[t-1, u] + label[t, u-1]`` (entered by one; the start (0, 0) has node = 1).
4. Hence ``node[0, 0] = node[T-1, U] = 1`` and ``sum_u node[t, u] = 1 + sum_u label[t, u]``:
   the node occupancy of a frame is 1 plus the expected number of labels emitted in that frame, so it
   lies in [1, 1 + U] and is NOT 1 in general (an alignment visits several nodes of a frame when it
   emits labels there); over the whole lattice it sums to T + U.
5. ``sum_{u<=k} blank[t, u]`` is non-increasing in t for every k (alignments are monotone in u).

``label_lp[:, U]`` (no next reference token; the store writes the dtype minimum there) is never read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = [
    "LatticePosteriors",
    "lattice_posteriors",
    "lattice_posteriors_batch",
    "node_occupancy",
    "node_occupancy_batch",
]

# Log-probs below this are clamped. A -inf label log-prob would turn the within-frame cumulative sum
# into -inf and the shifted recurrence into NaN (-inf - -inf); exp(-1e5) is 0 in float64 anyway, and
# the float16 minimum a store may hold (-65504) is above it, so stored values pass unchanged.
_LOG_FLOOR = -1.0e5


class LatticePosteriors(NamedTuple):
    """Posteriors of the teacher's alignment over its own lattice (float64; zero in any padding).

    ``node``, ``blank``, ``label``: [..., T, U+1] as defined in the module docstring (``label[..., U]``
    is 0: there is no label to emit at u = U). ``log_z``: [...] log-likelihood of the reference.
    """

    node: torch.Tensor
    blank: torch.Tensor
    label: torch.Tensor
    log_z: torch.Tensor


def lattice_posteriors_batch(
    blank_lp: torch.Tensor,
    label_lp: torch.Tensor,
    frame_lengths: torch.Tensor | Sequence[int],
    label_lengths: torch.Tensor | Sequence[int],
) -> LatticePosteriors:
    """Forward-backward over a padded batch of teacher lattices.

    Args:
        blank_lp: log P(blank | t, u), [B, T, U+1].
        label_lp: log P(y_{u+1} | t, u), [B, T, U+1] (or [B, T, U]); slots u >= U_b are never read.
        frame_lengths: T_b per utterance, 1 <= T_b <= T.
        label_lengths: U_b per utterance, 0 <= U_b <= U.

    Returns:
        :class:`LatticePosteriors` with [B, T, U+1] tensors (0 outside each utterance) and ``log_z`` [B].

    Padding is neutralised by giving its transitions log-prob 0 (finite, so the cumulative sums stay
    finite) and seeding the backward pass only at each utterance's own final node: beta is then -inf
    on every padded node, so padding never reaches a posterior.
    """
    if blank_lp.dim() != 3:
        raise ValueError(f"blank_lp must be [B, T, U+1], got shape {tuple(blank_lp.shape)}")
    batch, frames, width = blank_lp.shape
    max_u = width - 1
    if label_lp.dim() != 3 or tuple(label_lp.shape[:2]) != (batch, frames) or label_lp.shape[2] < max_u:
        raise ValueError(f"label_lp must be [B, T, U+1] or [B, T, U] like blank_lp {tuple(blank_lp.shape)}, "
                         f"got {tuple(label_lp.shape)}")
    device = blank_lp.device
    t_len, u_len, valid_node = lattice_lengths(blank_lp, frame_lengths, label_lengths)
    t_pos = torch.arange(frames, device=device)[None, :, None]
    u_pos = torch.arange(width, device=device)[None, None, :]
    valid_label = (t_pos < t_len[:, None, None]) & (u_pos[..., :max_u] < u_len[:, None, None])
    blank = torch.where(valid_node, blank_lp.detach().double().clamp(min=_LOG_FLOOR), 0.0)
    label = torch.where(valid_label, label_lp.detach()[..., :max_u].double().clamp(min=_LOG_FLOOR), 0.0)
    # cum[b, t, u] = sum_{j<u} label[b, t, j]: log-prob of the labels y_1..y_u emitted inside frame t.
    cum = torch.cat([blank.new_zeros(batch, frames, 1), label.cumsum(-1)], dim=-1)
    neg_inf = float("-inf")

    # Forward: alpha[t, u] = cum[t, u] + logcumsumexp_k(seed[k] - cum[t, k])[u], seed = entry into frame t.
    seed = blank.new_full((batch, width), neg_inf)
    seed[:, 0] = 0.0
    alphas = []
    for t in range(frames):
        if t:
            seed = alphas[-1] + blank[:, t - 1]
        alphas.append(torch.logcumsumexp(seed - cum[:, t], dim=-1) + cum[:, t])
    alpha = torch.stack(alphas, dim=1)

    # Backward: beta[t, u] = -cum[t, u] + logsumexp_{k>=u}(exit[k] + cum[t, k]), exit = leave frame t by blank.
    last_t = t_len - 1
    terminal = torch.where(torch.arange(width, device=device)[None, :] == u_len[:, None], 0.0, neg_inf).double()
    beta_next = blank.new_full((batch, width), neg_inf)
    betas: list[torch.Tensor] = [blank.new_empty(0)] * frames
    exits: list[torch.Tensor] = [blank.new_empty(0)] * frames
    for t in range(frames - 1, -1, -1):
        beta_next = torch.where((last_t == t)[:, None], terminal, beta_next)
        exits[t] = beta_next + blank[:, t]
        x = (exits[t] + cum[:, t]).flip(-1)
        betas[t] = torch.logcumsumexp(x, dim=-1).flip(-1) - cum[:, t]
        beta_next = betas[t]
    beta = torch.stack(betas, dim=1)
    exit_lp = torch.stack(exits, dim=1)

    rows = torch.arange(batch, device=device)
    log_z = alpha[rows, last_t, u_len] + blank[rows, last_t, u_len]
    norm = log_z[:, None, None]
    zero = blank.new_zeros(())
    node = torch.where(valid_node, torch.exp(alpha + beta - norm), zero)
    blank_post = torch.where(valid_node, torch.exp(alpha + exit_lp - norm), zero)
    label_post = blank.new_zeros(batch, frames, width)
    label_post[..., :max_u] = torch.where(valid_label, torch.exp(alpha[..., :max_u] + label + beta[..., 1:] - norm), zero)
    return LatticePosteriors(node=node, blank=blank_post, label=label_post, log_z=log_z)


def lattice_posteriors(blank_lp: torch.Tensor, label_lp: torch.Tensor, num_labels: int) -> LatticePosteriors:
    """:func:`lattice_posteriors_batch` for one utterance: [T, U+1] inputs (U = ``num_labels``).

    Inputs may be wider than U+1 (padding); only columns 0..U of ``blank_lp`` and 0..U-1 of
    ``label_lp`` are read. Returns [T, U+1] posteriors and a scalar ``log_z``.
    """
    if blank_lp.dim() != 2 or label_lp.dim() != 2:
        raise ValueError(f"expected [T, U+1] inputs, got {tuple(blank_lp.shape)} and {tuple(label_lp.shape)}")
    width = num_labels + 1
    if num_labels < 0 or blank_lp.shape[1] < width or label_lp.shape[1] < num_labels:
        raise ValueError(f"num_labels={num_labels} does not fit inputs {tuple(blank_lp.shape)}, {tuple(label_lp.shape)}")
    frames = blank_lp.shape[0]
    out = lattice_posteriors_batch(blank_lp[None, :, :width], label_lp[None, :, :num_labels], [frames], [num_labels])
    return LatticePosteriors(node=out.node[0], blank=out.blank[0], label=out.label[0], log_z=out.log_z[0])


def node_occupancy(blank_lp: torch.Tensor, label_lp: torch.Tensor, num_labels: int) -> torch.Tensor:
    """P(the teacher's alignment visits (t, u)), float64 [T, U+1]: the store's ``node/occupancy``.

    Per frame it sums to 1 + the expected labels emitted in that frame (module docstring, identity 4);
    the per-frame distribution that sums to 1 is ``lattice_posteriors(...).blank``.
    """
    return lattice_posteriors(blank_lp, label_lp, num_labels).node


def node_occupancy_batch(
    blank_lp: torch.Tensor,
    label_lp: torch.Tensor,
    frame_lengths: torch.Tensor | Sequence[int],
    label_lengths: torch.Tensor | Sequence[int],
) -> torch.Tensor:
    """:func:`node_occupancy` of a padded batch, [B, T, U+1] (0 on padding)."""
    return lattice_posteriors_batch(blank_lp, label_lp, frame_lengths, label_lengths).node


def lattice_lengths(blank_lp: torch.Tensor, frame_lengths, label_lengths) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked per-utterance lengths of a padded [B, T, U+1] lattice and its valid-node mask.

    Returns ``t_len`` (B,), ``u_len`` (B,) int64 and ``valid_node`` bool [B, T, U+1] (t < T_b and u <= U_b).
    Raises ValueError when there are not B of each, or a T_b lies outside [1, T] or a U_b outside [0, U].
    Shared by the RNN-T and the TDT forward-backward (:mod:`kdstore.lattice.tdt_posteriors`).
    """
    batch, frames, width = blank_lp.shape
    max_u = width - 1
    device = blank_lp.device
    t_len = torch.as_tensor(frame_lengths, dtype=torch.long, device=device).reshape(-1)
    u_len = torch.as_tensor(label_lengths, dtype=torch.long, device=device).reshape(-1)
    if t_len.numel() != batch or u_len.numel() != batch:
        raise ValueError(f"need {batch} frame and label lengths, got {t_len.numel()} and {u_len.numel()}")
    if batch and (int(t_len.min()) < 1 or int(t_len.max()) > frames):
        raise ValueError(f"frame_lengths must lie in [1, {frames}], got {t_len.tolist()}")
    if batch and (int(u_len.min()) < 0 or int(u_len.max()) > max_u):
        raise ValueError(f"label_lengths must lie in [0, {max_u}], got {u_len.tolist()}")
    t_pos = torch.arange(frames, device=device)[None, :, None]
    u_pos = torch.arange(width, device=device)[None, None, :]
    return t_len, u_len, (t_pos < t_len[:, None, None]) & (u_pos <= u_len[:, None, None])
