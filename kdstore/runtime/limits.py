"""What an export can decode, checked before any decoding: too long for its position buffer, or too
short for one feature frame.

An exported encoder takes at most ``max_encoder_frames`` frames (encoder metadata written by
``kdstore.export.length_limit``; exports made before it have no such key and are not checked), and
audio shorter than one feature hop has no frame at all: NeMo returns an empty transcript for it, while
the exported encoder reports one frame of padding (which could emit words), so such inputs are
answered "" without running the graphs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kdstore.errors import AudioError
from kdstore.frames import mel_frames, subsampled_frames
from kdstore.runtime.frontend import AudioInput, FrontEndConfig


def input_name(audio: AudioInput, index: int) -> str:
    """How an input is named in messages: its path, or ``input #i`` for an array."""
    return f"input #{index}" if isinstance(audio, np.ndarray) else str(audio)


def encoder_frames_of(num_samples: int, config: FrontEndConfig, subsampling_factor: int) -> int:
    """Encoder frames NeMo's model gives for ``num_samples`` samples (feature frames, then subsampling)."""
    mel = mel_frames(num_samples, config.n_window_stride, config.n_fft, config.exact_pad)
    if mel == 0:
        return 0
    frames = subsampled_frames(mel, subsampling_factor)
    return frames if frames is not None else -(-mel // subsampling_factor)


def check_lengths(names: Sequence[str], waves: Sequence[np.ndarray], config: FrontEndConfig,
                  metadata: Mapping[str, str]) -> list[int]:
    """Encoder frames of each wave (samples at ``config.sample_rate``); 0 for audio shorter than one feature
    frame. Raises ``AudioError`` naming (``names``) the first input longer than the export's
    ``max_audio_seconds``."""
    factor = int(metadata.get("subsampling_factor", 1) or 1)
    limit = int(metadata["max_encoder_frames"]) if "max_encoder_frames" in metadata else None
    frames = [encoder_frames_of(len(w), config, factor) for w in waves]
    for index, (count, wave) in enumerate(zip(frames, waves, strict=True)):
        if limit is not None and count > limit:
            seconds = len(wave) / config.sample_rate
            allowed = float(metadata.get("max_audio_seconds", limit))
            raise AudioError(f"{names[index]}: {seconds:.2f} s is longer than this export takes "
                             f"({allowed:.2f} s, its position buffer of {limit} encoder frames); nothing was decoded: "
                             f"cut the file into parts, or export again with --max-audio-seconds {int(seconds) + 1}")
    return frames
