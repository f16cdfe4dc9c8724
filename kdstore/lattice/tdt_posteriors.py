"""Where a TDT teacher's alignments go: the Token-and-Duration Transducer forward-backward.

The TDT twin of :mod:`kdstore.lattice.posteriors` (RNN-T). A TDT store (docs/store-format.md,
``kdstore/3``) needs the teacher's node occupancy to pick a band (:func:`kdstore.store.band.select_band`)
and its sequence log-likelihood for the label confidence; both come from here.

Lattice (Xu et al. 2023, arXiv 2304.06795; the rules of :mod:`kdstore.lattice.tdt_loss`). Nodes are
(t, u), t in [0, T), u in [0, U]. From (t, u)

* the next label y_{u+1} with duration d (any d in ``durations``, 0 included) goes to (t+d, u+1),
* blank with duration d >= 1 goes to (t+d, u),

each arc weighing ``log P_tok(. | t, u) + log P_dur(d | t, u)`` (two separately normalised
distributions). An alignment starts at (0, 0) and ends with a blank from (T-d, U) that lands exactly on
the terminal (T, U); arcs that land past frame T, or a label that lands on frame T, end no alignment.
No ``sigma`` here: these are the teacher's probabilities (sigma is a training-time under-normalisation).

With ``alpha`` the forward and ``beta`` the backward log-variables (``beta`` includes the node's own
outgoing arc; the terminal has beta = 0) and ``logZ = beta[0, 0]`` (= -tdt_loss with sigma = omega = 0),
the posteriors are

* ``node[t, u]        = exp(alpha[t, u] + beta[t, u] - logZ)``                 P(the alignment visits (t, u)),
* ``blank[t, u, i]    = exp(alpha[t, u] + blank + dur_i + beta[t+d_i, u] - logZ)``   P(it leaves (t, u) by a
  blank of duration d_i) (0 for d_i = 0),
* ``label[t, u, i]    = exp(alpha[t, u] + label + dur_i + beta[t+d_i, u+1] - logZ)`` P(it emits y_{u+1} at
  (t, u) with duration d_i) (0 at u = U).

Identities (exact; tested in tests/lattice/test_tdt_posteriors.py). A TDT alignment may skip frames
(d >= 2) and may emit several labels in one frame (d = 0), so RNN-T's "one blank per frame" does not
hold; what holds instead:

1. Out-flow: ``node[t, u] = sum_i blank[t, u, i] + label[t, u, i]`` (a visited node is left by one arc).
2. In-flow: ``node[t, u] = [t, u = 0, 0] + sum_i blank[t-d_i, u, i] + label[t-d_i, u-1, i]``.
3. Labels: ``sum_{t, i} label[t, u, i] = 1`` for every u < U (each label is emitted exactly once).
4. Time: the arcs of positive duration tile [0, T): for every frame t,
   ``sum_{i: d_i >= 1} sum_{s <= t < s + d_i} sum_u blank[s, u, i] + label[s, u, i] = 1``; in
   particular ``sum_{t, u, i} d_i (blank + label) = T``.
5. Count: ``sum node = U + sum blank`` = the expected number of arcs = the expected number of visited
   nodes, between max(U + 1, ceil(T / max d)) and U + T (RNN-T: exactly T + U). ``node[0, 0] = 1``;
   ``node[t, U]`` need not be 1 at t = T-1 (the last blank may start earlier).

Vectorised like :mod:`kdstore.lattice.posteriors`: one loop over t, float64; within a frame the
duration-0 label arcs form the same linear log-semiring chain, solved with one ``logcumsumexp``.
Importing this module does not import NeMo.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from kdstore.lattice.posteriors import lattice_lengths
from kdstore.lattice.tdt_loss import check_durations

__all__ = ["TDTLatticePosteriors", "tdt_lattice_posteriors", "tdt_lattice_posteriors_batch", "tdt_node_occupancy"]

_LOG_FLOOR = -1.0e5  # as kdstore.lattice.posteriors: -inf inputs would turn the cumulative sums into NaN
_NEG_INF = float("-inf")


class TDTLatticePosteriors(NamedTuple):
    """Posteriors of a TDT teacher's alignment over its own lattice (float64; zero in any padding).

    ``node`` [..., T, U+1]; ``blank``, ``label`` [..., T, U+1, D] by duration index (module docstring);
    ``log_z`` [...]: log P(label sequence | audio) in nats.
    """

    node: torch.Tensor
    blank: torch.Tensor
    label: torch.Tensor
    log_z: torch.Tensor


def _check_shapes(blank_lp: torch.Tensor, label_lp: torch.Tensor, dur_lp: torch.Tensor, num_durations: int) -> None:
    if blank_lp.dim() != 3:
        raise ValueError(f"blank_lp must be [B, T, U+1], got shape {tuple(blank_lp.shape)}")
    batch, frames, width = blank_lp.shape
    if label_lp.dim() != 3 or tuple(label_lp.shape[:2]) != (batch, frames) or label_lp.shape[2] < width - 1:
        raise ValueError(f"label_lp must be [B, T, U+1] or [B, T, U] like blank_lp {tuple(blank_lp.shape)}, "
                         f"got {tuple(label_lp.shape)}")
    if tuple(dur_lp.shape) != (batch, frames, width, num_durations):
        raise ValueError(f"dur_lp must be [B, T, U+1, D] = {(batch, frames, width, num_durations)}, "
                         f"got {tuple(dur_lp.shape)}")


def tdt_lattice_posteriors_batch(
    blank_lp: torch.Tensor,
    label_lp: torch.Tensor,
    dur_lp: torch.Tensor,
    durations: Sequence[int],
    frame_lengths: torch.Tensor | Sequence[int],
    label_lengths: torch.Tensor | Sequence[int],
) -> TDTLatticePosteriors:
    """TDT forward-backward over a padded batch of teacher lattices.

    Args:
        blank_lp: log P_tok(blank | t, u), [B, T, U+1] (nats, normalised over the V+1 tokens).
        label_lp: log P_tok(y_{u+1} | t, u), [B, T, U+1] or [B, T, U]; slots u >= U_b are never read.
        dur_lp: log P_dur(d_i | t, u), [B, T, U+1, D] (normalised over the D durations).
        durations: the teacher's duration list (strictly ascending, with 0 and 1: ``check_durations``).
        frame_lengths: T_b per utterance, 1 <= T_b <= T.
        label_lengths: U_b per utterance, 0 <= U_b <= U.

    Returns:
        :class:`TDTLatticePosteriors`: [B, T, U+1] node and [B, T, U+1, D] arc posteriors (0 outside each
        utterance), ``log_z`` [B].

    Raises:
        ValueError: shapes or lengths that do not fit. ConfigError: invalid ``durations``.
    """
    durs = check_durations(durations)
    _check_shapes(blank_lp, label_lp, dur_lp, len(durs))
    batch, frames, width = blank_lp.shape
    max_u = width - 1
    device = blank_lp.device
    t_len, u_len, valid_node = lattice_lengths(blank_lp, frame_lengths, label_lengths)  # [B, T, U+1] mask
    t_pos = torch.arange(frames, device=device)[None, :, None]
    u_pos = torch.arange(width, device=device)[None, None, :]
    valid_label = (t_pos < t_len[:, None, None]) & (u_pos[..., :max_u] < u_len[:, None, None])  # [B, T, U]
    # Padding gets log-prob 0 (finite): it never feeds a valid node forward, and the backward pass
    # reaches only valid nodes and each utterance's own terminal (beta is -inf everywhere else).
    blank = torch.where(valid_node, blank_lp.detach().double().clamp(min=_LOG_FLOOR), 0.0)
    label = torch.where(valid_label, label_lp.detach()[..., :max_u].double().clamp(min=_LOG_FLOOR), 0.0)
    dur = torch.where(valid_node[..., None], dur_lp.detach().double().clamp(min=_LOG_FLOOR), 0.0)

    positive = [i for i, d in enumerate(durs) if d > 0]
    shifts = [durs[i] for i in positive]
    max_d = max(shifts)
    # Arc log-weights by source node, per positive duration: [B, T, U+1, K]; labels padded at u = U.
    blank_w = blank[..., None] + dur[..., positive]
    label_w = torch.nn.functional.pad(label[..., None] + dur[:, :, :max_u, positive], (0, 0, 0, 1), value=_NEG_INF)
    # Duration-0 label arcs stay in their frame: cum[t, u] = sum_{j<u} label[t, j] + dur[t, j, 0].
    cum = torch.cat([blank.new_zeros(batch, frames, 1), (label + dur[:, :, :max_u, 0]).cumsum(-1)], dim=-1)

    # Forward: alpha[t] = cum[t] + logcumsumexp(arrivals[t] - cum[t]); arrivals come from frames t - d >= 0.
    impossible = blank.new_full((batch, width), _NEG_INF)
    history = [impossible] * max_d  # alpha of frames -max_d .. -1
    for t in range(frames):
        if t == 0:
            arrivals = impossible.clone()
            arrivals[:, 0] = 0.0
        else:
            terms = []
            for k, d in enumerate(shifts):
                if t - d < 0:
                    continue
                source = history[max_d + t - d]
                terms.append(source + blank_w[:, t - d, :, k])
                terms.append(torch.nn.functional.pad((source + label_w[:, t - d, :, k])[:, :-1], (1, 0),
                                                     value=_NEG_INF))
            arrivals = torch.logsumexp(torch.stack(terms), dim=0)
        history.append(torch.logcumsumexp(arrivals - cum[:, t], dim=-1) + cum[:, t])
    alpha = torch.stack(history[max_d:], dim=1)  # [B, T, U+1]

    # Backward over an extended frame axis: beta_ext[:, t] for t in [0, T + max_d]; -inf past each
    # utterance's own frames and labels. The terminal (T_b, U_b) is reached by a blank only.
    rows = torch.arange(batch, device=device)
    terminal_frame = t_len[:, None, None] == (torch.arange(frames + max_d + 1, device=device)[None, :, None])
    terminal = terminal_frame & (u_pos == u_len[:, None, None])  # [B, T + max_d + 1, U+1]
    beta_ext = blank.new_full((batch, frames + max_d + 1, width), _NEG_INF)
    for t in range(frames - 1, -1, -1):
        terms = []
        for k, d in enumerate(shifts):
            to_blank = torch.where(terminal[:, t + d], 0.0, beta_ext[:, t + d])
            terms.append(blank_w[:, t, :, k] + to_blank)
            terms.append(label_w[:, t, :, k] + torch.nn.functional.pad(beta_ext[:, t + d, 1:], (0, 1), value=_NEG_INF))
        exits = torch.logsumexp(torch.stack(terms), dim=0)
        beta_t = torch.logcumsumexp((exits + cum[:, t]).flip(-1), dim=-1).flip(-1) - cum[:, t]
        beta_ext[:, t] = torch.where(valid_node[:, t], beta_t, _NEG_INF)
    beta = beta_ext[:, :frames]

    log_z = beta[rows, 0, 0]
    norm = log_z[:, None, None]
    zero = blank.new_zeros(())
    node = torch.where(valid_node, torch.exp(alpha + beta - norm), zero)
    blank_post = blank.new_zeros(batch, frames, width, len(durs))
    label_post = blank.new_zeros(batch, frames, width, len(durs))
    valid_arc = valid_node & torch.isfinite(alpha)
    for k, (i, d) in enumerate(zip(positive, shifts, strict=True)):
        future = beta_ext[:, d : d + frames]  # beta[t + d] for every t
        to_blank = torch.where(terminal[:, d : d + frames], 0.0, future)
        blank_post[..., i] = torch.where(valid_arc, torch.exp(alpha + blank_w[..., k] + to_blank - norm), zero)
        to_label = torch.nn.functional.pad(future[..., 1:], (0, 1), value=_NEG_INF)
        label_post[..., i] = torch.where(valid_arc, torch.exp(alpha + label_w[..., k] + to_label - norm), zero)
    zero_dur = durs.index(0)
    label0 = torch.nn.functional.pad(label + dur[:, :, :max_u, zero_dur], (0, 1), value=_NEG_INF)
    to_next = torch.nn.functional.pad(beta[..., 1:], (0, 1), value=_NEG_INF)
    label_post[..., zero_dur] = torch.where(valid_arc, torch.exp(alpha + label0 + to_next - norm), zero)
    return TDTLatticePosteriors(node=node, blank=blank_post, label=label_post, log_z=log_z)


def tdt_lattice_posteriors(blank_lp: torch.Tensor, label_lp: torch.Tensor, dur_lp: torch.Tensor,
                           durations: Sequence[int], num_labels: int) -> TDTLatticePosteriors:
    """:func:`tdt_lattice_posteriors_batch` for one utterance: [T, U+1] and [T, U+1, D] inputs
    (U = ``num_labels``; wider inputs are cut). Returns [T, U+1] / [T, U+1, D] posteriors and a scalar
    ``log_z``. Raises ValueError for inputs that do not fit ``num_labels``."""
    if blank_lp.dim() != 2 or label_lp.dim() != 2 or dur_lp.dim() != 3:
        raise ValueError(f"expected [T, U+1], [T, U+1] and [T, U+1, D] inputs, got {tuple(blank_lp.shape)}, "
                         f"{tuple(label_lp.shape)} and {tuple(dur_lp.shape)}")
    width = num_labels + 1
    if num_labels < 0 or blank_lp.shape[1] < width or label_lp.shape[1] < num_labels or dur_lp.shape[1] < width:
        raise ValueError(f"num_labels={num_labels} does not fit inputs {tuple(blank_lp.shape)}, "
                         f"{tuple(label_lp.shape)}, {tuple(dur_lp.shape)}")
    frames = blank_lp.shape[0]
    out = tdt_lattice_posteriors_batch(blank_lp[None, :, :width], label_lp[None, :, :num_labels],
                                       dur_lp[None, :, :width], durations, [frames], [num_labels])
    return TDTLatticePosteriors(node=out.node[0], blank=out.blank[0], label=out.label[0], log_z=out.log_z[0])


def tdt_node_occupancy(blank_lp: torch.Tensor, label_lp: torch.Tensor, dur_lp: torch.Tensor,
                       durations: Sequence[int], num_labels: int) -> torch.Tensor:
    """P(the TDT teacher's alignment visits (t, u)), float64 [T, U+1]: a TDT store's ``node/occupancy``.

    It sums to the expected number of visited nodes (identity 5), not to T + U as in RNN-T.
    """
    return tdt_lattice_posteriors(blank_lp, label_lp, dur_lp, durations, num_labels).node
