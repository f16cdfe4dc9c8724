"""kdstore.lattice.tdt_loss against a plain float64 TDT recursion and NeMo's own TDT losses.

References:
* ``_reference_nll`` below: the paper's forward recursion (Xu et al. 2023, arXiv 2304.06795) written
  as plain Python loops over (t, u, d) on scalar float64 tensors, tokens and durations log-softmaxed
  separately; autograd through it gives the reference gradient w.r.t. the raw logits.
* NeMo's ``TDTLossPytorch`` (what ``RNNTLoss(loss_name="tdt_pytorch")`` wraps): the same kind of loop,
  but it hard-codes ``.cuda()``; with ``Tensor.cuda`` made the identity for the call and the default
  dtype set to float64 it runs unchanged on CPU and is an independent float64 check of NeMo's rules.
* NeMo's CUDA ``TDTLossNumba`` (``loss_name="tdt"``, the loss NeMo trains with), only when a GPU is present.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from kdstore.errors import ConfigError
from kdstore.lattice.rnnt_loss import rnnt_loss
from kdstore.lattice.tdt_loss import VectorizedTDTLoss, check_durations, tdt_loss

V = 6  # non-blank vocabulary; blank = V, token logits V + 1, then D duration logits
T, U = 9, 5
INPUT_LENGTHS = [9, 1, 5, 3, 8, 2]
TARGET_LENGTHS = [5, 3, 0, 2, 4, 5]  # U_b = 0; T_b = 1 and T_b = 2 with several labels (d = 0 arcs only)
DURATION_SETS = [[0, 1, 2, 3, 4], [0, 1, 2], [0, 1], [0, 1, 2, 4, 8]]  # 8 < T but > most T_b: overshoot


def _batch(durations, seed=0, t=T, u=U, input_lengths=INPUT_LENGTHS, target_lengths=TARGET_LENGTHS,
           dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    b = len(input_lengths)
    acts = 3 * torch.randn(b, t, u + 1, V + 1 + len(durations), generator=gen, dtype=torch.float64)
    targets = torch.randint(0, V, (b, u), generator=gen)
    return acts.to(dtype), targets, torch.tensor(input_lengths), torch.tensor(target_lengths)


def _ours(acts, targets, il, tl, durations, sigma=0.0, omega=0.0, reduction=None):
    acts = acts.clone().requires_grad_()
    loss = tdt_loss(acts, targets, il, tl, blank=V, durations=durations, sigma=sigma, omega=omega,
                    reduction=reduction)
    loss.sum().backward()
    return loss.detach(), acts.grad


def _reference_nll(acts, targets, il, tl, durations, sigma=0.0, omega=0.0):
    """Per-utterance -[(1 - omega) log P_TDT + omega log P_RNNT], loops over (t, u, d), float64."""
    n = len(durations)
    tok = torch.log_softmax(acts[..., : V + 1], -1)
    dur = torch.log_softmax(acts[..., V + 1:], -1)
    out = []
    for b in range(acts.shape[0]):
        frames, labels = int(il[b]), int(tl[b])
        y = [int(v) for v in targets[b, :labels]]
        # TDT: token y_{u+1} with duration d: (t, u) -> (t+d, u+1); blank with d >= 1: (t, u) -> (t+d, u).
        alpha = {}
        for t in range(frames):
            for u in range(labels + 1):
                if t == 0 and u == 0:
                    alpha[t, u] = torch.zeros((), dtype=torch.float64)
                    continue
                terms = []
                for i in range(n):
                    d = durations[i]
                    if t - d < 0:
                        continue
                    if d >= 1:
                        terms.append(alpha[t - d, u] + tok[b, t - d, u, V] - sigma + dur[b, t - d, u, i])
                    if u >= 1:
                        terms.append(alpha[t - d, u - 1] + tok[b, t - d, u - 1, y[u - 1]] - sigma
                                     + dur[b, t - d, u - 1, i])
                alpha[t, u] = torch.logsumexp(torch.stack(terms), 0)
        ends = [alpha[frames - d, labels] + tok[b, frames - d, labels, V] - sigma + dur[b, frames - d, labels, i]
                for i, d in enumerate(durations) if 1 <= d <= frames]
        ll = torch.logsumexp(torch.stack(ends), 0)
        if omega:
            # Plain RNN-T on the token distribution: blank (t, u) -> (t+1, u), token (t, u) -> (t, u+1).
            beta = {}
            for t in range(frames):
                for u in range(labels + 1):
                    terms = [torch.zeros((), dtype=torch.float64)] if t == 0 and u == 0 else []
                    if t > 0:
                        terms.append(beta[t - 1, u] + tok[b, t - 1, u, V])
                    if u > 0:
                        terms.append(beta[t, u - 1] + tok[b, t, u - 1, y[u - 1]])
                    beta[t, u] = torch.logsumexp(torch.stack(terms), 0)
            ll = (1 - omega) * ll + omega * (beta[frames - 1, labels] + tok[b, frames - 1, labels, V])
        out.append(-ll)
    return torch.stack(out)


def _reference(acts, targets, il, tl, durations, sigma=0.0, omega=0.0):
    acts = acts.clone().requires_grad_()
    loss = _reference_nll(acts, targets, il, tl, durations, sigma, omega)
    loss.sum().backward()
    return loss.detach(), acts.grad


@pytest.mark.parametrize("durations", DURATION_SETS, ids=lambda d: "d" + "".join(map(str, d)))
@pytest.mark.parametrize("sigma", [0.0, 0.05])
@pytest.mark.parametrize("omega", [0.0, 0.3])
def test_matches_reference_recursion(durations, sigma, omega):
    batch = _batch(durations, seed=len(durations) + int(100 * sigma) + int(10 * omega))
    loss, grad = _ours(*batch, durations, sigma, omega)
    ref_loss, ref_grad = _reference(*batch, durations, sigma, omega)
    assert loss.dtype == torch.float64 and torch.isfinite(loss).all()
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-6)
    assert grad[..., V + 1:].abs().sum() > 0  # the duration logits do get a gradient


def test_all_targets_empty():
    """U = 0 in the whole batch: only blanks at u = 0, their durations summing exactly to T_b."""
    durations = [0, 1, 2, 3]
    batch = _batch(durations, seed=11, u=0, input_lengths=[4, 9, 1], target_lengths=[0, 0, 0])
    loss, grad = _ours(*batch, durations, sigma=0.05)
    ref_loss, ref_grad = _reference(*batch, durations, sigma=0.05)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-6)
    # T_b = 1: the single path is one blank of duration 1.
    acts = batch[0][2, 0, 0]
    expected = -(acts[: V + 1].log_softmax(-1)[V] - 0.05 + acts[V + 1:].log_softmax(-1)[1])
    torch.testing.assert_close(loss[2], expected, rtol=0, atol=1e-12)


def test_single_frame_uses_duration_zero_tokens():
    """T_b = 1: every label is emitted in frame 0 with duration 0, then one blank of duration 1."""
    durations = [0, 1, 2]
    acts, targets, il, tl = _batch(durations, seed=12, t=1, input_lengths=[1, 1], target_lengths=[3, 5])
    loss, _ = _ours(acts, targets, il, tl, durations)
    tok, dur = acts[:, 0, :, : V + 1].log_softmax(-1), acts[:, 0, :, V + 1:].log_softmax(-1)
    expected = torch.stack([
        -(sum(tok[b, u, targets[b, u]] + dur[b, u, 0] for u in range(int(tl[b]))) + tok[b, tl[b], V] + dur[b, tl[b], 1])
        for b in range(2)
    ])
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)


def test_omega_one_is_the_rnnt_loss_of_the_token_logits():
    """omega = 1 leaves only NeMo's plain RNN-T branch: kdstore's RNN-T loss on the V+1 token logits,
    no sigma, and no gradient to the duration logits."""
    durations = [0, 1, 2, 3, 4]
    acts, targets, il, tl = _batch(durations, seed=13)
    loss, grad = _ours(acts, targets, il, tl, durations, sigma=0.05, omega=1.0)
    tokens = acts[..., : V + 1].clone().requires_grad_()
    expected = rnnt_loss(tokens, targets, il, tl, blank=V, reduction=None)
    expected.sum().backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(grad[..., : V + 1], tokens.grad, rtol=0, atol=1e-10)
    assert grad[..., V + 1:].abs().max() == 0


def test_padding_is_ignored():
    """Frames/label slots past the longest utterance and out-of-range target padding do not matter."""
    durations = [0, 1, 2, 3, 4]
    acts, targets, il, tl = _batch(durations, seed=14)
    loss, grad = _ours(acts, targets, il, tl, durations, sigma=0.05, omega=0.3)
    padded = torch.nn.functional.pad(acts, (0, 0, 0, 2, 0, 3), value=123.0)
    padded_targets = torch.where(torch.arange(U) < tl[:, None], targets, -1)
    padded_targets = torch.nn.functional.pad(padded_targets, (0, 2), value=-1)
    padded_loss, padded_grad = _ours(padded, padded_targets, il, tl, durations, sigma=0.05, omega=0.3)
    torch.testing.assert_close(padded_loss, loss, rtol=0, atol=0)
    torch.testing.assert_close(padded_grad[:, :T, : U + 1], grad, rtol=0, atol=0)
    assert padded_grad[:, T:].abs().sum() == 0 and padded_grad[:, :, U + 1:].abs().sum() == 0


@pytest.mark.parametrize("reduction", ["mean_batch", "mean", "sum", "mean_volume"])
def test_reductions(reduction):
    durations = [0, 1, 2]
    acts, targets, il, tl = _batch(durations, seed=15, target_lengths=[5, 3, 1, 2, 4, 5])
    per_utt, _ = _ours(acts, targets, il, tl, durations)
    reduced, _ = _ours(acts, targets, il, tl, durations, reduction=reduction)
    expected = {"mean_batch": per_utt.mean(), "mean": (per_utt / tl).mean(), "sum": per_utt.sum(),
                "mean_volume": per_utt.sum() / tl.sum()}[reduction]
    assert reduced.shape == ()
    torch.testing.assert_close(reduced, expected, rtol=0, atol=1e-12)


def _nemo_tdt_pytorch_float64(acts, targets, il, tl, durations, sigma, monkeypatch):
    nemo_rnnt_pytorch = pytest.importorskip("nemo.collections.asr.losses.rnnt_pytorch")
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)  # NeMo hard-codes .cuda()
    acts = acts.clone().requires_grad_()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        loss = nemo_rnnt_pytorch.TDTLossPytorch(blank=V, durations=durations, reduction=None, sigma=sigma)(
            acts=acts, labels=targets, act_lens=il, label_lens=tl
        )
        loss.sum().backward()
    finally:
        torch.set_default_dtype(default)
    return loss.detach(), acts.grad


@pytest.mark.parametrize(("durations", "sigma"), [([0, 1, 2, 3, 4], 0.05), ([0, 1, 2, 4, 8], 0.0)])
def test_matches_nemo_tdt_pytorch_in_float64(durations, sigma, monkeypatch):
    batch = _batch(durations, seed=16, t=6, u=3, input_lengths=[6, 1, 4], target_lengths=[3, 2, 0])
    loss, grad = _ours(*batch, durations, sigma)
    ref_loss, ref_grad = _nemo_tdt_pytorch_float64(*batch, durations, sigma, monkeypatch)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NeMo's TDT loss (TDTLossNumba) runs on CUDA only")
@pytest.mark.parametrize("sigma", [0.0, 0.05])
def test_matches_nemo_cuda_tdt_loss(sigma):
    nemo_rnnt = pytest.importorskip("nemo.collections.asr.losses.rnnt")
    durations = [0, 1, 2, 3, 4]
    acts, targets, il, tl = _batch(durations, seed=17, dtype=torch.float32)
    loss, grad = _ours(acts, targets, il, tl, durations, sigma)
    loss_fn = nemo_rnnt.RNNTLoss(num_classes=V, reduction=None, loss_name="tdt",
                                 loss_kwargs={"durations": durations, "sigma": sigma, "omega": 0.0})
    cuda_acts = acts.cuda().requires_grad_()
    ref = loss_fn(log_probs=cuda_acts, targets=targets.cuda(), input_lengths=il.cuda(), target_lengths=tl.cuda())
    ref.sum().backward()
    torch.testing.assert_close(loss, ref.detach().cpu(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad, cuda_acts.grad.cpu(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("durations", [[], [1, 2, 3], [0, 2, 4], [0, 2, 1], [0, 1, 1], [0, 1.0, 2], [0, True]])
def test_invalid_durations_raise(durations):
    with pytest.raises(ConfigError, match="durations"):
        check_durations(durations)


def test_argument_errors_and_module_api():
    durations = [0, 1, 2, 3, 4]
    acts, targets, il, tl = _batch(durations, seed=18, dtype=torch.bfloat16)
    with pytest.raises(ConfigError, match="omega"):
        tdt_loss(acts, targets, il, tl, blank=V, durations=durations, omega=1.5)
    with pytest.raises(ConfigError, match="sigma"):
        tdt_loss(acts, targets, il, tl, blank=V, durations=durations, sigma=-0.1)
    with pytest.raises(ConfigError, match="blank"):
        tdt_loss(acts, targets, il, tl, blank=V + 1, durations=durations)
    with pytest.raises(ValueError, match="reduction"):
        VectorizedTDTLoss(blank=V, durations=durations, reduction="avg")
    module = VectorizedTDTLoss(blank=V, durations=durations, sigma=0.05, omega=0.1)
    loss = module(log_probs=acts, targets=targets, input_lengths=il, target_lengths=tl)
    assert loss.dtype == torch.float32 and loss.shape == () and torch.isfinite(loss)
    assert "durations=[0, 1, 2, 3, 4]" in repr(module)


def test_import_does_not_pull_in_nemo():
    code = "import sys, kdstore.lattice.tdt_loss; sys.exit(any(m.split('.')[0] == 'nemo' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
