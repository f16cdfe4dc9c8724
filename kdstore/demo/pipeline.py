"""``kdstore demo``: the whole two-stage pipeline on the synthetic voice-commands corpus.

prepare-demo (with an untranscribed split: more audio, text withheld) -> the committed teacher ->
dump-teacher over the transcribed split (band 6, CTC rows) and over the untranscribed split (the
teacher labels it; label-quality scores its labels against the withheld text) -> the headline student
(``tiny-teacher-2l``: 2 of the teacher's 4 layers, started from the teacher's weights, hybrid
RNNT-CTC) with KD from both stores and its no-KD twin (same initialisation, data, steps and seed; side
by side, one thread each), optionally a from-scratch ``tiny`` student with KD -> eval all on the test split (unseen voices) ->
export-onnx of the headline student with int8 copies -> its WER through sherpa-onnx at int8 ->
report.md (led by retention, parameters, speed and the int8 WER) + PNG.
Each step leaves a done-marker in ``WORKDIR/steps/`` so a re-run reuses finished steps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kdstore.assets import demo_teacher_dir
from kdstore.errors import KdstoreError
from kdstore.nemo.checkpoint import read_tokenizer_files


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run; ``quick`` fits in a few minutes, the full one in under 15 minutes on 2 cores.

    ``scratch_steps`` > 0 adds a from-scratch ``tiny`` student with KD (the study has it; the demo's
    15-minute budget does not: ``kdstore demo`` leaves it out by default)."""

    hours: float
    teacher_steps: int
    student_steps: int
    scratch_steps: int
    batch_size: int
    top_k: int = 8
    band: int = 6
    seed: int = 0
    transcribe_files: int = 5
    student_config: str = "tiny-teacher-2l"
    scratch_config: str = "tiny"
    voices: str = "wide"  # the students' training speakers (kdstore.corpus.tts.split_voices); test voices unchanged
    untranscribed_hours: float = 0.0  # more audio without text (voices of no other split), labelled by the teacher
    # the students learn from the teacher-labelled audio (else it is labelled and its label quality reported only);
    # off: in the 3-seed study (docs/benchmarks.md, "Untranscribed audio") it did not help at the demo's budget
    learn_from_untranscribed: bool = False
    pseudo_label_alpha: float | None = None  # model.kd.pseudo_label_alpha for the teacher-labelled utterances

    @classmethod
    def for_mode(cls, quick: bool, seed: int = 0) -> DemoPlan:
        if quick:
            return cls(hours=0.1, teacher_steps=250, student_steps=150, scratch_steps=0, batch_size=16, seed=seed,
                       untranscribed_hours=0.05)
        return cls(hours=1.0, teacher_steps=1500, student_steps=700, scratch_steps=0, batch_size=16, seed=seed,
                   untranscribed_hours=0.25)


Echo = Callable[[str], None]


def _step(workdir: Path, name: str, run: Callable[[], dict[str, Any]], echo: Echo) -> dict[str, Any]:
    """Run ``run`` once; its JSON result is the done-marker that lets a re-run skip it."""
    marker = workdir / "steps" / f"{name}.json"
    if marker.is_file():
        echo(f"[demo] {name}: done earlier, reusing ({marker})")
        return json.loads(marker.read_text())["result"]
    echo(f"[demo] {name} ...")
    start = time.time()
    result = run()
    seconds = round(time.time() - start, 1)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"result": result, "seconds": seconds}, indent=2, default=str))
    echo(f"[demo] {name}: {seconds} s")
    return result


def _train_command(config: str, out: Path, manifest: Path | str, tokenizer_dir: Path | None, steps: int, plan: DemoPlan,
                   threads: int, extra: list[str]) -> list[str]:
    args = [sys.executable, "-m", "kdstore.cli.main", "train-student", "--config", config, "--no-progress",
            f"model.train_ds.manifest_filepath={manifest}", f"run.output={out}", f"trainer.max_steps={steps}",
            f"model.train_ds.batch_size={plan.batch_size}", f"run.seed={plan.seed}", f"run.num_threads={threads}",
            "trainer.accelerator=cpu"]
    if tokenizer_dir is not None:
        args.append(f"model.tokenizer.dir={tokenizer_dir}")
    return args + extra


