"""NeMo's cache-aware streaming decode (kdstore.nemo.streaming) on real tiny NeMo models.

Random weights are enough for the equality tests: an untrained transducer emits many tokens (up to
``max_symbols`` per frame), so a one-frame difference in the encoder changes the token sequence.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from kdstore.nemo.streaming import (
    StreamingError,
    check_streamable,
    chunk_frames,
    complete_with_silence,
    lookahead_ms,
    stream_decode,
    stream_decode_batch,
    streaming_context,
    supported_chunk_ms,
)
from tests.models import build_model

TEXTS = ["turn on the light", "turn off the radio", "open the door", "close the window please", "call mom"]
SAMPLES = (16000, 23456, 7000, 12345)  # 1.0, 1.47, 0.44, 0.77 s: partial last chunks of every kind


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from kdstore.corpus.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(TEXTS * 5, out, 24)
    return out


@pytest.fixture(scope="module")
def streaming_model(tokenizer_dir):
    """tiny-streaming, random weights: att_context_size [[70, 6], [70, 13], [70, 1], [70, 0]]."""
    torch.set_num_threads(1)
    return build_model("tiny-streaming", tokenizer_dir, seed=0)


@pytest.fixture(scope="module")
def audios() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in SAMPLES]


def offline_tokens(model, audios: list[np.ndarray], context: list[int]) -> list[list[int]]:
    """NeMo's offline forward + greedy decoding with the encoder's default context set to ``context``."""
    lengths = torch.tensor([len(a) for a in audios])
    signal = torch.zeros(len(audios), int(lengths.max()))
    for i, a in enumerate(audios):
        signal[i, : len(a)] = torch.from_numpy(a)
    previous = list(model.encoder.att_context_size)
    model.encoder.set_default_att_context_size(context)
    try:
        with torch.inference_mode():
            enc, enc_len = model.forward(input_signal=signal, input_signal_length=lengths)
            hyps = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=enc_len)
    finally:
        model.encoder.set_default_att_context_size(previous)
    return [[int(t) for t in h.y_sequence] for h in hyps]


def test_chunk_ms_maps_to_the_trained_contexts(streaming_model):
    assert supported_chunk_ms(streaming_model) == [560, 1120, 160, 80]
    assert chunk_frames(streaming_model, 560) == [70, 6]
    assert chunk_frames(streaming_model, 1120) == [70, 13]
    assert chunk_frames(streaming_model, 160) == [70, 1]
    assert chunk_frames(streaming_model, 80) == [70, 0]
    assert chunk_frames(streaming_model, None) == [70, 6]  # the first listed context is the default
    assert lookahead_ms(streaming_model, [70, 6]) == 480
    with pytest.raises(StreamingError, match=r"trained for chunks of 560, 1120, 160, 80 ms only") as err:
        chunk_frames(streaming_model, 400, name="student.nemo")
    assert "student.nemo" in str(err.value) and "\n" not in str(err.value)


def test_an_offline_model_is_refused(tokenizer_dir):
    offline = build_model("tiny", tokenizer_dir, seed=0)
    with pytest.raises(StreamingError, match=r"offline.nemo is not a cache-aware streaming model: att_context_style "
                                             r"is regular .*conv_context_size: causal.*causal_downsampling") as err:
        check_streamable(offline, "offline.nemo")
    assert "\n" not in str(err.value)
    with pytest.raises(StreamingError):
        stream_decode(offline, np.zeros(16000, np.float32))


@pytest.mark.parametrize("chunk_ms", [560, 160, 80])
def test_streaming_equals_offline_with_the_same_context(streaming_model, audios, chunk_ms):
    """NeMo's compare_vs_offline property, token for token, one utterance at a time and batched."""
    context = chunk_frames(streaming_model, chunk_ms)
    expected = offline_tokens(streaming_model, audios, context)
    single = [stream_decode(streaming_model, a, chunk_ms) for a in audios]
    assert [list(s.token_ids) for s in single] == expected
    assert all(len(t) > 10 for t in expected)  # random weights emit: the comparison has teeth
    assert stream_decode_batch(streaming_model, audios, chunk_ms) == single
    assert streaming_model.encoder.att_context_size == [70, 6]  # the default context is restored
    # a different context gives different tokens (the context really was applied)
    if chunk_ms != 560:
        assert expected != offline_tokens(streaming_model, audios, [70, 6])


