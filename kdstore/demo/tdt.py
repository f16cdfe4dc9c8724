"""``kdstore demo --tdt``: distil the TDT demo teacher (Token-and-Duration Transducer) into TDT and RNN-T students.

After the offline demo's steps (reused when done: the corpus and its test split), the committed TDT demo
teacher (``kdstore/assets/demo_teacher_tdt``: ``tiny-teacher-tdt``, started from the RNN-T demo teacher and
trained with kdstore's CPU TDT loss on other recordings than the students' split; ``kdstore demo
--train-teacher --tdt --seed 1``) is dumped over the training
split into a TDT store (token top-k and the duration distribution per node, band ``plan.band``). Three
students train side by side from it, all started from the TDT teacher's weights: the TDT headline student
``tiny-teacher-2l-tdt`` with KD on tokens and durations, its no-KD twin (same initialisation, batches, steps
and seed), and the RNN-T student ``tiny-teacher-2l`` with token KD only (what an RNN-T student can take from a
TDT teacher). All are scored on the test split with NeMo's decoding; the TDT KD student is exported in
sherpa-onnx's layout (int8 too) and scored there, its transcripts compared with NeMo's; ``tdt-report.md`` and
``tdt.png`` hold the result.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kdstore.demo.pipeline import DemoPlan, Echo, _curve_summary, _run_parallel, _step, _train_command, run_demo
from kdstore.errors import KdstoreError

TDT_TEACHER = "TDT teacher"
TDT_KD = "TDT student (KD: tokens + durations)"
TDT_TWIN = "TDT student (no KD)"
RNNT_KD = "RNN-T student (KD: tokens)"


@dataclass(frozen=True)
class TDTPlan:
    """The TDT step's settings: the student configs and the duration KD weight (``model.kd.duration_weight``)."""

    config: str = "tiny-teacher-2l-tdt"
    rnnt_config: str = "tiny-teacher-2l"
    duration_weight: float = 1.0


def run_tdt_demo(workdir: str | Path, quick: bool = False, seed: int = 0, progress: bool = True,
                 echo: Echo = print, tdt: TDTPlan = TDTPlan()) -> Path:
    """Run the offline demo (reusing finished steps), then the TDT steps; returns ``tdt-report.md``.

    Raises ``KdstoreError`` when the TDT demo teacher is not committed or a step fails (training logs in
    ``workdir/logs``).
    """
    from kdstore.assets import demo_teacher_dir
    from kdstore.nemo.checkpoint import read_tokenizer_files

    work = Path(workdir).resolve()
    run_demo(work, quick=quick, seed=seed, progress=progress, echo=echo)
    plan = DemoPlan.for_mode(quick, seed)
    committed = demo_teacher_dir("tdt") / "teacher.nemo"
    if not committed.is_file():
        raise KdstoreError(f"{committed}: no committed TDT demo teacher; build one with kdstore demo --train-teacher "
                           "--tdt --workdir tdt-run and copy tdt-run/demo_teacher/* there")
    teacher = work / "tdt-teacher.nemo"
    shutil.copyfile(committed, teacher)
    tokenizer = work / "tdt-teacher-tokenizer"
    tokenizer.mkdir(exist_ok=True)
    for name, payload in read_tokenizer_files(teacher).items():
        (tokenizer / name).write_bytes(payload)
    train, test = work / "corpus" / "train.json", work / "corpus" / "test.json"
    store = work / "tdt-teacher.zarr"
    paths = {TDT_KD: work / "tdt-kd.nemo", TDT_TWIN: work / "tdt-nokd.nemo", RNNT_KD: work / "rnnt-from-tdt.nemo"}
    echo(f"[demo] TDT plan {asdict(tdt)}")

    def dump() -> dict[str, Any]:
        from kdstore.dump.run import DumpSettings, dump_teacher

        meta = dump_teacher(teacher, train, store, DumpSettings(top_k=plan.top_k, band=plan.band, overwrite=True,
                                                                progress=progress))
        return {"store": str(store), "counts": asdict(meta.counts)}

    _step(work, "tdt-dump", dump, echo)
    init = [f"model.init_from_teacher.path={teacher}", "--store", str(store)]

    def students() -> dict[str, Any]:
        _run_parallel({
            "tdt-kd": _train_command(tdt.config, paths[TDT_KD], train, tokenizer, plan.student_steps, plan, 1,
                                     [*init, f"model.kd.duration_weight={tdt.duration_weight}"]),
            "tdt-nokd": _train_command(tdt.config, paths[TDT_TWIN], train, tokenizer, plan.student_steps, plan, 1,
                                       [*init, "model.enable_kd=false"]),
        }, work / "logs")
        _run_parallel({"rnnt-from-tdt": _train_command(tdt.rnnt_config, paths[RNNT_KD], train, tokenizer,
                                                       plan.student_steps, plan, 2, init)}, work / "logs")
        return {name: _curve_summary(path) for name, path in paths.items()}

    trained = _step(work, "tdt-students", students, echo)

    def evaluate() -> dict[str, Any]:
        from kdstore.evaluate.transcribe import evaluate_model, write_transcripts

        out = {}
        for name, path in {TDT_TEACHER: teacher, **paths}.items():
            result = evaluate_model(path, test, progress=progress)
            write_transcripts(result, work / "eval" / f"{path.stem}.jsonl")
            out[name] = result.summary()
        return out

    scores = _step(work, "tdt-eval", evaluate, echo)

    def export_and_transcribe() -> dict[str, Any]:
        from kdstore.evaluate.scoring import score
        from kdstore.export.run import export_onnx
        from kdstore.inputs.manifest import read_manifest
        from kdstore.runtime.sherpa import SherpaTransducer

        out_dir = work / "onnx-tdt"
        export_onnx(paths[TDT_KD], out_dir, int8=True)
        entries = read_manifest(test)
        nemo_texts = [json.loads(line)["hypothesis"] for line in
                      (work / "eval" / f"{paths[TDT_KD].stem}.jsonl").read_text().splitlines() if line.strip()]
        report: dict[str, Any] = {"onnx_dir": str(out_dir)}
        for variant, int8 in (("fp32", False), ("int8", True)):
            start = time.perf_counter()
            texts = SherpaTransducer(out_dir, int8=int8).transcribe([e.audio_path for e in entries], progress=progress)
            seconds = time.perf_counter() - start
            scored = score([e.text for e in entries], texts)
            report[f"sherpa_{variant}"] = {
                "wer": scored.wer, "cer": scored.cer, "utterances": len(entries),
                "same_as_nemo": sum(a.strip() == b.strip() for a, b in zip(texts, nemo_texts, strict=True)),
                "non_empty": sum(bool(t.strip()) for t in texts),
                "rtf": round(seconds / max(sum(e.duration for e in entries), 1e-9), 5)}
        return report

    onnx = _step(work, "tdt-export", export_and_transcribe, echo)
    from kdstore.demo.report import write_tdt_report

    path = write_tdt_report(work, tdt, scores, trained, onnx, quick=quick)
    echo(f"\nTDT report: {path}\nplot:       {work / 'tdt.png'}")
    return path
