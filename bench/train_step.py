"""Seconds per training step and peak memory: plain student, offline KD from a store, online KD.

One training step = ``KDMixin.training_step`` (forward, RNN-T loss, KD term) + backward + gradient
clipping (1.0, as the configs' trainer does) + ``AdamW.step()``, run outside Lightning the way
``bench/kd_memory.py`` does it (``model._optimizer`` set, ``model.log_dict`` stubbed). Configurations,
for each student:

(a) plain: RNN-T only (``model.enable_kd=false``);
(b) offline KD: RNN-T + KD from the teacher's store (k = 8 full lattice, rows already in the batch: the
    store read happens in the data loader, timed separately as "data");
(c) online KD: RNN-T + KD with the teacher in the step (``model.teacher_model_path``: the teacher's
    forward under no_grad, then top-k per node), with ``model.kd.top_k`` = the store's k so that (b) and
    (c) compute the same KD loss and differ only in where the teacher's rows come from;
(c') online KD over the whole vocabulary (``model.kd.top_k`` unset, k = V+1): the original project's
    setting, for reference (not with ``--quick``).

Sizes keep the FastConformer-Transducer family's parameter ratios scaled down for a CPU: Large/Medium
(120M/32M = 3.75x) and Large/Small (120M/14M = 8.6x). The teacher is built from
``kdstore/configs/tiny-teacher.yaml`` and the students from ``kdstore/configs/tiny.yaml`` with d_model,
layers, heads and prediction/joint width overridden (``SIZES``). The teacher is randomly initialised
(speed does not depend on the weights), saved to a temporary .nemo, and dumped (``dump_teacher``, k = 8,
float16, full lattice) over the first utterances of the manifest. Every configuration trains on the same
duration-sorted batches; repeats are interleaved per batch (a, b, c, a, b, c, ...) after a warm-up pass,
and the seconds per step are the median over repeats of each repeat's mean over the batches.

Memory: each configuration runs again in its own subprocess: after the model and batches are built the
process's RSS high-water mark is reset (``/proc/self/clear_refs`` = 5), one pass over the batches is
run (the online teacher is restored lazily in the first step, so its weights count), and the
high-water mark after it (``VmHWM``, the counter behind ``getrusage``'s ``ru_maxrss``, read from
``/proc/self/status`` because ``ru_maxrss`` also keeps a process-wide maximum recorded when threads
exit, which the reset does not clear) minus the RSS before that pass is the "peak RSS delta".
"Tensor peak" is ``bench/kd_memory.py``'s count of bytes held by tensors created in one step (longest
batch, after the pass; the teacher's weights are not in it).

    python bench/train_step.py [--quick] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from _report import machine, write_section  # bench/ is sys.path[0] when run as a script

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Training step: plain, offline KD, online KD"  # + " (batch N)": one section per batch size
# name -> (config, d_model, encoder layers, attention heads, prediction/joint width)
PRESETS = {  # --layers: encoder depth of every model; widths chosen so the parameter ratios stay the real ones
    4: {
        "teacher": ("tiny-teacher", 256, 4, 8, 320),  # "Large"
        "medium": ("tiny", 104, 4, 4, 320),  # "Medium": teacher/student params ~3.7x (Large/Medium 3.75x)
        "small": ("tiny", 80, 4, 4, 150),  # "Small": ~8.6x (Large/Small 8.6x)
    },
    8: {  # deeper, so the encoder's share of a step is closer to a real 16-17 layer FastConformer's
        "teacher": ("tiny-teacher", 256, 8, 8, 320),  # 14.6M
        "medium": ("tiny", 116, 8, 4, 320),  # 3.8x
        "small": ("tiny", 84, 8, 4, 140),  # 8.6x
    },
}
SIZES = dict(PRESETS[4])
KINDS = {
    "plain": "(a) plain RNN-T",
    "offline": "(b) offline KD (store, k=8)",
    "online": "(c) online KD (teacher in step, k=8)",
    "online_full": "(c') online KD (teacher in step, k=V+1)",
}
TOP_K = 8
SEED = 0


def heading(args) -> str:
    """One docs section per batch size and depth."""
    depth = "" if args.layers == 4 else f", {args.layers} encoder layers"
    return f"{SECTION} (batch {args.batch_size}{depth})"


def quiet() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    from nemo.utils import logging as nemo_logging

    nemo_logging.setLevel(logging.ERROR)


def overrides(size: str, tokenizer_dir: Path) -> list[str]:
    _, d_model, layers, heads, hidden = SIZES[size]
    return [f"model.tokenizer.dir={tokenizer_dir}", "model.train_ds.manifest_filepath=null",
            f"model.model_defaults.enc_hidden={d_model}", f"model.encoder.subsampling_conv_channels={d_model}",
            f"model.encoder.n_layers={layers}", f"model.encoder.n_heads={heads}",
            f"model.model_defaults.pred_hidden={hidden}", f"model.model_defaults.joint_hidden={hidden}"]


def build_model(size: str, kind: str, work: Path, tokenizer_dir: Path):
    """A student (or the teacher, kind "teacher") ready for steps outside Lightning."""
    from omegaconf import OmegaConf

    from kdstore.distill.config import load_train_config
    from kdstore.distill.train import build_student

    extra = [f"model.enable_kd={str(kind not in ('plain', 'teacher')).lower()}"]
    if kind == "offline":
        extra.append(f"model.kd.store={work / 'teacher.zarr'}")
    if kind in ("online", "online_full"):
        extra.append(f"model.teacher_model_path={work / 'teacher.nemo'}")
    if kind == "online":
        extra.append(f"model.kd.top_k={TOP_K}")
    cfg = load_train_config(SIZES[size][0], overrides(size, tokenizer_dir) + extra)
    torch.manual_seed(SEED)
    model = build_student(OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True)))
    model.rnnt_loss_choice = "auto"
    optim = cfg.model.optim
    model._optimizer = torch.optim.AdamW(model.parameters(), lr=float(optim.lr), betas=tuple(optim.betas),
                                         weight_decay=float(optim.weight_decay))
    model.log_dict = lambda *a, **k: None  # no trainer attached
    model.train()
    return model


def params_of(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def prepare(work: Path, manifest: Path, utterances: int, tokenizer_dir: Path) -> dict:
    """Subset manifest, random teacher saved as .nemo, its k=8 store (reused when already in ``work``)."""
    from kdstore.dump.run import DumpSettings, dump_teacher

    info_path = work / "prepared.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("utterances") == utterances and info.get("manifest") == str(manifest):
            return info
    work.mkdir(parents=True, exist_ok=True)
    lines = [line for line in manifest.read_text().splitlines() if line.strip()][:utterances]
    (work / "manifest.json").write_text("\n".join(lines) + "\n")
    teacher = build_model("teacher", "teacher", work, tokenizer_dir)
    teacher.eval()
    teacher.save_to(str(work / "teacher.nemo"))
    start = time.perf_counter()
    meta = dump_teacher(work / "teacher.nemo", work / "manifest.json", work / "teacher.zarr",
                        DumpSettings(top_k=TOP_K, batch_size=8, overwrite=True, band=None))
    info = {"utterances": utterances, "manifest": str(manifest), "teacher_params": params_of(teacher),
            "store_nodes": meta.counts.nodes, "store_hours": meta.counts.hours, "vocab": meta.vocab_size,
            "dump_seconds": round(time.perf_counter() - start, 2)}
    info_path.write_text(json.dumps(info, indent=2))
    return info


def load_batches(work: Path, model, batch_size: int, with_store: bool):
    """The same duration-sorted batches for every configuration (store rows added for offline KD)."""
    from kdstore.distill.data import StoreCollate
    from kdstore.inputs.batches import TranscribedAudioDataset, duration_sorted_batches
    from kdstore.inputs.manifest import read_manifest
    from kdstore.store import StoreReader

    entries = read_manifest(work / "manifest.json")
    dataset = TranscribedAudioDataset(entries, model.tokenizer.text_to_ids, 16000)
    reader = StoreReader(work / "teacher.zarr") if with_store else None
    plan = duration_sorted_batches(entries, batch_size)
    return [StoreCollate(reader)([dataset[i] for i in indices]) for indices in plan], dataset, plan, reader


class OnlineTimer:
    """Times the online teacher inside the step: ``kdstore.distill.kd_term.online_rows`` (teacher rows) and the
    ``full_lattice`` forward it calls, by wrapping the module globals that ``KDMixin`` and ``online_rows`` look up."""

    def __init__(self) -> None:
        from kdstore.distill import kd_term, student

        self.key: str | None = None
        self.seconds: dict[str, dict[str, float]] = {}
        self.calls: dict[str, int] = {}
        original_rows, original_forward = student.online_rows, kd_term.full_lattice

        def timed(name, function):
            def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    if self.key is not None:
                        slot = self.seconds.setdefault(self.key, {"rows": 0.0, "forward": 0.0})
                        slot[name] += time.perf_counter() - start
                        if name == "rows":
                            self.calls[self.key] = self.calls.get(self.key, 0) + 1
            return wrapper

        student.online_rows = timed("rows", original_rows)
        kd_term.full_lattice = timed("forward", original_forward)

    def per_step(self, key: str) -> tuple[float, float] | None:
        """(teacher forward, top-k + row building) seconds per step, or None for offline/plain."""
        if key not in self.seconds:
            return None
        slot, calls = self.seconds[key], self.calls[key]
        return slot["forward"] / calls, (slot["rows"] - slot["forward"]) / calls


def train_step(model, batch) -> float:
    model._optimizer.zero_grad(set_to_none=True)
    out = model.training_step(batch, 0)
    out["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    model._optimizer.step()
    return float(out["loss"].detach())


def data_seconds(dataset, plan, reader, repeats: int) -> dict[str, float]:
    """Median seconds to build one batch: audio + tokens, and audio + tokens + store rows."""
    from kdstore.distill.data import StoreCollate

    times: dict[str, list[float]] = {"audio": [], "audio+store": []}
    for _ in range(repeats):
        for indices in plan:
            for name, store in (("audio", None), ("audio+store", reader)):
                start = time.perf_counter()
                StoreCollate(store)([dataset[i] for i in indices])
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


# -- peak memory, one configuration per process ----------------------------------------------------------
def status_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (high-water mark) of this process, KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def memory_child(work: Path, size: str, kind: str, batch_size: int, tokenizer_dir: Path) -> dict:
    from kd_memory import PeakLiveBytes  # bench/ is sys.path[0]

    quiet()
    torch.set_num_threads(1)
    model = build_model(size, kind, work, tokenizer_dir)
    batches, *_ = load_batches(work, model, batch_size, with_store=kind == "offline")
    gc.collect()
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark (VmHWM, ru_maxrss)
    except OSError:
        reset = False
    before = status_kib("VmRSS")
    for batch in batches:
        train_step(model, batch)
    # VmHWM, not ru_maxrss: getrusage also reports the signal-wide maximum recorded when a thread exits,
    # which clear_refs does not reset (here it kept the setup's peak, identical in every process).
    peak = status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with PeakLiveBytes() as tracker:
        train_step(model, batches[-1])
    return {"rss_before_mib": before / 1024, "maxrss_mib": peak / 1024, "delta_mib": (peak - before) / 1024,
            "tensor_peak_mib": tracker.peak / 2**20, "hwm_reset": reset}


def measure_memory(args, work: Path, size: str, kind: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", f"{size}:{kind}",
               "--workdir", str(work), "--batch-size", str(args.batch_size), "--tokenizer", str(args.tokenizer),
               "--layers", str(args.layers)]
    proc = subprocess.run(command, check=False, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"memory run {size}:{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- report ----------------------------------------------------------------------------------------------
def versions() -> str:
    names = ("torch", "nemo_toolkit", "kdstore", "zarr", "numpy")
    return ", ".join([f"Python {sys.version.split()[0]}"] + [f"{n} {version(n)}" for n in names])


def report(args, info: dict, params: dict, timing: dict, memory: dict, data: dict, kinds: list[str],
           started: str, load: str, wall: float) -> str:
    command = shlex.join(["python", "bench/train_step.py", *sys.argv[1:]])
    teacher = info["teacher_params"]
    size_lines = []
    for name in ("teacher", "medium", "small"):
        config, d_model, layers, heads, hidden = SIZES[name]
        ratio = "" if name == "teacher" else f", teacher/student {teacher / params[name]:.2f}x"
        size_lines.append(f"  - {name}: `{config}.yaml` with d_model {d_model}, {layers} layers, {heads} heads, "
                          f"pred/joint {hidden}: {params[name] / 1e6:.2f}M params{ratio}")
    lines = [
        heading(args), "",
        ("Seconds per training step (forward + RNN-T loss + KD term + backward + clip + AdamW step, outside "
         "Lightning), one torch thread, same duration-sorted batches for every configuration, repeats "
         "interleaved per batch (a, b, c, ...) after a warm-up pass; median over repeats of the mean step "
         "over the batches. (b) reads the teacher's rows from a k=8 float16 full-lattice store (the read "
         "is in the data loader: \"data\" below); (c) runs the teacher's forward under no_grad in the step "
         "and keeps the same k=8 per node, so (b) and (c) compute the same loss; (c') keeps the whole "
         "vocabulary (the original online recipe). Teacher randomly initialised (speed does not depend on "
         "the weights). \"Teacher forward / top-k rows\": time inside the online steps spent in "
         "`kdstore.nemo.teacher_forced.full_lattice` (the teacher's no_grad forward + log_softmax) and in the rest of "
         "`kdstore.distill.kd_term.online_rows` (top-k and (blank, label) per node, one utterance at a time), per "
         "step. Peak RSS delta: each configuration in its own process; after setup the RSS high-water mark "
         "is reset (`/proc/self/clear_refs`), one pass over the batches runs, and the high-water mark "
         "(`VmHWM`, the counter `ru_maxrss` reads; `ru_maxrss` itself kept the setup's peak, identical in "
         "every process) minus the RSS before the pass is the delta (the online teacher is restored in the "
         "first step, so its weights and restore are in it). Tensor peak: bytes held by tensors created in "
         "one step on the longest batch (`bench/kd_memory.py`'s counter; teacher weights not included). "
         "Targets: offline KD step <= 1.10x plain; online/offline >= 2.0x at the Large/Medium ratio and "
         ">= 3.0x at Large/Small."),
         "",
         f"- Command: `{command}` ({wall / 60:.1f} min wall)",
         f"- Machine: {machine()}" + (f"; load average during the run: {load}" if load else ""),
        f"- Date: {started}",
        f"- Versions: {versions()}",
        (f"- Data: first {info['utterances']} utterances of `{args.manifest}` "
         f"({info['store_hours'] * 3600:.0f} s of audio), batches of {args.batch_size} "
         f"({timing['batches']} batches), {timing['repeats']} timed repeats, V+1 = {info['vocab'] + 1}; "
         f"store: {info['store_nodes']:,} nodes, dumped in {info['dump_seconds']} s"),
        "- Models (scaled-down FastConformer-Transducer family, 8x dw_striding, 80 mel):",
        *size_lines,
        "",
        ("| student | teacher/student params | configuration | s/step (median) | min-max over repeats | vs plain "
         "| vs offline | of which teacher forward / top-k rows [s] | step + data [s] (vs plain) "
         "| peak RSS delta [MiB] | tensor peak [MiB] |"),
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for size in ("medium", "small"):
        plain = timing["median"][f"{size}:plain"]
        offline = timing["median"][f"{size}:offline"]
        for kind in kinds:
            key = f"{size}:{kind}"
            med = timing["median"][key]
            lo, hi = min(timing["per_repeat"][key]), max(timing["per_repeat"][key])
            mem = memory.get(key, {})
            vs_off = f"{med / offline:.2f}x" if kind.startswith("online") else ""
            parts = timing["online_parts"].get(key)
            parts = f"{parts[0]:.3f} / {parts[1]:.3f}" if parts else ""
            with_data = med + data["audio+store" if kind == "offline" else "audio"]
            plain_data = plain + data["audio"]
            lines.append(f"| {size} ({params[size] / 1e6:.2f}M) | {teacher / params[size]:.2f}x | {KINDS[kind]} | "
                         f"{med:.3f} | {lo:.3f}-{hi:.3f} | {med / plain:.2f}x | {vs_off} | {parts} | "
                         f"{with_data:.3f} ({with_data / plain_data:.2f}x) | "
                         f"{mem.get('delta_mib', float('nan')):.0f} | {mem.get('tensor_peak_mib', float('nan')):.1f} |")
        online = timing["median"][f"{size}:online"]
        target = 2.0 if size == "medium" else 3.0
        label = "Large/Medium" if size == "medium" else "Large/Small"
        offline_data = (offline + data["audio+store"]) / (plain + data["audio"])
        verdicts.append(
            f"{label} ({teacher / params[size]:.2f}x params): offline/plain {offline / plain:.2f}x "
            f"({'meets' if offline / plain <= 1.10 else 'misses'} <= 1.10x; {offline_data:.2f}x with the data "
            f"loading in the loop), online/offline {online / offline:.2f}x "
            f"({'meets' if online / offline >= target else 'misses'} >= {target:.1f}x; the teacher's no_grad forward "
            f"alone costs {timing['online_parts'][f'{size}:online'][0] / plain:.2f}x the student's whole plain step)")
    lines += [
        "",
        (f"Data per batch of {args.batch_size} (median; only in \"step + data\", which is what a step costs "
         f"with the configs' `num_workers: 0`): audio + tokens "
         f"{data['audio'] * 1e3:.1f} ms; audio + tokens + store rows {data['audio+store'] * 1e3:.1f} ms "
         f"(the store read adds {(data['audio+store'] - data['audio']) * 1e3:.1f} ms per batch)."),
        "",
        "; ".join(verdicts) + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 utterances, 2 repeats, no (c') row")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file whose section to write")
    parser.add_argument("--manifest", type=Path, default=REPO / "demo-run/corpus/train.json")
    parser.add_argument("--tokenizer", type=Path, default=REPO / "demo-run/corpus/tokenizer")
    parser.add_argument("--utterances", type=int, default=None, help="default 64 (16 with --quick)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--layers", type=int, choices=sorted(PRESETS), default=4,
                        help="encoder layers of every model (PRESETS: widths keep the parameter ratios)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, 2 with --quick)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the teacher/store here (reused)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    SIZES.update(PRESETS[args.layers])
    if args.memory_child:
        size, kind = args.memory_child.split(":")
        print(json.dumps(memory_child(args.workdir, size, kind, args.batch_size, args.tokenizer)))
        return
    quiet()
    utterances = args.utterances or (16 if args.quick else 64)
    repeats = args.repeats or (2 if args.quick else 5)
    kinds = ["plain", "offline", "online"] + ([] if args.quick else ["online_full"])
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    wall = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kdstore-train-step-"))
    loads = [os.getloadavg()[0]]
    try:
        info = prepare(work, args.manifest.resolve(), utterances, args.tokenizer.resolve())
        print(f"teacher {info['teacher_params'] / 1e6:.2f}M params; store {info['store_nodes']} nodes", flush=True)
        models, batches, params = {}, {}, {"teacher": info["teacher_params"]}
        for size in ("medium", "small"):
            for kind in kinds:
                models[f"{size}:{kind}"] = build_model(size, kind, work, args.tokenizer.resolve())
            params[size] = params_of(models[f"{size}:plain"])
        any_model = models["medium:plain"]
        batches["plain"], dataset, plan, _ = load_batches(work, any_model, args.batch_size, with_store=False)
        batches["offline"], _, _, reader = load_batches(work, any_model, args.batch_size, with_store=True)
        order = [f"{size}:{kind}" for size in ("medium", "small") for kind in kinds]
        timer = OnlineTimer()
        per_step: dict[str, list[list[float]]] = {key: [] for key in order}
        for repeat in range(-1, repeats):  # -1: warm-up pass (restores the online teachers)
            row = {key: [] for key in order}
            for index in range(len(plan)):
                for key in order:
                    kind = key.split(":")[1]
                    batch = batches["offline" if kind == "offline" else "plain"][index]
                    timer.key = key if repeat >= 0 else None
                    start = time.perf_counter()
                    train_step(models[key], batch)
                    row[key].append(time.perf_counter() - start)
                    timer.key = None
            if repeat >= 0:
                for key in order:
                    per_step[key].append(row[key])
            loads.append(os.getloadavg()[0])
            print(f"repeat {repeat}: " + ", ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in row.items()), flush=True)
        per_repeat = {key: [sum(r) / len(r) for r in per_step[key]] for key in order}
        timing = {"median": {key: statistics.median(v) for key, v in per_repeat.items()},
                  "per_repeat": per_repeat, "batches": len(plan), "repeats": repeats,
                  "online_parts": {key: timer.per_step(key) for key in order if timer.per_step(key)}}
        data = data_seconds(dataset, plan, reader, repeats)
        del models
        gc.collect()
        memory = {}
        for key in order:
            size, kind = key.split(":")
            memory[key] = measure_memory(args, work, size, kind)
            print(f"memory {key}: {memory[key]}", flush=True)
        loads.append(os.getloadavg()[0])
        load = f"1-min load {min(loads):.2f}-{max(loads):.2f}"
        text = report(args, info, params, timing, memory, data, kinds, started, load, time.perf_counter() - wall)
        (work / "result.json").write_text(json.dumps({"timing": timing, "memory": memory, "data": data,
                                                      "params": params, "info": info}, indent=2))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(text)
    if args.out:
        write_section(args.out, heading(args), text)
        print(f"wrote section {heading(args)!r} of {args.out}")


if __name__ == "__main__":
    main()
