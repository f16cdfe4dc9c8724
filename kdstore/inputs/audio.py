"""Audio loading with clear errors: mono float32 at the model's sample rate.

One reader for every stage (dump, training, eval, ``kdstore transcribe``, sherpa-onnx input), numpy and
soundfile only, so the ONNX side stays free of torch and NeMo. Resampling is soxr's HQ mode (what
librosa's default ``soxr_hq`` runs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdstore.errors import AudioError
from kdstore.inputs.manifest import ManifestEntry


def read_samples(path: str | Path, sample_rate: int, *, offset: float = 0.0, duration: float | None = None,
                 where: str | None = None) -> np.ndarray:
    """Samples of ``path`` from ``offset`` seconds for ``duration`` seconds (None: to the end), channels
    averaged, resampled to ``sample_rate``. Errors name ``where`` (e.g. ``manifest.json:3``) if given.

    Raises ``AudioError`` for unreadable audio, an empty span, or NaN/infinite samples (float WAVs can
    hold them; every model turns them into NaN outputs)."""
    import soundfile

    where = f"{where}: " if where else ""
    try:
        info = soundfile.info(str(path))
        start = round(offset * info.samplerate)
        frames = round(duration * info.samplerate) if duration else -1
        data, rate = soundfile.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, OSError) as err:
        raise AudioError(f"{where}cannot read audio {path}: {err}; check the file"
                         + ("" if not where else " or remove the line")) from None
    samples = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if samples.size == 0:
        raise AudioError(f"{where}audio {path} has no samples" + (" in the requested range" if offset or duration else ""))
    finite = np.isfinite(samples)
    if not finite.all():
        raise AudioError(f"{where}audio {path} has non-finite samples ({int(finite.size - finite.sum())} NaN or "
                         "infinite values); re-encode it as PCM or replace those samples")
    if rate != sample_rate:
        try:
            import soxr
        except ImportError:
            raise AudioError(f"{where}{path}: {rate} Hz audio needs resampling to {sample_rate} Hz but soxr is not "
                             f"installed; pip install soxr, or convert first: sox {path} -r {sample_rate} out.wav") from None
        samples = soxr.resample(samples, rate, sample_rate, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(samples, dtype=np.float32)


def load_audio(entry: ManifestEntry, sample_rate: int) -> np.ndarray:
    """Samples of one manifest entry (honouring offset/duration), mono, float32, resampled if needed."""
    return read_samples(entry.audio_path, sample_rate, offset=entry.offset, duration=entry.duration, where=entry.where)
