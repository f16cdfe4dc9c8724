"""Dump time (`dump_teacher`) against the teacher's own forward on the same batches.

Three runs over the same manifest, the same teacher and the same duration-sorted batches, interleaved
per repeat (forward, dump full, dump band, forward, ...), medians over repeats:

- forward: ``restore_model`` + for each batch: audio + tokens (kdstore's dataset and collate, as the
  dump reads them), preprocessor -> encoder -> prediction net -> joint -> log_softmax over the whole
  (B, T, U+1, V+1) lattice under ``torch.inference_mode`` (``kdstore.nemo.teacher_forced.encode_teacher_forced`` and
  ``joint_log_probs``), nothing kept;
- dump full / dump band W: ``kdstore.dump.run.dump_teacher`` end to end (restore, manifest screening, the same
  forward in time slices, top-k and (blank, label) per node, band selection by the teacher's
  occupancy for the band store, background writing, commit), k = 8, float16, batch 8, as
  ``kdstore dump-teacher`` runs it with ``--threads 1``.

The restore time is measured inside the forward run; "excluding restore" subtracts it from both.
Target: dump <= 1.15x the forward.

    python bench/dump.py [--quick] [--teacher demo-run/teacher.nemo] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from _report import machine, write_section  # bench/ is sys.path[0] when run as a script

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Dump time vs the teacher's forward"
TARGET = 1.15


def quiet() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    from nemo.utils import logging as nemo_logging

    nemo_logging.setLevel(logging.ERROR)


def forward_run(teacher: Path, manifest: Path, batch_size: int) -> dict:
    """The teacher's own forward over the dump's batch plan; returns seconds (total and restore)."""
    from kdstore.inputs.batches import TranscribedAudioDataset, collate, duration_sorted_batches
    from kdstore.inputs.manifest import read_manifest
    from kdstore.nemo.checkpoint import restore_model
    from kdstore.nemo.frontend import sample_rate_of
    from kdstore.nemo.teacher_forced import encode_teacher_forced, joint_log_probs

    start = time.perf_counter()
    model = restore_model(teacher)
    restored = time.perf_counter()
    entries = read_manifest(manifest)
    dataset = TranscribedAudioDataset(entries, model.tokenizer.text_to_ids, sample_rate_of(model))
    nodes = 0
    for indices in duration_sorted_batches(entries, batch_size):
        batch = collate([dataset[i] for i in indices])
        with torch.inference_mode():
            encoded = encode_teacher_forced(model, batch.signal, batch.signal_len, batch.tokens, batch.tokens_len)
            log_probs = joint_log_probs(model, encoded.encoded, encoded.prediction)  # (B, T, U+1, V+1)
        nodes += int((encoded.encoded_len * (batch.tokens_len + 1)).sum())
        del log_probs
    end = time.perf_counter()
    return {"seconds": end - start, "restore": restored - start, "nodes": nodes,
            "params": int(sum(p.numel() for p in model.parameters())), "vocab": int(model.decoder.vocab_size),
            "utterances": len(entries), "hours": sum(e.duration for e in entries) / 3600}


def dump_run(teacher: Path, manifest: Path, out: Path, band: int | None, top_k: int, batch_size: int) -> dict:
    from kdstore.dump.run import DumpSettings, dump_teacher

    start = time.perf_counter()
    meta = dump_teacher(teacher, manifest, out, DumpSettings(top_k=top_k, batch_size=batch_size, band=band,
                                                              overwrite=True))
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"seconds": seconds, "bytes": size, "nodes": meta.counts.nodes}


def versions() -> str:
    names = ("torch", "nemo_toolkit", "kdstore", "zarr", "numcodecs", "numpy")
    return ", ".join([f"Python {sys.version.split()[0]}"] + [f"{n} {version(n)}" for n in names])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 utterances, 2 repeats")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file whose section to write")
    parser.add_argument("--teacher", type=Path, default=REPO / "demo-run/teacher.nemo")
    parser.add_argument("--manifest", type=Path, default=REPO / "demo-run/corpus/train.json")
    parser.add_argument("--utterances", type=int, default=None, help="first N lines (default all; 64 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (2 with --quick)")
    parser.add_argument("--band", type=int, default=6)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet()
    repeats = args.repeats or (2 if args.quick else 3)
    utterances = args.utterances or (64 if args.quick else None)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    wall = time.perf_counter()
    loads = [os.getloadavg()[0]]
    work = Path(tempfile.mkdtemp(prefix="kdstore-bench-dump-"))
    try:
        lines = [line for line in args.manifest.read_text().splitlines() if line.strip()]
        manifest = work / "manifest.json"
        manifest.write_text("\n".join(lines[:utterances] if utterances else lines) + "\n")
        runs = {"forward": [], "full": [], "band": []}
        results: dict[str, dict] = {}
        for repeat in range(-1, repeats):  # -1: warm-up (file cache, lazy imports)
            for name in list(runs):
                if name == "forward":
                    result = forward_run(args.teacher, manifest, args.batch_size)
                else:
                    band = args.band if name == "band" else None
                    result = dump_run(args.teacher, manifest, work / f"{name}.zarr", band, args.top_k, args.batch_size)
                if repeat >= 0:
                    runs[name].append(result)
                results[name] = result
                loads.append(os.getloadavg()[0])
            print(f"repeat {repeat}: " + ", ".join(f"{n} {r['seconds']:.2f} s" for n, r in results.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    forward = results["forward"]
    restore = statistics.median(r["restore"] for r in runs["forward"])
    median = {name: statistics.median(r["seconds"] for r in values) for name, values in runs.items()}
    command = shlex.join(["python", "bench/dump.py", *sys.argv[1:]])
    text_lines = [
        SECTION, "",
        ("Wall time of `dump_teacher` (k = 8, float16, batch 8, one torch thread; its background writer thread "
         "may use a second core) against the teacher's own forward over the same batches (restore, audio + "
         "tokens, preprocessor -> encoder -> prediction net -> joint -> log_softmax over the whole lattice "
         f"under inference_mode, nothing kept). Runs interleaved (forward, full, band {args.band}) after one "
         f"warm-up round; median of {repeats} repeats. Target: dump <= {TARGET:.2f}x the forward."),
        "",
        f"- Command: `{command}` ({(time.perf_counter() - wall) / 60:.1f} min wall)",
        f"- Machine: {machine()}; 1-min load during the run {min(loads):.2f}-{max(loads):.2f}",
        f"- Date: {started}",
        f"- Versions: {versions()}",
        (f"- Teacher: `{args.teacher}` ({forward['params'] / 1e6:.2f}M params, V+1 = {forward['vocab'] + 1}); "
         f"data: {forward['utterances']} utterances of `{args.manifest}` ({forward['hours']:.3f} h), "
         f"{forward['nodes']:,} lattice nodes; restore_model takes {restore:.2f} s of each run"),
        "",
        ("| run | median wall [s] | min-max [s] | vs forward | excluding restore [s] | vs forward (excl. restore) "
         "| store on disk [MB] | MB per audio hour |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for name, label in (("forward", "teacher forward"), ("full", "dump, full lattice"),
                        ("band", f"dump, band {args.band}")):
        values = [r["seconds"] for r in runs[name]]
        ratio = median[name] / median["forward"]
        ratio_ex = (median[name] - restore) / (median["forward"] - restore)
        size = "" if name == "forward" else f"{results[name]['bytes'] / 1e6:.2f}"
        per_hour = "" if name == "forward" else f"{results[name]['bytes'] / 1e6 / forward['hours']:.1f}"
        text_lines.append(f"| {label} | {median[name]:.2f} | {min(values):.2f}-{max(values):.2f} | {ratio:.2f}x | "
                          f"{median[name] - restore:.2f} | {ratio_ex:.2f}x | {size} | {per_hour} |")
        if name != "forward":
            verdicts.append(f"{label}: {ratio:.2f}x the forward ({ratio_ex:.2f}x excluding restore), "
                            f"{'meets' if ratio <= TARGET else 'misses'} <= {TARGET:.2f}x")
    text_lines += ["", "; ".join(verdicts) + ".", ""]
    text = "\n".join(text_lines)
    print(text)
    if args.out:
        write_section(args.out, SECTION, text)
        print(f"wrote section {SECTION!r} of {args.out}")
    (Path(tempfile.gettempdir()) / "kdstore-bench-dump.json").write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
