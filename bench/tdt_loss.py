"""Benchmark kdstore's vectorised TDT loss against the other CPU TDT losses there are (forward + backward).

Losses, all on CPU with one thread, on the same random logits [B, T, U+1, V+1+D]:
* ``kdstore TDT``: ``kdstore.lattice.tdt_loss.VectorizedTDTLoss``.
* ``nemo tdt`` (``RNNTLoss(loss_name="tdt")``, ``TDTLossNumba``, what NeMo trains TDT models with) and
  ``nemo tdt_pytorch`` (``RNNTLoss(loss_name="tdt_pytorch")``): tried, and the exact error is reported.
* ``nemo tdt_pytorch, .cuda() off``: NeMo's ``TDTLossPytorch`` unchanged, with ``torch.Tensor.cuda``
  made the identity while it runs (it hard-codes ``.cuda()``). Its backward is quadratic in the lattice
  size (one full-size gradient per lattice write), so it only runs on lattices of at most
  ``--nemo-max-nodes`` T x (U+1) nodes per utterance.
* ``plain loop``: the paper's recursion as Python loops over (b, t, u, d) on float64 scalar tensors
  (the lattice tables are gathered first, one utterance's graph at a time), i.e. the test suite's
  reference made to run at full size; run for lattices of at most ``--loop-max-nodes`` nodes.
* ``kdstore RNN-T`` (yardstick, not a TDT loss): ``VectorizedRNNTLoss`` on the V+1 token logits.

Usage: ``python bench/tdt_loss.py [--out docs/benchmarks.md]``. With ``--out`` the section
"## TDT loss on CPU" of that Markdown file is written (or replaced, leaving the rest of the file alone).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from _report import machine, write_section  # bench/ is sys.path[0] when run as a script

SECTION = "## TDT loss on CPU"
DURATIONS = [0, 1, 2, 3, 4]


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``BxTxUxV`` -> (batch, frames, labels, vocab without blank)."""
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"shape must be BxTxUxV, got {text!r}")
    return parts  # type: ignore[return-value]


def plain_loop_tdt(acts: torch.Tensor, targets: torch.Tensor, input_lengths: torch.Tensor,
                   target_lengths: torch.Tensor, blank: int, durations: list[int], sigma: float) -> torch.Tensor:
    """TDT NLL summed over the batch, by the paper's recursion in Python loops; backward run per utterance.

    Returns the batch-mean loss, detached (the gradient is already in ``acts.grad``).
    """
    total = 0.0
    n_tok = acts.shape[-1] - len(durations)
    for b in range(acts.shape[0]):
        frames, labels = int(input_lengths[b]), int(target_lengths[b])
        x = acts[b, :frames, : labels + 1].double()
        tok = torch.log_softmax(x[..., :n_tok], -1) - sigma
        dur = torch.log_softmax(x[..., n_tok:], -1)
        y = targets[b, :labels].long()
        blank_rows = [row.unbind() for row in tok[..., blank].unbind()]  # [t][u] scalars
        emit_rows = [row.unbind() for row in tok[:, :-1].gather(-1, y[None, :, None].expand(frames, -1, 1))
                     .squeeze(-1).unbind()]
        dur_rows = [[node.unbind() for node in row.unbind()] for row in dur.unbind()]  # [t][u][i]
        alpha: dict[tuple[int, int], torch.Tensor] = {}
        for t in range(frames):
            for u in range(labels + 1):
                if t == 0 and u == 0:
                    alpha[t, u] = x.new_zeros(())
                    continue
                terms = []
                for i, d in enumerate(durations):
                    if t - d < 0:
                        continue
                    if d >= 1:
                        terms.append(alpha[t - d, u] + blank_rows[t - d][u] + dur_rows[t - d][u][i])
                    if u >= 1:
                        terms.append(alpha[t - d, u - 1] + emit_rows[t - d][u - 1] + dur_rows[t - d][u - 1][i])
                alpha[t, u] = torch.logsumexp(torch.stack(terms), 0)
        ends = [alpha[frames - d, labels] + blank_rows[frames - d][labels] + dur_rows[frames - d][labels][i]
                for i, d in enumerate(durations) if 1 <= d <= frames]
        nll = -torch.logsumexp(torch.stack(ends), 0) / acts.shape[0]
        nll.backward()
        total += nll.item()
    return torch.tensor(total)


