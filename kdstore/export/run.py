"""Export a NeMo transducer (.nemo) to ONNX in one of two layouts, plus its preprocessor as TorchScript.

``layout="sherpa"`` (default): sherpa-onnx's ``encoder.onnx``, ``decoder.onnx``, ``joiner.onnx`` and
``tokens.txt``. NeMo's per-module exporters write the graphs (``model.encoder.export`` etc.); on top:

* ``tokens.txt``: one ``piece id`` line per vocabulary entry, then ``<blk> V`` (V + 1 lines);
* encoder metadata (``metadata_props``): sherpa-onnx's keys (``vocab_size`` without blank,
  ``normalize_type``, ``pred_rnn_layers``, ``pred_hidden``, ``subsampling_factor``, ``model_type``,
  ``feat_dim``) and kdstore's (version, sha256 of the source .nemo, blank id, greedy
  ``max_symbols`` and every front-end setting, see :class:`kdstore.runtime.frontend.FrontEndConfig`);
* decoder inputs/outputs with readable names and a dynamic batch axis on both LSTM states
  (NeMo's trace fixes the second one to batch 1).

``layout="nemo"``: NeMo's own ``model.export`` files that onnx-asr loads, see :mod:`kdstore.export.nemo_layout`.

Both layouts get ``preprocessor.ts`` (:mod:`kdstore.export.preprocessor`) unless asked not to, and with
``int8=True`` dynamically quantised ``*.int8.onnx`` copies. The ONNX encoder takes log-mel features:
before writing anything the export checks that :mod:`kdstore.runtime.frontend` reproduces the model's
preprocessor, and refuses models it cannot serve (:mod:`kdstore.export.checks`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdstore.errors import ExportError
from kdstore.export.checks import (  # noqa: F401  (re-exported: the public names of kdstore.export.run)
    BLANK_PIECE,
    SHERPA_MODEL_TYPE,
    check_exportable,
    export_metadata,
    write_tokens,
)
from kdstore.nemo.checkpoint import restore_model
from kdstore.nemo.frontend import check_frontend, frontend_config_from_nemo
from kdstore.export.onnx_edit import (  # noqa: F401
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    add_metadata,
    check_output_width,
    fix_decoder_io,
    quantize_int8,
    read_metadata,
)
from kdstore.files import sha256_file

LAYOUTS = ("sherpa", "nemo")
ENCODER, DECODER, JOINER, TOKENS = "encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt"
PROVENANCE_KEYS = ("kdstore_version", "source_sha256", "vocab_size", "blank_id")


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

    @property
    def files(self) -> tuple[Path, ...]:
        graphs = (self.encoder, self.decoder) + ((self.joiner,) if self.joiner else ())
        ts = (self.preprocessor,) if self.preprocessor else ()
        return (*graphs, self.tokens, *self.extra, *self.int8, *ts)


def export_onnx(model_path: Path, out_dir: Path, int8: bool = False, layout: str = "sherpa",
                preprocessor: bool = True) -> ExportResult:
    """Export ``model_path`` (.nemo RNN-T or hybrid RNN-T/CTC) into ``out_dir``; returns the paths."""
    from kdstore.export.preprocessor import PREPROCESSOR_TS, export_preprocessor

    model_path, out_dir = Path(model_path), Path(out_dir)
    if layout not in LAYOUTS:
        raise ExportError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not model_path.is_file():
        raise ExportError(f"{model_path}: no such .nemo file; pass the path of a trained NeMo model")
    _refuse_other_layout(out_dir, layout)
    model = restore_model(model_path, error=ExportError)
    check_exportable(model)
    frontend = frontend_config_from_nemo(model.preprocessor)  # restore_model already made its buffers exact
    check_frontend(model.preprocessor, frontend)
    metadata = export_metadata(model, frontend, sha256_file(model_path))
    provenance = {k: metadata[k] for k in PROVENANCE_KEYS}

    out_dir.mkdir(parents=True, exist_ok=True)
    notes: tuple[str, ...] = ()
    if layout == "sherpa":
        paths = _write_sherpa_layout(model, out_dir, metadata, provenance)
    else:
        from kdstore.export.nemo_layout import write_nemo_layout

        paths, notes = write_nemo_layout(model, out_dir, metadata, provenance, frontend)
    graphs = [p for role, p in paths.items() if role in ("encoder", "decoder", "joiner")]

    quantized: tuple[Path, ...] = ()
    if int8:
        quantized = tuple(quantize_int8(p, metadata if p == paths["encoder"] else provenance) for p in graphs)
    else:  # int8 files of an earlier export would not match the new float ones
        for path in graphs:
            path.with_suffix(".int8.onnx").unlink(missing_ok=True)

    ts_path, method = out_dir / PREPROCESSOR_TS, ""
    if preprocessor:
        method = export_preprocessor(model.preprocessor, ts_path, frontend)[1]
    else:
        ts_path.unlink(missing_ok=True)
    return ExportResult(
        out_dir=out_dir, layout=layout, encoder=paths["encoder"], decoder=paths["decoder"],
        joiner=paths.get("joiner"), tokens=paths["tokens"], extra=tuple(p for r, p in paths.items() if r == "config"),
        int8=quantized, preprocessor=ts_path if preprocessor else None, preprocessor_method=method,
        vocab_size=int(metadata["vocab_size"]), metadata=metadata, notes=notes,
    )


def _refuse_other_layout(out_dir: Path, layout: str) -> None:
    from kdstore.export.nemo_layout import NEMO_ENCODER

    other = NEMO_ENCODER if layout == "sherpa" else ENCODER
    if (out_dir / other).exists():
        raise ExportError(f"{out_dir} already holds the other layout ({other}); export into an empty folder")


def _write_sherpa_layout(model, out_dir: Path, metadata: Mapping[str, str],
                         provenance: Mapping[str, str]) -> dict[str, Path]:
    paths = {"encoder": out_dir / ENCODER, "decoder": out_dir / DECODER, "joiner": out_dir / JOINER}
    model.encoder.export(str(paths["encoder"]))
    model.decoder.export(str(paths["decoder"]))
    model.joint.export(str(paths["joiner"]))
    fix_decoder_io(paths["decoder"])
    check_joiner_width(paths["joiner"], int(metadata["vocab_size"]) + 1)
    add_metadata(paths["encoder"], metadata)
    add_metadata(paths["decoder"], provenance)
    add_metadata(paths["joiner"], provenance)
    paths["tokens"] = write_tokens(model, out_dir / TOKENS, int(metadata["vocab_size"]))
    return paths


def check_joiner_width(path: Path, width: int) -> None:
    """sherpa-onnx reads the vocabulary size from the joiner's last output dim: it must be static."""
    check_output_width(path, width)


def smoke_test(out_dir: Path, int8: bool = False, seconds: float = 1.5) -> dict[str, int]:
    """Load the export with onnxruntime and greedy-decode generated audio: proves the files run.

    Returns encoder frames and emitted tokens per variant (``fp32``, and ``int8`` when asked for).
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
