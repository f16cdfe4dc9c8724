"""How long an input an exported encoder can take: its positional-encoding buffer.

NeMo's Conformer adds position encodings from a buffer (``encoder.pos_enc.pe``) that PyTorch extends
whenever a longer input arrives (``ConformerEncoder.update_max_seq_length``, NeMo
``collections/asr/modules/conformer_encoder.py``); an ONNX export freezes it as a constant, so the
exported encoder takes at most ``L`` encoder frames (NeMo's default ``pos_emb_max_len`` 5000: 400 s
at 80 ms per frame) and fails inside onnxruntime beyond that. The export sets ``L`` on purpose
(:func:`set_encoder_frame_limit`) and records it in the encoder metadata (``max_encoder_frames``,
``max_audio_seconds``), which :mod:`kdstore.runtime` checks before decoding.
"""

from __future__ import annotations

import math
from typing import Any

from kdstore.errors import ExportError


def frame_shift_seconds(model: Any) -> float:
    """Seconds per encoder frame: the feature hop times the subsampling factor (e.g. 0.01 x 8 = 0.08)."""
    return float(model.preprocessor._cfg.get("window_stride", 0.01)) * int(model.encoder.subsampling_factor)


def encoder_frame_limit(model: Any) -> int | None:
    """Encoder frames the position buffer covers now (None: the encoder has no such buffer)."""
    pos_enc = getattr(model.encoder, "pos_enc", None)
    pe = getattr(pos_enc, "pe", None)
    if pe is None:
        return None
    if getattr(model.encoder, "self_attention_model", "rel_pos") in ("rel_pos", "rel_pos_local_attn"):
        return (int(pe.size(1)) + 1) // 2  # relative positions -(L-1) .. L-1
    return int(pe.size(1))


def set_encoder_frame_limit(model: Any, max_audio_seconds: float | None) -> int | None:
    """Size the encoder's position buffer for ``max_audio_seconds`` of audio (None: keep the model's own,
    NeMo's ``pos_emb_max_len``) and return the encoder frames it covers.

    Smaller than the default saves memory on small devices; larger lets long files through (attention
    cost grows with the square of the length). Raises ExportError for a non-positive length or an
    encoder whose buffer cannot be resized.
    """
    if max_audio_seconds is None:
        return encoder_frame_limit(model)
    if max_audio_seconds <= 0:
        raise ExportError(f"--max-audio-seconds must be positive, got {max_audio_seconds}")
    frames = math.ceil(max_audio_seconds / frame_shift_seconds(model))
    encoder = model.encoder
    if encoder_frame_limit(model) is None or not hasattr(encoder, "set_max_audio_length"):
        raise ExportError(f"{type(encoder).__name__} has no position buffer to size; export without --max-audio-seconds")
    del encoder.pos_enc._buffers["pe"]  # extend_pe only grows a buffer that exists: rebuild it at the asked size
    encoder.set_max_audio_length(frames)
    return encoder_frame_limit(model)


def limit_metadata(model: Any, frames: int | None) -> dict[str, str]:
    """The encoder metadata keys for a frame limit: ``max_encoder_frames`` and ``max_audio_seconds``
    (frames x frame shift, rounded down to 0.01 s); empty when there is no limit."""
    if frames is None:
        return {}
    seconds = math.floor(frames * frame_shift_seconds(model) * 100) / 100
    return {"max_encoder_frames": str(frames), "max_audio_seconds": f"{seconds:.2f}"}
