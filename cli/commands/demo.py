"""`kdstore demo`: the whole pipeline on the synthetic corpus, with a report."""

from __future__ import annotations

import click

from kdstore.cli.common import friendly_errors, quiet_nemo


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False), default="demo-run", show_default=True)
@click.option("--quick", is_flag=True, help="A few minutes instead of ~30: smaller corpus, fewer steps.")
@click.option("--seed", default=0, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@friendly_errors
def command(workdir, quick, seed, progress):
    """prepare-demo -> teacher -> dump-teacher -> students (KD and not) -> eval -> export -> report.

    Re-running reuses finished steps (delete WORKDIR/steps/NAME.json to redo one).

    \b
    Example:
      kdstore demo --workdir demo-run --quick
    """
    quiet_nemo()
    from kdstore.demo import run_demo

    run_demo(workdir, quick=quick, seed=seed, progress=progress, echo=click.echo)
