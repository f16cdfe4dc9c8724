"""`kdstore eval`: WER/CER of a student (and optionally its teacher) on a manifest."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kdstore.cli.common import friendly_errors, quiet_nemo, set_threads
from kdstore.evaluate.normalize import NORMALIZERS


@click.command("eval")
@click.option("--model", type=click.Path(exists=True, dir_okay=False), required=True, help="Model .nemo to score.")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--teacher", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Also score this model and compare: accuracy retention, bootstrap CI of the WER difference.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for report.md, eval.png, per-utterance JSONL and sclite trn files.")
@click.option("--normalizer", type=click.Choice(NORMALIZERS), default="basic", show_default=True,
              help="Text normalisation before scoring (see README).")
@click.option("--bootstrap-samples", default=2000, show_default=True, type=click.IntRange(min=100))
@click.option("--seed", default=0, show_default=True, help="Seed of the bootstrap resampling.")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--threads", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@friendly_errors
def command(model, manifest, teacher, out, normalizer, bootstrap_samples, seed, batch_size, threads, as_json):
    """Greedy-decode MANIFEST with MODEL (and TEACHER) and print WER, CER, errors by type and RTF.

    \b
    Example:
      kdstore eval --model student.nemo --teacher teacher.nemo --manifest test.json --out eval/
    """
    quiet_nemo()
    set_threads(threads)
    from kdstore.evaluate.report import comparison_lines, summary_table, write_report
    from kdstore.evaluate.transcribe import compare, evaluate_model

    results = {"model": evaluate_model(model, manifest, batch_size, normalizer=normalizer)}
    if teacher:
        results["teacher"] = evaluate_model(teacher, manifest, batch_size, normalizer=normalizer)
    comparison = compare(results["model"], results["teacher"], bootstrap_samples, seed) if teacher else None
    report = write_report(results, comparison, out) if out else None
    if as_json:
        data = {role: r.summary() for role, r in results.items()}
        if comparison:
            data["model"]["vs_teacher"] = comparison.to_dict()
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(summary_table(results))
    for line in comparison_lines(comparison) if comparison else []:
        click.echo(line.replace("**", ""))
    if report:
        click.echo(f"wrote {report} and {Path(out) / 'eval.png'}")
