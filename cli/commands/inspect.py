"""`kdstore inspect`: what a store holds, and how much teacher mass its top-k keeps."""

from __future__ import annotations

import json

import click

from kdstore.cli.common import friendly_errors, required_path


@click.command("inspect")
@required_path("store", "Store to summarise (.zarr folder, .h5 file or a Zarr URL).", positional=True)
@click.option("--verify", is_flag=True, help="Check every invariant of the format; exit non-zero on the first broken one.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@friendly_errors
def command(store: str, verify: bool, as_json: bool) -> None:
    """Summarise STORE: utterances, hours, nodes, bytes per node, mean top-k mass; for a kdstore/2+
    store also its labels: how many are a person's (the transcript) and how many the teacher's, the
    teacher's search and confidence (median, min; nats per token), and what --min-confidence left out.
    One utterance's label, source and confidence: StoreReader(STORE).label(i) in Python.

    \b
    Example:
      kdstore inspect --store teacher.zarr --verify
    """
    from kdstore.store.summary import summarize
    from kdstore.store.verify import is_unfinished, verify_store, verify_unfinished

    if verify and is_unfinished(store):
        totals = verify_unfinished(store)
        click.echo(f"unfinished dump: {totals['utterances']} utterances ({totals['nodes']} nodes) committed in "
                   f"{totals['parts']} part(s), verified; continue it with dump-teacher --resume")
        return
    summary = summarize(store)
    if verify:
        summary["verified"] = verify_store(store)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        click.echo(f"{key:>22}: {value}")
