"""Audio loading with clear errors: mono float32 at the model's sample rate."""

from __future__ import annotations

import numpy as np

from kdstore.errors import AudioError
from kdstore.manifest import ManifestEntry


def load_audio(entry: ManifestEntry, sample_rate: int) -> np.ndarray:
    """Samples of one manifest entry (honouring offset/duration), mono, float32, resampled if needed."""
    import soundfile

    try:
        info = soundfile.info(str(entry.audio_path))
        start = round(entry.offset * info.samplerate)
        frames = round(entry.duration * info.samplerate) if entry.duration else -1
        data, rate = soundfile.read(str(entry.audio_path), start=start, frames=frames, dtype="float32",
                                    always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, OSError) as err:
        raise AudioError(f"{entry.where}: cannot read audio {entry.audio_path}: {err}; "
                         "check the file or remove the line") from None
    samples = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if samples.size == 0:
        raise AudioError(f"{entry.where}: audio {entry.audio_path} has no samples in the requested range")
    if rate != sample_rate:
        import librosa

        samples = librosa.resample(samples, orig_sr=rate, target_sr=sample_rate).astype(np.float32)
    return np.ascontiguousarray(samples)
