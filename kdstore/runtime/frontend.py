"""A numpy log-mel front end that reproduces NeMo's ``AudioToMelSpectrogramPreprocessor`` in eval mode.

The ONNX encoder takes log-mel features, not audio, so ``kdstore transcribe`` needs the
preprocessor outside of torch. This module has no torch and no NeMo dependency; its settings are
read from the exported encoder's metadata (:meth:`FrontEndConfig.from_metadata`).

What NeMo does, step by step, for one utterance of ``n`` samples (eval mode: no dither):

1. pre-emphasis ``y[0] = x[0]``, ``y[i] = x[i] - preemph * x[i - 1]``;
2. STFT with ``center=True`` and zero padding of ``n_fft // 2`` on both sides (or, with
   ``exact_pad``, ``(n_fft - hop) // 2`` and no centring); the window is *symmetric*
   (``periodic=False``) and ``win_length`` long, zero-padded on both sides to ``n_fft``;
3. magnitude ``|X|`` raised to ``mag_power`` (2: power spectrum);
4. a librosa mel filterbank (Slaney mel scale; ``mel_norm="slaney"`` area normalisation);
5. ``log(x + guard)`` (or ``log(max(x, guard))``), guard ``2**-24`` by default;
6. ``per_feature`` normalisation over the valid frames only: mean, unbiased std (n - 1), plus
   ``1e-5`` on the std;
7. valid frames = ``(n + 2 * pad - n_fft) // hop`` (``n // hop`` for the defaults); the STFT makes one
   frame more, which (like any frame past the valid length) is set to ``pad_value``; then the time
   axis is padded to a multiple of ``pad_to``.

Also here, so that both runtimes share them: :func:`load_waveform` (a file or samples -> mono float32
at the model's rate) and :class:`TorchScriptFrontEnd`, the reader of an export's ``preprocessor.ts``
(NeMo's own preprocessor, traced; torch is imported inside it, never at module import). Both front
ends have the same ``batch(waveforms) -> (features (B, C, T), lengths (B,))``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdstore.errors import AudioError, ConfigError
from kdstore.frames import mel_frames
from kdstore.inputs.audio import read_samples
from kdstore.runtime.layout import PREPROCESSOR_EXTRA_FILE

AudioInput = str | Path | np.ndarray  # a file soundfile reads, or 1-D samples already at the model's rate

NORMALIZE_STD_EPS = 1e-5  # NeMo adds this to the per-feature std (features.py: CONSTANT)
_FLOAT32 = np.finfo(np.float32)


@dataclass(frozen=True, kw_only=True)
class FrontEndConfig:
    """The resolved preprocessor settings (samples, not seconds), as NeMo's featurizer holds them."""

    sample_rate: int = 16000
    n_window_size: int = 400
    n_window_stride: int = 160
    n_fft: int = 512
    features: int = 80
    window: str = "hann"
    preemph: float | None = 0.97
    lowfreq: float = 0.0
    highfreq: float | None = None
    mag_power: float = 2.0
    mel_norm: str | None = "slaney"
    log: bool = True
    log_zero_guard_type: str = "add"
    log_zero_guard_value: float = 2.0**-24
    normalize: str = "per_feature"
    exact_pad: bool = False
    pad_to: int = 0
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        if self.window not in WINDOW_FUNCTIONS:
            raise ConfigError(f"window: expected one of {sorted(WINDOW_FUNCTIONS)}, got {self.window!r}")
        if self.log_zero_guard_type not in ("add", "clamp"):
            raise ConfigError(f"log_zero_guard_type: expected 'add' or 'clamp', got {self.log_zero_guard_type!r}")
        if self.mel_norm not in (None, "slaney"):
            raise ConfigError(f"mel_norm: expected 'slaney' or None, got {self.mel_norm!r}")
        if self.n_window_size > self.n_fft or self.n_window_stride <= 0:
            raise ConfigError(
                f"window: expected 0 < hop and win_length <= n_fft, got win {self.n_window_size}, "
                f"hop {self.n_window_stride}, n_fft {self.n_fft}"
            )

    @property
    def window_size(self) -> float:
        return self.n_window_size / self.sample_rate

    @property
    def window_stride(self) -> float:
        return self.n_window_stride / self.sample_rate

    def to_metadata(self) -> dict[str, str]:
        """String key/values for ONNX ``metadata_props`` (``None`` is written as an empty string)."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = "" if value is None else str(int(value) if isinstance(value, bool) else value)
        out["window_size"] = repr(self.window_size)
        out["window_stride"] = repr(self.window_stride)
        return out

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> FrontEndConfig:
        """Parse :meth:`to_metadata`'s output; sherpa-onnx's keys fill in for a foreign export."""
        kwargs: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            name = field.name
            raw = meta.get(name)
            if name == "features" and raw is None:
                raw = meta.get("feat_dim")
            if name == "normalize" and raw is None:
                raw = meta.get("normalize_type")
            if raw is None:
                continue
            kwargs[name] = _parse_field(name, raw, field.default)
        return cls(**kwargs)  # type: ignore[arg-type]


def _parse_field(name: str, raw: str, default: object) -> object:
    try:
        if raw == "" and name in ("preemph", "highfreq", "mel_norm"):
            return None
        if isinstance(default, bool):
            return raw.strip().lower() in ("1", "true", "yes")
        if isinstance(default, int) and not isinstance(default, bool):
            return int(raw)
        if isinstance(default, float) or name in ("preemph", "highfreq"):
            return float(raw)
        return raw
    except ValueError:
        raise ConfigError(f"ONNX metadata {name}: expected a {type(default).__name__}, got {raw!r}") from None


WINDOW_FUNCTIONS = {
    "hann": np.hanning,
    "hamming": np.hamming,
    "blackman": np.blackman,
    "bartlett": np.bartlett,
    "none": None,
}


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa ``htk=False``): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    mel = hz / f_sp
    above = hz >= min_log_hz
    return np.where(above, min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep, mel)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    above = mel >= min_log_mel
    return np.where(above, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None, norm: str | None = "slaney"
) -> np.ndarray:
    """Triangular mel filters, shape (n_mels, n_fft // 2 + 1), float32 (what librosa returns)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # (n_mels + 2,)
    widths = np.diff(edges)  # (n_mels + 1,)
    dist = edges[:, None] - fft_hz[None, :]  # (n_mels + 2, F)
    rising = -dist[:-2] / widths[:-1, None]
    falling = dist[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))  # (n_mels, F)
    if norm == "slaney":
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


