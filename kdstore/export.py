"""Export a NeMo transducer (.nemo) to sherpa-onnx's layout: encoder, decoder, joiner and tokens.

NeMo's own per-module exporters write the graphs (``model.encoder.export`` etc.); this module adds
what sherpa-onnx and :mod:`kdstore.onnx_infer` need on top:

* ``tokens.txt``: one ``piece id`` line per vocabulary entry, then ``<blk> V`` (V + 1 lines);
* encoder metadata (``metadata_props``): sherpa-onnx's keys (``vocab_size`` without blank,
  ``normalize_type``, ``pred_rnn_layers``, ``pred_hidden``, ``subsampling_factor``, ``model_type``,
  ``feat_dim``) and kdstore's (version, sha256 of the source .nemo, blank id, greedy
  ``max_symbols`` and every front-end setting, see :class:`kdstore.features.FrontEndConfig`);
* decoder inputs/outputs with readable names and a dynamic batch axis on both LSTM states
  (NeMo's trace fixes the second one to batch 1).

The ONNX encoder takes log-mel features: the preprocessor is not exported. Before writing anything
the export checks that :mod:`kdstore.features` reproduces the model's preprocessor, and refuses models
it cannot serve (TDT, CTC-only, character vocabularies, stateless prediction nets).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdstore import __version__
from kdstore.errors import ExportError
from kdstore.features import WINDOW_FUNCTIONS, FrontEndConfig, LogMelFrontEnd, mel_filterbank, resolve_log_guard

ENCODER, DECODER, JOINER, TOKENS = "encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt"
BLANK_PIECE = "<blk>"
SHERPA_MODEL_TYPE = "EncDecRNNTBPEModel"  # what sherpa-onnx expects for any NeMo RNN-T (hybrid too)
FRONTEND_TOLERANCE = 1e-3  # max |ours - NeMo| on normalised log-mel features, checked at export
DECODER_INPUTS = ("targets", "target_length", "input_states_1", "input_states_2")
DECODER_OUTPUTS = ("outputs", "prednet_lengths", "output_states_1", "output_states_2")


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    """What :func:`export_onnx` wrote."""

    out_dir: Path
    encoder: Path
    decoder: Path
    joiner: Path
    tokens: Path
    int8: tuple[Path, ...] = ()  # encoder/decoder/joiner ``*.int8.onnx`` when asked for
    vocab_size: int  # without blank; blank id == vocab_size
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.encoder, self.decoder, self.joiner, self.tokens, *self.int8)


def export_onnx(model_path: Path, out_dir: Path, int8: bool = False) -> ExportResult:
    """Export ``model_path`` (.nemo RNN-T or hybrid RNN-T/CTC) into ``out_dir``; returns the paths."""
    model_path, out_dir = Path(model_path), Path(out_dir)
    if not model_path.is_file():
        raise ExportError(f"{model_path}: no such .nemo file; pass the path of a trained NeMo model")
    model = load_nemo_model(model_path)
    check_exportable(model)
    frontend = frontend_config_from_nemo(model.preprocessor)
    check_frontend(model.preprocessor, frontend)
    metadata = export_metadata(model, frontend, sha256_file(model_path))
    vocab_size = int(metadata["vocab_size"])

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in (ENCODER, DECODER, JOINER)}
    model.encoder.export(str(paths[ENCODER]))
    model.decoder.export(str(paths[DECODER]))
    model.joint.export(str(paths[JOINER]))
    fix_decoder_io(paths[DECODER])
    check_joiner_width(paths[JOINER], vocab_size + 1)
    provenance = {k: metadata[k] for k in ("kdstore_version", "source_sha256", "vocab_size", "blank_id")}
    add_metadata(paths[ENCODER], metadata)
    add_metadata(paths[DECODER], provenance)
    add_metadata(paths[JOINER], provenance)
    tokens = write_tokens(model, out_dir / TOKENS, vocab_size)

    quantized: tuple[Path, ...] = ()
    if int8:
        quantized = tuple(quantize_int8(paths[name], metadata if name == ENCODER else provenance) for name in paths)
    else:  # int8 files of an earlier export would not match the new float ones
        for path in paths.values():
            path.with_suffix(".int8.onnx").unlink(missing_ok=True)
    return ExportResult(
        out_dir=out_dir,
        encoder=paths[ENCODER],
        decoder=paths[DECODER],
        joiner=paths[JOINER],
        tokens=tokens,
        int8=quantized,
        vocab_size=vocab_size,
        metadata=metadata,
    )


def load_nemo_model(model_path: Path) -> Any:
    """Restore a .nemo on CPU in eval mode (``restore_from`` returns it in train mode)."""
    from nemo.collections.asr.models import ASRModel

    try:
        model = ASRModel.restore_from(str(model_path), map_location="cpu")
    except Exception as err:  # NeMo raises many kinds; the user needs one sentence
        raise ExportError(f"{model_path}: NeMo could not restore this .nemo file ({err})") from err
    return model.eval()


def check_exportable(model: Any) -> None:
    """Refuse, in one sentence each, the models sherpa-onnx's NeMo transducer path cannot run."""
    name = type(model).__name__
    if not hasattr(model, "joint") or not hasattr(model, "decoder"):
        raise ExportError(f"{name} has no transducer joint: only RNN-T and hybrid RNN-T/CTC models are supported")
    if getattr(model.joint, "num_extra_outputs", 0):
        raise ExportError(f"{name} is a TDT model (duration outputs): TDT export is out of scope for kdstore/1")
    if getattr(model, "tokenizer", None) is None:
        raise ExportError(f"{name} has no subword tokenizer: only BPE (SentencePiece) models are supported")
    decoder = model.decoder
    if not hasattr(decoder, "pred_rnn_layers") or not hasattr(decoder, "pred_hidden"):
        raise ExportError(f"{name}'s prediction net ({type(decoder).__name__}) is not an LSTM RNNTDecoder")
    if not getattr(decoder, "blank_as_pad", False):
        raise ExportError(f"{name} was built with decoder.blank_as_pad=false; export needs blank_as_pad=true")
    if type(model.preprocessor).__name__ != "AudioToMelSpectrogramPreprocessor":
        raise ExportError(f"{name} uses {type(model.preprocessor).__name__}; only log-mel preprocessors are supported")


