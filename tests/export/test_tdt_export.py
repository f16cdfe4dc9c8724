"""TDT (token-and-duration) models: export in both layouts, kdstore's onnxruntime TDT greedy search against NeMo's,
sherpa-onnx and onnx-asr on the exports, and what the export refuses.

Agreement tests use ``emitting_tdt_model`` (tests/conftest.py): a tiny hybrid TDT-CTC model memorised on 10 demo
utterances. Memorised, it emits every token and every blank with duration 1; ``search_rules_model`` turns its
duration logits into ones that skip 0, 2 and 4 frames, send blanks with duration 0 and fill ``max_symbols``, so that
each rule of NeMo's search is exercised on real token sequences.
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DURATIONS = (0, 1, 2, 3, 4)  # tiny-tdt's, kdstore/configs/_tdt.yaml


def _audio_paths(manifest: Path) -> list[str]:
    return [json.loads(line)["audio_filepath"] for line in manifest.read_text().splitlines() if line.strip()]


def _nemo_hypotheses(model_path: Path, paths: list[str]) -> tuple[list[str], list[list[int]]]:
    """NeMo's own greedy TDT decoding (the model's decoding config): texts and token ids."""
    import torch

    from kdstore.nemo.checkpoint import restore_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = restore_model(model_path)
        hyps = model.transcribe(paths, batch_size=4, verbose=False, return_hypotheses=True)
    finally:
        torch.set_num_threads(threads)
    return [h.text for h in hyps], [[int(i) for i in h.y_sequence] for h in hyps]


def _cli(*args: str) -> str:
    from click.testing import CliRunner

    from kdstore.cli.main import cli

    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def _run_sherpa(onnx_dir: Path, paths: list[str], *options: str) -> subprocess.CompletedProcess:
    """``kdstore transcribe --runtime sherpa-onnx --json`` in a subprocess (sherpa-onnx exits the process on a model it
    cannot run)."""
    pytest.importorskip("sherpa_onnx")
    return subprocess.run([sys.executable, "-m", "kdstore.cli.main", "transcribe", "--onnx", str(onnx_dir), "--runtime",
                           "sherpa-onnx", "--json", *options, *paths], check=False, capture_output=True, text=True,
                          timeout=300)


def _sherpa_texts(onnx_dir: Path, paths: list[str], *options: str) -> list[str]:
    proc = _run_sherpa(onnx_dir, paths, *options)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [t["text"] for t in json.loads(proc.stdout)["transcripts"]]


def _agree(ours: list[str], nemo: list[str]) -> int:
    """Transcripts that are the same words (NeMo's text can keep the spaces of a lone '▁' piece; runtimes drop them)."""
    assert len(ours) == len(nemo) == 10
    assert sum(bool(t.strip()) for t in nemo) >= 8, f"model emits too little: {nemo}"
    return sum(a.split() == b.split() for a, b in zip(ours, nemo))


@pytest.fixture(scope="module")
def tdt_paths(emitting_tdt_model) -> list[str]:
    return _audio_paths(emitting_tdt_model.with_name("train.json"))


@pytest.fixture(scope="module")
def tdt_nemo(emitting_tdt_model, tdt_paths):
    return _nemo_hypotheses(emitting_tdt_model, tdt_paths)


@pytest.fixture(scope="module")
def tdt_sherpa(emitting_tdt_model, tmp_path_factory):
    from kdstore.export.run import export_onnx

    return export_onnx(emitting_tdt_model, tmp_path_factory.mktemp("tdt_sherpa"), int8=True, check=True)


@pytest.fixture(scope="module")
def tdt_nemo_layout(emitting_tdt_model, tmp_path_factory):
    """NeMo's layout written by the CLI (which smoke-tests it); returns (folder, CLI output)."""
    out = tmp_path_factory.mktemp("tdt_nemo") / "model"
    return out, _cli("export-onnx", "--model", str(emitting_tdt_model), "--out", str(out), "--layout", "nemo", "--int8")


# --- export: metadata and shapes ------------------------------------------------------------------------------------


def test_tdt_export_carries_what_sherpa_onnx_needs(tdt_sherpa, emitting_tdt_model):
    """sherpa-onnx's offline NeMo transducer is TDT iff the encoder's ``url`` contains "tdt"
    (offline-transducer-nemo-model.cc, InitEncoder); it then reads D as the joiner's last (static) dim minus
    vocab_size + 1 (InitJoiner)."""
    import onnx

    from kdstore.runtime.layout import read_metadata

    vocab = tdt_sherpa.vocab_size
    assert vocab == 128  # the demo tokenizer: NeMo's num_classes_with_blank (134) counts the 5 durations too
    for variant in ("", ".int8"):
        meta = read_metadata(tdt_sherpa.out_dir / f"encoder{variant}.onnx")
        assert "tdt" in meta["url"] and meta["tdt_durations"] == "0,1,2,3,4"
        assert meta["vocab_size"] == meta["blank_id"] == str(vocab)
        assert meta["model_type"] == "EncDecRNNTBPEModel" and meta["source_class"] == "EncDecHybridRNNTCTCBPEModel"
        assert meta["max_symbols"] == "10"
        dims = onnx.load(str(tdt_sherpa.out_dir / f"joiner{variant}.onnx")).graph.output[0].type.tensor_type.shape.dim
        assert dims[-1].dim_value == vocab + 1 + len(DURATIONS)
    lines = tdt_sherpa.tokens.read_text(encoding="utf-8").splitlines()
    assert len(lines) == vocab + 1 and lines[-1] == f"<blk> {vocab}"
    assert any("5 tokens per frame" in note for note in tdt_sherpa.notes)
    assert tdt_sherpa.check["fp32_tokens"] >= 0 and tdt_sherpa.check["int8_frames"] == tdt_sherpa.check["fp32_frames"]


def test_tdt_nemo_layout_is_onnx_asrs_tdt_model(tdt_nemo_layout):
    import onnx

    out, output = tdt_nemo_layout
    config = json.loads((out / "config.json").read_text())
    assert config == {"model_type": "nemo-conformer-tdt", "features_size": 80, "subsampling_factor": 8,
                      "max_tokens_per_step": 10}
    dims = onnx.load(str(out / "decoder_joint-model.onnx")).graph.output[0].type.tensor_type.shape.dim
    assert dims[-1].dim_value == 128 + 1 + len(DURATIONS)
    assert "checked with onnxruntime on generated audio (fp32: " in output and "int8: " in output
    assert "tokens per frame" not in output  # the note is about sherpa-onnx's search


# --- kdstore's onnxruntime TDT greedy search ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["sherpa", "nemo"])
def test_onnxruntime_tdt_greedy_equals_nemo_token_for_token(layout, tdt_sherpa, tdt_nemo_layout, tdt_paths, tdt_nemo):
    from kdstore.runtime.decoder import OnnxTransducer

    model = OnnxTransducer(tdt_sherpa.out_dir if layout == "sherpa" else tdt_nemo_layout[0])
    assert model.durations == DURATIONS
    ids = [model.greedy(enc) for enc in model.encode_batch([model.load(p) for p in tdt_paths])]
    texts, nemo_ids = tdt_nemo
    assert ids == nemo_ids  # measured: 10/10 in both layouts
    assert model.transcribe(tdt_paths, batch_size=4) == texts
    assert sum(bool(t) for t in texts) >= 8


@pytest.fixture(scope="module")
def search_rules_model(emitting_tdt_model, tmp_path_factory) -> Path:
    """``emitting_tdt_model`` with random duration rows in its joint's output layer (seed 0, the token rows' scale),
    duration 0 favoured by a bias of 6, and ``decoding.greedy.max_symbols`` 2: NeMo's search on it skips 0, 2 and 4
    frames, meets blanks of duration 0 and stops at 2 tokens per frame (measured on the 10 utterances: 34 blanks with
    duration 0, 79 tokens with duration 0, every utterance reaching 2 tokens at a frame)."""
    import torch
    from omegaconf import open_dict

    from kdstore.nemo.checkpoint import restore_model

    model = restore_model(emitting_tdt_model)
    vocab = model.decoder.vocab_size
    layer = model.joint.joint_net[-1]
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        rows = layer.weight[vocab + 1 :]
        layer.weight[vocab + 1 :] = torch.randn(rows.shape, generator=generator) * layer.weight[: vocab + 1].std()
        layer.bias[vocab + 1 :] = 0.0
        layer.bias[vocab + 1] = 6.0
    with open_dict(model.cfg):
        model.cfg.decoding.greedy.max_symbols = 2
    model.change_decoding_strategy(model.cfg.decoding, verbose=False)
    path = tmp_path_factory.mktemp("tdt_rules") / "rules.nemo"
    model.save_to(str(path))
    return path


@pytest.mark.parametrize("layout", ["sherpa", "nemo"])
def test_tdt_search_rules_equal_nemos(search_rules_model, tdt_paths, layout, tmp_path, monkeypatch):
    """Durations 0 (tokens stay on the frame, blanks are moved on by one), 2 and 4, and max_symbols: kdstore's search
    gives NeMo's tokens on every utterance."""
    from kdstore.export.run import export_onnx
    from kdstore.runtime import decoder

    export_onnx(search_rules_model, tmp_path / "onnx", layout=layout)
    model = decoder.OnnxTransducer(tmp_path / "onnx")
    assert model.max_symbols == 2
    steps, runs = collections.Counter(), []
    search = decoder.tdt_greedy

    def counting(num_frames, joint, emit, **kwargs):  # records what the search met (argmax token kind, duration)
        def seen(t):
            logits = joint(t).reshape(-1)
            kind = "blank" if int(np.argmax(logits[: model.blank_id + 1])) == model.blank_id else "token"
            steps[kind, DURATIONS[int(np.argmax(logits[model.blank_id + 1 :]))]] += 1
            return logits

        ids, frames = search(num_frames, seen, emit, **kwargs)
        runs.append(max(collections.Counter(frames).values(), default=0))
        return ids, frames

    monkeypatch.setattr(decoder, "tdt_greedy", counting)
    ids = [model.greedy(enc) for enc in model.encode_batch([model.load(p) for p in tdt_paths])]
    assert steps["blank", 0] >= 10 and steps["token", 0] >= 20 and steps["token", 2] >= 10, steps
    assert max(runs) == 2, runs  # max_symbols reached, never passed
    assert ids == _nemo_hypotheses(search_rules_model, tdt_paths)[1]


# --- sherpa-onnx and onnx-asr ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("int8", [False, True])
def test_sherpa_onnx_runs_the_tdt_export_like_nemo(tdt_sherpa, tdt_paths, tdt_nemo, int8):
    """The acceptance-3 mechanism: sherpa-onnx's offline recognizer (frame-aligned input, kdstore.runtime.sherpa) on the
    exported TDT student gives NeMo's transcripts (measured 10/10, fp32 and int8)."""
    texts = _sherpa_texts(tdt_sherpa.out_dir, tdt_paths, *(["--int8"] if int8 else []))
    agree = _agree(texts, tdt_nemo[0])
    assert agree >= 9, f"{agree}/10: {list(zip(tdt_nemo[0], texts))}"


def test_sherpa_onnx_needs_the_tdt_url(tdt_sherpa, tdt_paths, tmp_path):
    """Without "tdt" in the url sherpa-onnx takes the model for an RNN-T and exits on the joiner's width."""
    import onnx

    for name in ("encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt"):
        shutil.copy(tdt_sherpa.out_dir / name, tmp_path / name)
    encoder = onnx.load(str(tmp_path / "encoder.onnx"))
    kept = [p for p in encoder.metadata_props if p.key != "url"]
    del encoder.metadata_props[:]
    encoder.metadata_props.extend(kept)
    onnx.save(encoder, str(tmp_path / "encoder.onnx"))
    proc = _run_sherpa(tmp_path, tdt_paths[:1])
    assert proc.returncode != 0 and "vocab_size: 129 != output_size: 134" in proc.stderr, proc.stderr[-2000:]


def test_onnx_asr_runs_the_tdt_nemo_layout(tdt_nemo_layout, tdt_paths, tdt_nemo):
    onnx_asr = pytest.importorskip("onnx_asr")
    for quantization in (None, "int8"):
        model = onnx_asr.load_model("nemo-conformer-tdt", path=tdt_nemo_layout[0], quantization=quantization)
        texts = [model.recognize(p) for p in tdt_paths]
        assert _agree(texts, tdt_nemo[0]) >= 9, f"onnx-asr ({quantization or 'fp32'}): {list(zip(tdt_nemo[0], texts))}"


@pytest.mark.parametrize("layout", ["sherpa", "nemo"])
def test_int8_tdt_export_transcribes(layout, tdt_sherpa, tdt_nemo_layout, tdt_paths, tdt_nemo):
    folder = tdt_sherpa.out_dir if layout == "sherpa" else tdt_nemo_layout[0]
    data = json.loads(_cli("transcribe", "--onnx", str(folder), "--int8", "--json", *tdt_paths))
    texts = [t["text"] for t in data["transcripts"]]
    assert data["int8"] is True and data["layout"] == layout
    assert _agree(texts, tdt_nemo[0]) >= 9, list(zip(tdt_nemo[0], texts))


# --- what the export refuses, and plain TDT models ------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory) -> Path:
    from kdstore.corpus.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(["turn on the light", "turn off the radio", "open the door", "call mom"] * 5, out, 24)
    return out


def _tdt_nemo(tokenizer: Path, path: Path, **overrides: str) -> Path:
    """An untrained tiny-tdt model (``key=value`` config overrides) saved as a plain NeMo .nemo."""
    from tests.models import build_model

    build_model("tiny-tdt", tokenizer, seed=0, **overrides).save_to(str(path))
    return path


def test_export_refuses_durations_sherpa_onnx_cannot_run(small_tokenizer, tmp_path):
    from kdstore.errors import ExportError
    from kdstore.export.run import export_onnx

    model = _tdt_nemo(small_tokenizer, tmp_path / "gaps.nemo", **{"model.model_defaults.tdt_durations": "[0,1,3]",
                                                                   "model.model_defaults.num_tdt_durations": "3"})
    with pytest.raises(ExportError, match=r"TDT durations \[0, 1, 3\] are not 0..2; sherpa-onnx and onnx-asr") as err:
        export_onnx(model, tmp_path / "onnx")
    assert "\n" not in str(err.value) and not (tmp_path / "onnx").exists()


def test_streaming_export_refuses_tdt_in_one_line(small_tokenizer, tmp_path):
    from click.testing import CliRunner

    from kdstore.cli.main import cli

    model = _tdt_nemo(small_tokenizer, tmp_path / "tdt.nemo")
    result = CliRunner().invoke(cli, ["export-onnx", "--model", str(model), "--out", str(tmp_path / "s"), "--streaming"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert "is a TDT model" in last and "export it without --streaming" in last


def test_plain_tdt_model_exports_and_decodes_like_nemo(small_tokenizer, emitting_tdt_model, tdt_paths, tmp_path):
    """A plain EncDecRNNTBPEModel with a TDT joint (no CTC head), untrained: both layouts decode NeMo's tokens."""
    import soundfile

    from kdstore.export.run import export_onnx
    from kdstore.runtime.decoder import OnnxTransducer

    model = _tdt_nemo(small_tokenizer, tmp_path / "plain.nemo", **{"model.aux_ctc": "null"})
    clips = []
    for i, path in enumerate(tdt_paths[:3]):
        clips.append(str(tmp_path / f"clip{i}.wav"))
        soundfile.write(clips[-1], soundfile.read(path, dtype="float32")[0][:20000], 16000)
    _, nemo_ids = _nemo_hypotheses(model, clips)
    assert all(nemo_ids)
    for layout in ("sherpa", "nemo"):
        result = export_onnx(model, tmp_path / layout, layout=layout, preprocessor=False)
        assert result.metadata["source_class"] == "EncDecRNNTBPEModel" and result.metadata["tdt_durations"] == "0,1,2,3,4"
        onnx = OnnxTransducer(result.out_dir)
        assert [onnx.greedy(e) for e in onnx.encode_batch([onnx.load(c) for c in clips])] == nemo_ids, layout


# --- reading exports made elsewhere ---------------------------------------------------------------------------------


def test_tdt_durations_of_an_export():
    from kdstore.errors import ExportError
    from kdstore.runtime.layout import tdt_durations_of

    assert tdt_durations_of({}, 129, 129) == ()  # RNN-T
    assert tdt_durations_of({"tdt_durations": "0,1,2,3,4"}, 134, 129) == DURATIONS
    # sherpa-onnx's own Parakeet-TDT exports carry only the url: durations 0..D-1, as sherpa-onnx assumes
    assert tdt_durations_of({"url": "https://huggingface.co/nvidia/parakeet-tdt-0.6b-v2"}, 1030, 1025) == DURATIONS
    with pytest.raises(ExportError, match="emits 134 values for 129 tokens"):
        tdt_durations_of({}, 134, 129)
    with pytest.raises(ExportError, match="not a comma-separated list"):
        tdt_durations_of({"tdt_durations": "0 1 2"}, 132, 129)
