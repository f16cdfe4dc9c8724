"""`kdstore eval`: WER/CER of a student (and optionally its teacher) on a manifest."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kdstore.cli.common import friendly_errors, quiet_nemo, set_threads


@click.command("eval")
@click.option("--model", type=click.Path(exists=True, dir_okay=False), required=True, help="Model .nemo to score.")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--teacher", type=click.Path(exists=True, dir_okay=False), default=None, help="Also score this model, side by side.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder for per-utterance JSONL transcripts.")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--threads", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@friendly_errors
def command(model, manifest, teacher, out, batch_size, threads, as_json):
    """Greedy-decode MANIFEST with MODEL (and TEACHER) and print WER and CER.

    \b
    Example:
      kdstore eval --model student.nemo --teacher teacher.nemo --manifest test.json --out eval/
    """
    quiet_nemo()
    set_threads(threads)
    from kdstore.evaluate import evaluate_model, write_transcripts

    results = {"model": evaluate_model(model, manifest, batch_size)}
    if teacher:
        results["teacher"] = evaluate_model(teacher, manifest, batch_size)
    if out:
        for role, result in results.items():
            write_transcripts(result, Path(out) / f"{role}.jsonl")
    if as_json:
        click.echo(json.dumps({role: r.summary() for role, r in results.items()}, indent=2))
        return
    for role, r in results.items():
        click.echo(f"{role:>8}: WER {100 * r.wer:6.2f}%  CER {100 * r.cer:6.2f}%  "
                   f"({r.utterances} utts, {r.params / 1e6:.2f}M params)  {r.model}")