def frontend_config_from_nemo(preprocessor: Any) -> FrontEndConfig:
    """The front-end settings NeMo actually uses: the featurizer's attributes and tensors first, then
    the module's config (``_cfg``, present on restored models), then the constructor's defaults."""
    fz = preprocessor.featurizer
    if getattr(fz, "frame_splicing", 1) != 1:
        raise ExportError(f"preprocessor.frame_splicing={fz.frame_splicing} is not supported (use 1)")
    if fz.pad_to == "max":
        raise ExportError("preprocessor.pad_to='max' is not supported; use an integer (0 or 16)")
    defaults = {
        k: p.default for k, p in inspect.signature(type(preprocessor).__init__).parameters.items() if k != "self"
    }
    cfg = {**defaults, **dict(getattr(preprocessor, "_cfg", None) or {})}
    config = FrontEndConfig(
        sample_rate=int(fz.sample_rate),
        n_window_size=int(fz.win_length),
        n_window_stride=int(fz.hop_length),
        n_fft=int(fz.n_fft),
        features=int(fz.nfilt),
        window=_window_name(fz.window),
        preemph=None if fz.preemph is None else float(fz.preemph),
        lowfreq=float(cfg["lowfreq"] or 0.0),
        highfreq=None if cfg["highfreq"] is None else float(cfg["highfreq"]),
        mag_power=float(fz.mag_power),
        mel_norm=cfg["mel_norm"],
        log=bool(fz.log),
        log_zero_guard_type=str(fz.log_zero_guard_type),
        log_zero_guard_value=resolve_log_guard(fz.log_zero_guard_value),
        normalize=str(fz.normalize or ""),
        exact_pad=bool(fz.exact_pad),
        pad_to=int(fz.pad_to),
        pad_value=float(fz.pad_value),
    )
    ours = mel_filterbank(config.sample_rate, config.n_fft, config.features, config.lowfreq, config.highfreq,
                          config.mel_norm)
    theirs = fz.fb.detach().cpu().numpy().reshape(ours.shape)
    if not np.allclose(ours, theirs, rtol=1e-4, atol=1e-7):
        raise ExportError("cannot reproduce the preprocessor's mel filterbank (lowfreq, highfreq, mel_norm); "
                          "this preprocessor configuration is not supported")
    return config


def _window_name(window: Any) -> str:
    """Which of NeMo's (symmetric) windows the featurizer holds."""
    if window is None:
        return "none"
    values = window.detach().cpu().numpy().astype(np.float64)
    for name, fn in WINDOW_FUNCTIONS.items():
        if fn is not None and np.allclose(fn(len(values)), values, atol=1e-6):
            return name
    raise ExportError("the preprocessor's STFT window is none of hann, hamming, blackman, bartlett; not supported")