class LogMelFrontEnd:
    """Waveform (float, [-1, 1]) -> normalised log-mel features (features, frames) and valid length."""

    def __init__(self, config: FrontEndConfig | None = None) -> None:
        self.config = cfg = config or FrontEndConfig()
        window_fn = WINDOW_FUNCTIONS[cfg.window]
        window = np.ones(cfg.n_window_size) if window_fn is None else window_fn(cfg.n_window_size)
        left = (cfg.n_fft - cfg.n_window_size) // 2
        padded = np.zeros(cfg.n_fft)
        padded[left : left + cfg.n_window_size] = window  # torch.stft centres a short window in n_fft
        self._window = padded
        self._filterbank = mel_filterbank(
            cfg.sample_rate, cfg.n_fft, cfg.features, cfg.lowfreq, cfg.highfreq, cfg.mel_norm
        ).astype(np.float64)
        self._pad = (cfg.n_fft - cfg.n_window_stride) // 2 if cfg.exact_pad else cfg.n_fft // 2

    def num_frames(self, num_samples: int) -> int:
        """Valid feature frames for ``num_samples`` samples (NeMo's ``get_seq_len``, :mod:`kdstore.frames`)."""
        cfg = self.config
        return mel_frames(num_samples, cfg.n_window_stride, cfg.n_fft, cfg.exact_pad)

    def __call__(self, waveform: np.ndarray) -> tuple[np.ndarray, int]:
        cfg = self.config
        x = np.asarray(waveform, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"waveform: expected a 1-D array of samples, got shape {x.shape}")
        length, samples = self.num_frames(len(x)), len(x)
        if cfg.exact_pad:  # NeMo pads before pre-emphasis, then zeroes every index >= the ORIGINAL
            x = np.pad(x, (self._pad, self._pad))  # length in padded coordinates: the last `pad` real
        if cfg.preemph is not None and len(x) > 1:  # samples are silenced too (its quirk, reproduced)
            x = np.concatenate([x[:1], x[1:] - cfg.preemph * x[:-1]])
            if cfg.exact_pad:
                x[samples:] = 0.0
        if not cfg.exact_pad:
            x = np.pad(x, (self._pad, self._pad))
        if len(x) < cfg.n_fft:
            x = np.pad(x, (0, cfg.n_fft - len(x)))
        frames = np.lib.stride_tricks.sliding_window_view(x, cfg.n_fft)[:: cfg.n_window_stride]  # (frames, n_fft)
        spec = np.abs(np.fft.rfft(frames * self._window, axis=-1))  # (frames, F)
        if cfg.mag_power != 1.0:
            spec = spec**cfg.mag_power
        mel = self._filterbank @ spec.T  # (features, frames)
        if cfg.log:
            if cfg.log_zero_guard_type == "add":
                mel = np.log(mel + cfg.log_zero_guard_value)
            else:
                mel = np.log(np.maximum(mel, cfg.log_zero_guard_value))
        mel = _normalize(mel, length, cfg.normalize)
        mel[:, length:] = cfg.pad_value
        if cfg.pad_to > 0 and mel.shape[1] % cfg.pad_to:
            extra = cfg.pad_to - mel.shape[1] % cfg.pad_to
            mel = np.pad(mel, ((0, 0), (0, extra)), constant_values=cfg.pad_value)
        return mel.astype(np.float32), length

    def batch(self, waveforms: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Waveforms at ``config.sample_rate`` -> features (B, C, T) float32 padded with ``pad_value``
        to the longest, and valid lengths (B,) int64."""
        feats = [self(w) for w in waveforms]
        width = max(f.shape[1] for f, _ in feats)
        out = np.full((len(feats), self.config.features, width), self.config.pad_value, np.float32)
        for i, (f, _) in enumerate(feats):
            out[i, :, : f.shape[1]] = f
        return out, np.array([n for _, n in feats], dtype=np.int64)


class TorchScriptFrontEnd:
    """Batched features with an exported ``preprocessor.ts`` (needs torch, not NeMo).

    The file's interface: ``forward(waveform float32 (B, N), length int64 (B,)) -> (features (B, C, T),
    lengths (B,))``, with the front-end settings in its extra file (written by
    :func:`kdstore.export.preprocessor.export_preprocessor`).
    """

    def __init__(self, path: Path, num_threads: int = 1) -> None:
        import torch

        torch.set_num_threads(num_threads)
        extra = {PREPROCESSOR_EXTRA_FILE: ""}
        self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        self.module.eval()
        info = json.loads(extra[PREPROCESSOR_EXTRA_FILE] or "{}")
        self.method = info.get("method", "unknown")
        self.config = FrontEndConfig.from_metadata(info.get("frontend", {}))

    def batch(self, waveforms: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Waveforms at ``config.sample_rate`` -> features (B, C, T) float32 and valid lengths (B,) int64."""
        import torch

        lengths = np.array([len(w) for w in waveforms], dtype=np.int64)
        audio = np.zeros((len(waveforms), int(lengths.max())), dtype=np.float32)
        for i, wave in enumerate(waveforms):
            audio[i, : len(wave)] = wave
        with torch.inference_mode():
            feats, feat_len = self.module(torch.from_numpy(audio), torch.from_numpy(lengths))
        return feats.numpy().astype(np.float32, copy=False), feat_len.numpy().astype(np.int64)


