"""How many frames a NeMo FastConformer makes of ``n`` samples: the one frame-count formula.

Every stored lattice row is addressed by (utterance, t, u), so every stage that predicts T must
predict NeMo's T exactly: screening (an utterance with no frame, or more tokens than its frames can
emit), the student's up-front alignment check against a store, and the numpy front end of the
runtime. They all use this module. Standard library only, so every package (inputs, runtime, store,
nemo, distill) may import it.

Two steps, as NeMo computes them:

1. mel frames, NeMo's ``FilterbankFeatures.get_seq_len``: ``(n + 2 * pad - n_fft) // hop`` with
   ``pad = n_fft // 2`` (``center=True``, the default) or ``(n_fft - hop) // 2`` with ``exact_pad``;
   that is ``n // hop`` by default and ``n // hop - 1`` with ``exact_pad`` (even n_fft and hop);
2. encoder frames, NeMo's ``calc_length`` for the ``striding``/``dw_striding`` subsampling stack:
   each of the ``log2(factor)`` stages (kernel 3, stride 2, padding 1 each side) maps
   ``L -> (L + 2 - 3) // 2 + 1``; with ``causal_downsampling`` (cache-aware streaming encoders: padding
   2 on the left, 1 on the right, NeMo's ``ConvSubsampling(is_causal=True)``) ``L -> (L + 3 - 3) // 2 + 1``.
   A causal stack gives the symmetric one's T or one frame more, never another difference
   (:func:`causal_extra_frames`; tests/test_frames.py checks every mel count up to an hour), and its frame
   t covers the audio of the symmetric stack's frame t (ending up to one mel frame earlier), so a streaming
   student lines up with an offline teacher's lattice node for node, plus a last frame of padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class FrameSettings(Protocol):
    """What decides T (the store's ``FrontEnd`` has these fields)."""

    @property
    def sample_rate(self) -> int: ...  # Hz

    @property
    def window_stride(self) -> float: ...  # seconds (the feature hop)

    @property
    def n_fft(self) -> int | None: ...  # None: not recorded (stores written before it was); even assumed

    @property
    def exact_pad(self) -> bool: ...

    @property
    def subsampling_factor(self) -> int: ...

    # optional: ``causal_downsampling`` (bool; read with getattr, False when absent: older stores)


def mel_frames(num_samples: int, hop: int, n_fft: int | None = None, exact_pad: bool = False) -> int:
    """Valid log-mel frames NeMo's preprocessor gives for ``num_samples`` samples (never negative).

    ``hop`` and ``n_fft`` are in samples. ``n_fft`` may be None only without ``exact_pad`` (the count
    is then ``num_samples // hop``, as for any even ``n_fft``).

    Raises:
        ValueError: ``hop`` < 1, or ``exact_pad`` without ``n_fft``.
    """
    if hop < 1:
        raise ValueError(f"hop: expected a positive number of samples, got {hop}")
    if n_fft is None:
        if exact_pad:
            raise ValueError("n_fft is needed to count frames with exact_pad")
        return max(0, num_samples // hop)
    pad = (n_fft - hop) // 2 if exact_pad else n_fft // 2
    return max(0, (num_samples + 2 * pad - n_fft) // hop)


def subsampled_frames(frames: int, factor: int, causal: bool = False) -> int | None:
    """Frames after a ``striding``/``dw_striding`` stack of ``log2(factor)`` 2x stages (None if
    ``factor`` is not a power of 2: kdstore does not predict T for such encoders). ``causal``: NeMo's
    ``causal_downsampling`` (left padding 2, right 1 per stage) instead of symmetric padding 1."""
    if factor < 1 or factor & (factor - 1):
        return None
    padding = 3 if causal else 2
    while factor > 1:
        frames = (frames + padding - 3) // 2 + 1
        factor //= 2
    return frames


def causal_extra_frames(mel: int, factor: int) -> int | None:
    """How many more encoder frames a causal subsampling stack makes of ``mel`` frames than the symmetric
    one (0 or 1; None when T is not predicted). A cache-aware student distilled from an offline teacher
    (or the other way round) has this many frames more (fewer) than the store."""
    causal, symmetric = subsampled_frames(mel, factor, causal=True), subsampled_frames(mel, factor)
    return None if causal is None or symmetric is None else causal - symmetric


def encoder_frames(num_samples: int, front_end: FrameSettings) -> int | None:
    """Encoder frames T for ``num_samples`` samples at ``front_end.sample_rate`` (None: unknown)."""
    hop = round(front_end.window_stride * front_end.sample_rate)
    mel = mel_frames(num_samples, hop, front_end.n_fft, front_end.exact_pad)
    return subsampled_frames(mel, front_end.subsampling_factor, bool(getattr(front_end, "causal_downsampling", False)))


# The settings that decide T, in the order a difference is named, each with the NeMo config section it
# lives in. Everything else in a front end (n_mels, normalisation, window function, dither, pad_to: NeMo
# pads the feature tensor but computes the valid length before padding) leaves T alone.
T_SETTINGS: tuple[tuple[str, str], ...] = (
    ("sample_rate", "preprocessor"), ("window_stride", "preprocessor"), ("subsampling_factor", "encoder"),
    ("exact_pad", "preprocessor"), ("n_fft", "preprocessor"), ("causal_downsampling", "encoder"),
    ("window_size", "preprocessor"))

# Sample counts at which two front ends' frame counts are compared: every count up to 1 s (all phases of
# the hop and of the subsampling stack), then every 7919th up to an hour (a hop that differs by a rounding
# error shows only after many frames).
_EXHAUSTIVE_S = 1
_SPARSE_S, _SPARSE_STEP = 3600, 7919


@dataclass(frozen=True)
class FrameDifference:
    """Why two front ends give different T: the ``setting`` named (a :data:`T_SETTINGS` name and its
    ``section``), its values, and a sample count whose T differs (None: decided by the settings alone)."""

    setting: str
    section: str
    stored: Any
    other: Any
    samples: int | None = None
    stored_frames: int | None = None
    other_frames: int | None = None


def _first_differing_setting(a: FrameSettings, b: FrameSettings) -> tuple[str, str] | None:
    for name, section in T_SETTINGS:
        x, y = getattr(a, name, None), getattr(b, name, None)
        if x is not None and y is not None and x != y:  # None: not recorded (older stores)
            return name, section
    return None


def frame_count_difference(stored: FrameSettings, other: FrameSettings) -> FrameDifference | None:
    """Whether ``other`` counts a different number of encoder frames T than ``stored`` for the same audio.

    Decided by computing both front ends' T (:func:`encoder_frames`) for every sample count up to 1 s and
    a sparse range up to an hour; a different sample rate is a difference by itself (the audio is resampled
    to each model's rate, so sample counts no longer correspond). Where T cannot be computed (a subsampling
    factor that is not a power of 2, ``exact_pad`` without a recorded ``n_fft``) any differing setting of
    :data:`T_SETTINGS` but ``window_size`` counts. Returns None when T agrees everywhere; else the first
    differing setting of :data:`T_SETTINGS` (``n_fft``, ``window_size`` alone often do not change T).
    """
    if stored.sample_rate != other.sample_rate:
        return FrameDifference("sample_rate", "preprocessor", stored.sample_rate, other.sample_rate)
    rate = stored.sample_rate
    counts = [*range(_EXHAUSTIVE_S * rate), *range(_EXHAUSTIVE_S * rate, _SPARSE_S * rate, _SPARSE_STEP)]
    try:
        for n in counts:
            ts, to = encoder_frames(n, stored), encoder_frames(n, other)
            if ts is None or to is None:
                raise ValueError("T not computable")
            if ts != to:
                name, section = _first_differing_setting(stored, other) or ("front end", "preprocessor")
                return FrameDifference(name, section, getattr(stored, name, None), getattr(other, name, None),
                                       n, ts, to)
    except ValueError:
        for name, section in T_SETTINGS[:-1]:
            x, y = getattr(stored, name, None), getattr(other, name, None)
            if x is not None and y is not None and x != y:
                return FrameDifference(name, section, x, y)
    return None
