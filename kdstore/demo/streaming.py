"""``kdstore demo --streaming``: a streaming student distilled from the offline demo teacher.

After the offline demo's steps (reused when done: corpus, teacher, store, offline students, their scores),
two cache-aware students ``tiny-teacher-2l-streaming`` (the headline student made streaming: chunked
attention, causal convolutions and downsampling; started from the offline teacher's weights) train side by
side from the same store: one with KD, the teacher's targets ``delay_frames`` later
(:mod:`kdstore.distill.delay`), one without (its twin: same initialisation, batches, steps and seed). Both
are scored with NeMo's cache-aware streaming decode (WER, and word latency against the offline teacher's
word ends), the KD one is exported for sherpa-onnx's ``OnlineRecognizer`` (int8 too) and scored there,
and ``streaming-report.md`` + ``streaming.png`` set them beside the offline teacher and student.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kdstore.demo.pipeline import DemoPlan, Echo, _curve_summary, _run_parallel, _step, _train_command, run_demo


@dataclass(frozen=True)
class StreamingPlan:
    """The streaming step's settings: ``delay_frames`` chosen by bench/streaming.py (docs/benchmarks.md,
    "Streaming students: delay-aware KD": on seed 0, 4 frames 63.39% WER, 2 frames 65.85%, none 79.38%, no KD
    75.21%), the demo's default chunk (the config's first context)."""

    config: str = "tiny-teacher-2l-streaming"
    delay_frames: int = 4
    chunk_ms: int | None = None  # None: the model's default (560 ms: 480 ms look-ahead)


def run_streaming_demo(workdir: str | Path, quick: bool = False, seed: int = 0, progress: bool = True,
                       echo: Echo = print, streaming: StreamingPlan = StreamingPlan()) -> Path:
    """Run the offline demo (reusing finished steps), then the streaming steps; returns streaming-report.md.

    Raises ``KdstoreError`` when a step fails (training logs in ``workdir/logs``).
    """
    work = Path(workdir).resolve()
    run_demo(work, quick=quick, seed=seed, progress=progress, echo=echo)
    plan = DemoPlan.for_mode(quick, seed)
    teacher, store = work / "teacher.nemo", work / "teacher.zarr"
    train, test = work / "corpus" / "train.json", work / "corpus" / "test.json"
    kd_path, plain_path = work / "streaming-kd.nemo", work / "streaming-nokd.nemo"
    init = [f"model.init_from_teacher.path={teacher}", "--store", str(store)]
    echo(f"[demo] streaming plan {asdict(streaming)}")

    def students() -> dict[str, Any]:
        _run_parallel({
            "streaming-kd": _train_command(streaming.config, kd_path, train, None, plan.student_steps, plan, 1,
                                           [*init, f"model.kd.delay_frames={streaming.delay_frames}"]),
            "streaming-nokd": _train_command(streaming.config, plain_path, train, None, plan.student_steps, plan, 1,
                                             [*init, "model.enable_kd=false"]),
        }, work / "logs")
        return {"kd": _curve_summary(kd_path), "nokd": _curve_summary(plain_path)}

    trained = _step(work, "streaming-students", students, echo)

    def evaluate() -> dict[str, Any]:
        from kdstore.evaluate.streaming import evaluate_streaming
        from kdstore.evaluate.transcribe import write_transcripts

        out = {}
        for name, path in (("streaming student (KD)", kd_path), ("streaming student (no KD)", plain_path)):
            result = evaluate_streaming(path, test, chunk_ms=streaming.chunk_ms, latency_reference=teacher,
                                        progress=progress)
            write_transcripts(result, work / "eval" / f"{path.stem}.jsonl")
            out[name] = result.summary()
        return out

    scores = _step(work, "streaming-eval", evaluate, echo)

    def export_and_transcribe() -> dict[str, Any]:
        from kdstore.evaluate.scoring import score
        from kdstore.evaluate.streaming import evaluate_streaming
        from kdstore.export.streaming import export_streaming
        from kdstore.inputs.manifest import read_manifest
        from kdstore.runtime.sherpa_online import SherpaOnlineTransducer

        out_dir = work / "onnx-streaming"
        export = export_streaming(kd_path, out_dir, chunk_ms=[streaming.chunk_ms] if streaming.chunk_ms else None,
                                  int8=True)
        entries = read_manifest(test)
        # NeMo's streaming decode of the very stream sherpa-onnx decodes: the utterance and the silence that
        # completes its last chunk (sherpa-onnx runs full chunks only; kdstore.nemo.streaming.complete_with_silence)
        nemo_texts = evaluate_streaming(kd_path, test, chunk_ms=streaming.chunk_ms, complete_last_chunk=True).hypotheses
        report: dict[str, Any] = {"onnx_dir": str(out_dir), "files": [str(p) for p in export.files]}
        # fp32 and int8 as `kdstore transcribe --streaming` feeds them (on NeMo's chunk grid), and fp32 on the raw
        # audio, as an app that hands sherpa-onnx the microphone's samples would (kdstore.runtime.sherpa_online)
        for variant, int8, align in (("fp32", False, True), ("int8", True, True), ("fp32_raw", False, False)):
            start = time.perf_counter()
            texts = SherpaOnlineTransducer(out_dir, chunk_ms=streaming.chunk_ms, int8=int8, align=align).transcribe(
                [e.audio_path for e in entries], progress=progress)
            seconds = time.perf_counter() - start
            scored = score([e.text for e in entries], texts)
            same = sum(a.strip() == b.strip() for a, b in zip(texts, nemo_texts, strict=True))
            report[f"sherpa_online_{variant}"] = {
                "wer": scored.wer, "cer": scored.cer, "utterances": len(entries),
                "same_as_nemo_streaming": same, "non_empty": sum(bool(t.strip()) for t in texts),
                "rtf": round(seconds / max(sum(e.duration for e in entries), 1e-9), 5)}
        return report

    onnx = _step(work, "streaming-export", export_and_transcribe, echo)
    from kdstore.demo.report import write_streaming_report

    offline = json.loads((work / "steps" / "eval.json").read_text())["result"]
    path = write_streaming_report(work, streaming, offline, scores, trained, onnx, quick=quick)
    echo(f"\nstreaming report: {path}\nplot:             {work / 'streaming.png'}")
    return path
