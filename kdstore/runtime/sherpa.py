"""sherpa-onnx on a kdstore export: frame-aligned input, and greedy transcripts with sherpa-onnx itself.

**Why the alignment exists.** For a NeMo transducer sherpa-onnx (2.0.1 and its current sources)
computes its own Kaldi-style fbank, and the largest difference from NeMo's preprocessor is *where the
frames are*, not how each is computed. sherpa-onnx (``snip_edges=false``) centres frame t at
``t * hop + hop/2`` and makes ``(n + hop/2) // hop`` frames; NeMo's default preprocessor
(``center=True``) centres frame t at ``t * hop`` and counts ``n // hop`` valid frames. A model trained
on NeMo's frames sees every frame shifted by half a hop (5 ms), and sometimes one frame more: on the
memorised test model that alone flips 3 of 10 transcripts, and on the demo teacher 15 of 98
(measured, docs in the README, "export-onnx").

No sherpa-onnx setting moves its frames, but its input is ours: prepending ``hop/2 - c`` samples of
silence (c = where NeMo centres frame 0; 0 by default, hop/2 with ``exact_pad``) puts sherpa's frame
centres on NeMo's, and cutting the tail so that ``(n' + hop/2) // hop`` equals NeMo's frame count
makes the counts equal.

**The mel range.** sherpa-onnx's offline NeMo recognizer keeps its feature extractor's default upper
mel edge, ``high_freq = -400`` (7.6 kHz at 16 kHz), where NeMo's preprocessor uses ``highfreq``
(``null``: half the sample rate); every mel bin then sits on other frequencies than the model was trained
on. Its streaming recognizer sets 8 kHz itself. ``FeatureExtractorConfig.high_freq`` is the one setting
sherpa-onnx's Python API offers for it (the C, Kotlin and Swift APIs have no such field), so
:func:`recognizer_config` sets it to the export's ``highfreq``: on the demo's offline students this
alone takes sherpa-onnx's agreement with NeMo from 137 to 154 of 159 transcripts (RNN-T) and from 134 to
149 (TDT) (docs/results.md). What stays different is per-frame detail that matters far less (povey
instead of hann window, pre-emphasis per frame, log floor, population std).

**Running it** (``kdstore transcribe --runtime sherpa-onnx``): the sherpa layout exists for sherpa-onnx,
so kdstore lets people run it there in one command and see what their deployment will say, aligned by
default (``align=False`` shows sherpa-onnx on raw audio). :class:`SherpaTransducer` has the same duck
type as :class:`kdstore.runtime.decoder.OnnxTransducer` for :mod:`kdstore.runtime.transcribe`:
``sample_rate``, ``load``, ``transcribe``, ``layout``, ``frontend_name``. sherpa-onnx ends the whole
process (exit 255) on a missing metadata key instead of raising, so the folder is checked here first
and a bad one gets a normal error.

numpy only at import (no torch, no NeMo); ``sherpa_onnx`` is imported when a recognizer is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdstore.errors import DependencyError, ExportError
from kdstore.runtime.frontend import AudioInput, FrontEndConfig, LogMelFrontEnd, load_waveform
from kdstore.runtime.layout import NEMO, SHERPA, read_metadata
from kdstore.runtime.limits import check_lengths, input_name

# Encoder metadata sherpa-onnx's NeMo transducer reads with no default (it exits without them).
SHERPA_REQUIRED_METADATA = ("vocab_size", "normalize_type", "pred_rnn_layers", "pred_hidden", "subsampling_factor")


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
    """The front end an export was made with (kdstore writes it into the encoder's metadata).

    Raises ExportError when ``onnx_dir`` holds no encoder of either layout.
    """
    onnx_dir = Path(onnx_dir)
    names = (SHERPA.encoder, NEMO.encoder)
    encoder = next((onnx_dir / n for n in names if (onnx_dir / n).is_file()), None)
    if encoder is None:
        raise ExportError(f"{onnx_dir}: no {SHERPA.encoder}; export with kdstore export-onnx first")
    return FrontEndConfig.from_metadata(read_metadata(encoder))


def sherpa_input(path: Path | str, onnx_dir: Path | str) -> tuple[np.ndarray, int]:
    """(samples, rate): read, resampled and downmixed as ``kdstore transcribe`` reads audio, then frame-aligned
    for the export in ``onnx_dir``. sherpa-onnx's ``stream.accept_waveform`` takes them the other way round,
    (rate, samples): ``stream.accept_waveform(*reversed(sherpa_input(path, onnx_dir)))``."""
    config = export_frontend(onnx_dir)
    return align_for_sherpa(load_waveform(path, config.sample_rate), config), config.sample_rate


def sherpa_high_freq(config: FrontEndConfig) -> float:
    """The ``high_freq`` (Hz) that gives sherpa-onnx's fbank NeMo's upper mel edge: ``highfreq``, or half the
    sample rate when the preprocessor leaves it ``null``."""
    return float(config.highfreq) if config.highfreq is not None else config.sample_rate / 2


MEL_RANGES = ("model", "sherpa-default")
SHERPA_DEFAULT_HIGH_FREQ = -400.0  # sherpa-onnx's FeatureExtractorConfig default: Nyquist - 400 Hz


def recognizer_config(onnx_dir: Path, graphs: Sequence[str], frontend: FrontEndConfig, *, num_threads: int = 1,
                      provider: str = "cpu", mel_range: str = "model") -> Any:
    """sherpa-onnx's ``OfflineRecognizerConfig`` for a sherpa-layout NeMo transducer (greedy search).

    ``mel_range`` ``model``: the feature extractor's upper mel edge is the model's (:func:`sherpa_high_freq`);
    ``sherpa-default``: sherpa-onnx's own default (-400: Nyquist - 400 Hz), what its C, Kotlin and Swift APIs
    give. ``low_freq`` is 0 either way (sherpa-onnx forces it for NeMo models). ``graphs`` = (encoder,
    decoder, joiner) file names. Raises ExportError for an unknown ``mel_range``.
    """
    import sherpa_onnx

    if mel_range not in MEL_RANGES:
        raise ExportError(f"mel range: expected one of {', '.join(MEL_RANGES)}, got {mel_range!r}")
    high_freq = sherpa_high_freq(frontend) if mel_range == "model" else SHERPA_DEFAULT_HIGH_FREQ

    encoder, decoder, joiner = (str(onnx_dir / n) for n in graphs)
    return sherpa_onnx.OfflineRecognizerConfig(
        feat_config=sherpa_onnx.FeatureExtractorConfig(
            sampling_rate=frontend.sample_rate, feature_dim=frontend.features, low_freq=float(frontend.lowfreq),
            high_freq=high_freq, dither=0.0),
        model_config=sherpa_onnx.OfflineModelConfig(
            transducer=sherpa_onnx.OfflineTransducerModelConfig(encoder_filename=encoder, decoder_filename=decoder,
                                                                joiner_filename=joiner),
            tokens=str(onnx_dir / SHERPA.tokens), num_threads=num_threads, provider=provider,
            model_type="nemo_transducer"),
        decoding_method="greedy_search")


def _open_recognizer(onnx_dir: Path, int8: bool, num_threads: int, provider: str,
                     mel_range: str) -> tuple[Any, dict[str, str]]:
    """(sherpa-onnx's native OfflineRecognizer, the encoder's metadata) after checking the folder."""
    try:
        from sherpa_onnx.lib._sherpa_onnx import OfflineRecognizer  # what from_transducer builds from its config
    except ImportError:
        raise DependencyError("--runtime sherpa-onnx needs the sherpa-onnx package: pip install sherpa-onnx") from None
    graphs = SHERPA.graphs(int8)
    missing = [n for n in [*graphs, SHERPA.tokens] if not (onnx_dir / n).is_file()]
    if missing:
        hint = " (export with --int8)" if int8 else " (export with --layout sherpa)"
        raise ExportError(f"{onnx_dir}: not a sherpa-onnx export, missing {', '.join(missing)}{hint}")
    metadata = read_metadata(onnx_dir / graphs[0])
    absent = [k for k in SHERPA_REQUIRED_METADATA if k not in metadata]
    if absent:
        raise ExportError(f"{onnx_dir / graphs[0]}: encoder metadata lacks {', '.join(absent)}, which "
                          "sherpa-onnx needs; export again with kdstore export-onnx")
    config = recognizer_config(onnx_dir, graphs, FrontEndConfig.from_metadata(metadata), num_threads=num_threads,
                               provider=provider, mel_range=mel_range)
    return OfflineRecognizer(config), metadata


def sherpa_recognizer(onnx_dir: Path | str, *, int8: bool = False, num_threads: int = 1, provider: str = "cpu",
                      mel_range: str = "model") -> Any:
    """sherpa-onnx's offline recognizer (greedy search) for a sherpa-layout kdstore export, its fbank's mel range
    set to the model's (``mel_range``: see :func:`recognizer_config`); use it as sherpa-onnx's own
    (``create_stream``, ``decode_streams``), feeding :func:`sherpa_input`.

    Raises DependencyError without the sherpa-onnx package, ExportError for a folder that is not a complete
    sherpa layout or whose encoder lacks a key sherpa-onnx needs.
    """
    return _open_recognizer(Path(onnx_dir), int8, num_threads, provider, mel_range)[0]


class SherpaTransducer:
    """A sherpa-layout export run by ``sherpa_onnx.OfflineRecognizer`` (greedy search).

    Raises DependencyError without the sherpa-onnx package, ExportError for a folder that is not a
    complete sherpa layout or whose encoder lacks a key sherpa-onnx needs.
    """

    layout = SHERPA.name

    def __init__(self, onnx_dir: Path | str, *, int8: bool = False, num_threads: int = 1, provider: str = "cpu",
                 align: bool = True, mel_range: str = "model") -> None:
        self.onnx_dir = Path(onnx_dir)
        self._recognizer, self.metadata = _open_recognizer(self.onnx_dir, int8, num_threads, provider, mel_range)
        self.frontend = FrontEndConfig.from_metadata(self.metadata)
        self.sample_rate = self.frontend.sample_rate
        self.align = align
        self.frontend_name = ("sherpa-onnx fbank" + (", frame-aligned input" if align else ", raw input")
                              + (", model's mel range" if mel_range == "model" else ", sherpa-onnx's default mel range"))

    def load(self, audio: AudioInput) -> np.ndarray:
        """Mono float32 at the model's rate (the alignment is applied in :meth:`transcribe`)."""
        return load_waveform(audio, self.sample_rate)

    def transcribe(self, audio: Sequence[AudioInput], batch_size: int = 8, progress: bool = False,
                   on_text: Callable[[int, str], None] | None = None, names: Sequence[str] | None = None) -> list[str]:
        """sherpa-onnx's greedy transcripts, in input order; ``progress`` shows a tqdm bar over batches;
        ``on_text`` receives (input index, transcript) as each is decoded; ``names`` name the inputs in errors (default:
        their paths). Inputs are checked first as in
        :meth:`kdstore.runtime.decoder.OnnxTransducer.transcribe` (too long: ``AudioError``; shorter than
        one feature frame: "")."""
        from tqdm import tqdm

        waves = [self.load(a) for a in audio]
        frames = check_lengths(names or [input_name(a, i) for i, a in enumerate(audio)], waves, self.frontend, self.metadata)
        texts = [""] * len(waves)
        for i in (i for i, count in enumerate(frames) if count == 0 and on_text is not None):
            on_text(i, "")
        todo = [i for i, count in enumerate(frames) if count]
        batch_size = max(1, batch_size)
        for start in tqdm(range(0, len(todo), batch_size), desc="transcribe", unit="batch", disable=not progress):
            chunk, streams = todo[start : start + batch_size], []
            for i in chunk:
                stream = self._recognizer.create_stream()
                wave = waves[i]
                stream.accept_waveform(self.sample_rate, align_for_sherpa(wave, self.frontend) if self.align else wave)
                streams.append(stream)
            self._recognizer.decode_streams(streams)
            for i, stream in zip(chunk, streams, strict=True):
                texts[i] = stream.result.text.strip()
                if on_text is not None:
                    on_text(i, texts[i])
        return texts
