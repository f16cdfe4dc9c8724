"""`kdstore dump-teacher`: stage 1, the teacher's top-k lattice to a Zarr store."""

from __future__ import annotations

import click

from kdstore.cli.common import friendly_errors, progress_option, quiet_nemo, required_path, set_threads


@click.command("dump-teacher")
@required_path("teacher", "Teacher .nemo: a NeMo RNN-T, TDT or hybrid RNN-T/CTC or TDT/CTC model with a SentencePiece "
               "tokenizer (EncDecRNNTBPEModel, EncDecHybridRNNTCTCBPEModel); TDT teachers write kdstore/3 stores "
               "(token top-k and duration distribution per node); character-vocabulary models are refused.",
               exists=True, dir_okay=False)
@required_path("manifest", "NeMo JSON-lines manifest; lines without 'text' are labelled by the teacher.",
               exists=True, dir_okay=False)
@required_path("out", "Output store (a .zarr folder).")
@click.option("--top-k", default=8, show_default=True, help="Log-probs kept per lattice node.")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--dtype", "value_dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Value encoding; float32 for exactness tests.")
@click.option("--band", default="6", show_default=True,
              help="Lattice layout: a width W keeps W label positions per frame around the teacher's alignment "
                   "(k2-style pruning; ~(U+1)/W times smaller; 6 was at least as good as the full lattice in "
                   "the study), or 'full'.")
@click.option("--ctc/--no-ctc", default=None,
              help="Also store the CTC head's top-k log-probs per frame. Default: yes when the teacher is a "
                   "hybrid RNNT-CTC model.")
@click.option("--device", default="cpu", show_default=True, help="Torch device for the teacher (cpu, cuda).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="Teacher forward precision (bf16 autocast, for GPUs).")
@click.option("--chunk-rows", type=int, default=None, help="Rows per chunk (default: ~1 MB of log-probs).")
@click.option("--threads", default=1, show_default=True, help="Torch CPU threads.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@click.option("--resume", is_flag=True, help="Continue an interrupted dump (same teacher, manifest and options).")
@click.option("--pseudo-label", is_flag=True,
              help="The teacher labels every line, replacing given text (default: only lines without text).")
@click.option("--beam-size", default=1, show_default=True, type=click.IntRange(min=1),
              help="The teacher's search for its labels: 1 = NeMo greedy batch, > 1 = NeMo beam search.")
@click.option("--min-confidence", type=float, default=None,
              help="Leave out teacher labels whose mean log-prob per token (nats, <= 0) is below this; they are "
                   "listed with their label and score in OUT.skipped.jsonl. Choose it with `kdstore label-quality`.")
@click.option("--skip-bad", is_flag=True,
              help="Skip unusable manifest lines (listed with reasons in OUT.skipped.jsonl) instead of stopping.")
@progress_option
@friendly_errors
def command(teacher, manifest, out, top_k, batch_size, value_dtype, band, ctc, device, precision, chunk_rows, threads,
            overwrite, resume, pseudo_label, beam_size, min_confidence, skip_bad, progress):
    """Run TEACHER once over MANIFEST (teacher-forced on the transcripts) and write OUT.

    Lines without text (untranscribed audio) are first decoded by the teacher; its hypothesis is then
    the label the lattice is forced on, stored with its confidence and provenance (kdstore/2).

    \b
    Example:
      kdstore dump-teacher --teacher teacher.nemo --manifest train.json --out teacher.zarr --top-k 8 --band 6
    \b
    Untranscribed audio (a manifest without "text"), weak labels left out (the threshold from
    the table of kdstore label-quality on a sample whose text you know):
      kdstore dump-teacher --teacher teacher.nemo --manifest unlabelled.json --out unlabelled.zarr --min-confidence -0.04
    \b
    Several processes (one part each, committed by rank 0):
      torchrun --nproc-per-node 4 $(which kdstore) dump-teacher ... --device cuda
    """
    quiet_nemo()
    set_threads(threads)
    from kdstore.dump.run import DumpSettings, dump_teacher

    if band != "full" and not band.isdigit():
        raise click.BadParameter("expected 'full' or a positive integer width", param_hint="--band")
    settings = DumpSettings(top_k=top_k, batch_size=batch_size, value_dtype=value_dtype,
                            band=None if band == "full" else int(band), ctc=ctc, device=device, precision=precision,
                            overwrite=overwrite, resume=resume, skip_bad=skip_bad, progress=progress,
                            chunk_rows=chunk_rows, pseudo_label=pseudo_label, beam_size=beam_size,
                            min_confidence=min_confidence)
    meta = dump_teacher(teacher, manifest, out, settings)
    if meta is None:  # a non-committing rank under torchrun
        return
    c = meta.counts
    layout = "full lattice" if meta.band_width is None else f"band W={meta.band_width}"
    layout += f", CTC top-{meta.ctc_top_k} per frame" if meta.ctc_top_k else ", no CTC rows"
    click.echo(f"wrote {out}: {c.utterances} utterances, {c.hours:.3f} h, {c.nodes} nodes, top-{meta.top_k} "
               f"{meta.value_dtype}, {layout}")
    labels = meta.labels
    if labels is not None and (labels.teacher_labelled or labels.dropped_low_confidence or labels.dropped_empty):
        click.echo(f"labelled by the teacher ({labels.search}): {labels.teacher_labelled} utterances; left out: "
                   f"{labels.dropped_low_confidence} below --min-confidence, {labels.dropped_empty} with no words"
                   + (f" (listed in {out}.skipped.jsonl; train-student leaves them out too)"
                      if labels.dropped_low_confidence or labels.dropped_empty else ""))
    if meta.extra.get("skipped_lines"):
        click.echo(f"skipped {meta.extra['skipped_lines']} bad manifest lines: see {meta.extra['skipped_file']}")
