"""KD losses: dense float64 references, exactness at k = V+1, gradients, masking, weights, memory. Pure torch, fast."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from kdstore.distill import losses


def _random_lattice(batch=2, frames=5, nodes=4, classes=9, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, frames, nodes, classes, generator=gen, dtype=dtype).log_softmax(-1)
    teacher = (2 * torch.randn(batch, frames, nodes, classes, generator=gen, dtype=dtype)).log_softmax(-1)
    return student, teacher


def _topk(teacher: torch.Tensor, k: int):
    values, ids = teacher.topk(k, dim=-1)
    return values, ids


def test_topk_rest_with_full_k_equals_full_kl_value_and_gradient():
    for temperature in (1.0, 2.0):
        logits, teacher = _random_lattice(dtype=torch.float32)
        logits = logits.clone().requires_grad_(True)
        values, ids = _topk(teacher, teacher.shape[-1])
        ours = losses.topk_rest_kl(logits.log_softmax(-1), values, ids, temperature)
        ours.sum().backward()
        grad_ours = logits.grad.clone()
        logits.grad = None
        ref = losses.full_kl(logits.log_softmax(-1), teacher, temperature)
        ref.sum().backward()
        assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
        assert torch.allclose(grad_ours, logits.grad, atol=1e-5)


def test_topk_rest_small_k_is_lower_bound_and_zero_at_teacher():
    student, teacher = _random_lattice()
    values, ids = _topk(teacher, 3)
    partial = losses.topk_rest_kl(student, values, ids)
    full = losses.full_kl(student, teacher)
    # Merging classes never increases KL (data processing inequality).
    assert torch.all(partial <= full + 1e-12)
    assert torch.all(partial >= -1e-12)
    assert torch.allclose(losses.topk_rest_kl(teacher, values, ids), torch.zeros_like(partial), atol=1e-10)


def test_fp16_residual_that_overshoots_is_clamped():
    student, teacher = _random_lattice(dtype=torch.float32)
    values, ids = _topk(teacher, teacher.shape[-1])
    noisy = (values + 1e-3).half()  # total mass slightly above 1, as fp16 rounding can make it
    out = losses.topk_rest_kl(student, noisy.float(), ids)
    assert torch.isfinite(out).all()


def test_collapsed_matches_three_class_kl_by_hand():
    student, teacher = _random_lattice(batch=1, frames=2, nodes=3, classes=5)
    blank = 4
    targets = torch.tensor([[1, 2]])
    label_valid = torch.tensor([[[True, True, False]] * 2])
    blank_label = torch.stack([teacher[..., blank], teacher.gather(-1, torch.tensor([1, 2, 0]).expand(1, 2, 3)[..., None]).squeeze(-1)], -1)
    out = losses.collapsed_kl(student, blank_label, targets, label_valid, blank)
    # node (0, 0): classes blank, token 1, rest
    def three(lp, label):
        pb, py = lp[blank].exp(), lp[label].exp()
        return torch.stack([pb, py, 1 - pb - py])
    p, q = three(teacher[0, 0, 0], 1), three(student[0, 0, 0], 1)
    assert torch.allclose(out[0, 0, 0], (p * (p / q).log()).sum())
    # node at u = U: only blank vs rest
    pb, qb = teacher[0, 1, 2, blank].exp(), student[0, 1, 2, blank].exp()
    ref = pb * (pb / qb).log() + (1 - pb) * ((1 - pb) / (1 - qb)).log()
    assert torch.allclose(out[0, 1, 2], ref)


def test_topk_renorm_is_zero_when_student_matches_on_the_k_ids():
    _, teacher = _random_lattice()
    values, ids = _topk(teacher, 4)
    assert torch.allclose(losses.topk_renorm_kl(teacher, values, ids), torch.zeros(values.shape[:-1], dtype=values.dtype), atol=1e-10)


def test_mask_and_reduction_ignore_padding():
    frames = torch.tensor([3, 1])
    labels = torch.tensor([2, 0])
    mask = losses.lattice_mask(frames, labels, max_frames=3, max_labels=2)
    assert mask.shape == (2, 3, 3)
    assert mask[0].sum() == 9 and mask[1].sum() == 1
    node_kl = torch.ones(2, 3, 3)
    node_kl[1, 1:, :] = float("nan")  # padding garbage must not leak
    node_kl[1, 0, 0] = 3.0
    assert torch.isclose(losses.reduce_nodes(node_kl, mask), torch.tensor(2.0))


# --- dense float64 references: explicit summation over the full vocabulary ---------------------------
def _dense_kl(p: torch.Tensor, q: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p || q) over the last axis of two probability tables, both tempered p ∝ p^(1/tau)."""
    p = p ** (1 / temperature)
    q = q ** (1 / temperature)
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    return torch.where(p > 0, p * (p.log() - q.log()), torch.zeros_like(p)).sum(-1)


