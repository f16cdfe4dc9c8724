"""Greedy transducer decoding of an exported model with onnxruntime (no NeMo; torch only for preprocessor.ts).

Reads either layout of :mod:`kdstore.runtime.layout`: sherpa-onnx's (encoder, decoder, joiner,
tokens) or NeMo's (encoder, decoder_joint, vocab, config.json). Features come from the exported
``preprocessor.ts`` when it is there and torch is installed (``frontend="auto"``), else from the numpy
port; both in :mod:`kdstore.runtime.frontend`, both match NeMo's preprocessor (checked at export).

Greedy search as NeMo does it: start with blank as the previous token and zero LSTM states; at each
encoder frame emit up to ``max_symbols`` tokens; blank moves on to the next frame; the prediction
net (and its state) advances only when a token is emitted. A TDT export (its joint is V+1+D wide, the
encoder metadata names the durations: :func:`kdstore.runtime.layout.tdt_durations_of`) is decoded with
NeMo's greedy TDT search instead, which skips frames by the predicted duration
(:func:`kdstore.runtime.tdt.tdt_greedy`). The encoder runs on padded batches.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from kdstore.errors import DependencyError, ExportError
from kdstore.runtime.frontend import AudioInput, FrontEndConfig, LogMelFrontEnd, TorchScriptFrontEnd, load_waveform
from kdstore.runtime.layout import (
    PREPROCESSOR_TS,
    TDT_DURATIONS_KEY,
    detect_layout,
    read_metadata,
    read_tokens,
    tdt_durations_of,
)
from kdstore.runtime.limits import check_lengths, input_name
from kdstore.runtime.tdt import tdt_greedy

WORD_BOUNDARY = "\u2581"  # SentencePiece's '▁'
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
FRONTENDS = ("auto", "torchscript", "numpy")
FeatureBatch = Callable[[Sequence[np.ndarray]], tuple[np.ndarray, np.ndarray]]  # waves -> (B, C, T), (B,)


def session_providers(provider: str) -> list[str]:
    """onnxruntime providers for ``cpu`` or ``cuda``.

    Raises ExportError for another name, DependencyError for cuda without onnxruntime-gpu.
    """
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
    """An exported NeMo transducer run with onnxruntime; ``transcribe`` returns one string per input.

    ``onnx_dir`` is a folder of either layout; ``int8`` picks the ``*.int8.onnx`` graphs; ``frontend``
    is one of :data:`FRONTENDS`; ``provider`` ``cpu`` or ``cuda``. Raises ExportError for an incomplete
    folder or a bad option, DependencyError for a runtime that is not installed.
    """

    def __init__(self, onnx_dir: Path | str, *, int8: bool = False, num_threads: int = 1, provider: str = "cpu",
                 frontend: str = "auto") -> None:
        import onnxruntime as ort

        self.onnx_dir = Path(onnx_dir)
        files = detect_layout(self.onnx_dir)
        self.layout = files.name
        graphs = files.graphs(int8)
        missing = [n for n in [*graphs, files.tokens] if not (self.onnx_dir / n).is_file()]
        if missing:
            hint = " (export with --int8)" if int8 else ""
            raise ExportError(f"{self.onnx_dir}: not a complete ONNX export, missing {', '.join(missing)}{hint}")
        self.metadata = read_metadata(self.onnx_dir / graphs[0])
        config = self._read_config(files.config)
        self.tokens = read_tokens(self.onnx_dir / files.tokens)
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
        self._joiner = sessions[2] if files.joiner else None
        self._enc_in = [i.name for i in self._encoder.get_inputs()]
        self._dec_in = [i.name for i in self._decoder.get_inputs()]
        self._join_in = [i.name for i in self._joiner.get_inputs()] if self._joiner else []
        states = [i for i in self._decoder.get_inputs() if "states" in i.name] or self._decoder.get_inputs()[2:]
        shape = states[0].shape  # (layers, batch, hidden)
        self._state_shape = (int(self.metadata.get("pred_rnn_layers", shape[0])), 1,
                             int(self.metadata.get("pred_hidden", shape[2])))
        width = (self._joiner or self._decoder).get_outputs()[0].shape[-1]  # V+1 (RNN-T) or V+1+D (TDT)
        if not isinstance(width, int):  # a dynamic width: the durations the metadata lists, if any
            listed = self.metadata.get(TDT_DURATIONS_KEY, "")
            width = len(self.tokens) + (len(listed.split(",")) if listed else 0)
        self.durations = tdt_durations_of(self.metadata, width, len(self.tokens))  # () for RNN-T

    def _read_config(self, name: str | None) -> dict:
        """onnx-asr's ``config.json`` of the NeMo layout (``max_tokens_per_step``, ``features_size``), else {}."""
        path = self.onnx_dir / name if name else None
        if path is None or not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ExportError(f"{path}: not valid JSON ({err.msg})") from None

    def _make_frontend(self, frontend: str, num_threads: int) -> tuple[str, FeatureBatch]:
        """The feature extractor ``frontend`` asks for: ``preprocessor.ts`` when present and torch imports
        (``auto``; ``torchscript`` insists), else the numpy port."""
        if frontend not in FRONTENDS:
            raise ExportError(f"frontend: expected one of {', '.join(FRONTENDS)}, got {frontend!r}")
        ts_path = self.onnx_dir / PREPROCESSOR_TS
        if frontend in ("auto", "torchscript") and ts_path.is_file():
            try:
                return "torchscript", TorchScriptFrontEnd(ts_path, num_threads).batch
            except ImportError:  # no torch: the numpy port
                if frontend == "torchscript":
                    raise DependencyError(f"{ts_path} needs torch; install torch or use the numpy front end") from None
        elif frontend == "torchscript":
            raise ExportError(f"{self.onnx_dir} has no {PREPROCESSOR_TS}; export again or use the numpy front end")
        return "numpy", LogMelFrontEnd(self.frontend_config).batch

    # --- decoding --------------------------------------------------------------------------------

    def transcribe(self, audio: Sequence[AudioInput], batch_size: int = 8, progress: bool = False,
                   on_text: Callable[[int, str], None] | None = None, names: Sequence[str] | None = None) -> list[str]:
        """Greedy transcripts of audio files (any rate/channels soundfile reads) or 1-D float arrays at
        ``sample_rate``, in input order; ``progress`` shows a tqdm bar over batches on stderr; ``on_text``
        receives (input index, transcript) as each is decoded; ``names`` name the inputs in errors (default:
        their paths).

        Every input is read and checked first (:func:`kdstore.runtime.limits.check_lengths`): ``AudioError``
        for one that cannot be read or is longer than the export takes, before anything is decoded.
        Audio shorter than one feature frame is "" (as NeMo answers), without running the graphs."""
        from tqdm import tqdm

        waves = [self.load(a) for a in audio]
        frames = check_lengths(names or [input_name(a, i) for i, a in enumerate(audio)], waves, self.frontend_config, self.metadata)
        texts = [""] * len(waves)
        for i in (i for i, count in enumerate(frames) if count == 0 and on_text is not None):
            on_text(i, "")
        order = sorted((i for i, count in enumerate(frames) if count), key=lambda i: len(waves[i]))  # similar lengths share a batch
        batch_size = max(1, batch_size)
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="transcribe", unit="batch", disable=not progress):
            chunk = order[start : start + batch_size]
            for i, enc in zip(chunk, self.encode_batch([waves[i] for i in chunk])):
                texts[i] = self.decode_ids_to_text(self.greedy(enc))
                if on_text is not None:
                    on_text(i, texts[i])
        return texts

    def load(self, audio: AudioInput) -> np.ndarray:
        """Mono float32 samples at the model's rate (:func:`kdstore.runtime.frontend.load_waveform`)."""
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
        if self.durations:
            return self._greedy_tdt(enc, state)
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

    def _greedy_tdt(self, enc: np.ndarray, state: tuple[np.ndarray, np.ndarray]) -> list[int]:
        """NeMo's greedy TDT search (:func:`kdstore.runtime.tdt.tdt_greedy`) with either layout's graphs."""
        frames = enc[:, None, :, None]  # (T', 1, D, 1)
        if self._joiner is not None:
            pred = {"out": self._predict(self.blank_id, state)}

            def joint(t: int) -> np.ndarray:
                return self._joiner.run(None, {self._join_in[0]: frames[t], self._join_in[1]: pred["out"][0]})[0]

            def emit(token: int) -> None:
                pred["out"] = self._predict(token, pred["out"][1])
        else:  # decoder_joint: the prediction net runs on the last token inside every joint call
            names = self._dec_in
            pred = {"last": self.blank_id, "state": state, "next": state}

            def joint(t: int) -> np.ndarray:
                feed = {"encoder_outputs": frames[t], "targets": np.array([[pred["last"]]], dtype=np.int32),
                        "target_length": np.array([1], dtype=np.int32),
                        "input_states_1": pred["state"][0], "input_states_2": pred["state"][1]}
                logits, _, h, c = self._decoder.run(None, {n: feed[n] for n in names})
                pred["next"] = (h, c)
                return logits

            def emit(token: int) -> None:
                pred["last"], pred["state"] = token, pred["next"]

        return tdt_greedy(enc.shape[0], joint, emit, blank_id=self.blank_id, durations=self.durations,
                          max_symbols=self.max_symbols)[0]

    def greedy_ids(self, waveform: np.ndarray) -> list[int]:
        """Token ids of one waveform at ``sample_rate``."""
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
        """Token ids -> words: pieces joined, SentencePiece's word boundary turned into single spaces."""
        return " ".join("".join(self.tokens[i] for i in ids).replace(WORD_BOUNDARY, " ").split())
