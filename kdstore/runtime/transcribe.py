"""Audio files -> transcripts with an exported model: what ``kdstore transcribe`` runs.

Two runtimes read an export folder: ``onnxruntime`` (:class:`kdstore.runtime.decoder.OnnxTransducer`,
kdstore's greedy search on NeMo's features, either layout) and ``sherpa-onnx``
(:class:`kdstore.runtime.sherpa.SherpaTransducer`, sherpa-onnx itself on the sherpa layout, with its
own features, frame-aligned by default). With ``streaming`` a ``export-onnx --streaming`` folder runs in
sherpa-onnx's ``OnlineRecognizer``, fed piece by piece as a live source
(:class:`kdstore.runtime.sherpa_online.SherpaOnlineTransducer`; kdstore has no onnxruntime streaming
decoder). :func:`transcribe_files` opens one, transcribes, and times it; the result knows its
real-time factor and its JSON form.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdstore.errors import ExportError
from kdstore.runtime.decoder import OnnxTransducer
from kdstore.runtime.sherpa import SherpaTransducer
from kdstore.runtime.sherpa_online import SherpaOnlineTransducer

RUNTIMES = ("onnxruntime", "sherpa-onnx")


@dataclass(frozen=True)
class Transcript:
    """One file's transcript."""

    audio: str
    text: str
    seconds: float  # audio duration


@dataclass(frozen=True, kw_only=True)
class Transcription:
    """What :func:`transcribe_files` did: the transcripts (input order) and how it ran."""

    onnx_dir: Path
    runtime: str
    layout: str  # "sherpa" or "nemo"
    frontend: str  # the feature extractor's name, e.g. "torchscript"
    int8: bool
    provider: str
    transcripts: tuple[Transcript, ...]
    seconds: float  # wall time: reading, resampling, features, decoding
    chunk_ms: int | None = None  # streaming: the chunk size decoded with; None offline

    @property
    def audio_seconds(self) -> float:
        return sum(t.seconds for t in self.transcripts)

    @property
    def rtf(self) -> float:
        """Real-time factor: wall seconds per second of audio (lower is faster)."""
        return self.seconds / max(self.audio_seconds, 1e-9)

    def to_json(self) -> dict[str, Any]:
        """The ``kdstore transcribe --json`` object."""
        return {
            "onnx": str(self.onnx_dir), "runtime": self.runtime, "layout": self.layout, "int8": self.int8,
            "frontend": self.frontend, "provider": self.provider, "audio_seconds": round(self.audio_seconds, 3),
            "seconds": round(self.seconds, 3), "rtf": round(self.rtf, 5), "streaming": self.chunk_ms is not None,
            **({"chunk_ms": self.chunk_ms} if self.chunk_ms is not None else {}),
            "transcripts": [{"audio": t.audio, "text": t.text} for t in self.transcripts],
        }


def open_transducer(onnx_dir: Path | str, runtime: str = "onnxruntime", *, int8: bool = False, num_threads: int = 1,
                    provider: str = "cpu", frontend: str = "auto", sherpa_align: bool = True, streaming: bool = False,
                    chunk_ms: int | None = None,
                    sherpa_mel_range: str = "model") -> OnnxTransducer | SherpaTransducer | SherpaOnlineTransducer:
    """The model of ``onnx_dir`` in ``runtime``; ``frontend`` applies to onnxruntime, ``sherpa_align`` to sherpa-onnx,
    ``sherpa_mel_range`` to its offline recognizer (:func:`kdstore.runtime.sherpa.recognizer_config`);
    ``streaming`` opens sherpa-onnx's online recognizer on the ``chunk_ms`` folder of a streaming export
    (None: the model's default chunk; :func:`kdstore.runtime.sherpa_online.streaming_dir`).

    Raises ExportError for an unknown runtime, ``streaming`` with onnxruntime, ``chunk_ms`` without
    ``streaming``, a ``sherpa_mel_range`` other than ``model`` or ``sherpa_align`` False where it would change
    nothing (the mel range with streaming; either with onnxruntime), or an incomplete folder; DependencyError for a runtime that is not installed.
    """
    if sherpa_mel_range != "model" and (streaming or runtime != "sherpa-onnx"):
        where = "sherpa-onnx's streaming recognizer sets 8 kHz itself" if streaming else f"{runtime} uses NeMo's features"
        raise ExportError(f"--sherpa-mel-range applies to sherpa-onnx's offline recognizer only ({where}); drop it")
    if not sherpa_align and runtime != "sherpa-onnx":
        raise ExportError(f"--no-sherpa-align applies to sherpa-onnx only ({runtime} uses NeMo's frames); drop it")
    if streaming:
        if runtime != "sherpa-onnx":
            raise ExportError(f"--streaming runs in sherpa-onnx's OnlineRecognizer; kdstore has no {runtime} streaming "
                              "decoder: use --runtime sherpa-onnx (the default with --streaming)")
        return SherpaOnlineTransducer(onnx_dir, chunk_ms=chunk_ms, int8=int8, num_threads=num_threads,
                                      provider=provider, align=sherpa_align)
    if chunk_ms is not None:
        raise ExportError("--chunk-ms needs --streaming")
    _refuse_streaming_export(Path(onnx_dir))
    if runtime == "sherpa-onnx":
        return SherpaTransducer(onnx_dir, int8=int8, num_threads=num_threads, provider=provider, align=sherpa_align,
                                mel_range=sherpa_mel_range)
    if runtime != "onnxruntime":
        raise ExportError(f"runtime: expected one of {', '.join(RUNTIMES)}, got {runtime!r}")
    return OnnxTransducer(onnx_dir, int8=int8, num_threads=num_threads, provider=provider, frontend=frontend)


