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
   ``L -> (L + 2 - 3) // 2 + 1``.
"""

from __future__ import annotations

from typing import Protocol


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


def subsampled_frames(frames: int, factor: int) -> int | None:
    """Frames after a ``striding``/``dw_striding`` stack of ``log2(factor)`` 2x stages (None if
    ``factor`` is not a power of 2: kdstore does not predict T for such encoders)."""
    if factor < 1 or factor & (factor - 1):
        return None
    while factor > 1:
        frames = (frames + 2 - 3) // 2 + 1
        factor //= 2
    return frames


def encoder_frames(num_samples: int, front_end: FrameSettings) -> int | None:
    """Encoder frames T for ``num_samples`` samples at ``front_end.sample_rate`` (None: unknown)."""
    hop = round(front_end.window_stride * front_end.sample_rate)
    mel = mel_frames(num_samples, hop, front_end.n_fft, front_end.exact_pad)
    return subsampled_frames(mel, front_end.subsampling_factor)