def load_waveform(audio: AudioInput, sample_rate: int) -> np.ndarray:
    """A file (any rate/channels soundfile reads; resampled, downmixed) or 1-D samples already at
    ``sample_rate`` -> mono float32 at ``sample_rate``. Shared by both runtimes of ``kdstore transcribe``.

    Raises AudioError for an unreadable file or an array that is not 1-D.
    """
    if isinstance(audio, np.ndarray):
        if audio.ndim != 1:
            raise AudioError(f"audio array: expected 1-D samples at {sample_rate} Hz, got {audio.shape}")
        return audio.astype(np.float32, copy=False)
    return read_samples(Path(audio), sample_rate)


def _normalize(mel: np.ndarray, length: int, normalize: str) -> np.ndarray:
    """NeMo's ``normalize_batch`` for one utterance; statistics over the first ``length`` frames."""
    valid = mel[:, :length]
    if normalize == "per_feature":
        mean = valid.mean(axis=1, keepdims=True) if length else np.zeros((mel.shape[0], 1))
        std = np.sqrt(((valid - mean) ** 2).sum(axis=1, keepdims=True) / (length - 1)) if length > 1 else 0.0
        return (mel - mean) / (std + NORMALIZE_STD_EPS)
    if normalize == "all_features":
        mean = valid.mean() if length else 0.0
        std = valid.std(ddof=1) if length > 1 else np.nan
        return (mel - mean) / (std + NORMALIZE_STD_EPS)
    return mel


def resolve_log_guard(value: float | str) -> float:
    """NeMo accepts ``"tiny"`` and ``"eps"`` (of float32) as the log zero guard."""
    if value == "tiny":
        return float(_FLOAT32.tiny)
    if value == "eps":
        return float(_FLOAT32.eps)
    return float(value)
