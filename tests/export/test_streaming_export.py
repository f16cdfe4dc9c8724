"""``export-onnx --streaming`` and ``transcribe --streaming``: a cache-aware NeMo transducer in sherpa-onnx's
``OnlineRecognizer`` (kdstore.export.streaming, kdstore.runtime.sherpa_online).

Fast tests use a random-weight ``tiny-streaming`` model at small shapes (built in seconds, no speech);
the agreement tests use ``emitting_streaming_model`` (tests/conftest.py: memorised on 10 demo
utterances, so transcripts are real token sequences) against NeMo's own cache-aware streaming decode
(``kdstore.nemo.streaming.stream_decode``). sherpa-onnx ends the whole process on a bad model, so it
is always run in a subprocess here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.models import build_model

TEXTS = ["turn on the light", "turn off the radio", "open the door", "close the window please", "call mom"]
SMALL = {"model.model_defaults.enc_hidden": 32, "model.model_defaults.pred_hidden": 48,
         "model.model_defaults.joint_hidden": 48, "model.encoder.subsampling_conv_channels": 16,
         "model.encoder.n_heads": 2}
KDSTORE_STREAMING_KEYS = ("streaming", "chunk_ms", "lookahead_ms", "att_context_left", "att_context_right",
                          "default_chunk_ms", "trained_chunk_ms", "pre_encode_cache_size", "drop_extra_pre_encoded",
                          "valid_out_len", "kdstore_version", "source_sha256", "blank_id", "sample_rate")
# The contexts of kdstore/configs/_streaming.yaml and what NeMo's streaming_cfg makes of them at 8x subsampling:
# chunk ms, look-ahead ms, window (mel frames: chunk + 9 of pre-encode cache), shift (mel frames), frames per chunk.
EXPECTED = {560: (480, 65, 56, 7), 1120: (1040, 121, 112, 14), 160: (80, 25, 16, 2), 80: (0, 17, 8, 1)}

# sherpa-onnx's OnlineRecognizer on one chunk folder, decoding 1.5 s of generated audio; prints JSON.
SHERPA_SCRIPT = """
import json, sys
import numpy as np
import sherpa_onnx
d = sys.argv[1]
r = sherpa_onnx.OnlineRecognizer.from_transducer(
    tokens=d + "/tokens.txt", encoder=d + "/encoder.onnx", decoder=d + "/decoder.onnx", joiner=d + "/joiner.onnx",
    num_threads=1, decoding_method="greedy_search", model_type="nemo_transducer")
s = r.create_stream()
s.accept_waveform(16000, (0.1 * np.sin(np.arange(24000) / 7)).astype(np.float32))
s.input_finished()
n = 0
while r.is_ready(s):
    r.decode_stream(s)
    n += 1
