"""``kdstore prepare-librispeech``: NeMo manifests for a LibriSpeech folder (thin wrapper)."""

from __future__ import annotations

import click

from kdstore.cli.common import friendly_errors, progress_option, required_path
from kdstore.corpus.librispeech import COMBINATIONS, SKIPPED_FILE, SUBSETS, subset_names
from kdstore.errors import ManifestError


def _split_subsets(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return subset_names(values) or ()
    except ManifestError as err:  # a usage error: exit 2 with the option named
        raise click.BadParameter(str(err)) from None


@click.command(
    "prepare-librispeech",
    epilog=f"""\b
Layout read (as the OpenSLR archives extract):
  ROOT/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
  ROOT/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
ROOT may be the LibriSpeech folder or the folder that contains it.

\b
Writes OUT/<subset>.json per subset ({", ".join(SUBSETS[:3])},
  {", ".join(SUBSETS[3:])}),
OUT/train.json with --combine train (the train-* subsets converted, concatenated),
OUT/{SKIPPED_FILE} with --skip-bad. Rows are sorted by subset, speaker, chapter
and utterance; text is lower-cased, apostrophes kept; files are replaced atomically.

\b
Examples:
  kdstore prepare-librispeech --root /data/LibriSpeech --out manifests --subsets dev-clean,test-clean
  # -> manifests/dev-clean.json, manifests/test-clean.json
  kdstore prepare-librispeech --root /data --out manifests --combine train -j 16 --skip-bad
  # -> one manifest per subset found, manifests/train.json, manifests/{SKIPPED_FILE}""",
)
@required_path("root", "The LibriSpeech folder, or the folder that contains it.", positional=True, exists=True,
               file_okay=False)
@required_path("out", "Folder for the manifests (created).", positional=True, file_okay=False)
@click.option(
    "--subsets",
    "--subset",
    "subsets",
    multiple=True,
    callback=_split_subsets,
    metavar="NAME[,NAME...]",
    help="Subsets to convert (repeatable or comma-separated); each must be present. "
    "Default: every standard subset found under ROOT.",
)
@click.option(
    "--combine",
    type=click.Choice(sorted(COMBINATIONS)),
    default=None,
    help="Also write OUT/train.json: every train-* subset converted, concatenated in subset order.",
)
@click.option(
    "-j", "--num-jobs", type=click.IntRange(min=1), default=8, show_default=True,
    help="Threads reading FLAC headers (I/O bound: more than the core count helps on network disks).",
)
@click.option(
    "--skip-bad",
    is_flag=True,
    help=f"Leave out bad entries (malformed transcript line, missing FLAC or transcript line, unreadable "
    f"FLAC) and list them in OUT/{SKIPPED_FILE} instead of stopping at the first one.",
)
@progress_option
@friendly_errors
def command(
    root: str,
    out: str,
    subsets: tuple[str, ...],
    combine: str | None,
    num_jobs: int,
    skip_bad: bool,
    progress: bool,
) -> None:
    """Write NeMo manifests for the LibriSpeech subsets found under ROOT into OUT.

    Durations come from the FLAC headers (nothing is decoded). A bad entry stops the run with the
    file (and transcript line) to fix, before anything is written, unless --skip-bad is given.
    """
    from kdstore.corpus import prepare_librispeech

    result = prepare_librispeech(
        root,
        out,
        subsets=list(subsets) or None,
        combine=combine,
        num_jobs=num_jobs,
        skip_bad=skip_bad,
        progress=progress,
    )
    for name, path in result.manifests.items():
        members = f"  ({' + '.join(result.combined[name])})" if name in result.combined else ""
        click.echo(f"{name:16s} {result.utterances[name]:7d} utterances {result.hours[name]:8.2f} h  {path}{members}")
    for name, members in result.combined.items():
        if name not in result.manifests:
            click.echo(f"{name:16s} not written: every entry of its subsets was skipped")
    if result.skipped_path is not None:
        click.echo(f"skipped {len(result.skipped)} bad entr{'y' if len(result.skipped) == 1 else 'ies'}, "
                   f"listed in {result.skipped_path}")
