"""`kdstore eval --streaming`: the latency arithmetic by hand, the unlimited-context acceptance property
(streaming eval == offline eval) and the command on a tiny streaming model that emits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile

from kdstore.errors import ConfigError
from kdstore.evaluate.streaming import (
    TimedWords,
    aligned_hits,
    emitted_words,
    latency_stats,
    normalize_timed,
    word_latencies,
)
from kdstore.nemo.streaming import StreamingError

PIECES = ["▁un", "lock", "▁the", "▁ba", "ck", "▁door"]


def decode_pieces(ids: list[int]) -> str:
    return "".join(PIECES[i] for i in ids).replace("▁", " ").strip()


# --- the latency function, by hand -------------------------------------------------------------------


def test_a_word_is_timed_by_its_last_token():
    words = emitted_words([0, 1, 2, 3, 4, 5], [0.5, 0.5, 0.5, 1.0, 1.6, 1.6], decode_pieces)
    assert words.words == ("unlock", "the", "back", "door")
    assert words.times_s == (0.5, 0.5, 1.6, 1.6)  # "back" is complete only with "ck", shown at 1.6 s
    assert emitted_words([], [], decode_pieces) == TimedWords(words=(), times_s=())


def test_latency_counts_words_both_systems_got_right():
    """Reference "unlock the back door"; streamed "unlock the the back door" (an insertion); the latency
    reference heard "unlock the black door" (ends 0.30, 0.45, 0.90, 1.20 s). "back" is wrong in the
    latency reference, so it has no end: 3 latencies, 0.5 - 0.3, 0.5 - 0.45, 1.6 - 1.2."""
    reference = ["unlock", "the", "back", "door"]
    emitted = TimedWords(words=("unlock", "the", "the", "back", "door"), times_s=(0.5, 0.5, 0.5, 1.6, 1.6))
    ends = TimedWords(words=("unlock", "the", "black", "door"), times_s=(0.30, 0.45, 0.90, 1.20))
    assert aligned_hits(reference, ends.words) == {0: 0, 1: 1, 3: 3}
    assert word_latencies(reference, emitted, ends) == pytest.approx([0.2, 0.05, 0.4])
    assert word_latencies(reference, TimedWords(words=(), times_s=()), ends) == []
    assert latency_stats([0.2, 0.05, 0.4]) == (200.0, 360.0, 216.7)  # p90 = 200 + 0.8 x (400 - 200)
    assert latency_stats([]) == (None, None, None)


def test_a_word_shown_before_the_reference_word_began_is_left_out():
    """A weak streamed hypothesis "the ... morning": its early "the" (0.49 s) aligns with the "the" of "in the
    morning", which begins at 2.3 s in the reference: that pair cannot be the same word, so it is left out
    (no -2 s latency), and counted."""
    from kdstore.evaluate.streaming import implausible_pairs

    reference = ["turn", "it", "on", "in", "the", "morning"]
    emitted = TimedWords(words=("the", "morning"), times_s=(0.49, 3.4))
    ends = TimedWords(words=("turn", "it", "on", "in", "the", "morning"), times_s=(0.3, 0.5, 0.8, 2.2, 2.47, 3.0),
                      starts_s=(0.0, 0.35, 0.55, 2.0, 2.3, 2.5))
    assert word_latencies(reference, emitted, ends) == pytest.approx([0.4])
    assert implausible_pairs(reference, emitted, ends) == 1
    no_starts = TimedWords(words=ends.words, times_s=ends.times_s)  # without starts nothing can be judged
    assert word_latencies(reference, emitted, no_starts) == pytest.approx([0.49 - 2.47, 0.4])


def test_words_are_normalised_one_at_a_time():
    timed = TimedWords(words=("Unlock,", "THE", "...", "door!"), times_s=(0.5, 0.6, 0.7, 0.8))
    assert normalize_timed(timed, "basic") == TimedWords(words=("unlock", "the", "door"), times_s=(0.5, 0.6, 0.8))


# --- acceptance: unlimited attention context, streaming eval == offline eval -------------------------


@pytest.fixture(scope="module")
def unlimited_model(tmp_path_factory) -> Path:
    """tiny-streaming with unlimited left context ([-1, 6]; random weights), saved as .nemo."""
    import torch

    from kdstore.corpus.tokenizer import train_tokenizer
    from tests.models import build_model

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("unlimited")
    train_tokenizer(["turn on the light", "turn off the radio", "open the door", "call mom"] * 5, out / "tok", 24)
    model = build_model("tiny-streaming", out / "tok", seed=3, **{"model.encoder.att_context_size": "[[-1,6]]"})
    model.save_to(str(out / "model.nemo"))
    return out / "model.nemo"


def test_streaming_eval_equals_offline_eval_with_unlimited_context(unlimited_model, tmp_path):
    from kdstore.evaluate.run import run_eval

    rng = np.random.default_rng(3)
    rows = []
    for i, n in enumerate((20000, 31000, 8000, 14500)):
        path = tmp_path / f"u{i}.wav"
        soundfile.write(path, (0.1 * rng.standard_normal(n)).astype(np.float32), 16000)
        rows.append({"audio_filepath": str(path), "duration": n / 16000, "text": "turn on the light"})
    manifest = tmp_path / "m.json"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    offline = run_eval(unlimited_model, manifest).results["model"]
    streamed = run_eval(unlimited_model, manifest, streaming=True, batch_size=3).results["model"]
    assert streamed.hypotheses == offline.hypotheses and all(len(h) > 5 for h in offline.hypotheses)
    assert (streamed.wer, streamed.cer) == (offline.wer, offline.cer)
    summary = streamed.summary()
    assert summary["streaming"]["context"] == [-1, 6] and summary["streaming"]["chunk_ms"] == 560
    assert summary["streaming"]["latency_median_ms"] is None  # no latency reference, no teacher
    with pytest.raises(StreamingError, match=r"--chunk-ms 400: .*model.nemo was trained for chunks of 560 ms only"):
        run_eval(unlimited_model, manifest, streaming=True, chunk_ms=400)
    with pytest.raises(ConfigError, match="add --streaming"):
        run_eval(unlimited_model, manifest, chunk_ms=560)
    with pytest.raises(ConfigError, match="add --streaming"):
        run_eval(unlimited_model, manifest, complete_last_chunk=True)
    # --complete-last-chunk decodes the utterance and the silence that fills its last chunk: NeMo's streaming
    # decode of exactly that audio (the stream sherpa-onnx's online recognizer gets)
    from kdstore.nemo.checkpoint import restore_model
    from kdstore.nemo.streaming import chunk_frames, complete_with_silence, stream_decode

    completed = run_eval(unlimited_model, manifest, streaming=True, complete_last_chunk=True).results["model"]
    model = restore_model(unlimited_model)
    waves = [soundfile.read(r["audio_filepath"], dtype="float32")[0] for r in rows]
    padded = [complete_with_silence(model, w, chunk_frames(model)) for w in waves]
    assert any(len(p) > len(w) for p, w in zip(padded, waves))
    assert completed.hypotheses == [stream_decode(model, p).text for p in padded]
    from click.testing import CliRunner

    from kdstore.cli.main import cli

    result = CliRunner().invoke(cli, ["eval", "--model", str(unlimited_model), "--manifest", str(manifest),
                                      "--streaming", "--chunk-ms", "400"])
    assert result.exit_code != 0 and result.output.strip().count("\n") == 0
    assert "was trained for chunks of 560 ms only" in result.output


# --- the command on a streaming model that emits ----------------------------------------------------


def test_cli_eval_streaming_reports_wer_and_latency(emitting_streaming_model, emitting_model, tmp_path):
    """The emitting streaming student against the offline emitting model as teacher (and latency
    reference, by default): finite latencies over the words both got right, in JSON and report.md."""
    from click.testing import CliRunner

    from kdstore.cli.main import cli

    manifest = emitting_streaming_model.with_name("train.json")
    out = tmp_path / "eval"
    args = ["eval", "--model", str(emitting_streaming_model), "--teacher", str(emitting_model), "--manifest",
            str(manifest), "--streaming", "--chunk-ms", "560", "--out", str(out), "--json", "--bootstrap-samples", "200"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    s = data["model"]["streaming"]
    assert set(s) == {"chunk_ms", "lookahead_ms", "context", "latency_reference", "latency_words", "ref_words",
                      "latency_left_out", "latency_median_ms", "latency_p90_ms", "latency_mean_ms"}
    assert (s["chunk_ms"], s["lookahead_ms"], s["context"]) == (560, 480, [70, 6])
    assert s["latency_reference"] == str(emitting_model) and "streaming" not in data["teacher"]
    assert 0 < s["latency_words"] <= s["ref_words"] == data["model"]["ref_words"]
    for key in ("latency_median_ms", "latency_p90_ms", "latency_mean_ms"):
        assert math.isfinite(s[key]) and abs(s[key]) < 5000, key
    assert s["latency_median_ms"] <= s["latency_p90_ms"]
    rows = [json.loads(line) for line in (out / "model.latency.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and sum(bool(r["hypothesis"]) for r in rows) >= 8
    assert sum(len(r["word_latencies_ms"]) for r in rows) == s["latency_words"]
    assert all(r["token_times_s"] == sorted(r["token_times_s"]) for r in rows)
    report = (out / "report.md").read_text()
    assert "## Streaming" in report and "chunk 560 ms, look-ahead 480 ms" in report
    assert f"median **{s['latency_median_ms']:.0f} ms**" in report


def test_eval_streaming_refuses_an_offline_model(emitting_model, emitting_manifest):
    from kdstore.evaluate.run import run_eval

    with pytest.raises(StreamingError, match="is not a cache-aware streaming model: att_context_style is regular"):
        run_eval(emitting_model, emitting_manifest, streaming=True)
