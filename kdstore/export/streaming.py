"""Export a cache-aware streaming NeMo transducer for sherpa-onnx's ``OnlineRecognizer``: one folder per chunk.

A cache-aware FastConformer (``kdstore/configs/_streaming.yaml``: ``chunked_limited`` attention,
causal convolutions and downsampling, no feature normalisation) runs chunk by chunk, carrying caches
of its past. NeMo exports it with ``model.set_export_config({"cache_support": True})``: the encoder
then takes ``(audio_signal [B, 80, W], length [B], cache_last_channel [B, layers, cache, d_model],
cache_last_time [B, layers, d_model, kernel - 1], cache_last_channel_len [B])`` and returns the chunk's
encoder frames and the next caches. One graph serves one chunk size (the window W, the frames it
keeps and the attention masks are traced in), so :func:`export_streaming` writes, for each chunk
size, ``OUT/chunk-<ms>ms/`` (:func:`kdstore.runtime.layout.chunk_folder`) holding sherpa-onnx's
layout (:mod:`kdstore.export.sherpa_layout`: ``encoder.onnx``, ``decoder.onnx``, ``joiner.onnx``,
``tokens.txt``; with ``int8`` the ``*.int8.onnx`` copies too).

**Chunks.** A chunk of ``[left, right]`` attention context (``encoder.att_context_size``) is
``right + 1`` encoder frames: ``chunk_ms = (right + 1) x subsampling_factor x window_stride``
(560 ms for ``[70, 6]`` at 8 x 10 ms) with ``right`` frames of look-ahead (``lookahead_ms``). A
multi-look-ahead model (``att_context_size`` a list) was trained for each listed context; by default
every one of them is exported (a deployment picks its latency; ``kdstore transcribe --streaming``
runs the model's default, the first listed, unless told otherwise), ``chunk_ms`` picks some. The
mapping and the refusal of a chunk the model was not trained for are :mod:`kdstore.nemo.streaming`'s
(``chunk_frames``), as is the test for a cache-aware model (``check_streamable``).

**Encoder metadata** (:func:`streaming_metadata`, on top of :func:`kdstore.export.metadata.export_metadata`):
what sherpa-onnx's ``OnlineTransducerNeMoModel`` reads (``InitEncoder`` in its
``sherpa-onnx/csrc/online-transducer-nemo-model.cc``), with no default, so that a missing key ends the
whole process (:data:`kdstore.runtime.sherpa_online.SHERPA_ONLINE_REQUIRED_METADATA`):
``vocab_size`` (without blank), ``window_size`` (mel frames per encoder call: the chunk plus NeMo's
pre-encode cache; it replaces the front end's informative ``window_size`` in seconds, which
``n_window_size`` keeps in samples), ``chunk_shift`` (mel frames it moves on: the chunk),
``subsampling_factor``, ``pred_rnn_layers``, ``pred_hidden``, ``cache_last_channel_dim1..3`` (layers,
``last_channel_cache_size``, d_model) and ``cache_last_time_dim1..3`` (layers, d_model, kernel - 1);
and, read when present, ``normalize_type`` (``NA``: none). These are the values sherpa-onnx's own
``scripts/nemo/fast-conformer-hybrid-transducer-ctc/export-onnx-transducer.py`` writes; the feature
dimension it takes from the encoder's input shape. kdstore adds ``streaming`` (``cache_aware``),
``chunk_ms``, ``lookahead_ms``, ``att_context_left``/``_right``, ``default_chunk_ms``,
``trained_chunk_ms`` and NeMo's ``pre_encode_cache_size``, ``drop_extra_pre_encoded`` and
``valid_out_len`` (encoder frames per chunk), which :mod:`kdstore.runtime.sherpa_online` uses to put
its input on NeMo's chunk grid. There is no ``max_encoder_frames``: a streaming encoder attends to its
cache plus one chunk, so it takes input of any length, and its position buffer is cut to that
(:func:`kdstore.export.length_limit.set_encoder_frame_limit`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdstore.errors import ExportError
from kdstore.export.checks import check_exportable
from kdstore.export.first_chunk import first_chunk_lead, first_chunk_padding
from kdstore.export.length_limit import encoder_frame_limit, set_encoder_frame_limit
from kdstore.export.metadata import PROVENANCE_KEYS, export_metadata
from kdstore.export.onnx_edit import quantize_int8
from kdstore.export.sherpa_layout import write_sherpa_layout
from kdstore.files import sha256_file
from kdstore.nemo.checkpoint import restore_model
from kdstore.nemo.frontend import check_frontend, frontend_config_from_nemo
from kdstore.nemo.streaming import check_streamable, chunk_frames, context_chunk_ms, lookahead_ms
from kdstore.runtime.layout import LAYOUTS, chunk_folder, int8_name
from kdstore.runtime.sherpa_online import SHERPA_ONLINE_REQUIRED_METADATA


@dataclass(frozen=True)
class StreamingChunk:
    """One attention context a cache-aware model was trained for, and its chunk in milliseconds."""

    left: int  # encoder frames of left context (the attention cache)
    right: int  # encoder frames of look-ahead; a chunk is right + 1 frames
    chunk_ms: int
    lookahead_ms: int

    @property
    def folder(self) -> str:
        """The export's sub-folder, e.g. ``chunk-560ms``."""
        return chunk_folder(self.chunk_ms)