def _dense_buckets(probs: torch.Tensor, ids: torch.Tensor, with_rest: bool) -> torch.Tensor:
    """(..., k[+1]): probs at ids, then (optionally) the sum of probs over every other id."""
    chosen = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, ids, True)
    columns = [probs.gather(-1, ids)]
    if with_rest:
        columns.append(torch.where(chosen, torch.zeros_like(probs), probs).sum(-1, keepdim=True))
    return torch.cat(columns, -1)


def _dense_topk_rest(logits, teacher_full, ids, temperature):
    p, q = teacher_full.exp(), logits.softmax(-1)
    with_rest = ids.shape[-1] < logits.shape[-1]
    return _dense_kl(_dense_buckets(p, ids, with_rest), _dense_buckets(q, ids, with_rest), temperature)


def _dense_topk_renorm(logits, teacher_full, ids, temperature):
    p, q = teacher_full.exp().gather(-1, ids), logits.softmax(-1).gather(-1, ids)
    return _dense_kl(p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True), temperature)


def _dense_collapsed(logits, teacher_full, targets, label_valid, blank, temperature):
    """Classes blank, next label, rest at nodes with a next label; blank, rest at u = U_b."""
    p, q = teacher_full.exp(), logits.softmax(-1)
    batch, frames, nodes, classes = p.shape
    nxt = torch.cat([targets, targets.new_zeros(batch, 1)], 1)[:, None, :, None].expand(batch, frames, nodes, 1)
    def three(probs):
        blank_p = probs[..., blank]
        label_p = torch.where(label_valid, probs.gather(-1, nxt).squeeze(-1), torch.zeros_like(blank_p))
        class_id = torch.arange(classes)
        other = (class_id != blank) & ~((class_id == nxt) & label_valid[..., None])
        rest = torch.where(other, probs, torch.zeros_like(probs)).sum(-1)
        return torch.stack([blank_p, label_p, rest], -1)
    p3, q3 = three(p), three(q)
    # At u = U_b the label class is empty on both sides: drop it from the student's normalisation too.
    q3 = torch.where(label_valid[..., None] | (torch.arange(3) != 1), q3, torch.zeros_like(q3))
    p3 = p3 ** (1 / temperature)
    q3 = q3 ** (1 / temperature)
    p3, q3 = p3 / p3.sum(-1, keepdim=True), q3 / q3.sum(-1, keepdim=True)
    return torch.where(p3 > 0, p3 * (p3.log() - q3.clamp(min=1e-300).log()), torch.zeros_like(p3)).sum(-1)


def _logits_and_teacher(batch=2, frames=4, nodes=3, classes=17, seed=1):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, frames, nodes, classes, generator=gen, dtype=torch.float64)
    teacher = (2 * torch.randn(batch, frames, nodes, classes, generator=gen, dtype=torch.float64)).log_softmax(-1)
    weights = torch.rand(batch, frames, nodes, generator=gen, dtype=torch.float64)
    return logits, teacher, weights