def _run_parallel(jobs: dict[str, list[str]], logs: Path) -> None:
    """Run training commands side by side (one torch thread each is fastest on 2 cores)."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {}
    for name, args in jobs.items():
        handle = (logs / f"{name}.log").open("w")
        procs[name] = (subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env), handle)
    failed = []
    for name, (proc, handle) in procs.items():
        if proc.wait() != 0:
            failed.append(name)
        handle.close()
    if failed:
        tails = {n: (logs / f"{n}.log").read_text()[-800:] for n in failed}
        raise KdstoreError(f"training failed for {', '.join(failed)}; see {logs}: {tails}")


def _curve_summary(model_path: Path) -> dict[str, Any]:
    train_cfg = model_path.with_suffix(".files") / "train_config.yaml"
    return {"model": str(model_path), "curve_csv": str(model_path.with_suffix(".log.csv")),
            "train_config": str(train_cfg)}


def _train_seconds(curve_csv: str) -> tuple[float | None, int | None]:
    import csv

    path = Path(curve_csv)
    if not path.is_file():
        return None, None
    rows = list(csv.DictReader(path.open()))
    if not rows:
        return None, None
    return float(rows[-1]["seconds"]), int(float(rows[-1]["step"]))


def run_demo(workdir: str | Path, quick: bool = False, seed: int = 0, progress: bool = True,
             echo: Echo = print) -> Path:
    """Run every stage in ``workdir`` (re-runs reuse finished steps); returns the path of report.md.

    ``quick`` picks the few-minute plan (:class:`DemoPlan`); ``progress`` draws the corpus, dump and
    eval bars; ``echo`` receives one line per step. Raises ``KdstoreError`` when a step fails
    (training subprocess logs are in ``workdir/logs``).
    """
    from kdstore.corpus import prepare_demo

    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    plan = DemoPlan.for_mode(quick, seed)
    echo(f"[demo] workdir {work}; plan {asdict(plan)}")

    corpus = prepare_demo(work / "corpus", task="commands", hours=plan.hours, seed=seed, progress=progress,
                          variety=plan.voices, untranscribed_hours=plan.untranscribed_hours)
    echo(f"[demo] corpus: {dict(corpus.utterances)} utterances, {dict(corpus.hours)} h")

    teacher_path = work / "teacher.nemo"
    teacher_tokenizer = work / "teacher-tokenizer"

    def train_teacher() -> dict[str, Any]:
        committed = demo_teacher_dir()
        if (committed / "teacher.nemo").is_file():
            echo(f"[demo] teacher: the committed demo teacher {committed / 'teacher.nemo'} (see its README.md)")
            shutil.copyfile(committed / "teacher.nemo", teacher_path)
            scores = json.loads((committed / "teacher-scores.json").read_text())
            return {"model": str(teacher_path), "curve_csv": str(committed / "teacher-train.log.csv"),
                    "committed": True, "train_seconds": scores.get("train_seconds"), "steps": scores.get("steps")}
        echo(f"[demo] NOTE: no committed demo teacher: training one from scratch for {plan.teacher_steps} steps on "
             "this CPU; it will be WEAK (`kdstore demo --train-teacher` builds the committed one).")
        _run_parallel({"teacher": _train_command("tiny-teacher", teacher_path, corpus.train_manifest,
                                                 corpus.tokenizer_dir, plan.teacher_steps, plan, 2,
                                                 ["model.enable_kd=false"])}, work / "logs")
        return _curve_summary(teacher_path)

    teacher_info = _step(work, "teacher", train_teacher, echo)
    # Both students use the teacher's tokenizer, so they differ only in the KD term.
    teacher_tokenizer.mkdir(exist_ok=True)
    for name, payload in read_tokenizer_files(teacher_path).items():
        (teacher_tokenizer / name).write_bytes(payload)

    store_path = work / "teacher.zarr"

    def dump() -> dict[str, Any]:
        from kdstore.dump.run import DumpSettings, dump_teacher

        meta = dump_teacher(teacher_path, corpus.train_manifest, store_path,
                            DumpSettings(top_k=plan.top_k, band=plan.band, overwrite=True, progress=progress))
        return {"store": str(store_path), "counts": asdict(meta.counts)}

    _step(work, "dump", dump, echo)

    labelled_path = work / "untranscribed.zarr"

    def label() -> dict[str, Any]:
        from kdstore.dump.run import DumpSettings, dump_teacher
        from kdstore.evaluate.label_quality import label_quality, write_label_quality

        meta = dump_teacher(teacher_path, corpus.untranscribed_manifest, labelled_path,
                            DumpSettings(top_k=plan.top_k, band=plan.band, overwrite=True, progress=progress))
        quality = label_quality(labelled_path, corpus.untranscribed_refs)
        write_label_quality(quality, work / "label-quality")
        return {"store": str(labelled_path), "counts": asdict(meta.counts), "teacher_labelled": meta.labels.teacher_labelled,
                "label_wer": quality.wer, "table": quality.table(), "report": str(work / "label-quality" / "label-quality.md")}

    labelled = _step(work, "label", label, echo) if corpus.untranscribed_manifest is not None else None
    learn = bool(labelled) and plan.learn_from_untranscribed
    manifests = str(corpus.train_manifest) + (f",{corpus.untranscribed_manifest}" if learn else "")
    stores = ["--store", str(store_path)] + (["--store", str(labelled_path)] if learn else [])
    if learn and plan.pseudo_label_alpha is not None:
        stores.append(f"model.kd.pseudo_label_alpha={plan.pseudo_label_alpha}")

    kd_path, plain_path = work / "student-kd.nemo", work / "student-nokd.nemo"
    scratch_path = work / "student-scratch-kd.nemo"
    init = [f"model.init_from_teacher.path={teacher_path}"]

    def students() -> dict[str, Any]:
        _run_parallel({
            "student-kd": _train_command(plan.student_config, kd_path, manifests, None, plan.student_steps,
                                         plan, 1, [*stores, *init]),
            # the twin reads the same stores for the teacher's labels only: it differs from the KD student in the
            # KD term alone
            "student-nokd": _train_command(plan.student_config, plain_path, manifests, None,
                                           plan.student_steps, plan, 1, [*stores, "model.enable_kd=false", *init]),
        }, work / "logs")
        return {"kd": _curve_summary(kd_path), "nokd": _curve_summary(plain_path)}

    student_info = _step(work, "students", students, echo)

    def scratch() -> dict[str, Any]:
        _run_parallel({"student-scratch-kd": _train_command(plan.scratch_config, scratch_path, corpus.train_manifest,
                                                            None, plan.scratch_steps, plan, 2,
                                                            ["--store", str(store_path)])}, work / "logs")
        return {"scratch": _curve_summary(scratch_path)}

    if plan.scratch_steps:
        student_info = {**student_info, **_step(work, "scratch", scratch, echo)}

    models = {"teacher": teacher_path, "student (KD)": kd_path, "student (no KD)": plain_path}
    if plan.scratch_steps:
        models["small from scratch (KD)"] = scratch_path

    def evaluate() -> dict[str, Any]:
        from kdstore.evaluate.transcribe import evaluate_model, write_transcripts

        out = {}
        for name, path in models.items():
            result = evaluate_model(path, corpus.test_manifest, progress=progress)
            write_transcripts(result, work / "eval" / f"{path.stem}.jsonl")
            out[name] = result.summary()
        return out

    scores = _step(work, "eval", evaluate, echo)

    onnx_dir = work / "onnx"

    def export_and_transcribe() -> dict[str, Any]:
        from kdstore.evaluate.scoring import score
        from kdstore.export.run import export_onnx
        from kdstore.inputs.manifest import read_manifest
        from kdstore.runtime.sherpa import SherpaTransducer

        export_onnx(kd_path, onnx_dir, int8=True)
        entries = read_manifest(corpus.test_manifest)
        start = time.perf_counter()
        texts = SherpaTransducer(onnx_dir, int8=True).transcribe([e.audio_path for e in entries], progress=progress)
        seconds = time.perf_counter() - start
        scored = score([e.text for e in entries], texts)
        audio_seconds = sum(e.duration for e in entries)
        return {"onnx_dir": str(onnx_dir), "sherpa_int8": {"wer": scored.wer, "cer": scored.cer,
                                                            "utterances": len(entries),
                                                            "rtf": round(seconds / max(audio_seconds, 1e-9), 5)},
                "samples": [{"audio": str(e.audio_path), "reference": e.text, "onnx": t}
                            for e, t in list(zip(entries, texts))[: plan.transcribe_files]]}

    onnx_info = _step(work, "export", export_and_transcribe, echo)
    from kdstore.demo.report import write_report

    curves = {"teacher": teacher_info["curve_csv"], "student (KD)": student_info["kd"]["curve_csv"],
              "student (no KD)": student_info["nokd"]["curve_csv"]}
    if "scratch" in student_info:
        curves["small from scratch (KD)"] = student_info["scratch"]["curve_csv"]
    trained = {name: _train_seconds(path) for name, path in curves.items()}
    if teacher_info.get("committed"):
        trained["teacher"] = (teacher_info.get("train_seconds"), teacher_info.get("steps"))
    store_bytes = sum(f.stat().st_size for f in store_path.rglob("*") if f.is_file())
    report = write_report(work, f"Plan: {asdict(plan)}", corpus, scores, curves, trained, onnx_info, store_bytes,
                          committed_teacher=bool(teacher_info.get("committed")),
                          labelled={**labelled, "learned_from": learn} if labelled else None)
    echo(f"\nreport: {report}\nplot:   {work / 'report.png'}")
    return report
