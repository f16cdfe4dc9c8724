"""kdstore.lattice.posteriors (lattice posterior identities) and kdstore.store.band (exact band
selection, band rules, band <-> dense conversion)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from kdstore.lattice.posteriors import (
    lattice_posteriors,
    lattice_posteriors_batch,
    node_occupancy,
    node_occupancy_batch,
)
from kdstore.lattice.rnnt_loss import rnnt_loss
from kdstore.store.band import (
    band_mask,
    band_mass,
    check_band_starts,
    gather_band,
    scatter_band,
    select_band,
    stored_width,
)

FP16_MIN = float(np.finfo(np.float16).min)
V = 5  # non-blank tokens; blank = V


def _lattice(frames: int, labels: int, seed: int, scale: float = 2.0):
    """Random teacher lattice: (blank_lp, label_lp [T, U+1] with a masked slot at U, logits, targets)."""
    gen = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(frames, labels + 1, V + 1, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, V, (labels,), generator=gen)
    logp = logits.log_softmax(-1)
    blank = logp[..., V]
    label = torch.full((frames, labels + 1), FP16_MIN, dtype=torch.float64)
    label[:, :labels] = logp[:, :labels].gather(-1, targets[None, :, None].expand(frames, -1, 1)).squeeze(-1)
    return blank, label, logits, targets


def _alignments(frames: int, labels: int):
    """Every alignment as its list of transitions ('b'|'l', t, u), ending with the blank at (T-1, U)."""
    for label_slots in itertools.combinations(range(frames + labels - 1), labels):
        t = u = 0
        path = []
        for i in range(frames + labels):
            if i in label_slots:
                path.append(("l", t, u))
                u += 1
            else:
                path.append(("b", t, u))
                t += 1
        yield path


SHAPES = [(1, 0), (1, 3), (4, 0), (5, 3), (3, 6), (9, 4)]


@pytest.mark.parametrize(("frames", "labels"), SHAPES)
def test_posterior_identities(frames: int, labels: int) -> None:
    blank, label, logits, targets = _lattice(frames, labels, seed=frames * 10 + labels)
    post = lattice_posteriors(blank, label, labels)
    node, bl, lb = post.node, post.blank, post.label
    assert node.shape == bl.shape == lb.shape == (frames, labels + 1) and node.dtype == torch.float64
    # logZ is the reference log-likelihood: minus the RNN-T loss.
    loss = rnnt_loss(logits[None], targets[None], torch.tensor([frames]), torch.tensor([labels]), V, None)
    assert math.isclose(float(post.log_z), -float(loss), rel_tol=0, abs_tol=1e-9)
    ones_t = torch.ones(frames, dtype=torch.float64)
    # 1. one blank per frame; 2. each label once.
    torch.testing.assert_close(bl.sum(1), ones_t, rtol=0, atol=1e-9)
    torch.testing.assert_close(lb[:, :labels].sum(0), torch.ones(labels, dtype=torch.float64), rtol=0, atol=1e-9)
    assert torch.all(lb[:, labels] == 0)
    # 3. flow: out = blank + label; in = blank from t-1 + label from u-1 (+1 at the start node).
    torch.testing.assert_close(node, bl + lb, rtol=0, atol=1e-9)
    inflow = torch.zeros_like(node)
    inflow[1:] += bl[:-1]
    inflow[:, 1:] += lb[:, :-1]
    inflow[0, 0] += 1
    torch.testing.assert_close(node, inflow, rtol=0, atol=1e-9)
    # 4. endpoints, per-frame node mass = 1 + expected labels in the frame, total T + U.
    assert abs(float(node[0, 0]) - 1) < 1e-9 and abs(float(node[-1, -1]) - 1) < 1e-9
    torch.testing.assert_close(node.sum(1), 1 + lb.sum(1), rtol=0, atol=1e-9)
    assert abs(float(node.sum()) - (frames + labels)) < 1e-8
    assert float(node.min()) >= 0 and float(node.max()) <= 1 + 1e-12
    # 5. monotone alignments: the CDF over u of frame t's blank position is non-increasing in t.
    cdf = bl.cumsum(1)
    assert torch.all(cdf[1:] <= cdf[:-1] + 1e-12)
    # The masked slot label_lp[:, U] is never read, whatever it holds.
    for junk in (float("nan"), float("inf"), 0.0):
        label_junk = label.clone()
        label_junk[:, labels] = junk
        torch.testing.assert_close(node_occupancy(blank, label_junk, labels), node, rtol=0, atol=0)


def test_posteriors_match_brute_force() -> None:
    frames, labels = 3, 2
    blank, label, _, _ = _lattice(frames, labels, seed=7)
    node = np.zeros((frames, labels + 1))
    bl = np.zeros_like(node)
    lb = np.zeros_like(node)
    total = 0.0
    for path in _alignments(frames, labels):
        prob = math.exp(sum(float((blank if k == "b" else label)[t, u]) for k, t, u in path))
        total += prob
        for k, t, u in path:
            node[t, u] += prob
            (bl if k == "b" else lb)[t, u] += prob
    assert len(list(_alignments(frames, labels))) == math.comb(frames + labels - 1, labels)
    post = lattice_posteriors(blank, label, labels)
    assert math.isclose(float(post.log_z), math.log(total), abs_tol=1e-12)
    np.testing.assert_allclose(post.node.numpy(), node / total, rtol=0, atol=1e-12)
    np.testing.assert_allclose(post.blank.numpy(), bl / total, rtol=0, atol=1e-12)
    np.testing.assert_allclose(post.label.numpy(), lb / total, rtol=0, atol=1e-12)


def test_batch_matches_single_and_ignores_padding() -> None:
    shapes = [(6, 3), (1, 2), (4, 0), (2, 4), (6, 4)]
    max_t, max_u = 6, 4
    gen = torch.Generator().manual_seed(3)
    blank_b = torch.randn(len(shapes), max_t, max_u + 1, generator=gen, dtype=torch.float64) * 50  # junk padding
    label_b = torch.randn(len(shapes), max_t, max_u + 1, generator=gen, dtype=torch.float64) * 50
    expected = []
    for i, (frames, labels) in enumerate(shapes):
        blank, label, _, _ = _lattice(frames, labels, seed=100 + i)
        blank_b[i, :frames, : labels + 1] = blank
        label_b[i, :frames, : labels + 1] = label
        expected.append(lattice_posteriors(blank, label, labels))
    blank_b[1, 1:, :] = float("nan")  # padding (frames >= T_b, labels >= U_b) may hold anything
    label_b[1, :, 2:] = float("nan")
    label_b[3, :, 4] = float("inf")
    post = lattice_posteriors_batch(blank_b, label_b, [f for f, _ in shapes], [u for _, u in shapes])
    for i, (frames, labels) in enumerate(shapes):
        for got, want in zip(post[:3], expected[i][:3]):
            torch.testing.assert_close(got[i, :frames, : labels + 1], want, rtol=0, atol=1e-12)
            assert float(got[i].abs().sum() - got[i, :frames, : labels + 1].abs().sum()) == 0.0
        assert math.isclose(float(post.log_z[i]), float(expected[i].log_z), abs_tol=1e-12)
    occ = node_occupancy_batch(blank_b, label_b, [f for f, _ in shapes], [u for _, u in shapes])
    torch.testing.assert_close(occ, post.node, rtol=0, atol=0)


def test_minus_inf_log_probs_stay_finite() -> None:
    blank, label, _, _ = _lattice(4, 3, seed=1)
    label[1, 1] = float("-inf")
    blank[2, 0] = float("-inf")
    post = lattice_posteriors(blank, label, 3)
    assert torch.isfinite(post.node).all()
    torch.testing.assert_close(post.blank.sum(1), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-9)
    assert float(post.label[1, 1]) == 0.0 and float(post.blank[2, 0]) == 0.0


# ---------------------------------------------------------------------------------------------
# select_band
# ---------------------------------------------------------------------------------------------
def _brute_force_band(occ: np.ndarray, width: int) -> tuple[float, tuple[int, ...]]:
    """Best kept mass and the element-wise smallest optimal start sequence, by enumeration."""
    frames, nodes = occ.shape
    w = min(width, nodes)
    last = nodes - w
    window = [[occ[t, s : s + w].sum() for s in range(last + 1)] for t in range(frames)]
    best, argbest = -math.inf, []
    for middle in itertools.combinations_with_replacement(range(last + 1), frames - 2):
        seq = (0, *middle, last)
        value = sum(window[t][s] for t, s in enumerate(seq))
        if value > best:
            best, argbest = value, [seq]
        elif value == best:
            argbest.append(seq)
    return best, tuple(int(v) for v in np.min(np.array(argbest), axis=0))


def _kept(occ: np.ndarray, starts: np.ndarray, width: int) -> float:
    return float(occ[band_mask(starts, width, occ.shape[1] - 1)].sum())


@pytest.mark.parametrize("seed", range(40))
def test_select_band_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    frames = int(rng.integers(2, 6))
    nodes = int(rng.integers(2, 7))
    width = int(rng.integers(1, nodes))  # U+1 > W: a real band
    # Integer-valued occupancies make ties common and exact, so the tie rule is tested too.
    occ_int = rng.integers(0, 3, size=(frames, nodes)).astype(np.float64)
    occ_real = rng.random((frames, nodes))
    for occ in (occ_int, occ_real):
        starts = select_band(occ, width)
        assert starts.dtype == np.int32
        check_band_starts(starts, frames, nodes - 1, width)
        best, smallest = _brute_force_band(occ, width)
        assert math.isclose(_kept(occ, starts, width), best, rel_tol=0, abs_tol=1e-12)
        if occ is occ_int:
            assert tuple(starts.tolist()) == smallest


@pytest.mark.parametrize(("frames", "labels", "width"), [(6, 9, 3), (12, 5, 2), (3, 7, 1), (8, 4, 4)])
def test_select_band_rules_on_occupancy(frames: int, labels: int, width: int) -> None:
    blank, label, _, _ = _lattice(frames, labels, seed=frames + labels + width)
    occ = node_occupancy(blank, label, labels)
    starts = select_band(occ, width)  # a torch tensor is accepted
    w = min(width, labels + 1)
    assert starts.shape == (frames,) and starts[0] == 0 and starts[-1] == labels + 1 - w
    assert np.all(np.diff(starts) >= 0) and starts.min() >= 0 and starts.max() <= labels + 1 - w
    mask = band_mask(starts, width, labels)
    assert mask[0, 0] and mask[-1, labels] and np.all(mask.sum(1) == w)


def test_select_band_full_lattice_and_errors() -> None:
    occ = np.random.default_rng(0).random((5, 4))
    for width in (4, 5, 100):
        assert np.array_equal(select_band(occ, width), np.zeros(5, dtype=np.int32))
        assert band_mass(occ, np.zeros(5, dtype=np.int32), width) == pytest.approx(1.0, abs=1e-15)
    assert np.array_equal(select_band(np.ones((1, 3)), 3), [0])  # T = 1 is fine when the band is full
    with pytest.raises(ValueError, match="1-frame"):
        select_band(np.ones((1, 3)), 2)
    with pytest.raises(ValueError):
        select_band(occ, 0)
    with pytest.raises(ValueError):
        check_band_starts(np.array([0, 2, 1, 2, 2]), 5, 3, 2)
    with pytest.raises(ValueError):
        check_band_starts(np.array([1, 1, 1, 2, 2]), 5, 3, 2)


def test_band_mass_increases_with_width() -> None:
    blank, label, _, _ = _lattice(10, 8, seed=5, scale=3.0)
    occ = node_occupancy(blank, label, 8).numpy()
    masses = [band_mass(occ, select_band(occ, w), w) for w in range(1, 10)]
    assert all(0 < m <= 1 + 1e-12 for m in masses)
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(masses))
    assert masses[0] < masses[-1] and masses[-1] == pytest.approx(1.0, abs=1e-12)


def test_peaked_occupancy_follows_the_diagonal() -> None:
    frames, labels, width = 30, 10, 3
    # The teacher is confident in one alignment: label u+1 at frame 3u+1, blanks elsewhere.
    path_u = np.array([min(labels, (t + 1) // 3) for t in range(frames)])  # u at the end of frame t
    blank = torch.full((frames, labels + 1), -8.0, dtype=torch.float64)
    label = torch.full((frames, labels + 1), -8.0, dtype=torch.float64)
    for t in range(frames):
        u_in = path_u[t - 1] if t else 0
        label[t, u_in : path_u[t]] = -1e-3
        blank[t, path_u[t]] = -1e-3
    occ = node_occupancy(blank, label, labels).numpy()
    starts = select_band(occ, width)
    mask = band_mask(starts, width, labels)
    for t in range(frames):
        u_in = path_u[t - 1] if t else 0
        assert mask[t, u_in : path_u[t] + 1].all(), (t, starts[t])
    assert band_mass(occ, starts, width) > 0.99
    assert np.all(np.abs(starts - np.clip(path_u - 1, 0, labels + 1 - width)) <= 1)


def test_gather_scatter_round_trip() -> None:
    rng = np.random.default_rng(2)
    frames, labels, width, k = 7, 6, 3, 4
    dense = rng.random((frames, labels + 1, k)).astype(np.float32)
    starts = select_band(rng.random((frames, labels + 1)), width)
    rows = gather_band(dense, starts, width)
    assert rows.shape == (frames, width, k) and rows.dtype == np.float32
    for t in range(frames):
        np.testing.assert_array_equal(rows[t], dense[t, starts[t] : starts[t] + width])
    back = scatter_band(rows, starts, labels, fill=-np.inf)
    mask = band_mask(starts, width, labels)
    np.testing.assert_array_equal(back[mask], dense[mask])
    assert np.all(back[~mask] == -np.inf)
    np.testing.assert_array_equal(gather_band(back, starts, width), rows)
    # 2-D arrays, and the full lattice (W >= U+1) is an identity.
    flat = rng.integers(0, 9, size=(frames, labels + 1)).astype(np.uint16)
    np.testing.assert_array_equal(scatter_band(gather_band(flat, starts, width), starts, labels), flat * mask)
    zeros = np.zeros(frames, dtype=np.int32)
    np.testing.assert_array_equal(scatter_band(gather_band(flat, zeros, 99), zeros, labels), flat)
    with pytest.raises(ValueError):
        gather_band(dense, starts + 5, width)


def test_dump_batch_occupancy_matches_per_utterance() -> None:
    """The dump computes occupancy for a whole batch at once; it must equal the per-utterance one."""
    from kdstore.dump.rows import batch_occupancy

    shapes = {0: (7, 3), 2: (1, 0), 5: (4, 5)}  # batch position -> (T, U); positions need not be dense
    rows, expected = {}, {}
    for b, (frames, labels) in shapes.items():
        blank, label, _, _ = _lattice(frames, labels, seed=b)
        rows[b] = torch.stack([blank, label], dim=-1).float()  # the dump's (T, U+1, 2) blank/label rows
        expected[b] = node_occupancy(rows[b][..., 0].double(), rows[b][..., 1].double(), labels)
    got = {b: occ for b, (occ, _) in batch_occupancy(rows).items()}
    assert sorted(got) == sorted(shapes)
    for b in shapes:
        torch.testing.assert_close(got[b], expected[b], rtol=0, atol=1e-12)


def test_utterance_rows_uses_the_occupancy_it_is_given() -> None:
    """The dump passes the batch's occupancy in; ``utterance_rows`` must band by it, not recompute it."""
    from kdstore.dump.rows import utterance_rows

    frames, labels, k = 4, 5, 2
    blank, label, _, _ = _lattice(frames, labels, seed=7)
    blank_label = torch.stack([blank, label], dim=-1).float()
    values = torch.zeros(frames, labels + 1, k)
    ids = torch.zeros(frames, labels + 1, k, dtype=torch.long)
    forced = torch.zeros(frames, labels + 1, dtype=torch.float64)
    forced[1:, labels] = 1.0  # all mass at the last label position after frame 0
    forced[0, 0] = 1.0
    rows = utterance_rows(values, ids, blank_label, labels, band=2, occupancy=forced)
    assert rows["band_start"].tolist() == [0, labels - 1, labels - 1, labels - 1]
    own = utterance_rows(values, ids, blank_label, labels, band=2)
    assert own["band_start"].tolist() != rows["band_start"].tolist()


def test_stored_width_is_the_spec_w_prime() -> None:
    """docs/store-format.md section 1: W' = min(W, U+1), U+1 for full stores and for one-frame utterances."""
    assert stored_width(None, 7, 4) == 5
    assert stored_width(3, 7, 4) == 3
    assert stored_width(9, 7, 4) == 5
    assert stored_width(3, 1, 4) == 5  # one frame: its band must start at 0 and cover u = U
    assert np.array_equal(select_band(np.ones((1, 5)), stored_width(3, 1, 4)), [0])
    with pytest.raises(ValueError, match="band width must be >= 1"):
        stored_width(0, 7, 4)


def test_band_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, kdstore.store.band, kdstore.store.reader; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