def _value_and_grad(fn, logits, weights):
    logits = logits.clone().requires_grad_(True)
    out = fn(logits)
    (grad,) = torch.autograd.grad((out * weights).sum(), logits)
    return out.detach(), grad


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("k", [1, 4, 16, 17])
def test_topk_rest_matches_dense_float64_reference(k, temperature):
    logits, teacher, weights = _logits_and_teacher()
    values, ids = _topk(teacher, k)
    ours, grad = _value_and_grad(lambda z: losses.topk_rest_kl(z.log_softmax(-1), values, ids, temperature),
                                 logits, weights)
    ref, grad_ref = _value_and_grad(lambda z: _dense_topk_rest(z, teacher, ids, temperature), logits, weights)
    assert (ours - ref).abs().max() < 1e-10
    assert (grad - grad_ref).abs().max() < 1e-8


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("k", [1, 4, 17])
def test_topk_renorm_matches_dense_float64_reference(k, temperature):
    logits, teacher, weights = _logits_and_teacher()
    values, ids = _topk(teacher, k)
    ours, grad = _value_and_grad(lambda z: losses.topk_renorm_kl(z.log_softmax(-1), values, ids, temperature),
                                 logits, weights)
    ref, grad_ref = _value_and_grad(lambda z: _dense_topk_renorm(z, teacher, ids, temperature), logits, weights)
    assert (ours - ref).abs().max() < 1e-10
    assert (grad - grad_ref).abs().max() < 1e-8


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("blank", [16, 0])
def test_collapsed_matches_dense_float64_reference(blank, temperature):
    logits, teacher, weights = _logits_and_teacher(nodes=4)
    labels = torch.tensor([3, 1])
    gen = torch.Generator().manual_seed(2)
    targets = torch.randint(1, 16, (2, 3), generator=gen) - (1 if blank == 16 else 0)  # never the blank id
    targets[1, 1:] = 0  # padding (the id may coincide with blank 0: it must not matter)
    mask = losses.lattice_mask(torch.tensor([4, 4]), labels, 4, 3)
    label_valid = mask & (torch.arange(4)[None, None, :] < labels[:, None, None])
    nxt = torch.cat([targets, targets.new_zeros(2, 1)], 1)[:, None, :, None].expand(2, 4, 4, 1)
    blank_label = torch.stack([teacher[..., blank], teacher.gather(-1, nxt).squeeze(-1)], -1)
    ours, grad = _value_and_grad(
        lambda z: losses.collapsed_kl(z.log_softmax(-1), blank_label, targets, label_valid, blank, temperature),
        logits, weights * mask)
    ref, grad_ref = _value_and_grad(
        lambda z: _dense_collapsed(z, teacher, targets, label_valid, blank, temperature), logits, weights * mask)
    assert (torch.where(mask, ours - ref, torch.zeros_like(ref))).abs().max() < 1e-10
    assert (grad - grad_ref).abs().max() < 1e-8


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_topk_rest_gradient_is_finite_and_exact_when_the_student_rest_mass_vanishes(dtype, temperature):
    logits, teacher, weights = _logits_and_teacher()
    values, ids = _topk(teacher, 4)
    # The student puts all but ~1e-30 of its mass on the teacher's 4 ids: 1 - sum_selected rounds to 0.
    logits = logits.scatter_add(-1, ids, torch.full(ids.shape, 80.0, dtype=torch.float64))
    ours, grad = _value_and_grad(
        lambda z: losses.topk_rest_kl(z.to(dtype).log_softmax(-1), values.to(dtype), ids, temperature),
        logits, weights)
    assert torch.isfinite(ours).all() and torch.isfinite(grad).all()
    # The value's rest bucket is floored at ~eps (unresolvable from the k values), but the backward
    # spreads the rest's gradient over the other ids exactly: the only gradient error left is the
    # floor's phantom mass eps^(1/tau) in the tempered student distribution (~3e-4 in float32 at tau 2).
    _, grad_ref = _value_and_grad(lambda z: _dense_topk_rest(z, teacher, ids, temperature), logits, weights)
    tolerance = 1e-8 if dtype == torch.float64 else (1e-5 if temperature == 1.0 else 1e-4)
    assert grad_ref.abs().max() > 0.01
    assert (grad - grad_ref).abs().max() < tolerance


