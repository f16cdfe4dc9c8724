"""KD losses: exactness at k = V+1, gradients, masking, temperature. Pure torch, fast."""

from __future__ import annotations

import torch

from kdstore import losses


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
