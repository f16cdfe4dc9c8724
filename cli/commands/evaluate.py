"""`kdstore eval`: WER/CER of a student (and optionally its teacher) on a manifest."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kdstore.cli.common import friendly_errors, progress_option, quiet_nemo, required_path, set_threads
from kdstore.evaluate.normalize import NORMALIZERS


@click.command("eval")
@required_path("model", "Model .nemo to score: any NeMo transducer (RNN-T, hybrid RNN-T/CTC or TDT; SentencePiece or "
               "character vocabulary), decoded greedily by NeMo.", exists=True, dir_okay=False)
@required_path("manifest", "NeMo JSON-lines manifest (the test set).", exists=True, dir_okay=False)
@click.option("--teacher", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Also score this model and compare: accuracy retention, bootstrap CI of the WER difference.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for report.md, eval.png, per-utterance JSONL and sclite trn files.")
@click.option("--normalizer", type=click.Choice(NORMALIZERS), default="basic", show_default=True,
              help="Text normalisation before scoring (see README).")
@click.option("--bootstrap-samples", default=2000, show_default=True, type=click.IntRange(min=100))
@click.option("--seed", default=0, show_default=True, help="Seed of the bootstrap resampling.")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--streaming", is_flag=True,
              help="Decode MODEL with NeMo's cache-aware streaming, chunk by chunk as a live source would (a "
                   "streaming config, e.g. tiny-streaming); report WER and word latency. A teacher is decoded offline.")
@click.option("--chunk-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --streaming: chunk length in ms, one the model was trained for ((right context + 1) x 80 "
                   "ms: 560, 1120, 160 or 80 for the streaming configs); default: the model's first.")
@click.option("--latency-reference", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --streaming: offline .nemo whose NeMo word timestamps give each word's end in the audio "
                   "(default: --teacher); latency = when the streamed word appeared - that end.")
@click.option("--complete-last-chunk", is_flag=True,
              help="With --streaming: decode each utterance followed by the silence that fills its last chunk, the "
                   "stream `transcribe --streaming` hands sherpa-onnx (it decodes full chunks only): compare with "
                   "sherpa-onnx's transcripts on this one.")
@click.option("--threads", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@progress_option
@friendly_errors
def command(model: str, manifest: str, teacher: str | None, out: str | None, normalizer: str, bootstrap_samples: int,
            seed: int, batch_size: int, streaming: bool, chunk_ms: float | None, latency_reference: str | None,
            complete_last_chunk: bool, threads: int, as_json: bool, progress: bool) -> None:
    """Greedy-decode MANIFEST with MODEL (and TEACHER) and print WER, CER, errors by type and RTF.

    \b
    Example:
      kdstore eval --model student.nemo --teacher teacher.nemo --manifest test.json --out eval/
      kdstore eval --model streaming.nemo --streaming --chunk-ms 560 --latency-reference teacher.nemo \\
          --manifest test.json
    """
    quiet_nemo()
    set_threads(threads)
    from kdstore.evaluate.report import console_summary
    from kdstore.evaluate.run import run_eval

    run = run_eval(model, manifest, teacher, out, normalizer=normalizer, batch_size=batch_size,
                   bootstrap_samples=bootstrap_samples, seed=seed, progress=progress, streaming=streaming,
                   chunk_ms=chunk_ms, latency_reference=latency_reference, complete_last_chunk=complete_last_chunk)
    if as_json:
        click.echo(json.dumps(run.to_dict(), indent=2))
        return
    click.echo(console_summary(run.results, run.comparison))
    if run.report is not None:
        click.echo(f"wrote {run.report} and {Path(out) / 'eval.png'}")