@dataclass(frozen=True, kw_only=True)
class ChunkExport:
    """What :func:`export_streaming` wrote for one chunk size."""

    chunk: StreamingChunk
    out_dir: Path  # OUT/chunk-<ms>ms
    files: tuple[Path, ...]
    metadata: Mapping[str, str]  # the encoder's
    check: Mapping[str, int] = field(default_factory=dict)  # :func:`check_streaming_encoder`'s report


@dataclass(frozen=True, kw_only=True)
class StreamingExport:
    """What :func:`export_streaming` wrote: one :class:`ChunkExport` per chunk size, in the order asked."""

    out_dir: Path
    chunks: tuple[ChunkExport, ...]
    default_chunk_ms: int  # the chunk of the model's default attention context
    vocab_size: int  # without blank

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(p for c in self.chunks for p in c.files)


def check_cache_aware(model: Any, path: str | Path = "model") -> None:
    """Raise ExportError, in one line naming ``path`` and the fix, unless sherpa-onnx can stream ``model``.

    First NeMo's own cache-aware conditions (:func:`kdstore.nemo.streaming.check_streamable`: causal
    convolutions and downsampling, chunked attention), then the export's: a limited left context (the
    attention cache is part of every stream's state; unlimited would mean NeMo's 10,000 frames) and no
    per-utterance feature normalisation (a live stream has no whole utterance, and sherpa-onnx's online
    recognizer never normalises).
    """
    check_streamable(model, str(path), error=ExportError)
    fix = "train a streaming config (e.g. --config tiny-streaming) or export without --streaming"
    if any(int(left) < 0 for left, _ in model.encoder.att_context_size_all):
        raise ExportError(f"{path}: --streaming needs a limited left attention context, but "
                          f"att_context_size {model.encoder.att_context_size_all} has -1 (unlimited); {fix}")
    normalize = str(model.cfg.preprocessor.get("normalize", "NA"))
    if normalize not in ("NA", "None", ""):
        raise ExportError(f"{path}: --streaming needs preprocessor.normalize NA, but this model normalises features "
                          f"per utterance ({normalize!r}), which a live stream cannot; {fix}")


def trained_chunks(model: Any) -> list[StreamingChunk]:
    """The chunks of every attention context ``model`` was trained for, its default (first) one first
    (:func:`kdstore.nemo.streaming.context_chunk_ms`: ``(right + 1) x 80`` ms at 8 x 10 ms)."""
    default = [int(v) for v in model.encoder.att_context_size]
    chunks = [StreamingChunk(left=int(left), right=int(right), chunk_ms=round(context_chunk_ms(model, [left, right])),
                             lookahead_ms=round(lookahead_ms(model, [left, right])))
              for left, right in model.encoder.att_context_size_all]
    chunks.sort(key=lambda c: [c.left, c.right] != default)  # stable: the default first, then the listed order
    return chunks


def select_chunks(model: Any, chunk_ms: Sequence[int] | None, path: str | Path = "model") -> list[StreamingChunk]:
    """The chunks to export: ``chunk_ms`` (each one the model was trained for), or all of them when None/empty.

    Raises ExportError (:func:`kdstore.nemo.streaming.chunk_frames`: one line listing the supported
    chunk sizes) for a chunk the model was not trained for.
    """
    chunks = trained_chunks(model)
    if not chunk_ms:
        return chunks
    picked = []
    for ms in dict.fromkeys(int(m) for m in chunk_ms):
        left, right = chunk_frames(model, ms, str(path), error=ExportError)
        picked.append(next(c for c in chunks if (c.left, c.right) == (left, right)))
    return picked


