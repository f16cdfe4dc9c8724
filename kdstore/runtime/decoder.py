"""Greedy transducer decoding of an exported model with onnxruntime (no NeMo; torch only for preprocessor.ts).

Reads either layout :func:`kdstore.export.run.export_onnx` writes: sherpa-onnx's (``encoder.onnx``,
``decoder.onnx``, ``joiner.onnx``, ``tokens.txt``) or NeMo's (``encoder-model.onnx``,
``decoder_joint-model.onnx``, ``vocab.txt``). Features come from the exported ``preprocessor.ts``
when it is there and torch is installed (``frontend="auto"``), else from the numpy port in
:mod:`kdstore.runtime.frontend`; both match NeMo's preprocessor (checked at export).

Greedy search as NeMo does it: start with blank as the previous token and zero LSTM states; at each
encoder frame emit up to ``max_symbols`` tokens; blank moves on to the next frame; the prediction
net (and its state) advances only when a token is emitted. The encoder runs on padded batches.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdstore.inputs.audio import read_samples
from kdstore.errors import AudioError, DependencyError, ExportError
from kdstore.runtime.frontend import FrontEndConfig, LogMelFrontEnd
from kdstore.export.onnx_edit import read_metadata

AudioInput = str | Path | np.ndarray
WORD_BOUNDARY = "\u2581"  # SentencePiece's '▁'
SHERPA_FILES = ("encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt")
NEMO_FILES = ("encoder-model.onnx", "decoder_joint-model.onnx", "vocab.txt")
PREPROCESSOR_TS = "preprocessor.ts"
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
FRONTENDS = ("auto", "torchscript", "numpy")


@dataclass(frozen=True)
class Transcript:
    audio: str
    text: str
    seconds: float  # audio duration


def detect_layout(onnx_dir: Path) -> str:
    """``"sherpa"`` or ``"nemo"`` from the files present; a clear error for anything else."""
    sherpa = (onnx_dir / SHERPA_FILES[0]).is_file()
    nemo = (onnx_dir / NEMO_FILES[0]).is_file()
    if sherpa and nemo:
        raise ExportError(f"{onnx_dir} holds both layouts (encoder.onnx and encoder-model.onnx); keep one per folder")
    if not (sherpa or nemo):
        raise ExportError(f"{onnx_dir}: not a complete ONNX export, missing encoder.onnx (or encoder-model.onnx); "
                          "run kdstore export-onnx first")
    return "sherpa" if sherpa else "nemo"


def session_providers(provider: str) -> list[str]:
    """onnxruntime providers for ``cpu`` or ``cuda``; cuda without onnxruntime-gpu is a one-line error."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise ExportError(f"provider: expected one of {', '.join(PROVIDERS)}, got {provider!r}")
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if PROVIDERS[provider] not in available:
        raise DependencyError(
            f"--provider cuda needs onnxruntime-gpu and a CUDA device; this onnxruntime offers only "
            f"{', '.join(available)}: pip uninstall onnxruntime && pip install onnxruntime-gpu"
        )
    return [PROVIDERS[provider], "CPUExecutionProvider"]


