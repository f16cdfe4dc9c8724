"""``kdstore transcribe``: greedy transcripts of audio files with an exported model (onnxruntime)."""

from __future__ import annotations

from pathlib import Path

import click

from kdstore.cli.common import friendly_errors


@click.command(
    "transcribe",
    epilog="Example:\n\n\b\n  kdstore transcribe --onnx onnx/ a.wav b.flac > hyps.tsv",
)
@click.option("--onnx", "onnx_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder written by `kdstore export-onnx`.")
@click.argument("audio", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--int8/--no-int8", default=False, show_default=True, help="Use the *.int8.onnx files.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="onnxruntime intra-op threads.")
@friendly_errors
def command(onnx_dir: Path, audio: tuple[Path, ...], int8: bool, threads: int) -> None:
    """Print `path<TAB>text` for each AUDIO file (any rate; resampled to the model's)."""
    from kdstore.onnx_infer import OnnxTransducer

    model = OnnxTransducer(onnx_dir, int8=int8, num_threads=threads)
    for path in audio:
        text = model.transcribe([path])[0]
        click.echo(f"{path}\t{text}")
