"""Greedy transducer decoding of an exported model with onnxruntime (no torch, no NeMo).

Reads the folder :func:`kdstore.export.export_onnx` writes (sherpa-onnx's layout). Greedy search as
NeMo does it: start with blank as the previous token and zero LSTM states; at each encoder frame
emit up to ``max_symbols`` tokens; blank moves on to the next frame; the prediction net (and its
state) advances only when a token is emitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kdstore.errors import AudioError
from kdstore.export import DECODER, ENCODER, JOINER, TOKENS, ExportError, read_metadata
from kdstore.features import FrontEndConfig, LogMelFrontEnd

AudioInput = str | Path | np.ndarray
WORD_BOUNDARY = "\u2581"  # SentencePiece's '▁'


class OnnxTransducer:
    """An exported NeMo transducer run with onnxruntime; ``transcribe`` returns one string per input."""

    def __init__(self, onnx_dir: Path | str, *, int8: bool = False, num_threads: int = 1) -> None:
        import onnxruntime as ort

        self.onnx_dir = Path(onnx_dir)
        names = [ENCODER, DECODER, JOINER]
        if int8:
            names = [n.replace(".onnx", ".int8.onnx") for n in names]
        missing = [n for n in [*names, TOKENS] if not (self.onnx_dir / n).is_file()]
        if missing:
            hint = " (export with --int8)" if int8 else ""
            raise ExportError(f"{self.onnx_dir}: not a complete ONNX export, missing {', '.join(missing)}{hint}")
        self.metadata = read_metadata(self.onnx_dir / names[0])
        self.frontend = LogMelFrontEnd(FrontEndConfig.from_metadata(self.metadata))
        self.sample_rate = self.frontend.config.sample_rate
        self.tokens = read_tokens(self.onnx_dir / TOKENS)
        self.blank_id = int(self.metadata.get("blank_id", len(self.tokens) - 1))
        self.max_symbols = int(self.metadata.get("max_symbols", 10))

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        sessions = [
            ort.InferenceSession(str(self.onnx_dir / n), options, providers=["CPUExecutionProvider"]) for n in names
        ]
        self._encoder, self._decoder, self._joiner = sessions
        self._enc_in = [i.name for i in self._encoder.get_inputs()]
        self._dec_in = [i.name for i in self._decoder.get_inputs()]
        self._join_in = [i.name for i in self._joiner.get_inputs()]
        state_shape = self._decoder.get_inputs()[2].shape  # (layers, batch, hidden)
        self._state_shape = (int(self.metadata.get("pred_rnn_layers", state_shape[0])), 1,
                             int(self.metadata.get("pred_hidden", state_shape[2])))

    def transcribe(self, audio: Sequence[AudioInput]) -> list[str]:
        """Greedy transcripts of audio files (any rate soundfile reads) or 1-D float arrays at ``sample_rate``."""
        return [self.decode_ids_to_text(self.greedy_ids(self.load(a))) for a in audio]

    def load(self, audio: AudioInput) -> np.ndarray:
        if isinstance(audio, np.ndarray):
            if audio.ndim != 1:
                raise AudioError(f"audio array: expected 1-D samples at {self.sample_rate} Hz, got {audio.shape}")
            return audio.astype(np.float32, copy=False)
        return read_audio(Path(audio), self.sample_rate)

    def encode(self, waveform: np.ndarray) -> np.ndarray:
        """Encoder output for one utterance, (T', D)."""
        feats, length = self.frontend(waveform)  # (features, frames)
        out, out_len = self._encoder.run(
            None, {self._enc_in[0]: feats[None], self._enc_in[1]: np.array([length], dtype=np.int64)}
        )  # (1, D, T'), (1,)
        return out[0, :, : int(out_len[0])].T

    def greedy_ids(self, waveform: np.ndarray) -> list[int]:
        enc = self.encode(waveform)  # (T', D)
        state = (np.zeros(self._state_shape, np.float32), np.zeros(self._state_shape, np.float32))
        dec_out, next_state = self._predict(self.blank_id, state)
        hyp: list[int] = []
        for t in range(enc.shape[0]):
            frame = enc[t][None, :, None]  # (1, D, 1)
            for _ in range(self.max_symbols):
                logits = self._joiner.run(None, {self._join_in[0]: frame, self._join_in[1]: dec_out})[0]
                token = int(np.argmax(logits.reshape(-1)))
                if token == self.blank_id:
                    break
                hyp.append(token)
                dec_out, next_state = self._predict(token, next_state)
        return hyp

    def _predict(self, token: int, state: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, tuple]:
        """Prediction net on one token: output (1, H, 1) and the state after it."""
        out, _, h, c = self._decoder.run(
            None,
            {
                self._dec_in[0]: np.array([[token]], dtype=np.int32),
                self._dec_in[1]: np.array([1], dtype=np.int32),
                self._dec_in[2]: state[0],
                self._dec_in[3]: state[1],
            },
        )
        return out, (h, c)

    def decode_ids_to_text(self, ids: Sequence[int]) -> str:
        return "".join(self.tokens[i] for i in ids).replace(WORD_BOUNDARY, " ").strip()


def read_tokens(path: Path) -> list[str]:
    """``tokens.txt`` (``piece id`` lines) as a list indexed by id."""
    table: dict[int, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        piece, _, ident = line.rpartition(" ")
        if not piece or not ident.isdigit():
            raise ExportError(f"{path}:{n}: expected 'piece id', got {line!r}")
        table[int(ident)] = piece
    if sorted(table) != list(range(len(table))):
        raise ExportError(f"{path}: token ids are not 0..{len(table) - 1}")
    return [table[i] for i in range(len(table))]


def read_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 samples at ``sample_rate`` (channels averaged; other rates resampled with soxr)."""
    import soundfile as sf

    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as err:  # soundfile's LibsndfileError is a RuntimeError
        raise AudioError(f"{path}: cannot read audio ({err})") from None
    samples = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if rate != sample_rate:
        try:
            import soxr
        except ImportError:
            raise AudioError(
                f"{path}: {rate} Hz audio needs resampling to {sample_rate} Hz but soxr is not installed; "
                f"pip install soxr, or convert first: sox {path} -r {sample_rate} out.wav"
            ) from None
        samples = soxr.resample(samples, rate, sample_rate, quality="HQ").astype(np.float32)
    return samples
