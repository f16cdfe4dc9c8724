"""``kdstore prepare-librispeech``: NeMo manifests for a LibriSpeech folder (thin wrapper)."""

from __future__ import annotations

import click

from kdstore.cli.common import friendly_errors
from kdstore.corpus.librispeech import SUBSETS


@click.command(
    "prepare-librispeech",
    epilog="""\b
Example:
  kdstore prepare-librispeech /data/LibriSpeech manifests --subset dev-clean --subset test-clean
  # -> manifests/dev-clean.json, manifests/test-clean.json""",
)
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--subset",
    "subsets",
    multiple=True,
    type=click.Choice(SUBSETS),
    help="Subset to convert (repeatable). Default: every standard subset found under ROOT.",
)
@friendly_errors
def command(root: str, out: str, subsets: tuple[str, ...]) -> None:
    """Write one NeMo manifest per LibriSpeech subset found under ROOT (lowercase text)."""
    from kdstore.corpus import prepare_librispeech

    manifests = prepare_librispeech(root, out, subsets=list(subsets) or None)
    for subset, path in manifests.items():
        with open(path, encoding="utf-8") as handle:
            count = sum(1 for _ in handle)
        click.echo(f"{subset:16s} {count:7d} utterances  {path}")
