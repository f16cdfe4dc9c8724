"""`kdstore label-quality`: how good the teacher's pseudo-labels are, by confidence bucket."""

from __future__ import annotations

import click

from kdstore.cli.common import friendly_errors, required_path
from kdstore.evaluate.normalize import NORMALIZERS


@click.command("label-quality")
@required_path("store", "A store written by dump-teacher (kdstore/2) with teacher labels.", exists=True)
@required_path("references", "Manifest of the same lines with their (withheld) transcripts.", exists=True,
               dir_okay=False)
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for label-quality.md, .json and .png (default: STORE.files/).")
@click.option("--buckets", default=5, show_default=True, type=click.IntRange(min=1),
              help="Equal-count confidence buckets.")
@click.option("--include-person", is_flag=True, help="Also score the person labels (transcripts) the store keeps.")
@click.option("--normalizer", type=click.Choice(NORMALIZERS), default="basic", show_default=True)
@friendly_errors
def command(store: str, references: str, out: str | None, buckets: int, include_person: bool, normalizer: str) -> None:
    """WER of STORE's teacher labels against REFERENCES, overall and by confidence bucket, and what each
    candidate --min-confidence would keep: choose the threshold from this table.

    \b
    Example (a sample of untranscribed audio whose text was withheld):
      kdstore dump-teacher --teacher teacher.nemo --manifest sample.json --out sample.zarr
      kdstore label-quality --store sample.zarr --references sample-with-text.json --out quality/
    """
    from pathlib import Path

    from kdstore.evaluate.label_quality import label_quality, write_label_quality

    quality = label_quality(store, references, buckets=buckets, include_person=include_person, normalizer=normalizer)
    click.echo(quality.table())
    md = write_label_quality(quality, out or Path(str(store).rstrip("/") + ".files"))
    if quality.without_reference:
        click.echo(f"\n{quality.without_reference} stored labels have no reference line and were not scored")
    click.echo(f"\nwrote {md} (plot: {md.with_suffix('.png')})")