@contextlib.contextmanager
def cuda_calls_are_identity():
    """Make ``Tensor.cuda()`` return the tensor itself (NeMo's ``TDTLossPytorch`` hard-codes it)."""
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def make_losses(vocab: int, sigma: float, omega: float) -> dict:
    """name -> callable(acts, targets, input_lengths, target_lengths) returning a scalar loss."""
    from nemo.collections.asr.losses.rnnt_pytorch import TDTLossPytorch

    from kdstore.lattice.rnnt_loss import VectorizedRNNTLoss
    from kdstore.lattice.tdt_loss import VectorizedTDTLoss

    ours = VectorizedTDTLoss(blank=vocab, durations=DURATIONS, sigma=sigma, omega=omega)
    rnnt = VectorizedRNNTLoss(blank=vocab)
    nemo = TDTLossPytorch(blank=vocab, durations=DURATIONS, reduction="mean_batch", sigma=sigma)

    def nemo_patched(a, t, il, tl):
        with cuda_calls_are_identity():
            return nemo(acts=a, labels=t, act_lens=il, label_lens=tl)

    return {
        "kdstore TDT": lambda a, t, il, tl: ours(log_probs=a, targets=t, input_lengths=il, target_lengths=tl),
        "nemo tdt_pytorch, .cuda() off": nemo_patched,
        "plain loop (float64)": lambda a, t, il, tl: plain_loop_tdt(a, t, il, tl, vocab, DURATIONS, sigma),
        # gets contiguous [B, T, U+1, V+1] token logits, as an RNN-T joint would produce (see ``run``)
        "kdstore RNN-T (yardstick)": lambda a, t, il, tl: rnnt(log_probs=a, targets=t, input_lengths=il,
                                                               target_lengths=tl),
    }


def nemo_refusals(vocab: int, sigma: float, omega: float) -> list[str]:
    """Run NeMo's registered TDT losses on CPU once; return 'name: ExceptionType: message' per refusal."""
    from nemo.collections.asr.losses.rnnt import RNNTLoss

    acts, targets, il, tl = random_batch(2, 5, 3, vocab)
    lines = []
    for name in ("tdt", "tdt_pytorch"):
        kwargs = {"durations": DURATIONS, "sigma": sigma} | ({"omega": omega} if name == "tdt" else {})
        try:
            loss = RNNTLoss(num_classes=vocab, reduction="mean_batch", loss_name=name, loss_kwargs=kwargs)(
                log_probs=acts.clone().requires_grad_(), targets=targets, input_lengths=il, target_lengths=tl)
            loss.backward()
            lines.append(f'`RNNTLoss(loss_name="{name}")` ran on CPU (loss {loss.item():.4f})')
        except Exception as error:  # noqa: BLE001 - the point is to report whatever NeMo raises
            lines.append(f'`RNNTLoss(loss_name="{name}")` on CPU: `{type(error).__name__}: {error}`')
    return lines


def time_loss(loss_fn, inputs: tuple, repeats: int) -> tuple[float, float]:
    """Median seconds of forward + backward over ``repeats`` runs, and the last loss value."""
    acts, targets, input_lengths, target_lengths = inputs
    times = []
    for _ in range(repeats):
        logits = acts.clone().requires_grad_()
        start = time.perf_counter()
        loss = loss_fn(logits, targets, input_lengths, target_lengths)
        if loss.requires_grad:
            loss.backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times), loss.item()


