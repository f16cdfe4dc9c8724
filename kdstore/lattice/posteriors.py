"""Teacher lattice posteriors and band selection for banded kdstore stores.

Why this exists: a full store keeps the teacher's top-k at every node of an utterance's T x (U+1)
lattice, but the teacher's alignments stay near one monotone path, so a **band** of W' = min(W, U+1)
consecutive label positions per frame (docs/store-format.md, section 1 "Band") keeps almost all of
the distillation signal at W'/(U+1) of the size. Choosing that band needs to know where the
teacher's alignments go, which is what this module provides:

* :func:`lattice_posteriors` / :func:`node_occupancy`: an RNN-T forward-backward over the teacher's
  OWN blank/label log-probs, in float64, vectorised over u within a frame exactly as
  :mod:`kdstore.lattice.rnnt_loss` does it (one loop over t; the within-frame label recurrence is linear in
  the log semiring, so each frame is one ``logcumsumexp``, forward or reversed).
* :func:`select_band`: the band starts s_t that keep the most node occupancy, exactly, by dynamic
  programming under the store-format rules.
* :func:`band_mass`, :func:`band_mask`, :func:`gather_band`, :func:`scatter_band`,
  :func:`check_band_starts`: what writers, readers and ``inspect`` need around a band.

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

import numpy as np
import torch

__all__ = [
    "LatticePosteriors",
    "band_mask",
    "band_mass",
    "check_band_starts",
    "effective_width",
    "gather_band",
    "lattice_posteriors",
    "lattice_posteriors_batch",
    "node_occupancy",
    "node_occupancy_batch",
    "scatter_band",
    "select_band",
]

ArrayLike = np.ndarray | torch.Tensor

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
    valid_node = (t_pos < t_len[:, None, None]) & (u_pos <= u_len[:, None, None])
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


# ---------------------------------------------------------------------------------------------
# Band selection and dense <-> band conversion (numpy).
# ---------------------------------------------------------------------------------------------
def effective_width(width: int, num_labels: int) -> int:
    """W' = min(W, U+1): a band never exceeds the lattice."""
    if width < 1:
        raise ValueError(f"band width must be >= 1, got {width}")
    if num_labels < 0:
        raise ValueError(f"num_labels must be >= 0, got {num_labels}")
    return min(int(width), int(num_labels) + 1)


def _as_matrix(occupancy: ArrayLike) -> np.ndarray:
    if isinstance(occupancy, torch.Tensor):
        occupancy = occupancy.detach().cpu().numpy()
    occ = np.asarray(occupancy, dtype=np.float64)
    if occ.ndim != 2 or occ.shape[0] < 1 or occ.shape[1] < 1:
        raise ValueError(f"occupancy must be a non-empty [T, U+1] matrix, got shape {occ.shape}")
    return occ


