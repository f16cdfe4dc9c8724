"""Peak memory of one training step: plain RNN-T vs RNN-T + KD from a store, same student and batch.

Peak = the most bytes held at once by tensors created during the step (forward + backward), tracked
with a TorchDispatchMode over every op's outputs (weights and the input batch excluded). On a CPU
this is what the allocator has to provide on top of the model; the ratio is what the acceptance
target (KD step <= 1.2x a plain step) is about.

    python bench/kd_memory.py --store demo-run/teacher.zarr --manifest demo-run/corpus/train.json --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import weakref
from pathlib import Path

import torch
from _report import write_section
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakLiveBytes(TorchDispatchMode):
    """Counts bytes of storages created inside the mode and still alive; remembers the maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._seen:
                    size = storage.nbytes()
                    self._seen.add(key)
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._release, key, size)
        return out


def one_step_peak(model, batch) -> float:
    model.train()
    model.zero_grad(set_to_none=True)
    with PeakLiveBytes() as tracker:
        out = model.training_step(batch, 0)
        out["loss"].backward()
    return tracker.peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from omegaconf import OmegaConf

    from kdstore.distill.config import load_train_config
    from kdstore.distill.data import StoreCollate
    from kdstore.distill.train import build_student
    from kdstore.inputs.batches import TranscribedAudioDataset, duration_sorted_batches
    from kdstore.inputs.manifest import read_manifest
    from kdstore.store import StoreReader

    reader = StoreReader(args.store)
    tokenizer_dir = reader.write_tokenizer(Path("/tmp/kdstore-bench-tokenizer"))
    entries = read_manifest(args.manifest)
    rows = []
    for kd_loss in ("none", "topk_rest", "collapsed"):
        cfg = load_train_config(args.config, [f"model.tokenizer.dir={tokenizer_dir}", f"model.kd.store={args.store}",
                                              f"model.enable_kd={kd_loss != 'none'}",
                                              f"model.kd.loss={'topk_rest' if kd_loss == 'none' else kd_loss}"])
        cfg.model.train_ds.manifest_filepath = None
        torch.manual_seed(0)
        model = build_student(OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True)))
        model._optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        model.log_dict = lambda *a, **k: None  # no trainer attached
        dataset = TranscribedAudioDataset(entries, model.tokenizer.text_to_ids, 16000)
        collate = StoreCollate(reader if kd_loss != "none" else None)
        longest = duration_sorted_batches(entries, args.batch_size)[-1]  # the longest batch: the worst case
        batch = collate([dataset[i] for i in longest])
        peak = one_step_peak(model, batch)
        rows.append((kd_loss, peak))
    base = rows[0][1]
    meta = reader.metadata
    lines = [
        "## Peak memory of a KD step",
        "",
        "Peak bytes held by tensors created in one training step (forward + backward), tracked per op;",
        (f"student `{args.config}`, the longest batch of {args.batch_size} utterances, store k = {meta.top_k} "
        f"({meta.lattice}). Target: KD step <= 1.2x the plain step."),
        "",
        f"- Command: `python bench/kd_memory.py --store {args.store} --manifest {args.manifest}`",
        (f"- Machine: {platform.machine()}, nproc {os.cpu_count()}, torch {torch.__version__}; "
        f"date {dt.date.today().isoformat()}"),
        "",
        "| step | peak MiB | ratio to plain |",
        "|---|---:|---:|",
    ]
    for name, peak in rows:
        label = "plain RNN-T" if name == "none" else f"RNN-T + KD ({name})"
        lines.append(f"| {label} | {peak:.1f} | {peak / base:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_section(args.out, "## Peak memory of a KD step", text)


if __name__ == "__main__":
    main()
