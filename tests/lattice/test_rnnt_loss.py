"""kdstore.lattice.rnnt_loss against NeMo's own RNN-T losses on small random lattices.

NeMo references:
* ``RNNTLossPytorch`` (what ``RNNTLoss(loss_name="pytorch")`` wraps) is used directly for the float64
  check, because the ``RNNTLoss`` wrapper forces float32 for it and its alphas are allocated in the
  default dtype; with the default dtype set to float64 it is an exact float64 reference.
* ``RNNTLoss(loss_name="default")`` is the numba/warp-transducer CPU port, float32 only.
Both apply ``log_softmax`` to their input, so they take raw logits, as ours does.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from kdstore.lattice.rnnt_loss import REDUCTIONS, VectorizedRNNTLoss, rnnt_loss

nemo_rnnt = pytest.importorskip("nemo.collections.asr.losses.rnnt")
nemo_rnnt_pytorch = pytest.importorskip("nemo.collections.asr.losses.rnnt_pytorch")

V = 6  # non-blank vocabulary; blank = V, joint dim V + 1
T, U = 7, 5
INPUT_LENGTHS = [7, 1, 5, 3, 6]
TARGET_LENGTHS = [5, 3, 0, 2, 4]  # includes U_b = 0 and, with T_b = 1, an all-labels-in-one-frame path


def _batch(seed: int = 0, dtype: torch.dtype = torch.float64, t: int = T, u: int = U,
           input_lengths=INPUT_LENGTHS, target_lengths=TARGET_LENGTHS):
    gen = torch.Generator().manual_seed(seed)
    b = len(input_lengths)
    acts = (3 * torch.randn(b, t, u + 1, V + 1, generator=gen, dtype=torch.float64)).to(dtype)
    targets = torch.randint(0, V, (b, u), generator=gen)
    return acts, targets, torch.tensor(input_lengths), torch.tensor(target_lengths)


def _ours(acts, targets, il, tl, reduction=None):
    acts = acts.clone().requires_grad_()
    loss = VectorizedRNNTLoss(blank=V, reduction=reduction)(
        log_probs=acts, targets=targets, input_lengths=il, target_lengths=tl
    )
    loss.sum().backward()
    return loss.detach(), acts.grad


def _nemo(acts, targets, il, tl, reduction=None, loss_name="default"):
    acts = acts.clone().requires_grad_()
    loss_fn = nemo_rnnt.RNNTLoss(num_classes=V, reduction=reduction, loss_name=loss_name)
    loss = loss_fn(log_probs=acts, targets=targets, input_lengths=il, target_lengths=tl)
    loss.sum().backward()
    return loss.detach(), acts.grad


def _nemo_pytorch_float64(acts, targets, il, tl):
    acts = acts.clone().requires_grad_()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        loss = nemo_rnnt_pytorch.RNNTLossPytorch(blank=V, reduction=None)(
            acts=acts, labels=targets, act_lens=il, label_lens=tl
        )
        loss.sum().backward()
    finally:
        torch.set_default_dtype(default)
    return loss.detach(), acts.grad


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_nemo_pytorch_in_float64(seed):
    batch = _batch(seed)
    loss, grad = _ours(*batch)
    ref_loss, ref_grad = _nemo_pytorch_float64(*batch)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-6)


def test_log_prob_input_equals_logit_input():
    acts, targets, il, tl = _batch(2)
    loss, grad = _ours(acts, targets, il, tl)
    loss_lp, _ = _ours(acts.log_softmax(-1), targets, il, tl)
    torch.testing.assert_close(loss_lp, loss, rtol=0, atol=1e-10)
    # Gradient w.r.t. logits when the caller applies log_softmax itself, as NeMo's CPU joint does.
    logits = acts.clone().requires_grad_()
    rnnt_loss(logits.log_softmax(-1), targets, il, tl, blank=V, reduction=None).sum().backward()
    torch.testing.assert_close(logits.grad, grad, rtol=0, atol=1e-10)


def test_matches_nemo_default_in_float32():
    batch = _batch(3, dtype=torch.float32)
    loss, grad = _ours(*batch)
    ref_loss, ref_grad = _nemo(*batch)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-4 * ref_grad.abs().max().item())


@pytest.mark.parametrize("reduction", [r for r in REDUCTIONS if r is not None])
def test_reductions_match_nemo(reduction):
    batch = _batch(4, dtype=torch.float32, target_lengths=[5, 3, 1, 2, 4])  # 'mean' divides by U_b
    loss, grad = _ours(*batch, reduction=reduction)
    ref_loss, ref_grad = _nemo(*batch, reduction=reduction)
    assert loss.shape == ref_loss.shape == ()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-4 * ref_grad.abs().max().item())


def test_all_targets_empty():
    """U_b = 0 everywhere: the only path is T blanks at u = 0."""
    acts, targets, il, tl = _batch(5, u=0, input_lengths=[4, 7, 1], target_lengths=[0, 0, 0])
    loss, grad = _ours(acts, targets, il, tl)
    blank_lp = acts.log_softmax(-1)[:, :, 0, V]
    expected = torch.stack([-blank_lp[b, : il[b]].sum() for b in range(3)])
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(grad, _nemo_pytorch_float64(acts, targets, il, tl)[1], rtol=0, atol=1e-6)


def test_single_frame():
    """T_b = 1 everywhere: all labels are emitted in frame 0, then one blank."""
    acts, targets, il, tl = _batch(6, t=1, input_lengths=[1, 1, 1], target_lengths=[3, 0, 5])
    loss, _ = _ours(acts, targets, il, tl)
    lp = acts.log_softmax(-1)[:, 0]
    expected = torch.stack([
        -(lp[b, torch.arange(tl[b]), targets[b, : tl[b]]].sum() + lp[b, tl[b], V]) for b in range(3)
    ])
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(loss, _nemo_pytorch_float64(acts, targets, il, tl)[0], rtol=0, atol=1e-6)


def test_padding_is_ignored():
    """Extra frames/label slots past the longest utterance and out-of-range target padding do not matter."""
    acts, targets, il, tl = _batch(7)
    loss, grad = _ours(acts, targets, il, tl)
    padded = torch.nn.functional.pad(acts, (0, 0, 0, 2, 0, 3), value=123.0)
    padded_targets = torch.where(torch.arange(U) < tl[:, None], targets, -1)
    padded_targets = torch.nn.functional.pad(padded_targets, (0, 2), value=-1)
    padded_loss, padded_grad = _ours(padded, padded_targets, il, tl)
    torch.testing.assert_close(padded_loss, loss, rtol=0, atol=0)
    torch.testing.assert_close(padded_grad[:, :T, : U + 1], grad, rtol=0, atol=0)
    assert padded_grad[:, T:].abs().sum() == 0 and padded_grad[:, :, U + 1 :].abs().sum() == 0


def test_module_api():
    with pytest.raises(ValueError):
        VectorizedRNNTLoss(blank=V, reduction="avg")
    acts, targets, il, tl = _batch(8, dtype=torch.bfloat16)
    loss = VectorizedRNNTLoss(blank=V)(log_probs=acts, targets=targets, input_lengths=il, target_lengths=tl)
    assert loss.dtype == torch.float32 and loss.shape == () and torch.isfinite(loss)


def test_import_does_not_pull_in_nemo():
    code = "import sys, kdstore.lattice.rnnt_loss; sys.exit(any(m.split('.')[0] == 'nemo' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
