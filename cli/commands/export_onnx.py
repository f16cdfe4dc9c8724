"""``kdstore export-onnx``: a .nemo transducer -> ONNX (sherpa-onnx's or NeMo's layout) + preprocessor.ts, or with
``--streaming`` a cache-aware model -> one sherpa-onnx online folder per chunk size."""

from __future__ import annotations

from pathlib import Path

import click

from kdstore.cli.common import friendly_errors, progress_option, quiet_nemo, set_threads


@click.command("export-onnx")
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="NeMo RNN-T, TDT or hybrid (with CTC) model (.nemo) with a SentencePiece tokenizer "
                   "(EncDecRNNTBPEModel, EncDecHybridRNNTCTCBPEModel); character-vocabulary models are refused, TDT "
                   "models need durations 0..D-1 and are refused with --streaming.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the ONNX files (created).")
@click.option("--layout", type=click.Choice(["sherpa", "nemo"]), default="sherpa", show_default=True,
              help="sherpa: encoder/decoder/joiner.onnx + tokens.txt (sherpa-onnx); nemo: NeMo's model.export "
                   "files encoder-model.onnx, decoder_joint-model.onnx, vocab.txt, config.json (onnx-asr).")
@click.option("--int8/--no-int8", default=False, show_default=True,
              help="Also write dynamically int8-quantised *.int8.onnx files.")
@click.option("--preprocessor/--no-preprocessor", default=True, show_default=True,
              help="Also write NeMo's preprocessor as TorchScript (preprocessor.ts).")
@click.option("--max-audio-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Longest input the exported encoder takes (its position buffer; recorded in the metadata and "
                   "checked by kdstore transcribe). Default: the model's own (400 s for NeMo's pos_emb_max_len 5000 "
                   "at 80 ms per frame).")
@click.option("--streaming", is_flag=True,
              help="Cache-aware streaming model -> sherpa-onnx's OnlineRecognizer: OUT/chunk-<ms>ms/ (encoder, decoder, "
                   "joiner, tokens.txt) per chunk size; no preprocessor.ts, no length limit.")
@click.option("--chunk-ms", "chunk_ms", multiple=True, type=click.IntRange(min=1),
              help="With --streaming: a chunk size in ms the model was trained for (repeatable); default: every one "
                   "in its encoder.att_context_size, e.g. 560, 1120, 160 and 80 for the streaming configs.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1), help="Torch CPU threads.")
@progress_option
@friendly_errors
def command(model_path: Path, out_dir: Path, layout: str, int8: bool, preprocessor: bool, max_audio_seconds: float | None,
            streaming: bool, chunk_ms: tuple[int, ...], threads: int, progress: bool) -> None:
    """Export a NeMo transducer to ONNX, then decode generated audio with onnxruntime to prove it loads.

    \b
    Example:
      kdstore export-onnx --model student.nemo --out onnx/ --int8
      kdstore export-onnx --model student.nemo --out onnx-nemo/ --layout nemo
      kdstore export-onnx --model tdt-student.nemo --out onnx-tdt/ --int8   # TDT: sherpa-onnx's url "tdt" metadata
      kdstore transcribe --onnx onnx/ clip.wav
      kdstore export-onnx --model streaming.nemo --out onnx-stream/ --streaming --chunk-ms 560 --int8
      kdstore transcribe --onnx onnx-stream/ --streaming clip.wav
    """
    from kdstore.errors import ExportError

    if chunk_ms and not streaming:
        raise ExportError("--chunk-ms needs --streaming (an offline export attends over the whole input)")
    if streaming and layout != "sherpa":
        raise ExportError("--streaming writes sherpa-onnx's layout only; drop --layout nemo")
    if streaming and max_audio_seconds is not None:
        raise ExportError("--max-audio-seconds does not apply to --streaming (a streaming encoder takes input of any "
                          "length); drop it")
    quiet_nemo()
    set_threads(threads)
    if streaming:
        _export_streaming(model_path, out_dir, chunk_ms, int8, progress)
        return
    from kdstore.export.run import export_onnx

    result = export_onnx(model_path, out_dir, int8=int8, layout=layout, preprocessor=preprocessor, check=True,
                         progress=progress, max_audio_seconds=max_audio_seconds)
    for path in result.files:
        click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if result.preprocessor:
        click.echo(f"preprocessor.ts: {result.preprocessor_method}")
    for note in result.notes:
        click.echo(f"note: {note}")
    variants = ", ".join(f"{v}: {result.check[f'{v}_frames']} frames, {result.check[f'{v}_tokens']} tokens"
                         for v in ("fp32", "int8") if f"{v}_frames" in result.check)
    click.echo(f"checked with onnxruntime on generated audio ({variants})")
    if "max_audio_seconds" in result.metadata:
        click.echo(f"longest input: {float(result.metadata['max_audio_seconds']):.1f} s "
                   f"({result.metadata['max_encoder_frames']} encoder frames; --max-audio-seconds changes it)")


def _export_streaming(model_path: Path, out_dir: Path, chunk_ms: tuple[int, ...], int8: bool, progress: bool) -> None:
    from kdstore.export.streaming import export_streaming

    result = export_streaming(model_path, out_dir, chunk_ms=chunk_ms, int8=int8, check=True, progress=progress)
    for chunk in result.chunks:
        for path in chunk.files:
            click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        c = chunk.chunk
        default = " (the model's default)" if c.chunk_ms == result.default_chunk_ms else ""
        click.echo(f"{chunk.out_dir.name}: {c.chunk_ms} ms chunks, {c.lookahead_ms} ms look-ahead, attention context "
                   f"[{c.left}, {c.right}]{default}; checked with onnxruntime "
                   f"({chunk.check.get('frames_per_chunk', '?')} encoder frame(s) per chunk)")