def _refuse_streaming_export(onnx_dir: Path) -> None:
    """A streaming export (its root with ``chunk-<ms>ms/`` folders, or one chunk folder) opened without
    ``streaming``: one line saying to add ``--streaming``, not a missing file or onnxruntime's missing cache inputs."""
    from kdstore.runtime.layout import SHERPA, chunk_folders, read_metadata

    chunks = chunk_folders(onnx_dir) if onnx_dir.is_dir() else {}
    encoder = onnx_dir / SHERPA.encoder
    streaming = bool(chunks) or (encoder.is_file() and read_metadata(encoder).get("streaming") == "cache_aware")
    if streaming:
        shown = f" (chunks: {', '.join(f'{ms} ms' for ms in sorted(chunks))})" if chunks else ""
        raise ExportError(f"{onnx_dir} is a streaming export{shown}: transcribe it with --streaming "
                          "(sherpa-onnx's OnlineRecognizer)")


def transcribe_files(onnx_dir: Path | str, paths: Sequence[str | Path], *, runtime: str = "onnxruntime",
                     int8: bool = False, batch_size: int = 8, provider: str = "cpu", frontend: str = "auto",
                     num_threads: int = 1, sherpa_align: bool = True, progress: bool = False,
                     on_text: Callable[[int, str], None] | None = None, streaming: bool = False,
                     chunk_ms: int | None = None, sherpa_mel_range: str = "model") -> Transcription:
    """Greedy transcripts of audio files (any rate/channels soundfile reads) with the export in ``onnx_dir``.

    Options as :func:`open_transducer`; ``batch_size`` files are encoded together (padded);
    ``progress`` shows a tqdm bar over batches on stderr; ``on_text`` receives (index in ``paths``,
    transcript) as each is decoded, so a caller keeps what was decoded if a later file fails. The time
    counted starts after the model is loaded. Raises AudioError, before decoding anything, for an
    unreadable file or one longer than the export takes (:mod:`kdstore.runtime.limits`), and what
    :func:`open_transducer` raises.
    """
    model = open_transducer(onnx_dir, runtime, int8=int8, num_threads=num_threads, provider=provider,
                            frontend=frontend, sherpa_align=sherpa_align, streaming=streaming, chunk_ms=chunk_ms,
                            sherpa_mel_range=sherpa_mel_range)
    start = time.perf_counter()
    waves = [model.load(p) for p in paths]
    texts = model.transcribe(waves, batch_size=batch_size, progress=progress, on_text=on_text,
                             names=[str(p) for p in paths])
    seconds = time.perf_counter() - start
    transcripts = tuple(Transcript(str(p), t, len(w) / model.sample_rate) for p, t, w in zip(paths, texts, waves))
    return Transcription(onnx_dir=Path(onnx_dir), runtime=runtime, layout=model.layout, frontend=model.frontend_name,
                         int8=int8, provider=provider, transcripts=transcripts, seconds=seconds,
                         chunk_ms=getattr(model, "chunk_ms", None))
