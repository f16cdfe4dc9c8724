"""The one band geometry of ``kdstore/1`` stores (docs/store-format.md, section 1 "Band"), numpy only.

A full store keeps the teacher's top-k at every node (t, u) of an utterance's T x (U+1) lattice; a
band store keeps, per frame t, the W' consecutive label positions ``u in [s_t, s_t + W')``. The rules
(all here, used by the dump, the reader, the verifier and ``inspect``):

* W' = min(W, U+1) (:func:`effective_width`), and W' = U+1 when T = 1 (:func:`stored_width`);
* ``s_0 = 0``, ``s_t <= s_{t+1}``, ``0 <= s_t <= U+1-W'``, ``s_{T-1} = U+1-W'`` (:func:`check_band_starts`);
* row ``j = t * W' + (u - s_t)`` holds node (t, u) (:func:`gather_band`, :func:`scatter_band`).

:func:`select_band` picks the starts that keep the most of the teacher's node occupancy (computed by
:func:`kdstore.lattice.posteriors.node_occupancy`, or for TDT teachers by
:func:`kdstore.lattice.tdt_posteriors.tdt_node_occupancy`); :func:`band_mass` says how much that is.
Inputs may be numpy arrays or CPU tensors (anything ``np.asarray`` takes; tensors are detached), so
this module never imports torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "band_mask",
    "band_mass",
    "check_band_starts",
    "effective_width",
    "gather_band",
    "scatter_band",
    "select_band",
    "stored_width",
]


def effective_width(width: int, num_labels: int) -> int:
    """W' = min(W, U+1): a band never exceeds the lattice."""
    if width < 1:
        raise ValueError(f"band width must be >= 1, got {width}")
    if num_labels < 0:
        raise ValueError(f"num_labels must be >= 0, got {num_labels}")
    return min(int(width), int(num_labels) + 1)


def stored_width(width: int | None, num_frames: int, num_labels: int) -> int:
    """W' of one utterance in a store of band width ``width`` (None: a full store), section 1.

    U+1 for full stores and for one-frame utterances (one frame cannot start its band at 0 and end
    it at U+1-W' > 0: every label is emitted in that frame), else min(W, U+1).
    """
    if width is None or num_frames == 1:
        return int(num_labels) + 1
    return effective_width(width, num_labels)


def _as_array(values: Any, dtype: Any = None) -> np.ndarray:
    """numpy view of an array or a (CPU) torch tensor, without importing torch."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def _as_matrix(occupancy: Any) -> np.ndarray:
    occ = _as_array(occupancy, np.float64)
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


def select_band(occupancy: Any, width: int) -> np.ndarray:
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
    one frame cannot start at 0 and end at U+1-W' > 0, so such an utterance cannot be banded (pass
    :func:`stored_width`, which is U+1 there).
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


def check_band_starts(starts: Any, num_frames: int, num_labels: int, width: int) -> None:
    """Raise ValueError unless ``starts`` obey the band rules of docs/store-format.md, section 1."""
    s = _as_array(starts)
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


def band_mask(starts: Any, width: int, num_labels: int) -> np.ndarray:
    """bool [T, U+1]: True on the nodes a band with these starts keeps."""
    s = _as_array(starts, dtype=np.int64)
    w = effective_width(width, num_labels)
    u = np.arange(num_labels + 1)
    return (u >= s[:, None]) & (u < s[:, None] + w)


def band_mass(occupancy: Any, starts: Any, width: int) -> float:
    """Fraction of the total occupancy inside the band (1.0 for the full lattice).

    With node occupancy this is the expected fraction of the teacher's visited nodes that the band
    stores. Returns 1.0 when the occupancy is all zero (nothing to lose).
    """
    occ = _as_matrix(occupancy)
    total = float(occ.sum())
    if total <= 0.0:
        return 1.0
    return float(occ[band_mask(starts, width, occ.shape[1] - 1)].sum() / total)


def _band_index(starts: Any, frames: int, w: int, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    s = _as_array(starts, dtype=np.int64)
    if s.shape != (frames,):
        raise ValueError(f"band starts must have shape ({frames},), got {s.shape}")
    if frames and (s.min() < 0 or s.max() + w > nodes):
        raise ValueError(f"band of width {w} with starts in [{s.min()}, {s.max()}] leaves u in [0, {nodes - 1}]")
    return np.arange(frames)[:, None], s[:, None] + np.arange(w)


def gather_band(array: np.ndarray, starts: Any, width: int) -> np.ndarray:
    """Band rows of a dense lattice: [T, U+1, ...] -> [T, W', ...] (row (t, i) is node (t, s_t + i))."""
    a = _as_array(array)
    if a.ndim < 2:
        raise ValueError(f"array must be [T, U+1, ...], got shape {a.shape}")
    frames, nodes = a.shape[:2]
    w = effective_width(width, nodes - 1)
    t_idx, u_idx = _band_index(starts, frames, w, nodes)
    return a[t_idx, u_idx]


def scatter_band(rows: np.ndarray, starts: Any, num_labels: int, fill: float = 0) -> np.ndarray:
    """Dense lattice [T, U+1, ...] from band rows [T, W', ...]; nodes outside the band hold ``fill``.

    The output keeps ``rows.dtype`` (``fill`` must be representable in it, e.g. -inf needs floats).
    """
    r = _as_array(rows)
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
