"""sherpa-onnx's ``OnlineRecognizer`` on a ``kdstore export-onnx --streaming`` folder, fed as a live source.

``kdstore transcribe --streaming`` (:class:`SherpaOnlineTransducer`) feeds each file to sherpa-onnx in
small pieces (0.1 s by default) as a microphone would, decodes whatever chunks are ready after each
piece, then calls ``input_finished`` and decodes until nothing is ready: greedy search, the only
search sherpa-onnx's online NeMo transducer has. sherpa-onnx picks its NeMo cache-aware path by
the decoder graph (more than one output), computes its own fbank (librosa-style mel, hann, no dither,
no normalisation) and reads the rest from the encoder metadata (:data:`SHERPA_ONLINE_REQUIRED_METADATA`,
written by :mod:`kdstore.export.streaming`); a missing key ends the whole process, so the folder
is checked here first and a bad one gets a normal error.

**Where the chunks fall** (``align=True``, the default). sherpa-onnx cuts its features into windows
of ``window_size`` mel frames moved by ``chunk_shift``, and the encoder treats the first
``pre_encode_cache_size`` frames of every window as NeMo's pre-encode cache, dropping the
``drop_extra_pre_encoded`` encoder frames they give. So on raw audio sherpa-onnx never emits from the
first ``drop_extra_pre_encoded x subsampling_factor`` mel frames (160 ms for 8x subsampling) and its
chunks sit that far off NeMo's, whose first chunk is ``chunk_shift - subsampling_factor + 1`` frames
with no cache (NeMo's ``CacheAwareStreamingAudioBuffer``; ``kdstore.nemo.streaming.stream_decode``). kdstore
puts sherpa-onnx on NeMo's grid: the audio is frame-aligned as for the offline recognizer
(:func:`kdstore.runtime.sherpa.align_for_sherpa`: sherpa-onnx's frames centred where NeMo's are,
NeMo's frame count), and that many frames of silence go in front (:func:`lead_frames`), so the frames
sherpa-onnx drops are the lead and its chunks hold exactly NeMo's encoder frames 0..6, 7..13, ...
(560 ms chunks).

*What the lead holds does not matter*: kdstore's export masks the lead at every layer of the
subsampling stack in a stream's first window (:mod:`kdstore.export.first_chunk`), which is NeMo's zero
padding in its first chunk, as in training. Silence is used because sherpa-onnx's first real frames
(25 ms windows centred on them) reach back into it, as NeMo's reach into the STFT's zero padding. An
app that feeds sherpa-onnx the microphone itself should send 160 ms of silence before the first
samples: without it the stream's first 160 ms are masked, and on the demo's synthetic test audio
(speech from the first frames on) sherpa-onnx then agrees with NeMo on 3 of 159 utterances
(``bench/streaming_agreement.py``, ``fp32_raw``).

Measured on the study's distilled streaming student (kd-d4-s0 of ``bench/streaming.py``, 159 demo test
utterances, 560 ms): sherpa-onnx's transcripts equal NeMo's streaming decode of the same stream
(``complete_last_chunk``, below) on 158 of 159 in fp32 (WER 61.97% vs NeMo's 62.54%) and 138 of 159 in
int8 (61.78%); with a lead of clicks at log-mel ~0 instead of silence, 152 of 159. Before the export
masked the lead (clicks, no masking): 17 of 159.

**The end of the stream.** sherpa-onnx decodes a window only once one more frame than the window has
arrived, and never decodes a partial last window, even after ``input_finished`` (its own examples
append 0.66 s of silence). kdstore appends the fewest silent frames that let sherpa-onnx decode every
chunk NeMo's streaming decode would (:func:`tail_frames`); the last chunk then holds silence where
NeMo's is shorter, which its frames attend to. ``kdstore.nemo.streaming.stream_decode(...,
complete_last_chunk=True)`` decodes that same stream in NeMo (utterance + the silence that fills its
last chunk), the reference sherpa-onnx is compared with.

numpy only at import (no torch, no NeMo); ``sherpa_onnx`` is imported when a recognizer is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from kdstore.errors import DependencyError, ExportError
from kdstore.runtime.frontend import AudioInput, FrontEndConfig, LogMelFrontEnd, load_waveform
from kdstore.runtime.layout import SHERPA, chunk_folders, read_metadata
from kdstore.runtime.limits import check_lengths, input_name
from kdstore.runtime.sherpa import align_for_sherpa

# Encoder metadata sherpa-onnx's online NeMo transducer reads with no default: OnlineTransducerNeMoModel::Impl::
# InitEncoder in sherpa-onnx/csrc/online-transducer-nemo-model.cc (SHERPA_ONNX_READ_META_DATA: exits when absent).
SHERPA_ONLINE_REQUIRED_METADATA = (
    "vocab_size", "window_size", "chunk_shift", "subsampling_factor", "pred_rnn_layers", "pred_hidden",
    "cache_last_channel_dim1", "cache_last_channel_dim2", "cache_last_channel_dim3",
    "cache_last_time_dim1", "cache_last_time_dim2", "cache_last_time_dim3",
)
# Read there when present (SHERPA_ONNX_READ_META_DATA_STR_ALLOW_EMPTY; absent or "NA": no normalisation).
SHERPA_ONLINE_OPTIONAL_METADATA = ("normalize_type",)
# kdstore's streaming keys that place the input on NeMo's chunk grid (kdstore.export.streaming).
KDSTORE_STREAMING_METADATA = ("chunk_ms", "drop_extra_pre_encoded", "default_chunk_ms")
PIECE_SECONDS = 0.1  # how much audio a live source hands over at a time


def streaming_dir(onnx_dir: Path | str, chunk_ms: int | None = None) -> Path:
    """The folder of one chunk size in a streaming export.

    ``onnx_dir`` is what ``export-onnx --streaming`` wrote (``chunk-<ms>ms`` sub-folders) or one of its
    chunk folders. ``chunk_ms`` picks the chunk; None takes the model's default chunk
    (``default_chunk_ms``), or the only one exported. Raises ExportError, listing what there is, for a
    folder that is not a streaming export or lacks the chunk asked for.
    """
    onnx_dir = Path(onnx_dir)
    hint = "export with kdstore export-onnx --streaming"
    if (onnx_dir / SHERPA.encoder).is_file():
        meta = read_metadata(onnx_dir / SHERPA.encoder)
        if meta.get("streaming") != "cache_aware":
            raise ExportError(f"{onnx_dir}: an offline export (its encoder has no streaming metadata); {hint}, or "
                              "transcribe without --streaming")
        if chunk_ms is not None and int(meta["chunk_ms"]) != int(chunk_ms):
            raise ExportError(f"{onnx_dir}: exported for {meta['chunk_ms']} ms chunks, not {chunk_ms}; pass its parent "
                              f"folder or --chunk-ms {meta['chunk_ms']}")
        return onnx_dir
    folders = chunk_folders(onnx_dir)
    have = ", ".join(str(ms) for ms in folders)
    if not folders:
        raise ExportError(f"{onnx_dir}: not a streaming export (no chunk-<ms>ms folder with an {SHERPA.encoder}); {hint}")
    if chunk_ms is not None:
        if int(chunk_ms) not in folders:
            raise ExportError(f"{onnx_dir}: no export for {chunk_ms} ms chunks (it has {have} ms); pass one of those "
                              f"to --chunk-ms, or {hint} --chunk-ms {chunk_ms} if the model was trained for it")
        return folders[int(chunk_ms)]
    if len(folders) == 1:
        return next(iter(folders.values()))
    default = read_metadata(next(iter(folders.values())) / SHERPA.encoder).get("default_chunk_ms", "")
    if default.isdigit() and int(default) in folders:
        return folders[int(default)]
    raise ExportError(f"{onnx_dir}: holds {have} ms chunks and not the model's default ({default or '?'} ms); pick one "
                      "with --chunk-ms")


def lead_frames(metadata: Mapping[str, str]) -> int:
    """Mel frames of lead that put sherpa-onnx's chunks on NeMo's grid: the frames whose encoder outputs
    the exported encoder drops (``drop_extra_pre_encoded x subsampling_factor``)."""
    return int(metadata["drop_extra_pre_encoded"]) * int(metadata["subsampling_factor"])


def nemo_chunks(frames: int, metadata: Mapping[str, str]) -> int:
    """How many chunks NeMo's streaming decode (``kdstore.nemo.streaming.stream_decode``) makes of ``frames``
    mel frames: a first one of ``chunk_shift - subsampling_factor + 1`` frames, then one per
    ``chunk_shift`` frames, the last one possibly shorter."""
    shift, factor = int(metadata["chunk_shift"]), int(metadata["subsampling_factor"])
    if frames <= 0:
        return 0
    return 1 + math.ceil(max(0, frames - (shift - factor + 1)) / shift)


def tail_frames(frames: int, metadata: Mapping[str, str], lead: int) -> int:
    """Silent mel frames to append after ``lead + frames`` so that sherpa-onnx decodes every chunk NeMo's
    streaming decode makes of ``frames`` frames (``lead`` > 0: on NeMo's grid, :func:`nemo_chunks`), or
    with ``lead`` 0 (raw audio) every window that holds one of the ``frames``.

    sherpa-onnx decodes window k (``window_size`` frames from ``k x chunk_shift``) once
    ``k x chunk_shift + window_size + 1`` frames have arrived, and never a partial one.
    """
    window, shift = int(metadata["window_size"]), int(metadata["chunk_shift"])
    if lead:
        windows = nemo_chunks(frames, metadata)
    else:
        windows = 1 + math.ceil(max(0, frames - window) / shift)
    return max(0, (windows - 1) * shift + window + 1 - lead - frames)


def stream_samples(wave: np.ndarray, config: FrontEndConfig, metadata: Mapping[str, str], align: bool = True) -> np.ndarray:
    """The samples to stream into sherpa-onnx for ``wave`` (mono float32 at ``config.sample_rate``).

    ``align``: frame-aligned (:func:`kdstore.runtime.sherpa.align_for_sherpa`) after :func:`lead_frames`
    frames of silence; else the raw samples. Then :func:`tail_frames` of silence.
    """
    hop = config.n_window_stride
    if align:
        body, lead = align_for_sherpa(wave, config), lead_frames(metadata)
        frames = LogMelFrontEnd(config).num_frames(len(wave))  # what sherpa-onnx makes of the aligned body
    else:
        body, lead = np.asarray(wave, dtype=np.float32), 0
        frames = (len(body) + hop // 2) // hop  # sherpa-onnx's count (snip_edges false)
    tail = tail_frames(frames, metadata, lead)
    return np.concatenate([np.zeros(lead * hop, np.float32), body, np.zeros(tail * hop, np.float32)])


class SherpaOnlineTransducer:
    """One chunk size of a streaming export run by ``sherpa_onnx.OnlineRecognizer`` (greedy search).

    ``onnx_dir`` and ``chunk_ms`` as :func:`streaming_dir`; ``piece_seconds`` is how much audio each
    ``accept_waveform`` gets. Raises DependencyError without the sherpa-onnx package, ExportError for
    a folder that is not a complete streaming export or whose encoder lacks a key sherpa-onnx needs.
    """

    layout = SHERPA.name

    def __init__(self, onnx_dir: Path | str, *, chunk_ms: int | None = None, int8: bool = False, num_threads: int = 1,
                 provider: str = "cpu", align: bool = True, piece_seconds: float = PIECE_SECONDS) -> None:
        try:
            import sherpa_onnx
        except ImportError:
            raise DependencyError("--streaming needs the sherpa-onnx package: pip install sherpa-onnx") from None
        self.onnx_dir = streaming_dir(onnx_dir, chunk_ms)
        graphs = SHERPA.graphs(int8)
        missing = [n for n in [*graphs, SHERPA.tokens] if not (self.onnx_dir / n).is_file()]
        if missing:
            hint = " (export with --int8)" if int8 else ""
            raise ExportError(f"{self.onnx_dir}: incomplete streaming export, missing {', '.join(missing)}{hint}")
        metadata = read_metadata(self.onnx_dir / graphs[0])
        absent = [k for k in (*SHERPA_ONLINE_REQUIRED_METADATA, *KDSTORE_STREAMING_METADATA) if k not in metadata]
        if absent:
            raise ExportError(f"{self.onnx_dir / graphs[0]}: encoder metadata lacks {', '.join(absent)}, which "
                              "sherpa-onnx's online recognizer needs; export again with kdstore export-onnx --streaming")
        if piece_seconds <= 0:
            raise ExportError(f"piece_seconds must be positive, got {piece_seconds}")
        self.metadata = metadata
        self.chunk_ms = int(metadata["chunk_ms"])
        self.frontend = FrontEndConfig.from_metadata(metadata)
        self.sample_rate = self.frontend.sample_rate
        self.align = align
        self.piece = max(1, round(piece_seconds * self.sample_rate))
        self.frontend_name = (f"sherpa-onnx fbank ({piece_seconds:g} s pieces, "
                              + ("on NeMo's chunk grid)" if align else "raw input)"))
        encoder, decoder, joiner = (str(self.onnx_dir / n) for n in graphs)
        self._recognizer = sherpa_onnx.OnlineRecognizer.from_transducer(
            tokens=str(self.onnx_dir / SHERPA.tokens), encoder=encoder, decoder=decoder, joiner=joiner,
            num_threads=num_threads, sample_rate=self.sample_rate, feature_dim=self.frontend.features,
            decoding_method="greedy_search", provider=provider, model_type="nemo_transducer",
        )

    def load(self, audio: AudioInput) -> np.ndarray:
        """Mono float32 at the model's rate (the alignment and padding are applied in :meth:`transcribe`)."""
        return load_waveform(audio, self.sample_rate)

    def transcribe(self, audio: Sequence[AudioInput], batch_size: int = 8, progress: bool = False,
                   on_text: Callable[[int, str], None] | None = None, names: Sequence[str] | None = None) -> list[str]:
        """sherpa-onnx's streaming greedy transcripts, in input order.

        ``batch_size`` streams run side by side (each gets its next piece, then every ready one is
        decoded together, as a server would); ``progress`` shows a tqdm bar over files; ``on_text``
        receives (input index, transcript) as each finishes; ``names`` name the inputs in errors.
        Audio shorter than one feature frame gives "" without decoding.
        """
        from tqdm import tqdm

        waves = [self.load(a) for a in audio]
        frames = check_lengths(names or [input_name(a, i) for i, a in enumerate(audio)], waves, self.frontend, self.metadata)
        texts = [""] * len(waves)
        for i in (i for i, count in enumerate(frames) if count == 0 and on_text is not None):
            on_text(i, "")
        todo = [i for i, count in enumerate(frames) if count]
        batch_size = max(1, batch_size)
        with tqdm(total=len(todo), desc="transcribe --streaming", unit="file", disable=not progress) as bar:
            for start in range(0, len(todo), batch_size):
                group = todo[start : start + batch_size]
                for i, text in zip(group, self._stream([waves[i] for i in group]), strict=True):
                    texts[i] = text
                    if on_text is not None:
                        on_text(i, text)
                bar.update(len(group))
        return texts

    def _stream(self, waves: Sequence[np.ndarray]) -> list[str]:
        """Stream ``waves`` side by side, piece by piece; their transcripts."""
        recognizer = self._recognizer
        samples = [stream_samples(w, self.frontend, self.metadata, self.align) for w in waves]
        streams = [recognizer.create_stream() for _ in samples]
        for offset in range(0, max(len(s) for s in samples), self.piece):
            for stream, wave in zip(streams, samples, strict=True):
                if offset < len(wave):
                    stream.accept_waveform(self.sample_rate, wave[offset : offset + self.piece])
                    if offset + self.piece >= len(wave):
                        stream.input_finished()
            _decode_ready(recognizer, streams)
        _decode_ready(recognizer, streams)
        return [recognizer.get_result(s).strip() for s in streams]


def _decode_ready(recognizer: object, streams: Sequence[object]) -> None:
    """Decode chunks until no stream has a full one."""
    while True:
        ready = [s for s in streams if recognizer.is_ready(s)]  # type: ignore[attr-defined]
        if not ready:
            return
        recognizer.decode_streams(ready)  # type: ignore[attr-defined]