@pytest.mark.parametrize("chunk_ms", [560, 80])
def test_complete_last_chunk_streams_the_audio_and_the_silence_that_fills_its_last_chunk(streaming_model, audios,
                                                                                        chunk_ms):
    """The completed stream has NeMo's first chunk plus whole later chunks of mel frames, the same number of
    chunks, the audio unchanged in front; decoding with ``complete_last_chunk`` is decoding that stream, with
    token times still capped at the utterance's end."""
    context = chunk_frames(streaming_model, chunk_ms)
    first, later = 1 + 8 * context[1], 8 * (context[1] + 1)
    for audio in audios:
        frames = len(audio) // 160  # NeMo's valid mel frames (get_seq_len)
        padded = complete_with_silence(streaming_model, audio, context)
        np.testing.assert_array_equal(padded[: len(audio)], audio)
        assert not padded[len(audio):].any() and (len(padded) - len(audio)) % 160 == 0
        full = len(padded) // 160
        assert full >= frames and (full - first) % later == 0 and full - frames < later + (first if full == first else 0)
        assert -(-max(0, frames - first) // later) == (full - first) // later  # same chunk count
        done = stream_decode(streaming_model, audio, chunk_ms, complete_last_chunk=True)
        assert done.token_ids == stream_decode(streaming_model, padded, chunk_ms).token_ids
        assert max(done.token_times_s, default=0) <= len(audio) / 16000


def test_token_times_are_chunk_ends(streaming_model, audios):
    """First chunk of [70, 6]: mel frames 0-48, heard by (48 x 160 + 200) / 16000 = 0.4925 s; each
    later chunk adds 56 frames (0.56 s); the last chunk ends at the last valid mel frame
    (samples // 160 - 1), capped at the utterance end."""
    for audio in audios:
        out = stream_decode(streaming_model, audio, 560)
        duration = len(audio) / 16000
        last_mel = len(audio) // 160 - 1
        chunk_ends = [min(duration, (min(48 + 56 * k, last_mel) * 160 + 200) / 16000) for k in range(10)]
        assert len(out.token_times_s) == len(out.token_ids) > 0
        assert list(out.token_times_s) == sorted(out.token_times_s)
        assert all(any(abs(t - end) < 1e-6 for end in chunk_ends) for t in out.token_times_s)
        assert out.token_times_s[0] == pytest.approx(chunk_ends[0])  # random weights emit at once
        assert out.token_times_s[-1] <= duration


def test_unlimited_left_context_streams_exactly_like_offline_eval(tokenizer_dir, tmp_path):
    """[-1, R] (chunked_limited, unlimited left): streaming equals kdstore's offline eval transcripts."""
    from kdstore.evaluate.transcribe import transcribe_manifest

    model = build_model("tiny-streaming", tokenizer_dir, seed=1, **{"model.encoder.att_context_size": "[[-1,6],[-1,0]]"})
    rng = np.random.default_rng(1)
    rows = []
    for i, n in enumerate((16000, 30000, 9000)):
        path = tmp_path / f"u{i}.wav"
        soundfile.write(path, (0.1 * rng.standard_normal(n)).astype(np.float32), 16000)
        rows.append({"audio_filepath": str(path), "duration": n / 16000, "text": "call mom"})
    manifest = tmp_path / "m.json"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, _, offline = transcribe_manifest(model, manifest)  # kdstore eval's decode: the default context [-1, 6]
    waves = [soundfile.read(r["audio_filepath"], dtype="float32")[0] for r in rows]
    assert [s.text for s in stream_decode_batch(model, waves)] == offline
    assert all(len(t) > 5 for t in offline)
    # the other listed context, [-1, 0] (80 ms chunks), equals the offline forward with that context
    assert [list(s.token_ids) for s in stream_decode_batch(model, waves, 80)] == offline_tokens(model, waves, [-1, 0])


def test_fully_causal_regular_attention_streams_any_chunk(tokenizer_dir, audios):
    """``regular`` attention with [-1, 0] (no look-ahead, unlimited past) is streamable in any multiple
    of 80 ms, and equals the offline forward."""
    model = build_model("tiny-streaming", tokenizer_dir, seed=2, **{"model.encoder.att_context_style": "regular",
                                                                     "model.encoder.att_context_size": "[-1,0]"})
    assert supported_chunk_ms(model) == [80]
    assert chunk_frames(model, 240) == [-1, 2]
    with pytest.raises(StreamingError, match="multiples of 80 ms"):
        chunk_frames(model, 100)
    expected = offline_tokens(model, audios, [-1, 0])
    assert [list(s.token_ids) for s in stream_decode_batch(model, audios, 240)] == expected
    with streaming_context(model, [-1, 2]):
        assert model.encoder.att_context_size == [-1, 0]  # regular: the mask stays causal


def test_the_emitting_streaming_model_emits_when_streamed(emitting_streaming_model):
    """The session fixture: restored from its .nemo, NeMo's streaming transcripts of its 10 utterances are
    non-empty on most, equal the offline transcripts with the default context, and at 80 ms chunks
    (a context it also trained on) still emit."""
    from kdstore.evaluate.transcribe import transcribe_manifest
    from kdstore.inputs.manifest import read_manifest
    from kdstore.nemo.checkpoint import restore_model

    model = restore_model(emitting_streaming_model)
    manifest = emitting_streaming_model.with_name("train.json")
    waves = [soundfile.read(e.audio_filepath, dtype="float32")[0] for e in read_manifest(manifest)]
    streamed = stream_decode_batch(model, waves)
    assert sum(bool(s.text.strip()) for s in streamed) >= 8
    assert [s.text for s in streamed] == transcribe_manifest(model, manifest)[2]
    assert sum(bool(s.text.strip()) for s in stream_decode_batch(model, waves, 80)) >= 5
    log = json.loads(emitting_streaming_model.with_name("train_log.json").read_text())
    assert log["emitting_at"] < 400 and log["loss"] < 0.3
