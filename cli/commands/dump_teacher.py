"""`kdstore dump-teacher`: stage 1, the teacher's top-k lattice to a Zarr store."""

from __future__ import annotations

import click

from kdstore.cli.common import friendly_errors, quiet_nemo, set_threads


@click.command("dump-teacher")
@click.option("--teacher", type=click.Path(exists=True, dir_okay=False), required=True, help="Teacher .nemo (RNNT or hybrid RNNT-CTC).")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), required=True, help="NeMo JSON-lines manifest.")
@click.option("--out", type=click.Path(), required=True, help="Output store (a .zarr folder).")
@click.option("--top-k", default=8, show_default=True, help="Log-probs kept per lattice node.")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--dtype", "value_dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Value encoding; float32 for exactness tests.")
@click.option("--device", default="cpu", show_default=True, help="Torch device for the teacher (cpu, cuda).")
@click.option("--threads", default=1, show_default=True, help="Torch CPU threads.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@friendly_errors
def command(teacher, manifest, out, top_k, batch_size, value_dtype, device, threads, overwrite, progress):
    """Run TEACHER once over MANIFEST (teacher-forced on the transcripts) and write OUT.

    \b
    Example:
      kdstore dump-teacher --teacher teacher.nemo --manifest train.json --out teacher.zarr --top-k 8
    """
    quiet_nemo()
    set_threads(threads)
    from kdstore.dump import DumpSettings, dump_teacher

    settings = DumpSettings(top_k=top_k, batch_size=batch_size, value_dtype=value_dtype, device=device,
                            overwrite=overwrite, progress=progress)
    meta = dump_teacher(teacher, manifest, out, settings)
    c = meta.counts
    click.echo(f"wrote {out}: {c.utterances} utterances, {c.hours:.3f} h, {c.nodes} nodes, top-{meta.top_k} {meta.value_dtype}")