def streaming_metadata(model: Any, chunk: StreamingChunk, chunks: Sequence[StreamingChunk]) -> dict[str, str]:
    """The streaming encoder keys for ``chunk`` (sherpa-onnx's, then kdstore's; all values strings).

    Call after ``model.encoder.set_default_att_context_size([chunk.left, chunk.right])``: the values come
    from NeMo's ``encoder.streaming_cfg`` for that context. ``chunks`` are all the model was trained for.
    """
    encoder = model.encoder
    cfg = encoder.streaming_cfg

    def second(value: Any) -> int:  # NeMo keeps [first chunk, later chunks] for causal subsampling
        return int(value[1] if isinstance(value, (list, tuple)) else value)

    chunk_size, pre_cache = second(cfg.chunk_size), second(cfg.pre_encode_cache_size)
    layers, d_model = len(encoder.layers), int(encoder.d_model)
    return {
        "window_size": str(chunk_size + pre_cache),
        "chunk_shift": str(chunk_size),
        "cache_last_channel_dim1": str(layers),
        "cache_last_channel_dim2": str(int(cfg.last_channel_cache_size)),
        "cache_last_channel_dim3": str(d_model),
        "cache_last_time_dim1": str(layers),
        "cache_last_time_dim2": str(d_model),
        "cache_last_time_dim3": str(int(encoder.conv_context_size[0])),
        "streaming": "cache_aware",
        "chunk_ms": str(chunk.chunk_ms),
        "lookahead_ms": str(chunk.lookahead_ms),
        "att_context_left": str(chunk.left),
        "att_context_right": str(chunk.right),
        "default_chunk_ms": str(chunks[0].chunk_ms),
        "trained_chunk_ms": ",".join(str(c.chunk_ms) for c in chunks),
        "pre_encode_cache_size": str(pre_cache),
        "drop_extra_pre_encoded": str(int(cfg.drop_extra_pre_encoded)),
        "valid_out_len": str(int(cfg.valid_out_len)),
    }


def _cut_position_buffer(model: Any, metadata: Mapping[str, str]) -> None:
    """Size the encoder's position buffer for the cache plus one window: all a streaming call ever attends to."""
    import torch

    if encoder_frame_limit(model) is None:
        return
    window = int(metadata["window_size"])
    with torch.no_grad():
        pre, _ = model.encoder.pre_encode(x=torch.zeros(1, window, int(model.encoder._feat_in)),
                                          lengths=torch.tensor([window]))
    frames = int(metadata["cache_last_channel_dim2"]) + int(pre.shape[1]) + 1
    shift = float(model.preprocessor._cfg.get("window_stride", 0.01)) * int(model.encoder.subsampling_factor)
    set_encoder_frame_limit(model, frames * shift)