print(json.dumps({"windows": n, "text": r.get_result(s)}))
"""


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from kdstore.corpus.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(TEXTS * 5, out, 24)
    return out


def _save(tokenizer_dir: Path, tmp_path_factory, config: str, name: str, **overrides) -> Path:
    path = tmp_path_factory.mktemp(name) / f"{name}.nemo"
    build_model(config, tokenizer_dir, seed=3, **SMALL, **overrides).save_to(str(path))
    return path


@pytest.fixture(scope="module")
def streaming_nemo(tokenizer_dir, tmp_path_factory) -> Path:
    """A random-weight cache-aware ``tiny-streaming`` hybrid at small shapes (d_model 32, 3 layers)."""
    return _save(tokenizer_dir, tmp_path_factory, "tiny-streaming", "streaming")


@pytest.fixture(scope="module")
def exported(streaming_nemo, tmp_path_factory):
    """``export_streaming`` of ``streaming_nemo`` for 560 ms and 160 ms chunks, with int8 copies."""
    from kdstore.export.streaming import export_streaming

    return export_streaming(streaming_nemo, tmp_path_factory.mktemp("onnx_streaming") / "out", chunk_ms=[560, 160],
                            int8=True)


def _run_sherpa(folder: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("sherpa_onnx")
    return subprocess.run([sys.executable, "-c", SHERPA_SCRIPT, str(folder)], check=False, capture_output=True,
                          text=True, timeout=120)


def _cli(*args: str):
    from click.testing import CliRunner

    from kdstore.cli.main import cli

    return CliRunner().invoke(cli, list(args))


def _one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# --- (a) the export and its metadata ---------------------------------------------------------------


def test_export_writes_one_sherpa_folder_per_chunk(exported, streaming_nemo):
    from kdstore.files import sha256_file
    from kdstore.runtime.layout import read_metadata
    from kdstore.runtime.sherpa_online import SHERPA_ONLINE_REQUIRED_METADATA

    assert sorted(p.name for p in exported.out_dir.iterdir()) == ["chunk-160ms", "chunk-560ms"]
    assert [c.chunk.chunk_ms for c in exported.chunks] == [560, 160] and exported.default_chunk_ms == 560
    for chunk in exported.chunks:
        names = {p.name for p in chunk.out_dir.iterdir()}
        assert names == {"encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt", "encoder.int8.onnx",
                         "decoder.int8.onnx", "joiner.int8.onnx"}
        lookahead, window, shift, frames = EXPECTED[chunk.chunk.chunk_ms]
        for encoder in ("encoder.onnx", "encoder.int8.onnx"):
            meta = read_metadata(chunk.out_dir / encoder)
            assert set(SHERPA_ONLINE_REQUIRED_METADATA) | {"normalize_type", *KDSTORE_STREAMING_KEYS} <= set(meta)
            assert (meta["window_size"], meta["chunk_shift"], meta["valid_out_len"]) == (str(window), str(shift),
                                                                                         str(frames))
            assert meta["lookahead_ms"] == str(lookahead) and meta["chunk_ms"] == str(chunk.chunk.chunk_ms)
            layers_cache_dmodel = [meta[f"cache_last_channel_dim{i}"] for i in (1, 2, 3)]
            assert layers_cache_dmodel == ["3", "70", "32"]  # 3 layers, left context 70, d_model 32
            assert [meta[f"cache_last_time_dim{i}"] for i in (1, 2, 3)] == ["3", "32", "8"]  # conv kernel 9 - 1
            assert (meta["vocab_size"], meta["pred_rnn_layers"], meta["pred_hidden"]) == ("24", "1", "48")
            assert meta["normalize_type"] == "NA" and meta["subsampling_factor"] == "8"
            assert meta["default_chunk_ms"] == "560" and meta["trained_chunk_ms"] == "560,1120,160,80"
            assert meta["source_sha256"] == sha256_file(streaming_nemo)
            assert "max_encoder_frames" not in meta  # a streaming encoder takes input of any length
        assert chunk.check == {"frames_per_chunk": frames, "steps": 3}


def test_sherpa_onnx_loads_complete_metadata_and_dies_without_each_key(exported, tmp_path):
    """The complete export loads and decodes in sherpa-onnx's OnlineRecognizer; a copy without any one key
    sherpa-onnx reads with no default ends that process (exit != 0, its message names the key), and
    kdstore's runtime refuses the same copy with a one-line error instead."""
    import onnx

    from kdstore.errors import ExportError
    from kdstore.runtime.sherpa_online import SHERPA_ONLINE_REQUIRED_METADATA, SherpaOnlineTransducer

    folder = exported.chunks[0].out_dir
    ok = _run_sherpa(folder)
    assert ok.returncode == 0, ok.stderr
    # 1.5 s = 150 mel frames; window k (65 frames from 56 k) is decoded once 56 k + 65 < 150: k = 0, 1
    assert json.loads(ok.stdout.strip().splitlines()[-1])["windows"] == 2
    SherpaOnlineTransducer(folder)  # ours loads it too

    for key in (*SHERPA_ONLINE_REQUIRED_METADATA, "normalize_type"):
        copy = tmp_path / key
        shutil.copytree(folder, copy)
        model = onnx.load(str(copy / "encoder.onnx"))
        kept = [p for p in model.metadata_props if p.key != key]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        onnx.save(model, str(copy / "encoder.onnx"))
        proc = _run_sherpa(copy)
        if key == "normalize_type":  # read when present only: absent means no normalisation, as NA does
            assert proc.returncode == 0, proc.stderr
            continue
        assert proc.returncode != 0, f"sherpa-onnx accepted an encoder without {key}"
        assert f"'{key}' does not exist" in proc.stderr, proc.stderr[-500:]
        with pytest.raises(ExportError, match=f"lacks {key}, which sherpa-onnx"):
            SherpaOnlineTransducer(copy)