def test_band_mask_equals_the_loss_on_only_the_band_nodes():
    logits, teacher, _ = _logits_and_teacher(frames=5, nodes=4, seed=3)
    frames, labels = torch.tensor([5, 3]), torch.tensor([3, 2])
    values, ids = _topk(teacher, 4)
    starts = torch.tensor([[0, 0, 1, 1, 2], [0, 1, 1, 0, 0]])  # band of width 2 per frame
    u = torch.arange(4)[None, None, :]
    band = losses.lattice_mask(frames, labels, 5, 3) & (u >= starts[..., None]) & (u < starts[..., None] + 2)
    values = torch.where(band[..., None], values, torch.zeros_like(values))  # the store's fill outside the band
    ids = torch.where(band[..., None], ids, torch.zeros_like(ids))

    def masked(z):
        return losses.reduce_nodes(losses.topk_rest_kl(z.log_softmax(-1), values, ids, 2.0), band)

    def only_band(z):
        per_utt = []
        for b in range(2):
            t, n = band[b].nonzero(as_tuple=True)
            per_utt.append(losses.topk_rest_kl(z[b, t, n].log_softmax(-1), values[b, t, n], ids[b, t, n], 2.0).mean())
        return torch.stack(per_utt).mean()

    loss, grad = _value_and_grad(masked, logits, torch.ones(()))
    ref, grad_ref = _value_and_grad(only_band, logits, torch.ones(()))
    assert abs(float(loss - ref)) < 1e-12
    assert (grad[~band] == 0).all() and (grad[band] != 0).any(-1).all()
    assert (grad - grad_ref).abs().max() < 1e-12


def test_node_weights_occupancy_from_blank_label_equals_given_occupancy():
    from kdstore.lattice.posteriors import node_occupancy_batch

    _, teacher, _ = _logits_and_teacher(frames=6, nodes=4, seed=4)
    frames, labels = torch.tensor([6, 4]), torch.tensor([3, 1])
    targets = torch.tensor([[2, 5, 7], [3, 0, 0]])
    nxt = torch.cat([targets, targets.new_zeros(2, 1)], 1)[:, None, :, None].expand(2, 6, 4, 1)
    blank_label = torch.stack([teacher[..., 16], teacher.gather(-1, nxt).squeeze(-1)], -1).float()
    mask = losses.lattice_mask(frames, labels, 6, 3)
    occupancy = node_occupancy_batch(blank_label[..., 0], blank_label[..., 1], frames, labels)
    garbage = torch.where(mask, occupancy, torch.full_like(occupancy, float("nan")))  # padding must not leak
    computed = losses.node_weights("occupancy", mask, blank_label=blank_label, frames=frames, labels=labels)
    given = losses.node_weights("occupancy", mask, occupancy=garbage)
    assert torch.equal(computed, given)
    assert (computed[~mask] == 0).all() and (computed[mask] > 0).all()
    # Per frame the occupancy sums to 1 + expected labels emitted: every valid frame has weight >= 1.
    assert (computed.sum(-1)[torch.arange(6)[None] < frames[:, None]] >= 1 - 1e-9).all()
    assert torch.equal(losses.node_weights("uniform", mask), mask.float())
    node_kl = torch.rand(2, 6, 4, dtype=torch.float64)
    expected = torch.stack([(node_kl[b] * computed[b]).sum() / computed[b].sum() for b in range(2)]).mean()
    assert torch.isclose(losses.reduce_nodes(node_kl, computed), expected, rtol=1e-12)
    with pytest.raises(ValueError):
        losses.node_weights("occupancy", mask)
    with pytest.raises(ValueError):
        losses.node_weights("posterior", mask)