def _prefix_argmax(values: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Running max of ``values`` and, for each prefix, the SMALLEST index attaining it."""
    best = np.maximum.accumulate(values)
    rises = np.empty(values.shape, dtype=bool)
    rises[0] = True
    rises[1:] = values[1:] > best[:-1]  # strict: a tie keeps the earlier index
    return best, np.maximum.accumulate(np.where(rises, positions, 0))


def select_band(occupancy: ArrayLike, width: int) -> np.ndarray:
    """Band starts s_t (int32 [T]) keeping the most occupancy, under the store's band rules.

    Maximises ``sum_t sum_{u in [s_t, s_t + W')} occupancy[t, u]`` subject to ``s_0 = 0``,
    ``s_t <= s_{t+1}``, ``0 <= s_t <= U+1-W'`` and ``s_{T-1} = U+1-W'``, with W' = min(width, U+1).
    Exact dynamic programming in O(T (U+1)): window sums from one cumsum, then per frame
    ``best[t, s] = window[t, s] + max_{s' <= s} best[t-1, s']`` via a running prefix max.

    Ties: the objective is separable and the constraints are closed under element-wise min and max,
    so min(a, b) and max(a, b) of two optimal start sequences are both optimal; the set of optima has
    an element-wise smallest member, and that is the one returned (backtracking takes the smallest
    maximiser at every frame). With floating-point occupancies "tie" means equal window sums as
    computed; the result is deterministic either way.

    Returns zeros (the full lattice) when U+1 <= width. Raises ValueError for T = 1 with U+1 > width:
    one frame cannot start at 0 and end at U+1-W' > 0, so such an utterance cannot be banded.
    """
    occ = _as_matrix(occupancy)
    frames, nodes = occ.shape
    w = effective_width(width, nodes - 1)
    last = nodes - w
    if last == 0:
        return np.zeros(frames, dtype=np.int32)
    if frames == 1:
        raise ValueError(f"a 1-frame utterance with U+1={nodes} > band width {width} cannot satisfy "
                         f"s_0 = 0 and s_(T-1) = U+1-W' = {last}; store it with W >= U+1")
    csum = np.zeros((frames, nodes + 1))
    np.cumsum(occ, axis=1, out=csum[:, 1:])
    window = csum[:, w:] - csum[:, :-w]  # window[t, s] = sum(occ[t, s:s+w]), s in [0, last]
    positions = np.arange(last + 1)
    back = np.zeros((frames, last + 1), dtype=np.int32)  # back[t, s]: best s_{t-1} given s_t = s
    score = np.full(last + 1, -np.inf)
    score[0] = window[0, 0]  # s_0 = 0
    for t in range(1, frames):
        best, back[t] = _prefix_argmax(score, positions)
        score = best + window[t]
    starts = np.empty(frames, dtype=np.int32)
    starts[-1] = last
    for t in range(frames - 1, 0, -1):
        starts[t - 1] = back[t, starts[t]]
    return starts


def check_band_starts(starts: ArrayLike, num_frames: int, num_labels: int, width: int) -> None:
    """Raise ValueError unless ``starts`` obey the band rules of docs/store-format.md, section 1."""
    s = np.asarray(starts)
    w = effective_width(width, num_labels)
    last = num_labels + 1 - w
    if s.shape != (num_frames,):
        raise ValueError(f"band starts must have shape ({num_frames},), got {s.shape}")
    if num_frames == 0:
        return
    if not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"band starts must be integers, got dtype {s.dtype}")
    if s[0] != 0 or s[-1] != last:
        raise ValueError(f"band starts must begin at 0 and end at U+1-W' = {last}, got {s[0]} and {s[-1]}")
    if s.min() < 0 or s.max() > last:
        raise ValueError(f"band starts must lie in [0, {last}], got [{s.min()}, {s.max()}]")
    if np.any(np.diff(s) < 0):
        raise ValueError("band starts must be non-decreasing")


def band_mask(starts: ArrayLike, width: int, num_labels: int) -> np.ndarray:
    """bool [T, U+1]: True on the nodes a band with these starts keeps."""
    s = np.asarray(starts, dtype=np.int64)
    w = effective_width(width, num_labels)
    u = np.arange(num_labels + 1)
    return (u >= s[:, None]) & (u < s[:, None] + w)


def band_mass(occupancy: ArrayLike, starts: ArrayLike, width: int) -> float:
    """Fraction of the total occupancy inside the band (1.0 for the full lattice).

    With node occupancy this is the expected fraction of the teacher's visited nodes that the band
    stores. Returns 1.0 when the occupancy is all zero (nothing to lose).
    """
    occ = _as_matrix(occupancy)
    total = float(occ.sum())
    if total <= 0.0:
        return 1.0
    return float(occ[band_mask(starts, width, occ.shape[1] - 1)].sum() / total)


def _band_index(starts: ArrayLike, frames: int, w: int, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(starts, dtype=np.int64)
    if s.shape != (frames,):
        raise ValueError(f"band starts must have shape ({frames},), got {s.shape}")
    if frames and (s.min() < 0 or s.max() + w > nodes):
        raise ValueError(f"band of width {w} with starts in [{s.min()}, {s.max()}] leaves u in [0, {nodes - 1}]")
    return np.arange(frames)[:, None], s[:, None] + np.arange(w)


def gather_band(array: np.ndarray, starts: ArrayLike, width: int) -> np.ndarray:
    """Band rows of a dense lattice: [T, U+1, ...] -> [T, W', ...] (row (t, i) is node (t, s_t + i))."""
    a = np.asarray(array)
    if a.ndim < 2:
        raise ValueError(f"array must be [T, U+1, ...], got shape {a.shape}")
    frames, nodes = a.shape[:2]
    w = effective_width(width, nodes - 1)
    t_idx, u_idx = _band_index(starts, frames, w, nodes)
    return a[t_idx, u_idx]


def scatter_band(rows: np.ndarray, starts: ArrayLike, num_labels: int, fill: float = 0) -> np.ndarray:
    """Dense lattice [T, U+1, ...] from band rows [T, W', ...]; nodes outside the band hold ``fill``.

    The output keeps ``rows.dtype`` (``fill`` must be representable in it, e.g. -inf needs floats).
    """
    r = np.asarray(rows)
    if r.ndim < 2:
        raise ValueError(f"rows must be [T, W', ...], got shape {r.shape}")
    frames, w = r.shape[:2]
    nodes = num_labels + 1
    if w > nodes:
        raise ValueError(f"band width {w} exceeds U+1 = {nodes}")
    t_idx, u_idx = _band_index(starts, frames, w, nodes)
    out = np.full((frames, nodes, *r.shape[2:]), fill, dtype=r.dtype)
    out[t_idx, u_idx] = r
    return out
