"""Teachers of real size: NeMo transducers at their published shapes, random weights, run through kdstore.

Users bring FastConformer Large (~114M), the hybrid RNNT-CTC Large, and Parakeet-RNNT 0.6B / 1.1B
(FastConformer XL / XXL). No weights can be downloaded here, so each teacher is built at its real shape
with random weights (``SHAPES``; the shapes are NeMo's own: the size table in
examples/asr/conf/fastconformer/fast-conformer_transducer_bpe.yaml, Large = that file, the hybrid =
hybrid_transducer_ctc/fastconformer_hybrid_transducer_ctc_bpe.yaml; XL: d_model 1024, 8 heads, 24 layers,
conv kernel 9, pred/joint 640 with 2 LSTM layers; XXL: 42 layers, conv kernel 5, no xscaling; 128 mel
for both, as Parakeet's front end), with a 1,024-piece SentencePiece BPE tokenizer trained on the
Debian text packages (``kdstore.corpus.texts.open_sentences``), and saved as a .nemo in the work folder.

Each teacher then goes through what a user does, every step a ``kdstore`` subprocess (``--threads 1``),
timed, with its peak RSS read from ``os.wait4`` (the process and the children it waited for):

1. ``restore``: the .nemo restored alone (its time is part of every dump below);
2. ``dump-teacher --band full`` and ``--band 6`` (k = 8, float16, ``--batch-size`` 2) over a few TTS
   utterances of the ``open`` demo corpus plus one of at least 30 s (several utterances joined);
3. ``inspect --verify --json`` on both stores (store MB per audio hour: the folder on disk / hours);
4. ``train-student --config medium`` (80 mel) for a few steps from the band store;
5. ``export-onnx`` of that student (sherpa layout), then ``transcribe --runtime sherpa-onnx`` of a short
   utterance and the long one: sherpa-onnx loads the export and decodes.

Restartable: each teacher's results are ``<workdir>/results/<shape>.json``; a rerun reuses them
(``--redo`` to measure again). Without ``--out`` the table is printed only.

    python bench/real_sizes.py --workdir /tmp/real_sizes [--shapes large-rnnt,xl-0.6b] [--out docs/benchmarks.md]
    python bench/real_sizes.py --workdir /tmp/real_sizes_quick --shapes tiny   # the pipeline in a minute
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

from _report import machine, write_section  # bench/ is sys.path[0] when run as a script

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Teachers of real size (random weights)"
VOCAB = 1024
LONG_SECONDS = 30.0  # the long utterance is at least this long
SHORT_UTTERANCES = 3
GAP_SECONDS = 0.3  # silence between the utterances joined into the long one


@dataclass(frozen=True)
class Shape:
    """A teacher shape: a kdstore config to start from (NeMo's sections) and the overrides that give
    NeMo's published shape; ``hybrid`` keeps the CTC head (EncDecHybridRNNTCTCBPEModel)."""

    label: str
    base: str
    hybrid: bool
    overrides: tuple[str, ...]


_LARGE = ("model.model_defaults.enc_hidden=512", "model.model_defaults.pred_hidden=640",
          "model.model_defaults.joint_hidden=640", "model.encoder.n_layers=17", "model.encoder.n_heads=8",
          "model.encoder.subsampling_conv_channels=256", "model.encoder.conv_kernel_size=9",
          "model.preprocessor.features=80", "model.decoder.prednet.pred_rnn_layers=1")
_XL = ("model.model_defaults.enc_hidden=1024", "model.model_defaults.pred_hidden=640",
       "model.model_defaults.joint_hidden=640", "model.encoder.n_layers=24", "model.encoder.n_heads=8",
       "model.encoder.subsampling_conv_channels=256", "model.encoder.conv_kernel_size=9",
       "model.encoder.xscaling=true", "model.preprocessor.features=128", "model.decoder.prednet.pred_rnn_layers=2")
_XXL = tuple(o for o in _XL if not o.startswith(("model.encoder.n_layers", "model.encoder.conv_kernel_size",
                                                  "model.encoder.xscaling"))) + (
    "model.encoder.n_layers=42", "model.encoder.conv_kernel_size=5", "model.encoder.xscaling=false")

SHAPES: dict[str, Shape] = {
    "large-rnnt": Shape("FastConformer Large RNN-T", "large", False, _LARGE),
    "large-hybrid": Shape("FastConformer Large hybrid RNNT-CTC", "large", True, _LARGE),
    "xl-0.6b": Shape("Parakeet-RNNT 0.6B shape (FastConformer XL, 128 mel)", "large", False, _XL),
    "xxl-1.1b": Shape("Parakeet-RNNT 1.1B shape (FastConformer XXL, 128 mel)", "large", False, _XXL),
    # Parakeet-TDT 0.6B (v2/v3): the XL encoder and prediction net with NeMo's TDT joint (durations 0-4,
    # fastconformer_hybrid_tdt_ctc_bpe.yaml's TDT keys, kdstore/configs/_tdt.yaml)
    "xl-0.6b-tdt": Shape("Parakeet-TDT 0.6B shape (FastConformer XL, 128 mel, TDT durations 0-4)", "large-tdt", False,
                         _XL),
    # not a real size: the whole pipeline in about a minute (checking this script)
    "tiny": Shape("tiny (pipeline check only)", "tiny", False, ("model.preprocessor.features=128",)),
}
REAL_SHAPES = ("large-rnnt", "large-hybrid", "xl-0.6b", "xxl-1.1b", "xl-0.6b-tdt")


# -- pure helpers (tests/test_bench_real_sizes.py) ----------------------------------------------------
def long_plan(durations: list[float], target: float = LONG_SECONDS, gap: float = GAP_SECONDS) -> list[int]:
    """Indices of ``durations`` (seconds) to join, in order and cycling when needed, until the joined
    audio with ``gap`` seconds between pieces is at least ``target`` seconds.

    Raises ValueError for no durations or none positive."""
    if not durations or max(durations) <= 0:
        raise ValueError("no utterance to join")
    plan: list[int] = []
    total = 0.0
    i = 0
    while total < target:
        if durations[i % len(durations)] > 0:
            plan.append(i % len(durations))
            total += durations[i % len(durations)] + (gap if len(plan) > 1 else 0.0)
        i += 1
    return plan


def per_audio_second(seconds: float | None, audio_seconds: float) -> float | None:
    """Wall seconds per second of audio (None passes through)."""
    return None if seconds is None or audio_seconds <= 0 else seconds / audio_seconds


def mb_per_hour(folder_bytes: int, hours: float) -> float:
    """Store size in MB (10^6 bytes) per hour of audio."""
    return folder_bytes / 1e6 / hours if hours > 0 else float("nan")


def long_lines(results: list[dict]) -> list[str]:
    """One line per long-utterance dump: wall and CPU seconds, CPU s per audio s after the restore, peak RSS,
    and the encoder alone on the same audio when it was measured (``--encoder-peak``)."""
    out = []
    for r in results:
        steps = r["steps"]
        restore_cpu = (steps.get("restore") or {}).get("cpu_seconds") or 0.0
        lengths = r.get("long") or ({"": r["long_seconds"]} if "long_seconds" in r else {})
        for suffix, seconds in lengths.items():
            dump = steps.get(f"dump_long{suffix}")
            if not dump or not dump["ok"]:
                continue
            text = (f"- {r['label']}, one {seconds:.0f} s utterance, full lattice (k = 8, batch 1): {dump['seconds']:.0f} s "
                    f"wall, {dump['cpu_seconds']:.0f} CPU s, {(dump['cpu_seconds'] - restore_cpu) / seconds:.2f} CPU s per "
                    f"audio s after the restore, peak RSS {dump['peak_rss_mb'] / 1024:.1f} GB")
            encoder = steps.get(f"encoder_long{suffix}")
            if encoder and encoder["ok"]:
                info = json.loads(encoder["tail"].strip().splitlines()[-1])
                text += (f"; the teacher's encoder alone on it (T = {info['frames']}): {info['encoder_cpu_seconds']:.0f} "
                         f"CPU s, peak RSS {encoder['peak_rss_mb'] / 1024:.1f} GB")
            out.append(text)
    return out


def reading(results: list[dict], baseline_mb: float | None = None) -> list[str]:
    """What the numbers say, computed from them: restore memory against the fp32 weights (above
    ``baseline_mb``, the peak RSS of a process that imports NeMo and loads nothing), where a long utterance's
    dump spends its memory (the encoder alone, when measured), and how its rate grows with the length."""
    out = []
    for r in results:
        restore = (r["steps"].get("restore") or {}).get("peak_rss_mb")
        if restore and r.get("params"):
            weights = r["params"] * 4 / 2**20
            above = restore - (baseline_mb or 0.0)
            base = f", {baseline_mb / 1024:.1f} GB of it the imports alone" if baseline_mb else ""
            out.append(f"- {r['label']}: restoring peaks at {restore / 1024:.1f} GB{base}; the rest is {above / weights:.1f}x "
                       f"its fp32 weights ({weights / 1024:.1f} GB: NeMo's `restore_from` builds the model, then loads "
                       "the state dict beside it).")
        rates = []
        restore_cpu = (r["steps"].get("restore") or {}).get("cpu_seconds") or 0.0
        for suffix, seconds in (r.get("long") or {}).items():
            dump, encoder = r["steps"].get(f"dump_long{suffix}"), r["steps"].get(f"encoder_long{suffix}")
            if dump and dump["ok"]:
                rates.append((seconds, (dump["cpu_seconds"] - restore_cpu) / seconds))
            if dump and dump["ok"] and encoder and encoder["ok"]:
                out.append(f"- {r['label']}, {seconds:.0f} s: the dump's peak RSS ({dump['peak_rss_mb'] / 1024:.1f} GB) "
                           f"is {dump['peak_rss_mb'] / encoder['peak_rss_mb']:.2f}x the encoder's alone "
                           f"({encoder['peak_rss_mb'] / 1024:.1f} GB): the joint's (T, U+1, V+1) log-probs are reduced "
                           "to k per node in time slices, so the lattice is not what bounds the length.")
        if len(rates) > 1:
            (s0, r0), (s1, r1) = rates[0], rates[-1]
            out.append(f"- {r['label']}: {r0:.2f} CPU s per audio s at {s0:.0f} s, {r1:.2f} at {s1:.0f} s: a full "
                       "lattice has T x (U+1) nodes, both growing with the audio, and every node goes through the "
                       "joint's V+1 outputs; with band 6 the store shrinks, not that forward.")
    return out


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table_rows(results: list[dict]) -> list[str]:
    """The Markdown table of the results (one dict per teacher, as ``run_teacher`` writes them)."""
    head = ("| teacher | params | utterances (s) | restore s | dump s per audio s: full / band "
            "| long utterance, full: CPU s per audio s after restore / peak RSS GB "
            "| peak RSS GB: restore / dump full / band / train | store MB per audio h: full / band "
            "| verify | student steps | export + sherpa-onnx |")
    rows = [head, "|---|---:|---|---:|---|---|---|---|---|---|---|"]
    for r in results:
        steps = r["steps"]
        restore = steps.get("restore") or {}

        def rss(name: str, steps: dict = steps) -> str:
            step = steps.get(name)
            return "-" if not step or step.get("peak_rss_mb") is None else f"{step['peak_rss_mb'] / 1024:.1f}"

        def rate(name: str, steps: dict = steps, audio: float = r["audio_seconds"]) -> str:
            step = steps.get(name) or {}
            if not step.get("ok"):
                return "failed" if step else "-"
            return f"{per_audio_second(step['seconds'], audio):.2f}"

        long = steps.get("dump_long") or {}
        if long.get("ok") and long.get("cpu_seconds") is not None and restore.get("cpu_seconds") is not None:
            net = per_audio_second(long["cpu_seconds"] - restore["cpu_seconds"], r["long_seconds"])
            long_text = f"{r['long_seconds']:.0f} s: {net:.2f} / {rss('dump_long')}"
        else:
            long_text = "failed" if long else "-"
        verify = "ok" if all((steps.get(n) or {}).get("ok") for n in ("verify_full", "verify_band")) else "FAILED"
        train = steps.get("train") or {}
        student = f"{r.get('student_steps', 0)} ok" if train.get("ok") else "failed"
        export = steps.get("export") or {}
        sherpa = steps.get("sherpa") or {}
        exported = ("ok" if export.get("ok") and sherpa.get("ok") else
                    "export failed" if not export.get("ok") else "sherpa-onnx failed")
        rows.append(
            f"| {r['label']} | {r['params'] / 1e6:.1f}M | {', '.join(f'{s:.1f}' for s in r['utterance_seconds'])} "
            f"| {_num(restore.get('seconds'), '.1f')} | {rate('dump_full')} / {rate('dump_band')} | {long_text} "
            f"| {rss('restore')} / {rss('dump_full')} / {rss('dump_band')} / {rss('train')} "
            f"| {_num(r.get('mb_per_hour_full'), ',.0f')} / {_num(r.get('mb_per_hour_band'), ',.0f')} "
            f"| {verify} | {student} | {exported} |")
    return rows


# -- subprocesses ------------------------------------------------------------------------------------
@dataclass
class Step:
    ok: bool
    seconds: float
    peak_rss_mb: float | None
    returncode: int | None
    command: str
    tail: str = ""
    cpu_seconds: float | None = None  # user + system CPU of the process and its waited-for children


def run_step(argv: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> Step:
    """Run ``argv`` with stdout+stderr to ``log``; wall seconds and peak RSS (``os.wait4``: the process and
    the children it waited for). Killed after ``timeout`` seconds (ok False, returncode None)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        deadline = start + timeout
        status = rusage = None
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                os.killpg(proc.pid, 9)
                pid, status, rusage = os.wait4(proc.pid, 0)
                status = None
                break
            time.sleep(0.2)
        proc.returncode = 0  # reaped here; keep Popen from waiting again
    seconds = time.perf_counter() - start
    code = None if status is None else os.waitstatus_to_exitcode(status)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    return Step(ok=code == 0, seconds=round(seconds, 2), peak_rss_mb=round(rusage.ru_maxrss / 1024, 1),
                returncode=code, cpu_seconds=round(rusage.ru_utime + rusage.ru_stime, 2), command=shlex.join(argv),
                tail=tail)


def kdstore(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdstore.cli.main", *args]


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# -- inputs: tokenizer, utterances, teachers ----------------------------------------------------------
def prepare_inputs(workdir: Path) -> dict:
    """The 1,024-piece tokenizer (Debian text packages), a small ``open`` TTS corpus, and the manifest
    of the bench's utterances (SHORT_UTTERANCES short ones + one >= LONG_SECONDS s). Reused when present."""
    import numpy as np
    import soundfile

    from kdstore.corpus import prepare_demo
    from kdstore.corpus.texts import open_sentences
    from kdstore.corpus.tokenizer import train_tokenizer

    info_file = workdir / "inputs.json"
    if info_file.exists():
        return json.loads(info_file.read_text())
    tokenizer = workdir / "tokenizer"
    texts = open_sentences()["train"]
    tok = train_tokenizer(texts, tokenizer, VOCAB)
    corpus = prepare_demo(workdir / "corpus", task="open", hours=0.03, seed=0, num_jobs=1)
    rows = [json.loads(line) for line in Path(corpus.train_manifest).read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: r["duration"])
    short = rows[len(rows) // 2: len(rows) // 2 + SHORT_UTTERANCES]  # typical lengths, not the shortest
    rest = [r for r in rows if r not in short]
    plan = long_plan([r["duration"] for r in rest])
    pieces, words, rate = [], [], None
    for i in plan:
        audio, rate = soundfile.read(rest[i]["audio_filepath"], dtype="float32")
        if pieces:
            pieces.append(np.zeros(int(GAP_SECONDS * rate), dtype=np.float32))
        pieces.append(audio)
        words.append(rest[i]["text"])
    long_audio = np.concatenate(pieces)
    long_wav = workdir / "long.wav"
    soundfile.write(long_wav, long_audio, rate, subtype="PCM_16")
    lines = [{"audio_filepath": r["audio_filepath"], "duration": r["duration"], "text": r["text"]} for r in short]
    lines.append({"audio_filepath": str(long_wav), "duration": round(len(long_audio) / rate, 4), "text": " ".join(words)})
    manifest = workdir / "bench.json"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    info = {"tokenizer": str(tokenizer), "tokenizer_pieces": tok.vocab_size, "tokenizer_sentences": len(texts),
            "manifest": str(manifest), "utterance_seconds": [line["duration"] for line in lines],
            "short_wav": lines[0]["audio_filepath"], "long_wav": str(long_wav)}
    info_file.write_text(json.dumps(info, indent=1) + "\n")
    return info


def tiled_manifest(inputs: dict, workdir: Path, seconds: float) -> tuple[Path, float]:
    """A one-line manifest: the long utterance repeated (GAP_SECONDS apart) to at least ``seconds``."""
    import numpy as np
    import soundfile

    line = json.loads(Path(inputs["manifest"]).read_text().splitlines()[-1])
    audio, rate = soundfile.read(line["audio_filepath"], dtype="float32")
    times = len(long_plan([line["duration"]], target=seconds))
    gap = np.zeros(int(GAP_SECONDS * rate), dtype=np.float32)
    tiled = np.concatenate([piece for _ in range(times) for piece in (audio, gap)][:-1])
    wav = workdir / f"long{int(seconds)}.wav"
    soundfile.write(wav, tiled, rate, subtype="PCM_16")
    duration = round(len(tiled) / rate, 4)
    manifest = workdir / f"long{int(seconds)}.json"
    manifest.write_text(json.dumps({"audio_filepath": str(wav), "duration": duration,
                                    "text": " ".join([line["text"]] * times)}) + "\n")
    return manifest, duration


def build_teacher(shape_name: str, tokenizer: str, out: str) -> None:
    """(subprocess) Build ``SHAPES[shape_name]`` with random weights as a plain NeMo model, save ``out``,
    and print its parameter count as JSON."""
    import torch
    from omegaconf import OmegaConf

    from kdstore.distill.config import load_train_config

    shape = SHAPES[shape_name]
    overrides = list(shape.overrides) + ([] if shape.hybrid else ["model.aux_ctc=null"])
    model_cfg = OmegaConf.create(OmegaConf.to_container(load_train_config(shape.base, overrides).model, resolve=True))
    for key in ("enable_kd", "kd_alpha", "kd_temperature", "teacher_model_path", "kd", "init_from_teacher",
                "train_ds", "validation_ds", "optim"):  # kdstore's keys; no data loaders for a teacher
        model_cfg.pop(key, None)
    model_cfg.tokenizer.dir = tokenizer
    torch.manual_seed(0)
    if shape.hybrid:
        from nemo.collections.asr.models import EncDecHybridRNNTCTCBPEModel as cls
    else:
        from nemo.collections.asr.models import EncDecRNNTBPEModel as cls
    model = cls(cfg=model_cfg).eval()
    params = int(sum(p.numel() for p in model.parameters()))
    model.save_to(out)
    print(json.dumps({"params": params, "class": cls.__name__, "vocab": int(model.decoder.vocab_size)}))


def encode_only(teacher: str, audio_path: str) -> None:
    """(subprocess) Restore ``teacher`` and run its preprocessor + encoder alone on ``audio_path`` (no joint,
    no store): what the teacher's own forward costs in memory and time. Prints JSON."""
    import resource

    import soundfile
    import torch

    from kdstore.nemo.checkpoint import restore_model

    model = restore_model(teacher)
    restored = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    audio, _ = soundfile.read(audio_path, dtype="float32")
    start = time.process_time()
    with torch.inference_mode():
        _, length = model.forward(input_signal=torch.from_numpy(audio)[None],
                                  input_signal_length=torch.tensor([len(audio)]))
    print(json.dumps({"restore_peak_mb": round(restored, 1), "frames": int(length[0]),
                      "encoder_cpu_seconds": round(time.process_time() - start, 2)}))


# -- one teacher --------------------------------------------------------------------------------------
def run_teacher(name: str, inputs: dict, workdir: Path, args: argparse.Namespace) -> dict:
    shape = SHAPES[name]
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    logs = folder / "logs"
    threads = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    steps: dict[str, dict] = {}
    result = {"shape": name, "label": shape.label, "command": "python bench/real_sizes.py " + shlex.join(args.argv), "params": 0, "utterance_seconds": inputs["utterance_seconds"],
              "audio_seconds": sum(inputs["utterance_seconds"]), "steps": steps, "machine": machine(),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    teacher = folder / "teacher.nemo"

    def step(key: str, argv: list[str], timeout: float | None = None) -> Step:
        print(f"[{name}] {key}: {shlex.join(argv)}", flush=True)
        done = run_step(argv, logs / f"{key}.log", timeout or args.step_timeout, env=threads)
        steps[key] = asdict(done)
        print(f"[{name}] {key}: {'ok' if done.ok else 'FAILED'} in {done.seconds:.1f} s, "
              f"peak RSS {done.peak_rss_mb:.0f} MB", flush=True)
        (folder / "partial.json").write_text(json.dumps(result, indent=1) + "\n")
        return done

    build = step("build", [sys.executable, str(Path(__file__).resolve()), "_build", "--shape", name,
                           "--tokenizer", inputs["tokenizer"], "--out", str(teacher)])
    if not build.ok:
        return result
    result.update(json.loads(build.tail.strip().splitlines()[-1]))
    step("restore", [sys.executable, "-c", ("import sys; from kdstore.nemo.checkpoint import restore_model; "
                     "restore_model(sys.argv[1])"), str(teacher)])
    manifest = inputs["manifest"]
    stores = {}
    for band in ("full", "band"):
        store = folder / f"{band}.zarr"
        stores[band] = store
        done = step(f"dump_{band}", kdstore("dump-teacher", "--teacher", str(teacher), "--manifest", manifest,
                                            "--out", str(store), "--band", "full" if band == "full" else "6",
                                            "--top-k", "8", "--batch-size", str(args.batch_size), "--threads",
                                            str(args.threads), "--overwrite", "--no-progress"))
        if not done.ok:
            continue
        verify = step(f"verify_{band}", kdstore("inspect", "--store", str(store), "--verify", "--json"), 600)
        if verify.ok:
            text = (logs / f"verify_{band}.log").read_text()
            summary = json.loads(text[text.index("{"):text.rindex("}") + 1])
            hours = float(summary.get("hours") or result["audio_seconds"] / 3600)
            result[f"mb_per_hour_{band}"] = round(mb_per_hour(folder_bytes(store), hours), 1)
            result[f"summary_{band}"] = summary
    lengths = result.setdefault("long", {})
    for n, target in enumerate(args.long_seconds or []):
        suffix = "" if n == 0 else str(int(target))  # the first one is the table's column
        long_manifest, long_duration = tiled_manifest(inputs, workdir, target)
        lengths[suffix] = long_duration
        if n == 0:
            result["long_seconds"] = long_duration
        step(f"dump_long{suffix}", kdstore("dump-teacher", "--teacher", str(teacher), "--manifest", str(long_manifest),
                                           "--out", str(folder / f"long{suffix}.zarr"), "--band", "full", "--top-k", "8",
                                           "--batch-size", "1", "--threads", str(args.threads), "--overwrite",
                                           "--no-progress"))
        if args.encoder_peak:
            wav = json.loads(long_manifest.read_text())["audio_filepath"]
            step(f"encoder_long{suffix}", [sys.executable, str(Path(__file__).resolve()), "_encode", "--teacher",
                                           str(teacher), "--audio", wav])
    if not (steps.get("dump_band") or {}).get("ok"):
        return result
    student = folder / "student.nemo"
    train = step("train", kdstore("train-student", "--config", "medium", "--store", str(stores["band"]),
                                  "--no-progress", f"model.train_ds.manifest_filepath={manifest}",
                                  f"run.output={student}", f"trainer.max_steps={args.steps}",
                                  "model.train_ds.batch_size=2", "model.train_ds.max_duration=60",
                                  "trainer.accelerator=cpu", f"run.num_threads={args.threads}",
                                  "trainer.log_every_n_steps=1"))
    if train.ok:
        curve = student.with_suffix(".log.csv")
        lines = curve.read_text().splitlines() if curve.exists() else []
        result["student_steps"] = max(0, len(lines) - 1)
        export_dir = folder / "onnx"
        export = step("export", kdstore("export-onnx", "--model", str(student), "--out", str(export_dir),
                                        "--threads", str(args.threads), "--no-progress"))
        if export.ok:
            sherpa = step("sherpa", kdstore("transcribe", "--onnx", str(export_dir), "--runtime", "sherpa-onnx",
                                            "--json", "--no-progress", inputs["short_wav"], inputs["long_wav"]), 900)
            if sherpa.ok:
                text = (logs / "sherpa.log").read_text()
                result["sherpa"] = json.loads(text[text.index("{"):text.rindex("}") + 1])
    return result


def report(results: list[dict], args: argparse.Namespace, inputs: dict, started: str, load: str,
           baseline_mb: float | None = None) -> str:
    lines = [
        SECTION, "",
        ("NeMo teachers at their published shapes with random weights (`bench/real_sizes.py`: shapes from NeMo's "
        "fast-conformer_transducer_bpe.yaml size table and the hybrid config; Parakeet 0.6B/1.1B = FastConformer "
        "XL/XXL, with 128 mel as Parakeet-TDT 0.6B v2 has; vocabulary 1,024 + blank), a 1,024-piece SentencePiece BPE trained on the Debian text packages "
        f"({inputs['tokenizer_sentences']:,} sentences), each run as a teacher with the `kdstore` commands a user "
        "runs, one torch thread. Utterances: TTS audio of the `open` demo corpus, the last one several utterances "
        "joined (>= 30 s). Dumps: k = 8, float16, batch 2; `full` = the whole lattice, `band` = `--band 6`; "
        "each dump's wall time includes restoring the teacher (the restore alone: its own column, Python and "
        "NeMo imports included). The long utterance (the 31 s one repeated) gives the teacher's own rate: CPU "
        "seconds of that dump minus those of the restore alone, per audio second (CPU time, because the "
        "machine is shared). Peak RSS per subprocess (`os.wait4`: the process and the children it waited for). "
        "Student: `medium` (80 mel: the 128-mel teachers' stores train it because the alignment rule asks only "
        "for the same T, docs/training.md) from the band store, "
        f"{args.steps} steps, batch 2; export: `export-onnx` (sherpa layout) and `transcribe --runtime "
        "sherpa-onnx` of a short utterance and the long one."),
        "",
        "- Command: " + "; ".join(f"`{c}`" for c in dict.fromkeys(
            [r.get("command", "") for r in results if r.get("command")] or
            ["python bench/real_sizes.py " + shlex.join(args.argv)])),
        f"- Machine: {load}",
        f"- Date: {started}" + ("" if len(results) < 2 else
                                "; per teacher " + ", ".join(f"{r['shape']} {r.get('date', '?')}" for r in results)),
        (f"- Versions: Python {sys.version.split()[0]}, torch {version('torch')}, nemo_toolkit {version('nemo_toolkit')}, "
        f"sherpa-onnx {version('sherpa-onnx')}, onnxruntime {version('onnxruntime')}"),
        f"- Work folder (teachers, stores, students, logs, per-teacher JSON): `{args.workdir}`",
        "",
        *table_rows(results),
        "",
    ]
    lines.extend(long_lines(results))
    lines.extend(reading(results, baseline_mb))
    failures = [(r["label"], k, s) for r in results for k, s in r["steps"].items() if not s["ok"]]
    for label, key, s in failures:
        why = "timed out" if s["returncode"] is None else f"exit {s['returncode']}"
        last = s["tail"].strip().splitlines()[-1] if s["tail"].strip() else ""
        lines.append(f"- {label}, {key}: {why} after {s['seconds']:.0f} s: `{last[:300]}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_encode":
        parser = argparse.ArgumentParser()
        parser.add_argument("_encode")
        parser.add_argument("--teacher", required=True)
        parser.add_argument("--audio", required=True)
        a = parser.parse_args(argv)
        encode_only(a.teacher, a.audio)
        return
    if argv and argv[0] == "_build":
        parser = argparse.ArgumentParser()
        parser.add_argument("_build")
        parser.add_argument("--shape", required=True, choices=sorted(SHAPES))
        parser.add_argument("--tokenizer", required=True)
        parser.add_argument("--out", required=True)
        a = parser.parse_args(argv)
        build_teacher(a.shape, a.tokenizer, a.out)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/real_sizes"))
    parser.add_argument("--shapes", default=",".join(REAL_SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="student training steps")
    parser.add_argument("--step-timeout", type=float, default=1800, help="seconds before a step is stopped")
    parser.add_argument("--long-seconds", type=float, nargs="*", default=[],
                        help="also dump one utterance of at least each of these many seconds (the long one tiled), "
                             "full lattice; the first is the table's column, all are listed under it")
    parser.add_argument("--encoder-peak", action="store_true",
                        help="with --long-seconds: also run the teacher's encoder alone on each long utterance")
    parser.add_argument("--redo", action="store_true", help="measure teachers with results again")
    parser.add_argument("--keep-models", action="store_true", help="keep each teacher .nemo (GBs) after its run")
    parser.add_argument("--out", type=Path, help="Markdown file to write the section into (docs/benchmarks.md)")
    args = parser.parse_args(argv)
    args.argv = argv
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; known: {', '.join(SHAPES)}")
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = machine()
    workdir = args.workdir.resolve()
    args.workdir = workdir
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    inputs = prepare_inputs(workdir)
    print(json.dumps(inputs), flush=True)
    results = []
    for name in shapes:
        out = workdir / "results" / f"{name}.json"
        if out.exists() and not args.redo:
            results.append(json.loads(out.read_text()))
            continue
        result = run_teacher(name, inputs, workdir, args)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        results.append(result)
        if not args.keep_models:
            (workdir / name / "teacher.nemo").unlink(missing_ok=True)
    first = min(results, key=lambda r: r.get("date", started), default=None)
    if first is not None and "date" in first:  # results reused from an earlier run: when that one started
        started, load = first["date"], first["machine"]
    baseline_file = workdir / "results" / "_baseline.json"
    if not baseline_file.exists():
        base = run_step([sys.executable, "-c", "import kdstore.nemo.checkpoint, nemo.collections.asr.models"],
                        workdir / "baseline.log", 600)
        baseline_file.parent.mkdir(parents=True, exist_ok=True)
        baseline_file.write_text(json.dumps(asdict(base), indent=1) + "\n")
    baseline = json.loads(baseline_file.read_text())
    text = report(results, args, inputs, started, load, baseline["peak_rss_mb"] if baseline["ok"] else None)
    print(text)
    if args.out:
        write_section(args.out, SECTION, text)


if __name__ == "__main__":
    main()
