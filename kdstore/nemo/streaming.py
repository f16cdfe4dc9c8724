"""NeMo's cache-aware streaming decode of one utterance (or a batch), with the time each token appeared.

A cache-aware FastConformer (``att_context_style: chunked_limited``, causal convolutions, causal
downsampling; kdstore/configs/_streaming.yaml) is trained with chunked attention: a frame sees
``left`` frames back and the rest of its chunk of ``right + 1`` frames. Fed chunk by chunk with
NeMo's caches (``conformer_stream_step``), it computes exactly what its offline forward computes with
the same attention context (NeMo's ``compare_vs_offline`` property), while a live source only has to
wait for the end of each chunk. This module maps chunk lengths in ms to NeMo's ``[left, right]``
contexts, runs NeMo's own streaming loop (the chunking of ``CacheAwareStreamingAudioBuffer``, encoder
caches, greedy RNN-T decoding with the previous hypotheses carried over), and records when each token
first appeared: the audio time that had arrived when the chunk that emitted it was complete.

Exactness (what the tests check):

* ``chunked_limited`` with a limited left context ``[L, R]`` (``L`` divisible by ``R + 1``): streaming
  equals the offline forward with ``encoder.set_default_att_context_size([L, R])``, token for token.
* Unlimited left context (``[-1, R]``, or ``att_context_style: regular`` with ``[-1, 0]``): the
  attention cache must hold the whole past. NeMo's ``max_context=10000`` frames overruns its
  positional-encoding table (5000 frames) and fails, and with ``chunked_limited`` a cache that is not
  a multiple of ``R + 1`` shifts NeMo's chunk grid (chunk indices of cache + chunk are counted from the
  cache's start), so streaming and offline differ unless ``R = 0`` (a 100-frame cache with ``[-1, 6]``
  changed 3 of 5 random-weight transcripts). Here the cache is sized per call to the longest
  utterance's encoder length rounded up to a multiple of ``R + 1``: streaming then equals offline
  eval (``kdstore eval``) exactly, for every ``R``; that is the "unlimited context" acceptance
  property.
* Two details of ``CacheAwareStreamingAudioBuffer`` are not exact and are done differently here: it
  zero-pads the pre-encode cache of the second chunk when the first chunk is shorter than that cache
  (``[L, 0]``: 1 mel frame), and zeros are not what the offline causal convolutions see (the first
  conv's bias and ReLU make them non-zero); and it drops a last chunk shorter than the subsampling
  factor, which the offline forward turns into one more frame.

Times: one encoder frame is ``subsampling_factor x window_stride`` (80 ms for 8x subsampling of a
10 ms hop); a chunk of ``R + 1`` frames is ``chunk_ms = (R + 1) x 80`` ms (560 ms for ``[70, 6]``)
and its look-ahead ``R x 80`` ms. With causal downsampling encoder frame ``i`` ends at mel frame
``8 i``; the first chunk therefore holds ``1 + 8 R`` mel frames and every later one ``8 (R + 1)``.
Mel frame ``m`` (centred STFT) needs audio up to ``m x hop + win_length / 2`` samples; a chunk's
emission time is that of its last mel frame, capped at the utterance end.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdstore.errors import KdstoreError, StreamingError

__all__ = ["StreamedUtterance", "StreamingError", "chunk_frames", "stream_decode", "stream_decode_batch"]


@dataclass(frozen=True)
class StreamedUtterance:
    """What a live listener saw of one utterance.

    ``text``: the final greedy transcript. ``token_ids``: its tokens (vocabulary ids, blank excluded),
    ``(U,)``. ``token_times_s``: for each token, the audio time in seconds that had arrived when the
    token first appeared in the hypothesis (end of the audio its chunk needed, capped at the
    utterance end), ``(U,)``, non-decreasing.
    """

    text: str
    token_ids: tuple[int, ...]
    token_times_s: tuple[float, ...]


# --- contexts and chunk lengths --------------------------------------------------------------------


def frame_ms(model: Any) -> float:
    """Duration of one encoder frame in ms: ``subsampling_factor x window_stride`` (80.0 for FastConformer)."""
    stride_s = float(model.cfg.preprocessor.window_stride)
    return float(model.encoder.subsampling_factor) * stride_s * 1000.0


def context_chunk_ms(model: Any, context: Sequence[int]) -> float:
    """Chunk length in ms of the attention context ``[left, right]``: ``(right + 1) x frame_ms``."""
    return (int(context[1]) + 1) * frame_ms(model)


def _style(model: Any) -> str:
    return str(getattr(model.encoder, "att_context_style", "regular"))


def _fully_causal_regular(model: Any) -> bool:
    """``regular`` attention with unlimited left and no right context ([-1, 0]): causal, streams exactly."""
    return _style(model) == "regular" and [int(c) for c in model.encoder.att_context_size] == [-1, 0]


def check_streamable(model: Any, name: str = "model", error: type[KdstoreError] = StreamingError) -> None:
    """Raise ``error`` (one line) unless ``model`` streams cache-aware and exactly.

    Streamable: a NeMo transducer whose ConformerEncoder has causal convolutions
    (``conv_context_size: causal``), causal downsampling, and either ``att_context_style:
    chunked_limited`` or a fully causal ``regular`` attention with unlimited left context
    (``att_context_size: [-1, 0]``). ``name`` (a path) is named in the message.
    """
    encoder = getattr(model, "encoder", None)
    if encoder is None or not hasattr(encoder, "setup_streaming_params") or not hasattr(model, "conformer_stream_step"):
        raise error(f"{name}: {type(model).__name__} has no cache-aware streaming encoder; train a streaming "
                    "config (e.g. --config tiny-streaming) or drop --streaming")
    if not hasattr(model, "joint"):
        raise error(f"{name}: {type(model).__name__} is not a transducer; streaming eval serves RNN-T and hybrid models")
    reasons = []
    style = _style(model)
    if style != "chunked_limited" and not _fully_causal_regular(model):
        reasons.append(f"att_context_style is {style} with att_context_size {list(encoder.att_context_size)} "
                       "(needs chunked_limited, or regular with [-1, 0])")
    if int(encoder.conv_context_size[1]) != 0:
        reasons.append(f"convolutions see {encoder.conv_context_size[1]} future frames (needs conv_context_size: causal)")
    if not getattr(encoder.pre_encode, "is_causal", False):
        reasons.append("downsampling is not causal (needs causal_downsampling: true)")
    if reasons:
        raise error(f"{name} is not a cache-aware streaming model: {'; '.join(reasons)}; train a streaming "
                    "config (e.g. --config tiny-streaming, kdstore/configs/_streaming.yaml) or drop --streaming")


def supported_chunk_ms(model: Any) -> list[int]:
    """The chunk lengths (ms) ``model`` was trained for, in the order of its ``att_context_size`` list
    (the first is the default); for a fully causal ``regular`` model, its default (one frame)."""
    if _fully_causal_regular(model):
        return [round(frame_ms(model))]
    return [round(context_chunk_ms(model, c)) for c in model.encoder.att_context_size_all]


def chunk_frames(model: Any, chunk_ms: float | None = None, name: str = "model",
                 error: type[KdstoreError] = StreamingError) -> list[int]:
    """NeMo's ``[left, right]`` attention context (encoder frames) for chunks of ``chunk_ms`` ms.

    ``chunk_ms = (right + 1) x frame_ms`` (560 -> ``[70, 6]`` for the streaming configs); ``None`` is
    the model's default (first) context. A chunked_limited model accepts the contexts of its
    ``att_context_size`` list only; a fully causal ``regular`` model (``[-1, 0]``) accepts any multiple
    of one frame (``[-1, chunk / frame - 1]``: with no look-ahead, a longer chunk only waits longer).

    Raises ``error`` (default :class:`StreamingError`) for a model that does not stream
    (:func:`check_streamable`) or a chunk length it was not trained for.
    """
    check_streamable(model, name, error)
    step = frame_ms(model)
    if _fully_causal_regular(model):
        if chunk_ms is None:
            return [-1, 0]
        frames = chunk_ms / step
        if frames < 1 or abs(frames - round(frames)) > 1e-6:
            raise error(f"--chunk-ms {chunk_ms:g}: {name} is fully causal and streams in multiples of "
                        f"{step:g} ms; pass one of those")
        return [-1, round(frames) - 1]
    contexts = [[int(a), int(b)] for a, b in model.encoder.att_context_size_all]
    if chunk_ms is None:
        return [int(c) for c in model.encoder.att_context_size]
    for context in contexts:
        if abs(context_chunk_ms(model, context) - float(chunk_ms)) < 1e-6:
            return context
    listed = ", ".join(f"{ms:g}" for ms in supported_chunk_ms(model))
    raise error(f"--chunk-ms {chunk_ms:g}: {name} was trained for chunks of {listed} ms only "
                f"(att_context_size {contexts}); pass one of those")


def lookahead_ms(model: Any, context: Sequence[int]) -> float:
    """Attention look-ahead in ms of ``[left, right]``: ``right x frame_ms`` (0 for a causal model)."""
    return int(context[1]) * frame_ms(model)


@contextmanager
def streaming_context(model: Any, context: Sequence[int], max_frames: int | None = None) -> Iterator[None]:
    """Set the encoder's default attention context to ``context`` (offline forward and streaming alike)
    for the ``with`` block, then restore the previous one.

    ``max_frames`` (encoder frames of the longest utterance) sizes the attention cache of an unlimited
    left context exactly (rounded up to a multiple of the chunk; see the module docstring).
    """
    encoder = model.encoder
    previous = list(encoder.att_context_size)
    context = [int(c) for c in context]
    try:
        if _style(model) == "regular":  # fully causal [-1, 0]: stream R + 1 frames per step
            chunk = context[1] + 1
            encoder.setup_streaming_params(chunk_size=chunk, shift_size=chunk, left_chunks=None,
                                           att_context_size=[-1, 0], max_context=_cache_frames(max_frames, chunk))
        else:
            encoder.att_context_size = context  # set_default_att_context_size without its default max_context
            encoder.setup_streaming_params(max_context=_cache_frames(max_frames, context[1] + 1))
        needed = encoder.streaming_cfg.last_channel_cache_size + context[1] + 2
        if needed > encoder.max_audio_length:  # the relative positions must cover cache + chunk
            encoder.set_max_audio_length(needed)
        yield
    finally:
        encoder.att_context_size = previous
        encoder.setup_streaming_params()


def _cache_frames(max_frames: int | None, chunk: int) -> int:
    frames = 10000 if max_frames is None else max(int(max_frames), 1)
    return chunk * math.ceil(frames / chunk)


# --- decoding -------------------------------------------------------------------------------------


def _features(model: Any, audios: Sequence[np.ndarray]) -> tuple[Any, Any]:
    """Log-mel features of each utterance with the model's own preprocessor: ``(B, n_mels, M)`` and valid
    lengths ``(B,)`` (what the offline forward sees)."""
    import torch

    lengths = torch.tensor([len(a) for a in audios], dtype=torch.long)
    signal = torch.zeros(len(audios), int(lengths.max()), dtype=torch.float32)
    for i, audio in enumerate(audios):
        signal[i, : len(audio)] = torch.from_numpy(np.asarray(audio, dtype=np.float32))
    features, feature_len = model.preprocessor(input_signal=signal.to(model.device), length=lengths.to(model.device))
    return features, feature_len


def _encoder_frames(model: Any, mel_frames: int) -> int:
    """Encoder frames of ``mel_frames`` mel frames (the pre-encoder's own length rule)."""
    import torch

    _, out = model.encoder.pre_encode(x=torch.zeros(1, mel_frames, model.encoder._feat_in, device=model.device),
                                      lengths=torch.tensor([mel_frames], device=model.device))
    return int(out[0])


def stream_decode(model: Any, audio: np.ndarray, chunk_ms: float | None = None,
                  complete_last_chunk: bool = False) -> StreamedUtterance:
    """Cache-aware streaming greedy decode of one utterance (see :func:`stream_decode_batch`).

    ``audio``: ``(samples,)`` float waveform at the model's sample rate. ``chunk_ms``: chunk length in
    ms (``None``: the model's default). ``complete_last_chunk``: see :func:`complete_with_silence`.
    Raises :class:`StreamingError` for a model that does not stream or a chunk length it was not
    trained for.
    """
    return stream_decode_batch(model, [audio], chunk_ms, complete_last_chunk=complete_last_chunk)[0]


def complete_with_silence(model: Any, audio: np.ndarray, context: Sequence[int]) -> np.ndarray:
    """``audio`` followed by the digital silence that fills its last chunk: what a live source that keeps
    sending silence until the chunk is complete hands over, and what sherpa-onnx's online recognizer
    decodes (it runs full windows only; ``kdstore.runtime.sherpa_online.tail_frames``).

    ``audio``: ``(samples,)`` at the model's rate; ``context``: the ``[left, right]`` attention context.
    With ``M`` mel frames, NeMo's chunks (``CacheAwareStreamingAudioBuffer``) are a first one of
    ``chunk_size[0]`` frames and then ``chunk_size[1]`` each; the result has
    ``chunk_size[0] + k x chunk_size[1]`` frames for the smallest such ``k`` that covers ``M`` (so the same
    chunk count). Its last chunk sees silence where NeMo's shorter last chunk sees padding, which the
    chunk's own frames attend to; this changes a transcript only at its end.
    """
    import torch

    pre = model.cfg.preprocessor
    hop = round(float(pre.window_stride) * float(pre.sample_rate))
    samples = np.asarray(audio, dtype=np.float32)
    frames = int(model.preprocessor.featurizer.get_seq_len(torch.tensor([len(samples)], dtype=torch.float))[0])
    with streaming_context(model, context, _encoder_frames(model, max(frames, 1))):
        cfg = model.encoder.streaming_cfg
        first, later = _first(cfg.chunk_size), _second(cfg.chunk_size)
    full = first + later * math.ceil(max(0, frames - first) / later)
    return np.concatenate([samples, np.zeros((full - frames) * hop, dtype=np.float32)])


def stream_decode_batch(model: Any, audios: Sequence[np.ndarray], chunk_ms: float | None = None,
                        name: str = "model", complete_last_chunk: bool = False) -> list[StreamedUtterance]:
    """NeMo's cache-aware streaming decode of several utterances side by side, one chunk at a time.

    ``audios``: waveforms ``(samples,)`` at the model's sample rate. Features are the model's own
    preprocessor's over each whole utterance, cut to their valid length (with ``normalize: NA`` a live
    front end computes the same frames). They are cut into chunks the way NeMo's
    ``CacheAwareStreamingAudioBuffer`` does (``encoder.streaming_cfg``: chunk and shift sizes, the
    pre-encode cache of past mel frames) with two differences that make streaming exact: the
    pre-encode cache is never zero-padded (a 1-frame first chunk, ``[L, 0]``, gets a shorter cache and
    drops only the frames that cache yields), and a last chunk shorter than the subsampling factor is
    decoded, not dropped. ``conformer_stream_step`` runs the encoder with its caches and NeMo's
    greedy RNN-T decoding continues the previous hypotheses. ``token_times_s`` records, per token,
    the audio time its chunk needed (module docstring). Hybrid models decode with their RNN-T head.

    ``complete_last_chunk``: decode each utterance followed by the silence that completes its last chunk
    (:func:`complete_with_silence`), as sherpa-onnx's online recognizer does; token times stay capped at
    the utterance's own end.

    Raises :class:`StreamingError` (one line, naming ``name``) for a model that does not stream or an
    untrained ``chunk_ms``.
    """
    import torch

    if not audios:
        return []
    context = chunk_frames(model, chunk_ms, name)
    model.eval()
    pre = model.cfg.preprocessor
    sample_rate = float(pre.sample_rate)
    hop = round(float(pre.window_stride) * sample_rate)
    half_window = round(float(pre.window_size) * sample_rate) // 2
    durations = [len(a) / sample_rate for a in audios]
    if complete_last_chunk:
        audios = [complete_with_silence(model, a, context) for a in audios]
    if getattr(model, "cur_decoder", "rnnt") != "rnnt":
        model.change_decoding_strategy(decoder_type="rnnt")
    batch = len(audios)
    with torch.inference_mode():
        features, feature_len = _features(model, audios)  # (B, n_mels, M), (B,)
        mel_len = [int(n) for n in feature_len]
        with streaming_context(model, context, _encoder_frames(model, max(mel_len))):
            cfg = model.encoder.streaming_cfg
            cache_size = _second(cfg.pre_encode_cache_size)
            caches = model.encoder.get_initial_cache_state(batch_size=batch)
            hyps = None
            drops: dict[int, int] = {}
            first_seen: list[list[float]] = [[] for _ in audios]
            start, step = 0, 0
            while start < max(mel_len):
                size = _first(cfg.chunk_size) if step == 0 else _second(cfg.chunk_size)
                cached = min(start, cache_size)  # past mel frames the pre-encoder re-reads
                chunk = features[:, :, start - cached: start + size]
                lengths = torch.tensor([cached + min(max(n - start, 0), size) for n in mel_len], device=model.device)
                drop = 0 if step == 0 else drops.setdefault(cached, _encoder_frames(model, cached))
                last = start + size >= max(mel_len)
                _, _, *caches, hyps = model.conformer_stream_step(
                    processed_signal=chunk, processed_signal_length=lengths,
                    cache_last_channel=caches[0], cache_last_time=caches[1], cache_last_channel_len=caches[2],
                    keep_all_outputs=last, previous_hypotheses=hyps, drop_extra_pre_encoded=drop,
                    return_transcription=True)
                for i, hyp in enumerate(hyps):
                    last_mel = min(start + size, mel_len[i]) - 1
                    heard = min(durations[i], (last_mel * hop + half_window) / sample_rate)
                    first_seen[i] += [heard] * (len(_token_ids(hyp)) - len(first_seen[i]))
                start += _first(cfg.shift_size) if step == 0 else _second(cfg.shift_size)
                step += 1
    out = []
    for i, hyp in enumerate(hyps or []):
        ids = _token_ids(hyp)
        out.append(StreamedUtterance(text=_text(model, hyp, ids), token_ids=tuple(ids),
                                     token_times_s=tuple(first_seen[i][: len(ids)])))
    while len(out) < batch:  # no audio at all
        out.append(StreamedUtterance(text="", token_ids=(), token_times_s=()))
    return out


def _first(size: Any) -> int:
    return int(size[0]) if isinstance(size, (list, tuple)) else int(size)


def _second(size: Any) -> int:
    return int(size[1]) if isinstance(size, (list, tuple)) else int(size)


def _token_ids(hyp: Any) -> list[int]:
    seq = hyp.y_sequence
    ids = seq.tolist() if hasattr(seq, "tolist") else list(seq)
    return [int(t) for t in ids]


def _text(model: Any, hyp: Any, ids: list[int]) -> str:
    text = getattr(hyp, "text", None)
    if isinstance(text, str):
        return text
    return model.tokenizer.ids_to_text(ids) if ids else ""