def check_streaming_encoder(path: Path, metadata: Mapping[str, str], steps: int = 3) -> dict[str, int]:
    """Run the streaming encoder at ``path`` for ``steps`` chunks with onnxruntime, as sherpa-onnx calls it:
    features ``[1, feat, window_size]``, caches shaped by the metadata (zeros first, then what it returned).

    Returns ``{"frames_per_chunk": ..., "steps": ...}``. Raises ExportError when the encoder fails on
    those inputs or its outputs do not have the shapes the metadata promises (sherpa-onnx would feed
    them back and crash).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = {k: int(metadata[k]) for k in SHERPA_ONLINE_REQUIRED_METADATA}
    feat = int(session.get_inputs()[0].shape[1])
    window = meta["window_size"]
    channel = np.zeros([1, *(meta[f"cache_last_channel_dim{i}"] for i in (1, 2, 3))], np.float32)
    time = np.zeros([1, *(meta[f"cache_last_time_dim{i}"] for i in (1, 2, 3))], np.float32)
    length = np.zeros(1, np.int64)
    names = [i.name for i in session.get_inputs()]
    rng = np.random.default_rng(0)
    frames = 0
    for _ in range(steps):
        features = rng.standard_normal((1, feat, window)).astype(np.float32)
        try:
            out = session.run(None, dict(zip(names, [features, np.array([window], np.int64), channel, time, length])))
        except Exception as err:  # onnxruntime raises its own Fail/InvalidArgument kinds
            first = str(err).strip().splitlines()[0][-200:] if str(err).strip() else type(err).__name__
            raise ExportError(f"{path}: the encoder fails on inputs shaped as its metadata says (window {window}, "
                              f"caches {channel.shape} and {time.shape}): {first}") from err
        if len(out) != 5:
            raise ExportError(f"{path}: expected a cache-aware encoder with 5 outputs, got {len(out)}")
        encoded, _, next_channel, next_time, length = out
        if next_channel.shape != channel.shape or next_time.shape != time.shape:
            raise ExportError(f"{path}: the encoder returns caches {next_channel.shape} and {next_time.shape} but its "
                              f"metadata says {channel.shape} and {time.shape}; sherpa-onnx would fail on them")
        channel, time, frames = next_channel, next_time, int(encoded.shape[2])
    if frames != int(metadata.get("valid_out_len", frames)):
        raise ExportError(f"{path}: the encoder gives {frames} frames per chunk, its metadata says "
                          f"{metadata['valid_out_len']}")
    return {"frames_per_chunk": frames, "steps": steps}


def export_streaming(model_path: Path, out_dir: Path, chunk_ms: Sequence[int] | None = None, int8: bool = False,
                     check: bool = True, progress: bool = False) -> StreamingExport:
    """Export the cache-aware model ``model_path`` (.nemo) into ``out_dir/chunk-<ms>ms/`` per chunk size.

    ``chunk_ms``: the chunk sizes in milliseconds (each one the model was trained for; None or empty:
    all of them, the default first); ``int8`` adds quantised copies (and removes stale ones
    otherwise); ``check`` runs each encoder for a few chunks with onnxruntime
    (:func:`check_streaming_encoder`); ``progress`` shows a tqdm bar on stderr. Raises ExportError,
    before writing anything, for a missing file, a model that is not cache-aware or that the runtimes
    cannot serve, a chunk the model was not trained for, or a folder that holds an offline export.
    """
    from tqdm import tqdm

    model_path, out_dir = Path(model_path), Path(out_dir)
    if not model_path.is_file():
        raise ExportError(f"{model_path}: no such .nemo file; pass the path of a trained NeMo model")
    offline = [layout.encoder for layout in LAYOUTS.values() if (out_dir / layout.encoder).exists()]
    if offline:
        raise ExportError(f"{out_dir} already holds an offline export ({offline[0]}); export --streaming into an "
                          "empty folder or one that holds chunk-*ms folders only")
    model = restore_model(model_path, error=ExportError)
    check_exportable(model, model_path, streaming=True)
    check_cache_aware(model, model_path)
    chunks = select_chunks(model, chunk_ms, model_path)
    every = trained_chunks(model)
    frontend = frontend_config_from_nemo(model.preprocessor)
    check_frontend(model.preprocessor, frontend)
    base = export_metadata(model, frontend, sha256_file(model_path))
    provenance = {k: base[k] for k in PROVENANCE_KEYS}

    model.set_export_config({"cache_support": True})
    written = []
    bar = tqdm(total=len(chunks), desc="export-onnx --streaming", unit="chunk", disable=not progress)
    with bar:
        for chunk in chunks:
            bar.set_postfix_str(chunk.folder)
            model.encoder.set_default_att_context_size([chunk.left, chunk.right])  # also sets streaming_cfg
            metadata = {**base, **streaming_metadata(model, chunk, every)}
            _cut_position_buffer(model, metadata)
            folder = out_dir / chunk.folder
            folder.mkdir(parents=True, exist_ok=True)
            with first_chunk_padding(model, first_chunk_lead(model)):  # start like NeMo's streaming decode
                paths = write_sherpa_layout(model, folder, metadata, provenance)
            graphs = [paths[role] for role in ("encoder", "decoder", "joiner")]
            quantized: tuple[Path, ...] = ()
            if int8:
                quantized = tuple(quantize_int8(p, metadata if p == paths["encoder"] else provenance) for p in graphs)
            else:  # int8 files of an earlier export would not match the new float ones
                for path in graphs:
                    path.with_name(int8_name(path.name)).unlink(missing_ok=True)
            report: dict[str, int] = {}
            if check:
                for encoder in (paths["encoder"], *quantized[:1]):
                    report = check_streaming_encoder(encoder, metadata)
            written.append(ChunkExport(chunk=chunk, out_dir=folder, files=(*graphs, paths["tokens"], *quantized),
                                       metadata=metadata, check=report))
            bar.update()
    return StreamingExport(out_dir=out_dir, chunks=tuple(written), default_chunk_ms=every[0].chunk_ms,
                           vocab_size=int(base["vocab_size"]))

