"""Frame-align audio for sherpa-onnx, so its NeMo-transducer front end frames it as NeMo does.

Why this exists: for a NeMo transducer sherpa-onnx (2.0.1 and its current sources) computes its own
Kaldi-style fbank, and the largest difference from NeMo's preprocessor is *where the frames are*, not
how each is computed. sherpa-onnx (``snip_edges=false``) centres frame t at ``t * hop + hop/2`` and
makes ``(n + hop/2) // hop`` frames; NeMo's default preprocessor (``center=True``) centres frame t at
``t * hop`` and counts ``n // hop`` valid frames. A model trained on NeMo's frames sees every frame
shifted by half a hop (5 ms), and sometimes one frame more: on the memorised test model that alone
flips 3 of 10 transcripts, and on the demo teacher 15 of 98 (measured, docs in the README, "export-onnx").

No sherpa-onnx setting moves its frames, but its input is ours: prepending ``hop/2 - c`` samples of
silence (c = where NeMo centres frame 0; 0 by default, hop/2 with ``exact_pad``) puts sherpa's frame
centres on NeMo's, and cutting the tail so that ``(n' + hop/2) // hop`` equals NeMo's frame count
makes the counts equal. What stays different is per-frame detail that matters far less (povey
instead of hann window, mel bins up to 7.6 kHz, pre-emphasis per frame, log floor, population std).

Pure numpy (no torch, no NeMo), like the rest of the ONNX side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdstore.runtime.frontend import FrontEndConfig, LogMelFrontEnd


def nemo_frame_centre(config: FrontEndConfig) -> int:
    """Sample index (relative to t * hop) at which NeMo's preprocessor centres frame t."""
    if config.exact_pad:  # padded by (n_fft - hop) / 2, no centring: centre = n_fft/2 - pad
        return config.n_fft // 2 - (config.n_fft - config.n_window_stride) // 2
    return 0  # torch.stft(center=True)


def align_for_sherpa(wave: np.ndarray, config: FrontEndConfig) -> np.ndarray:
    """``wave`` (mono, at ``config.sample_rate``) reshaped so sherpa-onnx frames it as NeMo does.

    Returns float32 samples: ``lead`` zeros, then the first ``frames * hop - lead`` samples of ``wave``,
    where ``frames`` is NeMo's valid frame count for ``len(wave)`` samples and
    ``lead = hop // 2 - nemo_frame_centre``. sherpa-onnx then makes exactly ``frames`` frames,
    centred where NeMo's are. The samples cut from the end (less than 1.5 hops) lie beyond NeMo's last
    valid frame centre anyway.
    """
    samples = np.asarray(wave, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"wave: expected mono samples (1-D), got shape {samples.shape}")
    hop = config.n_window_stride
    lead = hop // 2 - nemo_frame_centre(config)
    frames = LogMelFrontEnd(config).num_frames(len(samples))
    keep = max(0, frames * hop - lead)
    if lead < 0:  # NeMo centres later than sherpa would: drop the first samples instead
        return np.ascontiguousarray(samples[-lead : -lead + frames * hop])
    return np.concatenate([np.zeros(lead, dtype=np.float32), samples[:keep]])


def export_frontend(onnx_dir: Path | str) -> FrontEndConfig:
    """The front end an export was made with (kdstore writes it into the encoder's metadata)."""
    from kdstore.export.onnx_edit import read_metadata

    onnx_dir = Path(onnx_dir)
    encoder = next((onnx_dir / n for n in ("encoder.onnx", "encoder-model.onnx") if (onnx_dir / n).is_file()), None)
    if encoder is None:
        from kdstore.errors import ExportError

        raise ExportError(f"{onnx_dir}: no encoder.onnx; export with kdstore export-onnx first")
    return FrontEndConfig.from_metadata(read_metadata(encoder))


def sherpa_input(path: Path | str, onnx_dir: Path | str) -> tuple[np.ndarray, int]:
    """(samples, rate) to hand to ``stream.accept_waveform``: read, resampled and downmixed as
    ``kdstore transcribe`` reads audio, then frame-aligned for the export in ``onnx_dir``."""
    from kdstore.inputs.audio import read_samples

    config = export_frontend(onnx_dir)
    return align_for_sherpa(read_samples(path, config.sample_rate), config), config.sample_rate
