"""Rooms and noise made on the spot, for NeMo's waveform augmentor (``model.train_ds.augmentor``).

Why this exists: no impulse-response or noise corpus can be downloaded here, and a teacher trained on
clean synthetic speech fails on other voices and rooms. NeMo's ``impulse`` and ``noise``
perturbations read their audio from manifests; this module writes such manifests with synthetic
audio:

- room impulse responses: a direct path, a few early reflections and an exponentially decaying
  noise tail whose energy falls by 60 dB in RT60 seconds (Sabine's reverberation time; the
  decay-envelope model is the one of Lehmann & Johansson 2008, "Prediction of energy decay in room
  impulse responses simulated with an image-source model"), RT60 drawn in [0.15, 0.9] s;
- noise: white, pink (1/f), brown (1/f^2) and mains hum (50/60 Hz with harmonics), 8 s each.

:func:`augmentor_config` returns the ``train_ds.augmentor`` dictionary (gain, speed, impulse, noise,
white noise) that the demo teacher's recipe trains with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kdstore.files import write_atomic

SAMPLE_RATE = 16000
NOISE_SECONDS = 8.0
RT60_RANGE_S = (0.15, 0.9)


def room_impulse(rng: np.random.Generator, rt60_s: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One synthetic room impulse response, float32 [samples], peak 1, length 1.2 x RT60 seconds.

    The tail is Gaussian noise times ``exp(-6.91 t / RT60)`` (amplitude falls 60 dB, i.e. by
    10^3 = e^6.91, in RT60 seconds); 2-6 early reflections land 2-25 ms after the direct path.
    """
    n = max(int(1.2 * rt60_s * sample_rate), 64)
    t = np.arange(n) / sample_rate
    response = rng.standard_normal(n) * np.exp(-6.91 * t / rt60_s) * 0.3
    response[0] = 1.0
    for _ in range(int(rng.integers(2, 7))):
        delay = int(rng.uniform(0.002, 0.025) * sample_rate)
        response[min(delay, n - 1)] += rng.uniform(0.2, 0.7) * rng.choice([-1.0, 1.0])
    return (response / np.max(np.abs(response))).astype(np.float32)


def coloured_noise(rng: np.random.Generator, kind: str, seconds: float = NOISE_SECONDS,
                   sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Noise of one colour, float32 [samples] at peak 0.5: ``white``, ``pink`` (power ~ 1/f),
    ``brown`` (~ 1/f^2) or ``hum`` (50 or 60 Hz and four harmonics, plus a little white noise).
    Raises ValueError for another kind."""
    n = int(seconds * sample_rate)
    if kind == "hum":
        t = np.arange(n) / sample_rate
        base = float(rng.choice([50.0, 60.0]))
        signal = sum(rng.uniform(0.2, 1.0) / h * np.sin(2 * np.pi * base * h * t + rng.uniform(0, 6.3))
                     for h in range(1, 6))
        signal = signal + 0.05 * rng.standard_normal(n)
    elif kind in ("white", "pink", "brown"):
        spectrum = np.fft.rfft(rng.standard_normal(n))
        freqs = np.maximum(np.fft.rfftfreq(n, 1 / sample_rate), 1.0)
        exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}[kind]  # amplitude ~ f^-exponent
        signal = np.fft.irfft(spectrum / freqs**exponent, n)
    else:
        raise ValueError(f"unknown noise kind {kind!r}; use white, pink, brown or hum")
    return (0.5 * signal / np.max(np.abs(signal))).astype(np.float32)


def _write(out_dir: Path, name: str, clips: list[tuple[str, np.ndarray]]) -> Path:
    import soundfile

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for stem, samples in clips:
        path = out_dir / f"{stem}.wav"
        soundfile.write(str(path), samples, SAMPLE_RATE, subtype="PCM_16")
        rows.append({"audio_filepath": str(path), "duration": len(samples) / SAMPLE_RATE, "offset": 0.0, "text": ""})
    manifest = out_dir / f"{name}.json"
    write_atomic(manifest, (json.dumps(row) + "\n" for row in rows))
    return manifest


def write_rooms_and_noise(out_dir: str | Path, rooms: int = 40, noises: int = 24, seed: int = 0) -> tuple[Path, Path]:
    """Write ``rooms`` impulse responses and ``noises`` noise clips (16 kHz WAV) under ``out_dir`` and
    one NeMo manifest for each; returns (impulse manifest, noise manifest). Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir).resolve()
    impulses = [(f"rir-{i:03d}", room_impulse(rng, float(rng.uniform(*RT60_RANGE_S)))) for i in range(rooms)]
    kinds = ("white", "pink", "brown", "hum")
    clips = [(f"noise-{i:03d}-{kinds[i % 4]}", coloured_noise(rng, kinds[i % 4])) for i in range(noises)]
    return _write(out / "rirs", "impulses", impulses), _write(out / "noise", "noise", clips)


def augmentor_config(impulse_manifest: str | Path, noise_manifest: str | Path) -> dict[str, Any]:
    """NeMo ``train_ds.augmentor`` settings for a robust teacher: speed 0.9-1.1 (changes T: never with a
    store), room, noise at 5-30 dB SNR, gain -12..+6 dB, faint white noise. Applied in this order,
    each with its own probability (NeMo's ``AudioAugmentor``)."""
    return {
        "speed": {"prob": 0.5, "sr": SAMPLE_RATE, "resample_type": "fft", "min_speed_rate": 0.9,
                  "max_speed_rate": 1.1, "num_rates": 5},
        "impulse": {"prob": 0.35, "manifest_path": [str(impulse_manifest)], "normalize_impulse": True,
                    "shift_impulse": True},
        "noise": {"prob": 0.4, "manifest_path": [str(noise_manifest)], "min_snr_db": 5, "max_snr_db": 30},
        "gain": {"prob": 0.5, "min_gain_dbfs": -12, "max_gain_dbfs": 6},
        "white_noise": {"prob": 0.3, "min_level": -80, "max_level": -50},
    }
