"""``kdstore eval`` as one call: score a model (and its teacher), compare them, write the report.

The CLI parses its options into :func:`run_eval` and renders the :class:`EvalRun` it returns
(:func:`kdstore.evaluate.report.console_summary`, or :meth:`EvalRun.to_dict` as JSON).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdstore.errors import ConfigError
from kdstore.evaluate.compare import Comparison, compare
from kdstore.evaluate.report import write_report
from kdstore.evaluate.transcribe import EvalResult, evaluate_model


@dataclass(frozen=True, kw_only=True)
class EvalRun:
    """What one ``kdstore eval`` produced."""

    results: dict[str, EvalResult]  # "model", and "teacher" when one was given (in that order)
    comparison: Comparison | None  # the model against the teacher, when one was given
    report: Path | None  # report.md, when an output folder was given

    def to_dict(self) -> dict[str, Any]:
        """``{role: summary}``; with a teacher, ``model.vs_teacher`` holds the comparison."""
        data = {role: result.summary() for role, result in self.results.items()}
        if self.comparison is not None:
            data["model"]["vs_teacher"] = self.comparison.to_dict()
        return data


def run_eval(model: str | Path, manifest: str | Path, teacher: str | Path | None = None,
             out_dir: str | Path | None = None, *, normalizer: str = "basic", batch_size: int = 16,
             bootstrap_samples: int = 2000, seed: int = 0, progress: bool = False, streaming: bool = False,
             chunk_ms: float | None = None, latency_reference: str | Path | None = None,
             complete_last_chunk: bool = False) -> EvalRun:
    """Greedy-decode ``manifest`` with ``model`` (and ``teacher``), compare, and write ``out_dir``.

    ``normalizer`` names a text normaliser (:data:`kdstore.evaluate.normalize.NORMALIZERS`);
    ``bootstrap_samples`` and ``seed`` drive the paired bootstrap of the WER difference;
    ``out_dir`` gets report.md, eval.png, per-utterance JSONL and sclite trn files
    (:func:`kdstore.evaluate.report.write_report`). ``progress`` draws a bar per model.
    ``streaming``: decode ``model`` with NeMo's cache-aware streaming in chunks of ``chunk_ms`` ms (None:
    its default) and measure word latency against ``latency_reference`` (default: ``teacher``); the
    teacher is decoded offline (:mod:`kdstore.evaluate.streaming`); ``complete_last_chunk``: each utterance is
    followed by the silence that fills its last chunk, the stream sherpa-onnx's online recognizer decodes.
    Raises ``KdstoreError`` subclasses for unreadable models, manifests or audio, ``ConfigError`` for
    ``chunk_ms``/``latency_reference`` without ``streaming``, ``StreamingError`` for a model that does not
    stream or an untrained chunk length.
    """
    if not streaming and (chunk_ms is not None or latency_reference is not None or complete_last_chunk):
        raise ConfigError("--chunk-ms, --latency-reference and --complete-last-chunk apply to streaming decoding: "
                          "add --streaming")
    if streaming:
        from kdstore.evaluate.streaming import evaluate_streaming

        results: dict[str, EvalResult] = {"model": evaluate_streaming(
            model, manifest, chunk_ms, latency_reference if latency_reference is not None else teacher, batch_size,
            progress=progress, normalizer=normalizer, complete_last_chunk=complete_last_chunk)}
    else:
        results = {"model": evaluate_model(model, manifest, batch_size, progress=progress, normalizer=normalizer)}
    if teacher is not None:
        results["teacher"] = evaluate_model(teacher, manifest, batch_size, progress=progress, normalizer=normalizer)
    comparison = compare(results["model"], results["teacher"], bootstrap_samples, seed) if teacher else None
    report = write_report(results, comparison, out_dir) if out_dir is not None else None
    return EvalRun(results=results, comparison=comparison, report=report)
