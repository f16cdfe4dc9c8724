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
makes the counts equal. What stays different is per-frame detail that matters far less (povey
instead of hann window, mel bins up to 7.6 kHz, pre-emphasis per frame, log floor, population std).

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
    """(samples, rate) to hand to ``stream.accept_waveform``: read, resampled and downmixed as
    ``kdstore transcribe`` reads audio, then frame-aligned for the export in ``onnx_dir``."""
    config = export_frontend(onnx_dir)
    return align_for_sherpa(load_waveform(path, config.sample_rate), config), config.sample_rate


class SherpaTransducer:
    """A sherpa-layout export run by ``sherpa_onnx.OfflineRecognizer`` (greedy search).

    Raises DependencyError without the sherpa-onnx package, ExportError for a folder that is not a
    complete sherpa layout or whose encoder lacks a key sherpa-onnx needs.
    """

    layout = SHERPA.name

    def __init__(self, onnx_dir: Path | str, *, int8: bool = False, num_threads: int = 1, provider: str = "cpu",
                 align: bool = True) -> None:
        try:
            import sherpa_onnx
        except ImportError:
            raise DependencyError("--runtime sherpa-onnx needs the sherpa-onnx package: pip install sherpa-onnx") from None
        self.onnx_dir = Path(onnx_dir)
        graphs = SHERPA.graphs(int8)
        missing = [n for n in [*graphs, SHERPA.tokens] if not (self.onnx_dir / n).is_file()]
        if missing:
            hint = " (export with --int8)" if int8 else " (export with --layout sherpa)"
            raise ExportError(f"{self.onnx_dir}: not a sherpa-onnx export, missing {', '.join(missing)}{hint}")
        metadata = read_metadata(self.onnx_dir / graphs[0])
        absent = [k for k in SHERPA_REQUIRED_METADATA if k not in metadata]
        if absent:
            raise ExportError(f"{self.onnx_dir / graphs[0]}: encoder metadata lacks {', '.join(absent)}, which "
                              "sherpa-onnx needs; export again with kdstore export-onnx")
        self.metadata = metadata
        self.frontend = FrontEndConfig.from_metadata(metadata)
        self.sample_rate = self.frontend.sample_rate
        self.align = align
        self.frontend_name = "sherpa-onnx fbank" + (", frame-aligned input" if align else ", raw input")
        encoder, decoder, joiner = (str(self.onnx_dir / n) for n in graphs)
        self._recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
            encoder=encoder, decoder=decoder, joiner=joiner, tokens=str(self.onnx_dir / SHERPA.tokens),
            num_threads=num_threads, sample_rate=self.sample_rate, feature_dim=self.frontend.features,
            decoding_method="greedy_search", provider=provider, model_type="nemo_transducer",
        )

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