def random_batch(batch: int, frames: int, labels: int, vocab: int, seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randn(batch, frames, labels + 1, vocab + 1 + len(DURATIONS), generator=gen)
    targets = torch.randint(0, vocab, (batch, labels), generator=gen)
    return acts, targets, torch.full((batch,), frames), torch.full((batch,), labels)


def tokens_only(inputs: tuple, vocab: int) -> tuple:
    """The same batch with only the V+1 token logits, contiguous: the input of an RNN-T loss."""
    acts, *rest = inputs
    return (acts[..., : vocab + 1].contiguous(), *rest)


def versions() -> str:
    import nemo
    import numba

    return (f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"nemo_toolkit {nemo.__version__}, numba {numba.__version__}")


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for batch, frames, labels, vocab in args.shapes:
        losses = make_losses(vocab, args.sigma, args.omega)
        inputs = random_batch(batch, frames, labels, vocab)
        warmup = random_batch(2, 3, 2, vocab, seed=1)
        nodes = frames * (labels + 1)
        for name, loss_fn in losses.items():
            if name.startswith("nemo") and nodes > args.nemo_max_nodes:
                continue
            if name.startswith("plain") and nodes > args.loop_max_nodes:
                continue
            args_in, warm_in = inputs, warmup
            if name.startswith("kdstore RNN-T"):  # token logits only, contiguous
                args_in, warm_in = (tokens_only(x, vocab) for x in (inputs, warmup))
            time_loss(loss_fn, warm_in, 1)
            repeats = max(args.repeats, 10) if name.startswith("kdstore") else args.slow_repeats
            seconds, value = time_loss(loss_fn, args_in, repeats)
            rows.append({"shape": (batch, frames, labels, vocab), "loss": name, "seconds": seconds,
                         "value": value, "repeats": repeats})
            print(f"B={batch} T={frames} U={labels} V+1={vocab + 1} D={len(DURATIONS)} {name:>30}: "
                  f"{seconds:8.3f} s  loss {value:.4f}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| B | T | U | V+1 | D | loss | runs | median fwd+bwd [s] | loss value | kdstore TDT speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ours = next(r for r in rows if r["shape"] == row["shape"] and r["loss"] == "kdstore TDT")
        b, t, u, v = row["shape"]
        lines.append(f"| {b} | {t} | {u} | {v + 1} | {len(DURATIONS)} | {row['loss']} | {row['repeats']} | "
                     f"{row['seconds']:.3f} | {row['value']:.4f} | {row['seconds'] / ours['seconds']:.1f}x |")
    return "\n".join(lines)


def section(args: argparse.Namespace, rows: list[dict], refusals: list[str], host: str) -> str:
    command = shlex.join(["python", "bench/tdt_loss.py", *sys.argv[1:]])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    refused = "\n".join(f"- {line}" for line in refusals)
    return f"""{SECTION}

`kdstore.lattice.tdt_loss.VectorizedTDTLoss` against the other CPU TDT losses, forward + backward w.r.t.
the float32 joint logits [B, T, U+1, V+1+D] (V+1 token logits, blank = V, then D duration logits for
durations {DURATIONS}), sigma = {args.sigma}, omega = {args.omega}, `reduction="mean_batch"`, all
utterances full length, one thread (`torch.set_num_threads(1)`, `OMP_NUM_THREADS=1`), median of
"runs" runs after a tiny warm-up. The machine may be shared: the load average is given below.

NeMo's own TDT losses do not run on CPU:

{refused}

So the rows compare with what does run. `nemo tdt_pytorch, .cuda() off` is NeMo's `TDTLossPytorch`
unchanged, with `torch.Tensor.cuda` made the identity during the call: a Python loop over (b, t, u)
writing into one alpha tensor, where every write adds a full-size gradient to the backward, which is
therefore quadratic in the lattice; it runs only up to {args.nemo_max_nodes} T x (U+1) nodes per
utterance. `plain loop (float64)` is the paper's recursion as Python loops over (b, t, u, d) on float64
scalars (the test suite's reference; tables gathered first, one utterance's graph at a time): the
fastest other implementation that runs at the full size. `kdstore RNN-T (yardstick)` is kdstore's
vectorised RNN-T loss on the V+1 token logits alone (a contiguous [B, T, U+1, V+1] tensor, as an RNN-T
joint gives): a different, simpler loss, to show what TDT costs on top. Equal loss values are a
cross-check (the RNN-T row excepted).

- Command: `{command}`
- Machine: {host}
- Date: {date}
- Versions: {versions()}

{table(rows)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=parse_shape, nargs="+",
                        default=[(8, 250, 80, 256), (1, 100, 40, 256), (8, 20, 8, 256)],
                        help="BxTxUxV shapes, V = labels without blank (default: 8x250x80x256 1x100x40x256 8x20x8x256)")
    parser.add_argument("--sigma", type=float, default=0.05, help="logit under-normalisation (default 0.05)")
    parser.add_argument("--omega", type=float, default=0.0, help="RNN-T weight of kdstore's loss (default 0)")
    parser.add_argument("--repeats", type=int, default=10, help="runs of the kdstore losses (median)")
    parser.add_argument("--slow-repeats", type=int, default=1, help="runs of the NeMo and plain-loop losses")
    parser.add_argument("--nemo-max-nodes", type=int, default=4100,
                        help="skip NeMo's patched tdt_pytorch on lattices with more T x (U+1) nodes")
    parser.add_argument("--loop-max-nodes", type=int, default=25000,
                        help="skip the plain loop on lattices with more T x (U+1) nodes")
    parser.add_argument("--out", type=Path, help="Markdown file whose TDT section is written")
    args = parser.parse_args()
    torch.set_num_threads(1)
    host = machine()
    refusals = nemo_refusals(args.shapes[0][3], args.sigma, args.omega)
    print("\n".join(refusals))
    rows = run(args)
    print(table(rows))
    if args.out:
        write_section(args.out, SECTION, section(args, rows, refusals, host))
        print(f"wrote {SECTION!r} to {args.out}")


if __name__ == "__main__":
    main()
