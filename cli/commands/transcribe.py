"""``kdstore transcribe``: greedy transcripts of audio files with an exported model (onnxruntime or sherpa-onnx)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kdstore.cli.common import friendly_errors


@click.command(
    "transcribe",
    epilog="Example:\n\n\b\n  kdstore transcribe --onnx onnx/ a.wav b.flac c.ogg > hyps.tsv\n"
    "  kdstore transcribe --onnx onnx/ --int8 --json *.wav\n"
    "  kdstore transcribe --onnx onnx/ --runtime sherpa-onnx a.wav   # what a sherpa-onnx deployment says",
)
@click.option("--onnx", "onnx_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder written by `kdstore export-onnx` (either layout).")
@click.argument("audio", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--int8/--no-int8", default=False, show_default=True, help="Use the *.int8.onnx files.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Files encoded together (padded).")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="onnxruntime execution provider (cuda needs onnxruntime-gpu).")
@click.option("--frontend", type=click.Choice(["auto", "torchscript", "numpy"]), default="auto", show_default=True,
              help="Features: preprocessor.ts when present and torch is installed (auto), or the numpy port.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="onnxruntime intra-op threads.")
@click.option("--runtime", type=click.Choice(["onnxruntime", "sherpa-onnx"]), default="onnxruntime",
              show_default=True, help="onnxruntime: kdstore's decoder with NeMo's features (either layout). "
              "sherpa-onnx: sherpa_onnx.OfflineRecognizer on the sherpa layout, with its own features.")
@click.option("--sherpa-align/--no-sherpa-align", default=True, show_default=True,
              help="With --runtime sherpa-onnx: frame-align the audio so sherpa-onnx frames it as NeMo does "
              "(kdstore.runtime.sherpa_frames; README, export-onnx).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: transcripts, seconds, RTF.")
@friendly_errors
def command(onnx_dir: Path, audio: tuple[Path, ...], int8: bool, batch_size: int, provider: str, frontend: str,
            threads: int, runtime: str, sherpa_align: bool, as_json: bool) -> None:
    """Print `path<TAB>text` for each AUDIO file (wav/flac/ogg, any rate, mono or stereo), then the RTF on stderr."""
    from kdstore.runtime.decoder import OnnxTransducer, transcribe_files

    if runtime == "sherpa-onnx":
        from kdstore.runtime.sherpa import SherpaTransducer

        model = SherpaTransducer(onnx_dir, int8=int8, num_threads=threads, provider=provider, align=sherpa_align)
    else:
        model = OnnxTransducer(onnx_dir, int8=int8, num_threads=threads, provider=provider, frontend=frontend)
    transcripts, seconds = transcribe_files(model, audio, batch_size=batch_size)
    audio_seconds = sum(t.seconds for t in transcripts)
    rtf = seconds / max(audio_seconds, 1e-9)
    if as_json:
        click.echo(json.dumps({
            "onnx": str(onnx_dir), "runtime": runtime, "layout": model.layout, "int8": int8,
            "frontend": model.frontend_name,
            "provider": provider, "audio_seconds": round(audio_seconds, 3), "seconds": round(seconds, 3),
            "rtf": round(rtf, 5), "transcripts": [{"audio": t.audio, "text": t.text} for t in transcripts],
        }, indent=2))
        return
    for t in transcripts:
        click.echo(f"{t.audio}\t{t.text}")
    click.echo(f"{len(transcripts)} files, {audio_seconds:.1f} s of audio in {seconds:.2f} s: RTF {rtf:.4f} "
               f"({model.layout} layout, {model.frontend_name} features, {provider})", err=True)
