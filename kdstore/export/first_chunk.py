"""Make an exported cache-aware encoder start a stream the way NeMo's streaming decode and training do.

**The problem.** A cache-aware encoder exported with ``set_export_config({"cache_support": True})``
always drops the first ``drop_extra_pre_encoded`` frames the subsampling stack makes of its window
(the ones the pre-encode cache of ``pre_encode_cache_size`` mel frames yields), the first window too;
sherpa-onnx's online recognizer feeds every window alike. NeMo's streaming decode that equals the
offline forward (:func:`kdstore.nemo.streaming.stream_decode`, NeMo's ``CacheAwareStreamingAudioBuffer``
without ``pad_and_drop_preencoded``) starts instead with a shorter first chunk and no cache: every
convolution of the causal subsampling stack sees zero padding in front of the first frame, as in
training. Input in front of the first frame cannot stand in for that padding: the second and third
convolutions then see the first one's response to it (``ReLU(bias)`` and more), not zeros. Measured on a
distilled streaming student (kd-d4-s0 of ``bench/streaming.py``, 560 ms chunks, 40 test utterances): with
16 mel frames of lead (log-mel ~0) on NeMo's chunk grid the exported encoder's transcripts equal NeMo's
on 0 of 24 and sherpa-onnx's on 17 of 159 (WER 80.7% vs 63.4%); NeMo's own ``pad_and_drop_preencoded``
mode, which zero-fills the pre-encode cache and also moves the frame grid 7 mel frames, gives 96.4% WER
against 62.5% on the same 40. Students whose attention leans on the first frames of an utterance
carry the start's difference through the whole utterance.

**The fix.** While exporting, :func:`first_chunk_padding` masks the subsampling stack's input and every
intermediate activation at the time steps in front of the stream's start, in the first window only
(``cache_last_channel_len == 0``, per stream of a batch): the window's first ``lead`` mel frames, and
``lead / 2**k`` steps after the k-th stride-2 convolution. With ``lead = drop_extra_pre_encoded x
subsampling_factor`` the frames the encoder keeps from the first window are exactly NeMo's first chunk
(zero padding at every layer), whatever the lead holds; later windows are untouched. A runtime puts
``lead`` mel frames (any audio; :mod:`kdstore.runtime.sherpa_online` uses silence) in front of the stream;
one that does not loses the first ``lead x 10`` ms of audio (its features are masked), and is otherwise
the model as trained.

Works on NeMo's ``ConvSubsampling`` with ``MaskedConvSequential`` (``dw_striding``, ``striding``, causal or
not); raises :class:`ExportError` for another pre-encoder or a lead that the strides do not divide.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kdstore.errors import ExportError

__all__ = ["first_chunk_lead", "first_chunk_padding"]


def first_chunk_lead(model: Any) -> int:
    """Mel frames in front of a stream whose encoder frames the exported encoder drops in every window:
    ``drop_extra_pre_encoded x subsampling_factor`` (16 for NeMo's causal 8x stack)."""
    cfg = model.encoder.streaming_cfg
    return int(cfg.drop_extra_pre_encoded) * int(model.encoder.subsampling_factor)


def _stride(layer: Any) -> int:
    stride = getattr(layer, "stride", 1)
    return int(stride[0] if isinstance(stride, (tuple, list)) else stride)


@contextmanager
def first_chunk_padding(model: Any, lead: int) -> Iterator[None]:
    """Inside this context the model's encoder (as traced for export) treats the first ``lead`` mel frames of
    a stream's first window as zero padding at every layer of its subsampling stack (module docstring).

    ``model``: a cache-aware NeMo ASR model; ``lead``: mel frames (10 ms each). The first window is the one
    whose ``cache_last_channel_len`` is 0. Raises :class:`ExportError` for a pre-encoder that is not NeMo's
    masked convolution stack or a ``lead`` the strides do not divide down to ``drop_extra_pre_encoded``.
    """
    import torch

    encoder = model.encoder
    conv = getattr(encoder.pre_encode, "conv", None)
    if conv is None or type(conv).__name__ != "MaskedConvSequential":
        raise ExportError(f"streaming export: the pre-encoder {type(encoder.pre_encode).__name__} is not NeMo's "
                          "ConvSubsampling with a masked conv stack; cannot pad the first chunk")
    strides = [_stride(layer) for layer in conv]
    total = 1
    for s in strides:
        total *= s
    if lead % total:
        raise ExportError(f"streaming export: a lead of {lead} mel frames does not divide by the subsampling "
                          f"strides ({total}x)")
    state: dict[str, Any] = {}
    original_internal = encoder.forward_internal

    def forward_internal(audio_signal, length, cache_last_channel=None, cache_last_time=None,
                         cache_last_channel_len=None, *args, **kwargs):
        if cache_last_channel_len is not None:
            state["head"] = (cache_last_channel_len == 0).to(torch.int64) * lead  # (B,) mel frames
        try:
            return original_internal(audio_signal, length, cache_last_channel, cache_last_time,
                                     cache_last_channel_len, *args, **kwargs)
        finally:
            state.pop("head", None)

    def conv_forward(x, lengths):
        head = state.get("head")
        x = x.unsqueeze(1)  # (B, 1, time, features)
        current = lengths.clone().float()
        for layer in conv:
            x = x * _keep(x, current.long(), head)
            x = layer(x)
            stride = _stride(layer)
            if stride != 1:
                if hasattr(layer, "_left_padding"):
                    padding = (layer._left_padding, layer._right_padding)
                else:
                    padding = layer.padding
                current = (current + padding[0] + padding[1] - layer.kernel_size[0]) // stride + 1
                if head is not None:
                    head = torch.div(head, stride, rounding_mode="floor")
        x = x * _keep(x, current.long(), head)
        return x, current.long()

    encoder.forward_internal = forward_internal
    conv.forward = conv_forward
    try:
        yield
    finally:
        del encoder.forward_internal
        del conv.forward


def _keep(x: Any, lengths: Any, head: Any) -> Any:
    """``(B, 1, time, 1)`` mask: 1 where ``head <= t < lengths`` (per stream), else 0."""
    import torch

    steps = torch.arange(x.shape[2], device=x.device)[None, :]  # (1, time)
    keep = steps < lengths[:, None]
    if head is not None:
        keep = keep & (steps >= head[:, None])
    return keep.to(x.dtype)[:, None, :, None]
