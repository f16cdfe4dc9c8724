"""``kdstore export-onnx``: a .nemo transducer -> sherpa-onnx's encoder/decoder/joiner/tokens."""

from __future__ import annotations

from pathlib import Path

import click

from kdstore.cli.common import friendly_errors, quiet_nemo, set_threads


@click.command(
    "export-onnx",
    epilog="Example:\n\n\b\n  kdstore export-onnx --model student.nemo --out onnx/ --int8\n"
    "  kdstore transcribe --onnx onnx/ clip.wav",
)
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="NeMo RNN-T or hybrid RNN-T/CTC model (.nemo).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for encoder.onnx, decoder.onnx, joiner.onnx and tokens.txt (created).")
@click.option("--int8/--no-int8", default=False, show_default=True,
              help="Also write dynamically int8-quantised *.int8.onnx files.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1), help="Torch CPU threads.")
@friendly_errors
def command(model_path: Path, out_dir: Path, int8: bool, threads: int) -> None:
    """Export a NeMo transducer to ONNX in sherpa-onnx's layout, with the metadata it needs."""
    quiet_nemo()
    set_threads(threads)
    from kdstore.export import export_onnx

    result = export_onnx(model_path, out_dir, int8=int8)
    for path in result.files:
        click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
