"""Export a NeMo transducer (.nemo) to ONNX in one of two layouts, plus its preprocessor as TorchScript.

The recipe (:func:`export_onnx`): restore the model (:func:`kdstore.nemo.checkpoint.restore_model`:
eval mode, exact front-end buffers), refuse what the runtimes cannot serve
(:mod:`kdstore.export.checks`), check that the numpy front end reproduces the model's preprocessor
(:func:`kdstore.nemo.frontend.check_frontend`: the ONNX encoder takes log-mel features, not audio),
then write

* ``layout="sherpa"`` (default): sherpa-onnx's three graphs and ``tokens.txt``
  (:mod:`kdstore.export.sherpa_layout`), or
* ``layout="nemo"``: NeMo's own ``model.export`` files that onnx-asr loads (:mod:`kdstore.export.nemo_layout`),

with the encoder metadata of :mod:`kdstore.export.metadata`; then ``preprocessor.ts``
(:mod:`kdstore.export.preprocessor`) unless asked not to, and with ``int8=True`` dynamically
quantised ``*.int8.onnx`` copies. File names: :mod:`kdstore.runtime.layout`. :func:`smoke_test`
loads the result with onnxruntime and decodes generated audio. A cache-aware streaming model exported
here runs offline (its default chunked attention over the whole input, a note says so);
``export-onnx --streaming`` is :func:`kdstore.export.streaming.export_streaming`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdstore.errors import ExportError
from kdstore.export.checks import check_exportable
from kdstore.export.length_limit import limit_metadata, set_encoder_frame_limit
from kdstore.export.metadata import PROVENANCE_KEYS, export_metadata
from kdstore.export.nemo_layout import write_nemo_layout
from kdstore.export.onnx_edit import quantize_int8
from kdstore.export.preprocessor import export_preprocessor
from kdstore.export.sherpa_layout import write_sherpa_layout
from kdstore.files import sha256_file
from kdstore.nemo.checkpoint import restore_model
from kdstore.nemo.frontend import check_frontend, frontend_config_from_nemo
from kdstore.runtime.layout import LAYOUTS, PREPROCESSOR_TS, int8_name

# sherpa-onnx's DecodeOneTDT (offline-transducer-greedy-search-nemo-decoder.cc): max_tokens_per_frame = 5, fixed.
SHERPA_TDT_MAX_SYMBOLS = 5


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    """What :func:`export_onnx` wrote."""

    out_dir: Path
    layout: str
    encoder: Path
    decoder: Path  # sherpa: decoder.onnx; nemo: decoder_joint-model.onnx (prediction net and joint)
    joiner: Path | None  # sherpa only
    tokens: Path  # tokens.txt (sherpa) or vocab.txt (nemo)
    extra: tuple[Path, ...] = ()  # config.json (nemo)
    int8: tuple[Path, ...] = ()  # ``*.int8.onnx`` when asked for
    preprocessor: Path | None = None  # preprocessor.ts
    preprocessor_method: str = ""  # why it was scripted or traced
    vocab_size: int  # without blank; blank id == vocab_size
    metadata: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    check: Mapping[str, int] = field(default_factory=dict)  # :func:`smoke_test`'s report, when asked for

    @property
    def files(self) -> tuple[Path, ...]:
        graphs = (self.encoder, self.decoder) + ((self.joiner,) if self.joiner else ())
        ts = (self.preprocessor,) if self.preprocessor else ()
        return (*graphs, self.tokens, *self.extra, *self.int8, *ts)


def export_onnx(model_path: Path, out_dir: Path, int8: bool = False, layout: str = "sherpa",
                preprocessor: bool = True, check: bool = False, progress: bool = False,
                max_audio_seconds: float | None = None) -> ExportResult:
    """Export ``model_path`` (.nemo RNN-T, hybrid RNN-T/CTC, TDT or hybrid TDT/CTC) into ``out_dir`` (created);
    returns the paths.

    ``layout`` is ``sherpa`` or ``nemo``; ``int8`` adds quantised copies (and removes stale ones
    otherwise); ``preprocessor`` writes ``preprocessor.ts``; ``check`` runs :func:`smoke_test` on the
    result; ``progress`` shows a tqdm bar over the steps on stderr; ``max_audio_seconds`` sizes the
    encoder's position buffer, the longest input the export takes (None: the model's own, 400 s for
    NeMo's defaults; :mod:`kdstore.export.length_limit`). Raises ExportError, before
    writing anything, for a missing file, a folder holding the other layout, or a model the runtimes
    cannot serve.
    """
    from tqdm import tqdm

    model_path, out_dir = Path(model_path), Path(out_dir)
    if layout not in LAYOUTS:
        raise ExportError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not model_path.is_file():
        raise ExportError(f"{model_path}: no such .nemo file; pass the path of a trained NeMo model")
    _refuse_other_layout(out_dir, layout)
    bar = tqdm(total=2 + int8 + preprocessor + check, desc="export-onnx", unit="step", disable=not progress)
    with bar:
        bar.set_postfix_str("restore and check the model")
        model = restore_model(model_path, error=ExportError)
        check_exportable(model, model_path)
        frontend = frontend_config_from_nemo(model.preprocessor)  # restore_model already made its buffers exact
        check_frontend(model.preprocessor, frontend)
        metadata = export_metadata(model, frontend, sha256_file(model_path))
        metadata.update(limit_metadata(model, set_encoder_frame_limit(model, max_audio_seconds)))
        provenance = {k: metadata[k] for k in PROVENANCE_KEYS}
        bar.update()

        bar.set_postfix_str(f"write the {layout} layout")
        out_dir.mkdir(parents=True, exist_ok=True)
        notes: tuple[str, ...] = ()
        if layout == "sherpa":
            paths = write_sherpa_layout(model, out_dir, metadata, provenance)
        else:
            paths, notes = write_nemo_layout(model, out_dir, metadata, provenance, frontend)
        notes += _streaming_note(model) + _tdt_note(metadata, layout)
        graphs = [p for role, p in paths.items() if role in ("encoder", "decoder", "joiner")]
        bar.update()

        quantized: tuple[Path, ...] = ()
        if int8:
            bar.set_postfix_str("quantise to int8")
            quantized = tuple(quantize_int8(p, metadata if p == paths["encoder"] else provenance) for p in graphs)
            bar.update()
        else:  # int8 files of an earlier export would not match the new float ones
            for path in graphs:
                path.with_name(int8_name(path.name)).unlink(missing_ok=True)

        ts_path, method = out_dir / PREPROCESSOR_TS, ""
        if preprocessor:
            bar.set_postfix_str(f"write {PREPROCESSOR_TS}")
            method = export_preprocessor(model.preprocessor, ts_path, frontend)[1]
            bar.update()
        else:
            ts_path.unlink(missing_ok=True)

        report: dict[str, int] = {}
        if check:
            bar.set_postfix_str("decode generated audio with onnxruntime")
            report = smoke_test(out_dir, int8=int8)
            bar.update()
    return ExportResult(
        out_dir=out_dir, layout=layout, encoder=paths["encoder"], decoder=paths["decoder"],
        joiner=paths.get("joiner"), tokens=paths["tokens"], extra=tuple(p for r, p in paths.items() if r == "config"),
        int8=quantized, preprocessor=ts_path if preprocessor else None, preprocessor_method=method,
        vocab_size=int(metadata["vocab_size"]), metadata=metadata, notes=notes, check=report,
    )


def _streaming_note(model: Any) -> tuple[str, ...]:
    """A note for a cache-aware streaming model exported offline (empty for any other model)."""
    from kdstore.nemo.streaming import check_streamable

    try:
        check_streamable(model, error=ExportError)
    except ExportError:
        return ()
    note = ("a cache-aware streaming model, exported offline: the whole input goes in at once, each frame still "
            "attending only within its default chunked context; export with --streaming for sherpa-onnx's "
            "OnlineRecognizer")
    return (note,)


def _tdt_note(metadata: Mapping[str, str], layout: str) -> tuple[str, ...]:
    """A note for a TDT export in sherpa's layout whose ``max_symbols`` is not sherpa-onnx's fixed 5 (empty otherwise)."""
    from kdstore.runtime.layout import TDT_DURATIONS_KEY

    max_symbols = int(metadata["max_symbols"])
    if layout != "sherpa" or TDT_DURATIONS_KEY not in metadata or max_symbols == SHERPA_TDT_MAX_SYMBOLS:
        return ()
    note = (f"a TDT model: sherpa-onnx's greedy search allows {SHERPA_TDT_MAX_SYMBOLS} tokens per frame, this model "
            f"{max_symbols} (decoding.greedy.max_symbols; kdstore transcribe and NeMo use it); transcripts differ only "
            f"where a frame would emit more than {min(max_symbols, SHERPA_TDT_MAX_SYMBOLS)}")
    return (note,)


def _refuse_other_layout(out_dir: Path, layout: str) -> None:
    """A folder holds one layout: the runtimes tell them apart by the encoder's name."""
    others = [other.encoder for name, other in LAYOUTS.items() if name != layout]
    found = [name for name in others if (out_dir / name).exists()]
    if found:
        raise ExportError(f"{out_dir} already holds the other layout ({found[0]}); export into an empty folder")


def smoke_test(out_dir: Path, int8: bool = False, seconds: float = 1.5) -> dict[str, int]:
    """Load the export with onnxruntime and greedy-decode generated audio (a chirp): proves the files run.

    Returns encoder frames and emitted tokens per variant: ``fp32_frames``, ``fp32_tokens`` (and
    ``int8_*`` with ``int8``). Raises ExportError for an incomplete folder.
    """
    from kdstore.runtime.decoder import OnnxTransducer

    report = {}
    for variant in ("fp32", "int8") if int8 else ("fp32",):
        model = OnnxTransducer(out_dir, int8=variant == "int8", frontend="numpy")
        rate = model.sample_rate
        t = np.arange(int(seconds * rate)) / rate
        audio = (0.2 * np.sin(2 * np.pi * (300 + 500 * t) * t)).astype(np.float32)
        frames = model.encode_batch([audio])[0]
        report[f"{variant}_frames"] = int(frames.shape[0])
        report[f"{variant}_tokens"] = len(model.greedy(frames))
    return report