def check_frontend(preprocessor: Any, frontend: FrontEndConfig, seconds: float = 1.37) -> float:
    """Run NeMo's preprocessor and ours on the same synthetic audio; refuse a mismatch."""
    import torch

    rng = np.random.default_rng(0)
    n = int(seconds * frontend.sample_rate)
    t = np.arange(n) / frontend.sample_rate
    audio = 0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t) * np.hanning(n) + 0.02 * rng.standard_normal(n)
    audio = audio.astype(np.float32)
    ours, length = LogMelFrontEnd(frontend)(audio)
    was_training = preprocessor.training
    preprocessor.eval()
    try:
        with torch.no_grad():
            ref, ref_len = preprocessor(input_signal=torch.from_numpy(audio)[None], length=torch.tensor([n]))
    finally:
        preprocessor.train(was_training)
    ref = ref[0].numpy()
    if ref.shape != ours.shape or int(ref_len[0]) != length:
        raise ExportError(
            f"kdstore's front end gives {ours.shape} features ({length} valid), NeMo's {ref.shape} "
            f"({int(ref_len[0])}): this preprocessor configuration is not supported"
        )
    diff = float(np.abs(ref - ours).max())
    if not diff < FRONTEND_TOLERANCE:
        raise ExportError(
            f"kdstore's front end differs from NeMo's preprocessor by {diff:.2e} (> {FRONTEND_TOLERANCE}): "
            "this preprocessor configuration is not supported"
        )
    return diff


def export_metadata(model: Any, frontend: FrontEndConfig, source_sha256: str) -> dict[str, str]:
    """Encoder ``metadata_props``: sherpa-onnx's keys first, then kdstore's."""
    vocab_size = int(model.joint.num_classes_with_blank) - 1
    blank_id = int(model.decoder.blank_idx)
    if blank_id != vocab_size:
        raise ExportError(f"blank id {blank_id} is not the last joint output ({vocab_size}); cannot export")
    decoding = model.cfg.get("decoding", None) or {}
    greedy = decoding.get("greedy", None) or {}
    max_symbols = greedy.get("max_symbols", None) or 10
    meta = {
        "vocab_size": str(vocab_size),
        "normalize_type": frontend.normalize,
        "pred_rnn_layers": str(int(model.decoder.pred_rnn_layers)),
        "pred_hidden": str(int(model.decoder.pred_hidden)),
        "subsampling_factor": str(int(model.encoder.subsampling_factor)),
        "model_type": SHERPA_MODEL_TYPE,
        "feat_dim": str(frontend.features),
        "kdstore_version": __version__,
        "source_sha256": source_sha256,
        "source_class": type(model).__name__,
        "blank_id": str(blank_id),
        "max_symbols": str(int(max_symbols)),
    }
    meta.update(frontend.to_metadata())
    return meta


def fix_decoder_io(path: Path) -> None:
    """Readable decoder I/O names and a dynamic batch axis on both LSTM states."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    if len(graph.input) != 4 or len(graph.output) != 4:
        raise ExportError(f"{path}: expected a decoder with 4 inputs and 4 outputs (LSTM states), got "
                          f"{len(graph.input)} and {len(graph.output)}")
    renames = {vi.name: new for vi, new in zip(graph.input, DECODER_INPUTS)}
    renames.update({vi.name: new for vi, new in zip(graph.output, DECODER_OUTPUTS)})
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)
    for vi in [*graph.input, *graph.output]:
        vi.name = renames.get(vi.name, vi.name)
    for vi in [*graph.input[2:], *graph.output[2:]]:  # (layers, batch, hidden)
        dim = vi.type.tensor_type.shape.dim[1]
        dim.Clear()
        dim.dim_param = "batch"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def check_joiner_width(path: Path, width: int) -> None:
    """sherpa-onnx reads the vocabulary size from the joiner's last output dim: it must be static."""
    import onnx

    dims = onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim
    if not dims or dims[-1].dim_value != width:
        got = dims[-1].dim_value or dims[-1].dim_param if dims else "no shape"
        raise ExportError(f"{path}: joiner output's last dim should be the static {width}, got {got!r}")


def add_metadata(path: Path, metadata: Mapping[str, str]) -> None:
    """Set (replace) ``metadata_props`` entries of an ONNX file in place."""
    import onnx

    model = onnx.load(str(path))
    keep = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(path))


def read_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def write_tokens(model: Any, path: Path, vocab_size: int) -> Path:
    """``piece id`` per line for ids 0..V-1, then ``<blk> V``."""
    pieces = model.tokenizer.ids_to_tokens(list(range(vocab_size)))
    if len(pieces) != vocab_size:
        raise ExportError(f"tokenizer gave {len(pieces)} pieces for a joint with {vocab_size} labels")
    lines = []
    for i, piece in enumerate(pieces):
        if not piece or any(c.isspace() for c in piece):
            raise ExportError(f"token {i} ({piece!r}) is empty or has whitespace; tokens.txt cannot hold it")
        lines.append(f"{piece} {i}")
    lines.append(f"{BLANK_PIECE} {vocab_size}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def quantize_int8(path: Path, metadata: Mapping[str, str]) -> Path:
    """Dynamic int8 weights for the MatMul/Gemm layers; writes ``<name>.int8.onnx`` beside ``path``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_suffix(".int8.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a "consider pre-processing" warning on the root logger
    try:
        quantize_dynamic(str(path), str(out), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    add_metadata(out, {**metadata, "quantization": "dynamic-int8"})
    return out


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
