"""``kdstore prepare-demo``: synthesise the demo speech corpus (thin wrapper over the library)."""

from __future__ import annotations

import logging

import click

from kdstore.cli.common import friendly_errors, progress_option, required_path


@click.command(
    "prepare-demo",
    epilog="""\b
Example:
  kdstore prepare-demo --out demo-data --task commands --hours 1 -j 2
  # -> demo-data/{train,val,test}.json, demo-data/tokenizer/, demo-data/corpus.json""",
)
@required_path("out", "Folder for the corpus (created).", positional=True, file_okay=False)
@click.option("--task", type=click.Choice(["commands", "open"]), default="commands", show_default=True,
              help="Voice-command grammar (learnable on CPU) or open sentences from Debian texts.")
@click.option("--hours", type=float, default=1.0, show_default=True, help="Total audio to synthesise.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same corpus.")
@click.option("--vocab-size", type=int, default=128, show_default=True, help="SentencePiece BPE size.")
@click.option("-j", "--num-jobs", type=int, default=2, show_default=True, help="Parallel synthesis jobs.")
@click.option("--untranscribed-hours", type=float, default=0.0, show_default=True,
              help="Also write untranscribed.json: this much more audio, in voices of no other split (training voices at unheard pitches), with no text (for "
                   "dump-teacher to label), and untranscribed.refs.json with the withheld text (for label-quality).")
@click.option("--voices", type=click.Choice(["standard", "wide"]), default="standard", show_default=True,
              help="Training speakers: 'wide' adds many more (45 espeak-ng variants, 7 pitch shifts per flite/festival "
                   "voice); validation and test voices are the same either way.")
@click.option("--hold-out-engine", type=click.Choice(["espeak-ng", "flite", "festival"]), default=None,
              help="Leave one TTS engine family out of train/val; the test split is all of its voices.")
@click.option("--overwrite", is_flag=True, help="Replace a corpus built with other arguments.")
@progress_option
@friendly_errors
def command(out: str, task: str, hours: float, untranscribed_hours: float, seed: int, vocab_size: int,
            num_jobs: int, voices: str, hold_out_engine: str | None, overwrite: bool, progress: bool) -> None:
    """Synthesise a multi-voice speech corpus offline with espeak-ng, flite and festival.

    Splits train/val/test by voice (test voices are unseen) and trains the tokenizer on train texts.
    """
    from kdstore.corpus import prepare_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    corpus = prepare_demo(out, task=task, hours=hours, seed=seed, vocab_size=vocab_size, num_jobs=num_jobs,
                          progress=progress, overwrite=overwrite, variety=voices, hold_out_engine=hold_out_engine,
                          untranscribed_hours=untranscribed_hours)
    for split, path in corpus.manifests.items():
        click.echo(f"{split:5s} {corpus.utterances[split]:6d} utterances {corpus.hours[split]:7.3f} h  {path}")
    if corpus.untranscribed_manifest is not None:
        click.echo(f"untranscribed {corpus.utterances['untranscribed']:6d} utterances "
                   f"{corpus.hours['untranscribed']:7.3f} h  {corpus.untranscribed_manifest} (text withheld in "
                   f"{corpus.untranscribed_refs})")
    click.echo(f"tokenizer {corpus.tokenizer_dir} ({corpus.vocab_size} pieces); dropped {corpus.dropped}; "
               f"stats {corpus.stats_path}")
