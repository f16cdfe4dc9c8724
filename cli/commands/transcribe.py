"""``kdstore transcribe``: greedy transcripts of audio files with an exported model (onnxruntime or sherpa-onnx;
``--streaming``: sherpa-onnx's OnlineRecognizer on an ``export-onnx --streaming`` folder, fed as a live source)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kdstore.cli.common import friendly_errors, progress_option


@click.command("transcribe")
@click.option("--onnx", "onnx_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder written by `kdstore export-onnx` (either layout; with --streaming the --streaming "
                   "export or one of its chunk-<ms>ms folders).")
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
@click.option("--runtime", type=click.Choice(["onnxruntime", "sherpa-onnx"]), default=None,
              help="onnxruntime (default): kdstore's decoder with NeMo's features (either layout). "
              "sherpa-onnx (default with --streaming): sherpa_onnx.OfflineRecognizer on the sherpa layout, or its "
              "OnlineRecognizer with --streaming, with its own features.")
@click.option("--streaming", is_flag=True,
              help="Stream each file into sherpa-onnx's OnlineRecognizer in 0.1 s pieces, as a live source would "
              "(greedy search), with an `export-onnx --streaming` folder.")
@click.option("--chunk-ms", "chunk_ms", type=click.IntRange(min=1), default=None,
              help="With --streaming: which exported chunk size to run (default: the model's default chunk).")
@click.option("--sherpa-align/--no-sherpa-align", default=True, show_default=True,
              help="With --runtime sherpa-onnx: frame-align the audio so sherpa-onnx frames it as NeMo does "
              "(kdstore.runtime.sherpa; README, export-onnx); with --streaming also put its chunks on NeMo's "
              "chunk grid (kdstore.runtime.sherpa_online).")
@click.option("--sherpa-mel-range", type=click.Choice(["model", "sherpa-default"]), default="model",
              show_default=True,
              help="With --runtime sherpa-onnx (offline): the fbank's upper mel edge. model: the model's own "
              "(sherpa-onnx's Python FeatureExtractorConfig.high_freq); sherpa-default: Nyquist - 400 Hz, what "
              "sherpa-onnx's C, Kotlin and Swift APIs use (README, export-onnx).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: transcripts, seconds, RTF.")
@progress_option
@friendly_errors
def command(onnx_dir: Path, audio: tuple[Path, ...], int8: bool, batch_size: int, provider: str, frontend: str,
            threads: int, runtime: str | None, streaming: bool, chunk_ms: int | None, sherpa_align: bool,
            sherpa_mel_range: str, as_json: bool, progress: bool) -> None:
    """Print `path<TAB>text` for each AUDIO file (wav/flac/ogg, any rate, mono or stereo), then the RTF on stderr.

    \b
    Example:
      kdstore transcribe --onnx onnx/ a.wav b.flac c.ogg > hyps.tsv
      kdstore transcribe --onnx onnx/ --int8 --json *.wav
      kdstore transcribe --onnx onnx/ --runtime sherpa-onnx a.wav   # what a sherpa-onnx deployment says
      kdstore transcribe --onnx onnx-stream/ --streaming --chunk-ms 160 a.wav   # sherpa-onnx, live, 160 ms chunks
    """
    from kdstore.runtime.transcribe import transcribe_files

    runtime = runtime or ("sherpa-onnx" if streaming else "onnxruntime")
    decoded: dict[int, str] = {}
    try:
        result = transcribe_files(onnx_dir, audio, runtime=runtime, int8=int8, batch_size=batch_size,
                                  provider=provider, frontend=frontend, num_threads=threads, sherpa_align=sherpa_align,
                                  progress=progress, on_text=decoded.__setitem__, streaming=streaming,
                                  chunk_ms=chunk_ms, sherpa_mel_range=sherpa_mel_range)
    except BaseException:
        for index in sorted(decoded):  # what was decoded before the failure is never lost
            click.echo(f"{audio[index]}\t{decoded[index]}")
        raise
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    for t in result.transcripts:
        click.echo(f"{t.audio}\t{t.text}")
    mode = f", streamed in {result.chunk_ms} ms chunks" if result.chunk_ms is not None else ""
    count = len(result.transcripts)
    click.echo(f"{count} file{'' if count == 1 else 's'}, {result.audio_seconds:.1f} s of audio in {result.seconds:.2f} s: "
               f"RTF {result.rtf:.4f} ({result.layout} layout, {result.frontend} features, {provider}{mode})", err=True)
