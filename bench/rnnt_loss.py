"""Benchmark kdstore's vectorised RNN-T loss against NeMo's CPU RNN-T losses (forward + backward).

Losses compared, all on CPU with one thread, on the same random logits:
* ``kdstore``: ``kdstore.lattice.rnnt_loss.VectorizedRNNTLoss``.
* ``nemo default``: ``RNNTLoss(loss_name="default")``, i.e. ``warprnnt_numba``, whose CPU path is
  Python loops over the (t, u) lattice.
* ``nemo pytorch``: ``RNNTLoss(loss_name="pytorch")``. Its backward allocates a full-lattice
  gradient per lattice node, so it only runs on shapes with at most ``--pytorch-max-nodes`` nodes.

Usage: ``python bench/rnnt_loss.py [--out docs/benchmarks.md]``. With ``--out`` the section
"## RNN-T loss on CPU" of that Markdown file is written (or replaced, leaving the rest of the file alone).
"""

from __future__ import annotations

import argparse
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

SECTION = "## RNN-T loss on CPU"


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``BxTxUxV`` -> (batch, frames, labels, vocab without blank)."""
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"shape must be BxTxUxV, got {text!r}")
    return parts  # type: ignore[return-value]


def make_losses(vocab: int) -> dict[str, torch.nn.Module]:
    from nemo.collections.asr.losses.rnnt import RNNTLoss

    from kdstore.lattice.rnnt_loss import VectorizedRNNTLoss

    return {
        "kdstore": VectorizedRNNTLoss(blank=vocab),
        "nemo default": RNNTLoss(num_classes=vocab, reduction="mean_batch", loss_name="default"),
        "nemo pytorch": RNNTLoss(num_classes=vocab, reduction="mean_batch", loss_name="pytorch"),
    }


def time_loss(loss_fn: torch.nn.Module, inputs: tuple, repeats: int) -> tuple[float, float]:
    """Median seconds of forward + backward over ``repeats`` runs, and the last loss value."""
    acts, targets, input_lengths, target_lengths = inputs
    times = []
    for _ in range(repeats):
        logits = acts.clone().requires_grad_()
        start = time.perf_counter()
        loss = loss_fn(log_probs=logits, targets=targets, input_lengths=input_lengths,
                       target_lengths=target_lengths)
        loss.backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times), loss.item()


def random_batch(batch: int, frames: int, labels: int, vocab: int, seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randn(batch, frames, labels + 1, vocab + 1, generator=gen)
    targets = torch.randint(0, vocab, (batch, labels), generator=gen)
    return acts, targets, torch.full((batch,), frames), torch.full((batch,), labels)


def versions() -> str:
    import nemo
    import numba

    return (f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"nemo_toolkit {nemo.__version__}, numba {numba.__version__}")


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for batch, frames, labels, vocab in args.shapes:
        losses = make_losses(vocab)
        inputs = random_batch(batch, frames, labels, vocab)
        warmup = random_batch(2, 3, 2, vocab, seed=1)
        nodes = frames * (labels + 1)
        for name, loss_fn in losses.items():
            if name == "nemo pytorch" and nodes > args.pytorch_max_nodes:
                continue
            time_loss(loss_fn, warmup, 1)
            repeats = max(args.repeats, 10) if name == "kdstore" else args.repeats  # ours is cheap
            seconds, value = time_loss(loss_fn, inputs, repeats)
            rows.append({"shape": (batch, frames, labels, vocab), "loss": name, "seconds": seconds, "value": value})
            print(f"B={batch} T={frames} U={labels} V+1={vocab + 1} {name:>13}: "
                  f"{seconds:8.3f} s  loss {value:.4f}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| B | T | U | V+1 (joint dim) | loss | median fwd+bwd [s] | loss value | kdstore speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ours = next(r for r in rows if r["shape"] == row["shape"] and r["loss"] == "kdstore")
        b, t, u, v = row["shape"]
        lines.append(f"| {b} | {t} | {u} | {v + 1} | {row['loss']} | {row['seconds']:.3f} | "
                     f"{row['value']:.4f} | {row['seconds'] / ours['seconds']:.1f}x |")
    return "\n".join(lines)


def section(args: argparse.Namespace, rows: list[dict], host: str) -> str:
    command = shlex.join(["python", "bench/rnnt_loss.py", *sys.argv[1:]])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""{SECTION}

`kdstore.lattice.rnnt_loss.VectorizedRNNTLoss` against NeMo's CPU RNN-T losses, forward + backward w.r.t. the
float32 joint logits, `reduction="mean_batch"`, all utterances full length, one thread
(`torch.set_num_threads(1)`, `OMP_NUM_THREADS=1`), median of {args.repeats} runs ({max(args.repeats, 10)} for
kdstore) after a tiny warm-up. The machine may be shared: the load average is given below.
V+1 is the joint output size: V labels plus blank (blank = V, last, as in NeMo).
`nemo default` is `RNNTLoss(loss_name="default")` (`warprnnt_numba`, Python loops on CPU);
`nemo pytorch` is `RNNTLoss(loss_name="pytorch")`, run only for lattices of at most
{args.pytorch_max_nodes} T x (U+1) nodes because its backward allocates a full-size gradient per node.

- Command: `{command}`
- Machine: {host}
- Date: {date}
- Versions: {versions()}

{table(rows)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=[(8, 250, 80, 256), (8, 50, 20, 256)],
                        help="BxTxUxV shapes, V = labels without blank (default: 8x250x80x256 8x50x20x256)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pytorch-max-nodes", type=int, default=2000,
                        help="skip NeMo's pytorch loss on lattices with more T x (U+1) nodes")
    parser.add_argument("--out", type=Path, help="Markdown file whose RNN-T section is written")
    args = parser.parse_args()
    torch.set_num_threads(1)
    host = machine()
    rows = run(args)
    print(table(rows))
    if args.out:
        write_section(args.out, SECTION, section(args, rows, host))
        print(f"wrote {SECTION!r} to {args.out}")


if __name__ == "__main__":
    main()