@pytest.mark.parametrize("chunk_ms", [560, 160])
def test_onnx_encoder_equals_nemo_stream_step(exported, streaming_nemo, chunk_ms):
    """The exported encoder, run as sherpa-onnx runs it (window_size mel frames, the caches fed back), gives
    NeMo's streaming outputs: on the first window those of NeMo's first chunk (the window without its
    ``drop_extra_pre_encoded x subsampling_factor`` lead frames, nothing dropped: zero padding at every
    subsampling layer, whatever the lead holds; kdstore.export.first_chunk), on later windows
    ``cache_aware_stream_step`` on the same window."""
    import onnxruntime as ort
    import torch

    from kdstore.nemo.checkpoint import restore_model
    from kdstore.nemo.streaming import chunk_frames

    chunk = next(c for c in exported.chunks if c.chunk.chunk_ms == chunk_ms)
    meta = chunk.metadata
    window, drop = int(meta["window_size"]), int(meta["drop_extra_pre_encoded"])
    lead = drop * int(meta["subsampling_factor"])
    model = restore_model(streaming_nemo)
    model.encoder.set_default_att_context_size(chunk_frames(model, chunk_ms))
    session = ort.InferenceSession(str(chunk.out_dir / "encoder.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    channel, time, length = model.encoder.get_initial_cache_state(batch_size=1)
    state = [channel.transpose(0, 1).numpy(), time.transpose(0, 1).numpy(), length.numpy()]
    features = np.random.default_rng(0).standard_normal((4, 1, 80, window)).astype(np.float32)
    for step, x in enumerate(features):
        ours, _, *state = session.run(None, dict(zip(names, [x, np.array([window]), *state])))
        nemo_in = x[:, :, lead:] if step == 0 else x  # NeMo's first chunk: the real frames only
        with torch.no_grad():
            ref, _, channel, time, length = model.encoder.cache_aware_stream_step(
                processed_signal=torch.from_numpy(nemo_in), processed_signal_length=torch.tensor([nemo_in.shape[-1]]),
                cache_last_channel=channel, cache_last_time=time, cache_last_channel_len=length,
                keep_all_outputs=False, drop_extra_pre_encoded=0 if step == 0 else drop)
        assert ours.shape == tuple(ref.shape) == (1, 32, int(meta["valid_out_len"]))
        np.testing.assert_allclose(ours, ref.numpy(), atol=1e-4)
        np.testing.assert_allclose(state[0], channel.transpose(0, 1).numpy(), atol=1e-4)


def test_first_window_ignores_what_the_lead_holds(exported):
    """The lead in front of a stream is padding: two first windows that differ only there give the same
    encoder frames and caches; a later window (cache length > 0) does see its first frames."""
    import onnxruntime as ort

    chunk = next(c for c in exported.chunks if c.chunk.chunk_ms == 560)
    meta = chunk.metadata
    window = int(meta["window_size"])
    lead = int(meta["drop_extra_pre_encoded"]) * int(meta["subsampling_factor"])
    session = ort.InferenceSession(str(chunk.out_dir / "encoder.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 80, window)).astype(np.float32)
    y = x.copy()
    y[:, :, :lead] = 5 * rng.standard_normal((1, 80, lead))
    layers, cache, d_model = (int(meta[f"cache_last_channel_dim{i}"]) for i in (1, 2, 3))
    start = [np.zeros((1, layers, cache, d_model), np.float32),
             np.zeros((1, layers, d_model, int(meta["cache_last_time_dim3"])), np.float32), np.zeros(1, np.int64)]
    first = [session.run(None, dict(zip(names, [v, np.array([window]), *start]))) for v in (x, y)]
    for a, b in zip(*first):
        np.testing.assert_array_equal(a, b)
    later = [session.run(None, dict(zip(names, [v, np.array([window]), *first[0][2:]]))) for v in (x, y)]
    assert np.abs(later[0][0] - later[1][0]).max() > 1e-3


def test_metadata_that_disagrees_with_the_graph_is_refused(exported):
    from kdstore.errors import ExportError
    from kdstore.export.streaming import check_streaming_encoder

    chunk = exported.chunks[0]
    wrong = {**chunk.metadata, "cache_last_channel_dim2": "71"}
    with pytest.raises(ExportError):  # onnxruntime refuses the cache shape, or the check does
        check_streaming_encoder(chunk.out_dir / "encoder.onnx", wrong)
    wrong = {**chunk.metadata, "valid_out_len": "6"}
    with pytest.raises(ExportError, match="gives 7 frames per chunk, its metadata says 6"):
        check_streaming_encoder(chunk.out_dir / "encoder.onnx", wrong)


# --- the runtime: which folder, where the chunks fall ----------------------------------------------


def test_streaming_dir_picks_the_default_chunk_or_the_one_asked(exported, tmp_path):
    from kdstore.errors import ExportError
    from kdstore.runtime.sherpa_online import streaming_dir

    out = exported.out_dir
    assert streaming_dir(out) == out / "chunk-560ms"
    assert streaming_dir(out, 160) == out / "chunk-160ms"
    assert streaming_dir(out / "chunk-160ms") == out / "chunk-160ms"
    with pytest.raises(ExportError, match=r"no export for 1120 ms chunks \(it has 160, 560 ms\)"):
        streaming_dir(out, 1120)
    with pytest.raises(ExportError, match="exported for 160 ms chunks, not 560"):
        streaming_dir(out / "chunk-160ms", 560)
    with pytest.raises(ExportError, match="not a streaming export"):
        streaming_dir(tmp_path)


@pytest.mark.parametrize("seconds", [0.3, 0.49, 0.5, 1.2, 2.0])
def test_sherpa_decodes_as_many_chunks_as_nemo(exported, seconds, tmp_path):
    """With kdstore's lead and tail (kdstore.runtime.sherpa_online) sherpa-onnx decodes exactly the chunks
    NeMo's streaming decode makes: a first one of 49 mel frames, then one per 56 (560 ms chunks)."""
    from kdstore.runtime.frontend import FrontEndConfig, LogMelFrontEnd
    from kdstore.runtime.sherpa_online import nemo_chunks, stream_samples

    chunk = exported.chunks[0]
    config = FrontEndConfig.from_metadata(chunk.metadata)
    wave = (0.1 * np.random.default_rng(1).standard_normal(int(seconds * 16000))).astype(np.float32)
    frames = LogMelFrontEnd(config).num_frames(len(wave))
    assert nemo_chunks(frames, chunk.metadata) == 1 + -(-max(0, frames - 49) // 56)  # hand rule, 560 ms
    samples = stream_samples(wave, config, chunk.metadata)
    np.save(tmp_path / "wave.npy", samples)
    script = SHERPA_SCRIPT.replace("(0.1 * np.sin(np.arange(24000) / 7)).astype(np.float32)",
                                   f"np.load({str(tmp_path / 'wave.npy')!r})")
    proc = subprocess.run([sys.executable, "-c", script, str(chunk.out_dir)], check=False, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["windows"] == nemo_chunks(frames, chunk.metadata)


# --- (d) one-line refusals -------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["offline", "untrained-chunk", "per-feature", "unlimited-left"])
def test_export_refusals_are_one_line(case, tokenizer_dir, streaming_nemo, tmp_path_factory):
    if case == "offline":
        model, args, expect = _save(tokenizer_dir, tmp_path_factory, "tiny", "offline"), [], \
            "is not a cache-aware streaming model"
    elif case == "untrained-chunk":
        model, args, expect = streaming_nemo, ["--chunk-ms", "300"], \
            "--chunk-ms 300: .* was trained for chunks of 560, 1120, 160, 80 ms only"
    elif case == "per-feature":
        model, args, expect = _save(tokenizer_dir, tmp_path_factory, "tiny-streaming", "perfeat",
                                    **{"model.preprocessor.normalize": "per_feature"}), [], \
            "needs preprocessor.normalize NA, but this model normalises features per utterance"
    else:
        model, args, expect = _save(tokenizer_dir, tmp_path_factory, "tiny-streaming", "unlimited",
                                    **{"model.encoder.att_context_size": "[[-1,6]]"}), [], \
            r"needs a limited left attention context"
    out = tmp_path_factory.mktemp("refused") / "out"
    line = _one_line_error(_cli("export-onnx", "--model", str(model), "--out", str(out), "--streaming", *args))
    assert re.search(expect, line), line
    assert not out.exists()  # nothing written


def test_cli_option_refusals_are_one_line(streaming_nemo, exported, tmp_path):
    out = str(tmp_path / "out")
    model = str(streaming_nemo)
    assert "--chunk-ms needs --streaming" in _one_line_error(
        _cli("export-onnx", "--model", model, "--out", out, "--chunk-ms", "560"))
    assert "drop --layout nemo" in _one_line_error(
        _cli("export-onnx", "--model", model, "--out", out, "--streaming", "--layout", "nemo"))
    assert "drop it" in _one_line_error(
        _cli("export-onnx", "--model", model, "--out", out, "--streaming", "--max-audio-seconds", "10"))
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "encoder.onnx").write_bytes(b"")
    assert "already holds an offline export" in _one_line_error(
        _cli("export-onnx", "--model", model, "--out", str(offline), "--streaming"))

    wav = tmp_path / "a.wav"
    import soundfile

    soundfile.write(wav, np.zeros(8000, np.float32), 16000)
    assert "kdstore has no onnxruntime streaming decoder" in _one_line_error(
        _cli("transcribe", "--onnx", str(exported.out_dir), "--streaming", "--runtime", "onnxruntime", str(wav)))
    assert "no export for 80 ms chunks (it has 160, 560 ms)" in _one_line_error(
        _cli("transcribe", "--onnx", str(exported.out_dir), "--streaming", "--chunk-ms", "80", str(wav)))
    assert "--chunk-ms needs --streaming" in _one_line_error(
        _cli("transcribe", "--onnx", str(exported.out_dir / "chunk-560ms"), "--chunk-ms", "560", str(wav)))
    # the offline recognizer's mel range, where it would change nothing: refused, not ignored
    assert "sherpa-onnx's streaming recognizer sets 8 kHz itself" in _one_line_error(
        _cli("transcribe", "--onnx", str(exported.out_dir), "--streaming", "--sherpa-mel-range", "sherpa-default", str(wav)))
    assert "onnxruntime uses NeMo's features" in _one_line_error(
        _cli("transcribe", "--onnx", str(exported.out_dir), "--sherpa-mel-range", "sherpa-default", str(wav)))
    assert "--no-sherpa-align applies to sherpa-onnx only" in _one_line_error(
        _cli("transcribe", "--onnx", str(exported.out_dir), "--runtime", "onnxruntime", "--no-sherpa-align", str(wav)))
    # a streaming export opened without --streaming (its root, or one chunk folder, either runtime): say so
    for folder, runtime in ((exported.out_dir, "onnxruntime"), (exported.out_dir / "chunk-560ms", "onnxruntime"),
                            (exported.out_dir / "chunk-560ms", "sherpa-onnx")):
        message = _one_line_error(_cli("transcribe", "--onnx", str(folder), "--runtime", runtime, str(wav)))
        assert "is a streaming export" in message and "transcribe it with --streaming" in message, message


# --- (b, c) sherpa-onnx against NeMo's streaming decode, fp32 and int8 --------------------------------


@pytest.fixture(scope="module")
def memorised_export(emitting_streaming_model, tmp_path_factory):
    """``kdstore export-onnx --streaming --int8`` of ``emitting_streaming_model`` (every chunk it was trained for)."""
    out = tmp_path_factory.mktemp("onnx_memorised") / "out"
    result = _cli("export-onnx", "--model", str(emitting_streaming_model), "--out", str(out), "--streaming", "--int8")
    assert result.exit_code == 0, result.output
    assert "chunk-560ms: 560 ms chunks, 480 ms look-ahead, attention context [70, 6] (the model's default)" in \
        result.output
    return out


def _paths(model: Path) -> list[str]:
    rows = [json.loads(line) for line in model.with_name("train.json").read_text().splitlines() if line.strip()]
    return [r["audio_filepath"] for r in rows]


def _transcribe_streaming(onnx_dir: Path, paths: list[str], *options: str) -> dict:
    """``kdstore transcribe --streaming --json`` in a subprocess (sherpa-onnx exits the process on a bad model)."""
    pytest.importorskip("sherpa_onnx")
    proc = subprocess.run([sys.executable, "-m", "kdstore.cli.main", "transcribe", "--onnx", str(onnx_dir),
                           "--streaming", "--json", *options, *paths], check=False, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def nemo_streaming(emitting_streaming_model):
    """NeMo's cache-aware streaming transcripts of the memorised utterances, by chunk ms."""
    import soundfile

    from kdstore.nemo.checkpoint import restore_model
    from kdstore.nemo.streaming import stream_decode_batch

    model = restore_model(emitting_streaming_model)
    waves = [soundfile.read(p, dtype="float32")[0] for p in _paths(emitting_streaming_model)]
    return {ms: [u.text for u in stream_decode_batch(model, waves, ms, complete_last_chunk=True)]
            for ms in (560, 1120, 160, 80)}


def test_sherpa_online_equals_nemo_streaming(memorised_export, emitting_streaming_model, nemo_streaming):
    """The acceptance check: sherpa-onnx's OnlineRecognizer, fed 0.1 s pieces as a live source would, gives
    NeMo's cache-aware streaming transcripts on >= 90% of the utterances (>= half of them non-empty) at the
    default chunk and over all four chunk sizes together, and on >= 80% at each one.

    NeMo decodes the same stream as sherpa-onnx: the utterance and the silence that completes its last chunk
    (``complete_last_chunk``); the export makes the first window start like NeMo's first chunk."""
    paths = _paths(emitting_streaming_model)
    same = {}
    for chunk_ms in (560, 1120, 160, 80):
        data = _transcribe_streaming(memorised_export, paths, "--chunk-ms", str(chunk_ms))
        assert data["streaming"] is True and data["chunk_ms"] == chunk_ms and data["runtime"] == "sherpa-onnx"
        sherpa, nemo = [t["text"] for t in data["transcripts"]], nemo_streaming[chunk_ms]
        same[chunk_ms] = sum(a == b for a, b in zip(sherpa, nemo, strict=True))
        print(f"{chunk_ms} ms: sherpa-onnx == NeMo streaming on {same[chunk_ms]}/{len(nemo)}, "
              f"{sum(map(bool, nemo))} non-empty")
        assert sum(bool(t) for t in nemo) >= len(nemo) / 2, nemo
        assert same[chunk_ms] >= 0.8 * len(nemo), list(zip(nemo, sherpa))
    assert same[560] >= 0.9 * len(paths) and sum(same.values()) >= 0.9 * 4 * len(paths), same


def test_int8_loads_and_transcribes(memorised_export, emitting_streaming_model):
    import jiwer

    paths = _paths(emitting_streaming_model)
    refs = [json.loads(line)["text"] for line in emitting_streaming_model.with_name("train.json").read_text().splitlines()]
    fp32 = [t["text"] for t in _transcribe_streaming(memorised_export, paths)["transcripts"]]
    int8 = _transcribe_streaming(memorised_export, paths, "--int8")
    assert int8["int8"] is True and int8["chunk_ms"] == 560
    texts = [t["text"] for t in int8["transcripts"]]
    wer8, wer32 = (jiwer.wer(refs, [t or "-" for t in hyps]) for hyps in (texts, fp32))
    print(f"int8 WER {wer8:.3f}, fp32 WER {wer32:.3f}, same transcripts {sum(a == b for a, b in zip(texts, fp32))}/10")
    assert sum(bool(t) for t in texts) >= len(texts) / 2, texts
    assert wer8 <= wer32 + 0.1


def test_long_input_streams_past_the_position_buffer(memorised_export, emitting_streaming_model, tmp_path):
    """A streaming encoder attends to its cache plus one chunk, so an input far longer than its position
    buffer (70 + 9 + 1 frames, 6.4 s) streams through, and still agrees with NeMo's streaming decode."""
    import soundfile

    from kdstore.nemo.checkpoint import restore_model
    from kdstore.nemo.streaming import stream_decode

    waves = [soundfile.read(p, dtype="float32")[0] for p in _paths(emitting_streaming_model)]
    long = np.concatenate(waves)
    assert len(long) / 16000 > 15
    path = tmp_path / "long.wav"
    soundfile.write(path, long, 16000)
    text = _transcribe_streaming(memorised_export, [str(path)])["transcripts"][0]["text"]
    assert text and text == stream_decode(restore_model(emitting_streaming_model), long, complete_last_chunk=True).text
