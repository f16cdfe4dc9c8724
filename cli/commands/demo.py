"""`kdstore demo`: the whole pipeline on the synthetic corpus, with a report."""

from __future__ import annotations

import click

from kdstore.cli.common import friendly_errors, progress_option, quiet_nemo


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False), default="demo-run", show_default=True)
@click.option("--quick", is_flag=True, help="A few minutes instead of ~12: smaller corpus, fewer steps (proves the pipeline runs).")
@click.option("--seed", default=0, show_default=True,
              help="Seed of the training runs; with --train-teacher also of the corpus (which recordings it holds: "
              "the TDT demo teacher uses 1, other recordings than the demo students' seed-0 split).")
@click.option("--streaming", is_flag=True,
              help="After the offline demo (reused if done): a cache-aware streaming student from the offline teacher, "
                   "beside its no-KD twin; NeMo streaming WER and latency, sherpa-onnx OnlineRecognizer "
                   "(WORKDIR/streaming-report.md).")
@click.option("--train-teacher", is_flag=True,
              help="Instead of the demo: (re)build the demo teacher into WORKDIR/demo_teacher/ (~90 min on one core "
                   "with the defaults; the TDT teacher's recipe, 1 h and 800 steps, ~30 min; resumable).")
@click.option("--teacher-steps", default=4000, show_default=True, help="With --train-teacher: training steps.")
@click.option("--teacher-hours", default=4.0, show_default=True, help="With --train-teacher: corpus hours.")
@click.option("--hold-out-engine", type=click.Choice(["espeak-ng", "flite", "festival"]), default=None,
              help="With --train-teacher: train without this TTS engine family and test on it only.")
@click.option("--tdt", is_flag=True,
              help="After the offline demo (reused if done): distil the committed TDT demo teacher into a TDT student "
                   "(KD on tokens and durations), its no-KD twin and an RNN-T student (WORKDIR/tdt-report.md). With "
                   "--train-teacher: build that TDT teacher (tiny-teacher-tdt, started from the committed RNN-T "
                   "teacher's weights and tokenizer) into WORKDIR/demo_teacher/.")
@progress_option
@friendly_errors
def command(workdir: str, quick: bool, seed: int, streaming: bool, train_teacher: bool, teacher_steps: int, teacher_hours: float,
            hold_out_engine: str | None, tdt: bool, progress: bool) -> None:
    """prepare-demo -> teacher -> dump-teacher -> students (KD and not) -> eval -> export -> report.

    The corpus is 1 h with wide training voices (plus 0.25 h of untranscribed audio the teacher labels and
    label-quality scores); the headline student is tiny-teacher-2l (2 of the committed
    teacher's 4 layers, started from its weights, hybrid RNNT-CTC, KD from a band-6 store), trained beside
    its no-KD twin; the report leads with retention, parameters, speed and the sherpa-onnx int8 WER.

    Re-running reuses finished steps (delete WORKDIR/steps/NAME.json to redo one).

    \b
    Example:
      kdstore demo --workdir demo-run --quick
      kdstore demo --workdir demo-run --streaming             # + the streaming student (~15 min more)
      kdstore demo --workdir demo-run --tdt                   # + TDT teacher -> TDT and RNN-T students
      kdstore demo --workdir teacher-run --train-teacher     # -> teacher-run/demo_teacher/
      kdstore demo --workdir holdout-run --train-teacher --hold-out-engine festival --teacher-hours 2
      kdstore demo --workdir tdt-run --train-teacher --tdt --teacher-hours 1 --teacher-steps 800 --seed 1
    """
    quiet_nemo()
    if train_teacher:
        from kdstore.demo.teacher_recipe import TeacherRecipe, train_demo_teacher

        recipe = TeacherRecipe(seed=seed, steps=teacher_steps, hours=teacher_hours, hold_out_engine=hold_out_engine)
        if tdt:
            from dataclasses import replace

            from kdstore.assets import demo_teacher_dir

            recipe = replace(recipe, config="tiny-teacher-tdt", init_from=str(demo_teacher_dir() / "teacher.nemo"))
        train_demo_teacher(workdir, recipe, echo=click.echo)
        return
    if tdt:
        from kdstore.demo.tdt import run_tdt_demo

        run_tdt_demo(workdir, quick=quick, seed=seed, progress=progress, echo=click.echo)
        return
    if streaming:
        from kdstore.demo.streaming import run_streaming_demo

        run_streaming_demo(workdir, quick=quick, seed=seed, progress=progress, echo=click.echo)
        return
    from kdstore.demo.pipeline import run_demo

    run_demo(workdir, quick=quick, seed=seed, progress=progress, echo=click.echo)