def test_non_blank_node_weights_on_a_hand_computed_lattice():
    """T=2, U=1 (3 valid nodes of a 2 x 3 padded lattice): weight = 1 - p_teacher(blank), 0 off the mask;
    the reduced loss is the weighted mean by hand."""
    p_blank = torch.tensor([[[0.9, 0.25, 0.5], [0.5, 1.0, 0.0]]], dtype=torch.float64)  # (B=1, T=2, U+1=3)
    blank_label = torch.stack([p_blank.log(), torch.full_like(p_blank, -1.0)], -1)  # (1, 2, 3, 2)
    mask = losses.lattice_mask(torch.tensor([2]), torch.tensor([1]), 2, 2)  # u <= 1 valid
    weights = losses.node_weights("non_blank", mask, blank_label=blank_label)
    expected = torch.tensor([[[0.1, 0.75, 0.0], [0.5, 0.0, 0.0]]], dtype=torch.float64)
    assert torch.allclose(weights.double(), expected, atol=1e-7)
    node_kl = torch.tensor([[[2.0, 4.0, 100.0], [8.0, 16.0, 100.0]]], dtype=torch.float64)
    by_hand = (0.1 * 2.0 + 0.75 * 4.0 + 0.5 * 8.0) / (0.1 + 0.75 + 0.5)
    assert abs(float(losses.reduce_nodes(node_kl, weights.double())) - by_hand) < 1e-6
    with pytest.raises(ValueError, match="non_blank node weights need"):
        losses.node_weights("non_blank", mask)


def test_truncate_topk_is_a_slice_and_moves_the_dropped_mass_to_the_rest():
    logits, teacher, _ = _logits_and_teacher()
    values, ids = _topk(teacher, 8)
    short_values, short_ids = losses.truncate_topk(values, ids, 3)
    assert torch.equal(short_values, values[..., :3]) and torch.equal(short_ids, ids[..., :3])
    student = logits.log_softmax(-1)
    assert torch.allclose(losses.topk_rest_kl(student, short_values, short_ids),
                          losses.topk_rest_kl(student, *_topk(teacher, 3)), atol=1e-14)
    for bad in (0, 9):
        with pytest.raises(ValueError):
            losses.truncate_topk(values, ids, bad)


class _AllocationCensus(TorchDispatchMode):
    """Records (op, numel) of every op output that owns fresh storage (views and in-place results excluded)."""

    def __init__(self):
        super().__init__()
        self.allocations = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "is_view", False):
            return out
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.allocations.append((str(func), t.untyped_storage().nbytes() // t.element_size()))
        return out


def test_store_losses_allocate_no_full_lattice_tensor():
    batch, frames, nodes, classes, k = 2, 6, 5, 33, 4
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(batch, frames, nodes, classes, generator=gen, requires_grad=True)
    student = logits.log_softmax(-1)
    teacher = torch.randn(batch, frames, nodes, classes, generator=gen).log_softmax(-1)
    values, ids = _topk(teacher, k)
    full = batch * frames * nodes * classes
    targets = torch.randint(0, classes - 1, (batch, nodes - 1), generator=gen)
    label_valid = torch.ones(batch, frames, nodes, dtype=torch.bool)
    label_valid[..., -1] = False
    calls = {
        "topk_rest": lambda: losses.topk_rest_kl(student, values, ids, 2.0),
        "topk_renorm": lambda: losses.topk_renorm_kl(student, values, ids, 2.0),
        "collapsed": lambda: losses.collapsed_kl(student, values[..., :2], targets, label_valid, classes - 1, 2.0),
    }
    for name, call in calls.items():
        with _AllocationCensus() as forward:
            out = call()
        assert forward.allocations and max(n for _, n in forward.allocations) < full, (name, forward.allocations)
        with _AllocationCensus() as backward:
            torch.autograd.grad(out.sum(), student)
        big = [a for a in backward.allocations if a[1] >= full]
        assert len(big) == 1, (name, big)  # the gradient w.r.t. the student's log-probs, nothing else
    # The census does see full-size allocations (the dense reference makes several).
    with _AllocationCensus() as dense:
        losses.full_kl(student, teacher)
    assert sum(n >= full for _, n in dense.allocations) >= 2