class OnnxTransducer:
    """An exported NeMo transducer run with onnxruntime; ``transcribe`` returns one string per input."""

    def __init__(self, onnx_dir: Path | str, *, int8: bool = False, num_threads: int = 1, provider: str = "cpu",
                 frontend: str = "auto") -> None:
        import onnxruntime as ort

        self.onnx_dir = Path(onnx_dir)
        self.layout = detect_layout(self.onnx_dir)
        files = SHERPA_FILES if self.layout == "sherpa" else NEMO_FILES
        graphs = [n.replace(".onnx", ".int8.onnx") if int8 else n for n in files if n.endswith(".onnx")]
        token_file = files[-1]
        missing = [n for n in [*graphs, token_file] if not (self.onnx_dir / n).is_file()]
        if missing:
            hint = " (export with --int8)" if int8 else ""
            raise ExportError(f"{self.onnx_dir}: not a complete ONNX export, missing {', '.join(missing)}{hint}")
        self.metadata = read_metadata(self.onnx_dir / graphs[0])
        config = self._read_config()
        self.tokens = read_tokens(self.onnx_dir / token_file)
        self.blank_id = int(self.metadata.get("blank_id", len(self.tokens) - 1))
        self.max_symbols = int(self.metadata.get("max_symbols", config.get("max_tokens_per_step", 10)))
        meta = dict(self.metadata)
        if "features" not in meta and "feat_dim" not in meta and "features_size" in config:
            meta["features"] = str(config["features_size"])
        self.frontend_config = FrontEndConfig.from_metadata(meta)
        self.sample_rate = self.frontend_config.sample_rate
        self.frontend_name, self._frontend = self._make_frontend(frontend, num_threads)

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        providers = session_providers(provider)
        sessions = [ort.InferenceSession(str(self.onnx_dir / n), options, providers=providers) for n in graphs]
        self._encoder, self._decoder = sessions[0], sessions[1]
        self._joiner = sessions[2] if self.layout == "sherpa" else None
        self._enc_in = [i.name for i in self._encoder.get_inputs()]
        self._dec_in = [i.name for i in self._decoder.get_inputs()]
        self._join_in = [i.name for i in self._joiner.get_inputs()] if self._joiner else []
        states = [i for i in self._decoder.get_inputs() if "states" in i.name] or self._decoder.get_inputs()[2:]
        shape = states[0].shape  # (layers, batch, hidden)
        self._state_shape = (int(self.metadata.get("pred_rnn_layers", shape[0])), 1,
                             int(self.metadata.get("pred_hidden", shape[2])))

    def _read_config(self) -> dict:
        path = self.onnx_dir / "config.json"
        if self.layout != "nemo" or not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ExportError(f"{path}: not valid JSON ({err.msg})") from None

    def _make_frontend(self, frontend: str, num_threads: int):
        if frontend not in FRONTENDS:
            raise ExportError(f"frontend: expected one of {', '.join(FRONTENDS)}, got {frontend!r}")
        ts_path = self.onnx_dir / PREPROCESSOR_TS
        if frontend in ("auto", "torchscript") and ts_path.is_file():
            try:
                from kdstore.export.preprocessor import TorchScriptFrontEnd

                return "torchscript", TorchScriptFrontEnd(ts_path, num_threads).batch
            except ImportError:
                if frontend == "torchscript":
                    raise DependencyError(f"{ts_path} needs torch; install torch or use the numpy front end") from None
        elif frontend == "torchscript":
            raise ExportError(f"{self.onnx_dir} has no {PREPROCESSOR_TS}; export again or use the numpy front end")
        numpy_frontend = LogMelFrontEnd(self.frontend_config)

        def batch(waveforms: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            feats = [numpy_frontend(w) for w in waveforms]
            width = max(f.shape[1] for f, _ in feats)
            out = np.full((len(feats), feats[0][0].shape[0], width), self.frontend_config.pad_value, np.float32)
            for i, (f, _) in enumerate(feats):
                out[i, :, : f.shape[1]] = f
            return out, np.array([n for _, n in feats], dtype=np.int64)

        return "numpy", batch

    # --- decoding --------------------------------------------------------------------------------

    def transcribe(self, audio: Sequence[AudioInput], batch_size: int = 8) -> list[str]:
        """Greedy transcripts of audio files (any rate/channels soundfile reads) or 1-D float arrays at ``sample_rate``."""
        waves = [self.load(a) for a in audio]
        texts = [""] * len(waves)
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))  # similar lengths share a batch
        for start in range(0, len(order), max(1, batch_size)):
            chunk = order[start : start + batch_size]
            for i, enc in zip(chunk, self.encode_batch([waves[i] for i in chunk])):
                texts[i] = self.decode_ids_to_text(self.greedy(enc))
        return texts

    def load(self, audio: AudioInput) -> np.ndarray:
        return load_waveform(audio, self.sample_rate)

    def encode_batch(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
        """Encoder outputs, one (T', D) array per waveform."""
        return self.encode_features(*self._frontend(waveforms))

    def encode_features(self, feats: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """Encoder outputs of log-mel features (B, C, T) with valid lengths (B,): one (T', D) array each."""
        feed = {self._enc_in[0]: feats.astype(np.float32, copy=False), self._enc_in[1]: lengths.astype(np.int64)}
        out, out_len = self._encoder.run(None, feed)  # (B, D, T'), (B,)
        return [out[i, :, : int(out_len[i])].T for i in range(len(feats))]

    def encode(self, waveform: np.ndarray) -> np.ndarray:
        """Encoder output for one utterance, (T', D)."""
        return self.encode_batch([waveform])[0]

    def greedy(self, enc: np.ndarray) -> list[int]:
        """Token ids of one utterance's encoder output (T', D)."""
        state = (np.zeros(self._state_shape, np.float32), np.zeros(self._state_shape, np.float32))
        if self._joiner is None:
            return self._greedy_decoder_joint(enc, state)
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

    def _greedy_decoder_joint(self, enc: np.ndarray, state: tuple[np.ndarray, np.ndarray]) -> list[int]:
        """NeMo layout: one decoder_joint call per step runs the prediction net on the last token and the joint."""
        names = self._dec_in
        hyp: list[int] = []
        for t in range(enc.shape[0]):
            frame = enc[t][None, :, None]  # (1, D, 1)
            for _ in range(self.max_symbols):
                last = hyp[-1] if hyp else self.blank_id
                feed = {"encoder_outputs": frame, "targets": np.array([[last]], dtype=np.int32),
                        "target_length": np.array([1], dtype=np.int32),
                        "input_states_1": state[0], "input_states_2": state[1]}
                logits, _, h, c = self._decoder.run(None, {n: feed[n] for n in names})
                token = int(np.argmax(logits.reshape(-1)))
                if token == self.blank_id:
                    break
                hyp.append(token)
                state = (h, c)
        return hyp

    def greedy_ids(self, waveform: np.ndarray) -> list[int]:
        return self.greedy(self.encode(waveform))

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
        return " ".join("".join(self.tokens[i] for i in ids).replace(WORD_BOUNDARY, " ").split())


def transcribe_files(model: OnnxTransducer, paths: Sequence[str | Path],
                     batch_size: int = 8) -> tuple[list[Transcript], float]:
    """Transcripts of audio files and the wall seconds it took (reading, resampling, features, decoding)."""
    start = time.perf_counter()
    waves = [model.load(p) for p in paths]
    texts = model.transcribe(waves, batch_size=batch_size)
    seconds = time.perf_counter() - start
    out = [Transcript(str(p), t, len(w) / model.sample_rate) for p, t, w in zip(paths, texts, waves)]
    return out, seconds


def read_tokens(path: Path) -> list[str]:
    """``tokens.txt`` / ``vocab.txt`` (``piece id`` lines) as a list indexed by id."""
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


def load_waveform(audio: AudioInput, sample_rate: int) -> np.ndarray:
    """A file (any rate/channels soundfile reads; resampled, downmixed) or 1-D samples already at
    ``sample_rate`` -> mono float32 at ``sample_rate``. Shared by both runtimes of ``kdstore transcribe``."""
    if isinstance(audio, np.ndarray):
        if audio.ndim != 1:
            raise AudioError(f"audio array: expected 1-D samples at {sample_rate} Hz, got {audio.shape}")
        return audio.astype(np.float32, copy=False)
    return read_samples(Path(audio), sample_rate)
