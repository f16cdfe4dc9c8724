"""Greedy transcripts of an exported model with sherpa-onnx itself (``kdstore transcribe --runtime sherpa-onnx``).

Why: the sherpa layout exists for sherpa-onnx, so kdstore lets people run it there in one command and
see what their deployment will say, with the frame alignment of :mod:`kdstore.runtime.sherpa_frames` applied
by default (``align=False`` shows sherpa-onnx on raw audio). Same duck type as
:class:`kdstore.runtime.decoder.OnnxTransducer` for :func:`kdstore.runtime.decoder.transcribe_files`:
``sample_rate``, ``load``, ``transcribe``, ``layout``, ``frontend_name``.

sherpa-onnx ends the whole process (exit 255) on a missing metadata key instead of raising, so the
folder is checked here first and a bad one gets a normal error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kdstore.errors import DependencyError, ExportError
from kdstore.export.onnx_edit import read_metadata
from kdstore.runtime.decoder import SHERPA_FILES, AudioInput, load_waveform
from kdstore.runtime.sherpa_frames import align_for_sherpa, export_frontend

# Encoder metadata sherpa-onnx's NeMo transducer reads with no default (it exits without them).
SHERPA_REQUIRED_METADATA = ("vocab_size", "normalize_type", "pred_rnn_layers", "pred_hidden", "subsampling_factor")


class SherpaTransducer:
    """A sherpa-layout export run by ``sherpa_onnx.OfflineRecognizer`` (greedy search)."""

    layout = "sherpa"

    def __init__(self, onnx_dir: Path | str, *, int8: bool = False, num_threads: int = 1, provider: str = "cpu",
                 align: bool = True) -> None:
        try:
            import sherpa_onnx
        except ImportError:
            raise DependencyError("--runtime sherpa-onnx needs the sherpa-onnx package: pip install sherpa-onnx") from None
        self.onnx_dir = Path(onnx_dir)
        graphs = [n.replace(".onnx", ".int8.onnx") if int8 else n for n in SHERPA_FILES if n.endswith(".onnx")]
        missing = [n for n in [*graphs, SHERPA_FILES[-1]] if not (self.onnx_dir / n).is_file()]
        if missing:
            hint = " (export with --int8)" if int8 else " (export with --layout sherpa)"
            raise ExportError(f"{self.onnx_dir}: not a sherpa-onnx export, missing {', '.join(missing)}{hint}")
        metadata = read_metadata(self.onnx_dir / graphs[0])
        absent = [k for k in SHERPA_REQUIRED_METADATA if k not in metadata]
        if absent:
            raise ExportError(f"{self.onnx_dir / graphs[0]}: encoder metadata lacks {', '.join(absent)}, which "
                              "sherpa-onnx needs; export again with kdstore export-onnx")
        self.frontend = export_frontend(self.onnx_dir)
        self.sample_rate = self.frontend.sample_rate
        self.align = align
        self.frontend_name = "sherpa-onnx fbank" + (", frame-aligned input" if align else ", raw input")
        encoder, decoder, joiner = (str(self.onnx_dir / n) for n in graphs)
        self._recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
            encoder=encoder, decoder=decoder, joiner=joiner, tokens=str(self.onnx_dir / SHERPA_FILES[-1]),
            num_threads=num_threads, sample_rate=self.sample_rate, feature_dim=self.frontend.features,
            decoding_method="greedy_search", provider=provider, model_type="nemo_transducer",
        )

    def load(self, audio: AudioInput) -> np.ndarray:
        """Mono float32 at the model's rate (the alignment is applied in :meth:`transcribe`)."""
        return load_waveform(audio, self.sample_rate)

    def transcribe(self, audio: Sequence[AudioInput], batch_size: int = 8) -> list[str]:
        waves = [self.load(a) for a in audio]
        texts: list[str] = []
        for start in range(0, len(waves), max(1, batch_size)):
            streams = []
            for wave in waves[start : start + batch_size]:
                stream = self._recognizer.create_stream()
                stream.accept_waveform(self.sample_rate, align_for_sherpa(wave, self.frontend) if self.align else wave)
                streams.append(stream)
            self._recognizer.decode_streams(streams)
            texts.extend(s.result.text.strip() for s in streams)
        return texts
