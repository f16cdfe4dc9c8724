"""`kdstore train-student`: stage 2, a student from audio + store (or plain training)."""

from __future__ import annotations

import click

from kdstore.cli.common import friendly_errors, progress_option, quiet_nemo


@click.command("train-student", context_settings={"ignore_unknown_options": True})
@click.option("--config", required=True,
              help="YAML path or a name in kdstore/configs (tiny, tiny-teacher, tiny-teacher-2l, small, medium, "
                   "medium-8l, large, large-8l); every config is a hybrid RNNT-CTC model.")
@click.option("--store", "stores", multiple=True,
              help="Teacher store (shorthand for model.kd.store=...; this flag wins). Repeat it to train on several "
                   "stores at once, e.g. a transcribed set and a teacher-labelled one.")
@click.option("--skip-bad", is_flag=True,
              help="Skip unusable manifest lines (listed in <output>.skipped.jsonl) instead of stopping.")
@progress_option
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@friendly_errors
def command(config: str, stores: tuple[str, ...], skip_bad: bool, progress: bool, overrides: tuple[str, ...]) -> None:
    """Train a FastConformer-Transducer; with --store, loss = (1-a)*RNNT + a*tau^2*KD.

    OVERRIDES are key=value pairs (OmegaConf dot syntax; +key=value adds a key).

    \b
    Example:
      kdstore train-student --config tiny --store teacher.zarr \\
          model.train_ds.manifest_filepath=train.json run.output=student.nemo trainer.max_steps=2000
    \b
    Start from the teacher's weights (2 of its layers; table in <output>.files/init_from_teacher.md):
      kdstore train-student --config tiny-teacher-2l --store teacher.zarr \\
          model.init_from_teacher.path=teacher.nemo model.train_ds.manifest_filepath=train.json ...
    NeMo's own init keys work too: +init_from_nemo_model.m.path=X.nemo '+init_from_nemo_model.m.include=[encoder]'
    \b
    Transcribed and untranscribed audio together (lines without text train on the teacher's labels):
      kdstore train-student --config tiny --store train.zarr --store unlabelled.zarr \\
          model.train_ds.manifest_filepath=train.json,unlabelled.json run.output=student.nemo
    """
    quiet_nemo()
    from kdstore.distill.config import load_train_config
    from kdstore.distill.train import train_student

    if any("," in store for store in stores):
        raise click.BadParameter("give one store per --store (repeat the flag for several)", param_hint="--store")
    cfg = load_train_config(config, [*(["model.train_ds.skip_bad=true"] if skip_bad else []), *overrides],
                            store=",".join(stores) if stores else None)
    result = train_student(cfg, progress=progress, echo=click.echo)
    click.echo(f"saved {result.model_path} ({result.params / 1e6:.2f}M params, {result.steps} steps, "
               f"{result.seconds:.0f} s); curve: {result.curve_csv}")
    if result.init_report:
        click.echo(f"teacher initialisation (what was copied, what was not and why): {result.init_report}")
    if result.skipped_lines:
        click.echo(f"skipped {result.skipped_lines} bad manifest lines: see {cfg.model.train_ds.skipped_file}")
    if result.best_model:
        click.echo(f"best by validation WER: {result.best_model}")
    if result.log_dir:
        click.echo(f"logs (TensorBoard, checkpoints): {result.log_dir}")
