"""Tests for kdstore.corpus: the demo TTS corpus, its grammar and texts (LibriSpeech: test_librispeech.py)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from kdstore.corpus import grammar, prepare_demo, synthetic, texts, tokenizer, tts
from kdstore.errors import DependencyError, KdstoreError


def read_manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def voice_of(row: dict) -> str:
    return Path(row["audio_filepath"]).parent.name


# ---------------------------------------------------------------- demo corpus


def test_demo_manifests_and_audio(demo_corpus):
    for split, path in demo_corpus.manifests.items():
        rows = read_manifest(path)
        assert len(rows) == demo_corpus.utterances[split] > 0
        for row in rows:
            assert set(row) == {"audio_filepath", "duration", "text"}
            audio = Path(row["audio_filepath"])
            assert audio.is_absolute() and audio.is_file()
            info = soundfile.info(str(audio))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert row["duration"] == pytest.approx(info.frames / info.samplerate, abs=1e-6)
            assert 0.15 <= row["duration"] / len(row["text"].split()) <= 1.0
            assert row["text"] == row["text"].strip().lower()
    samples, _ = soundfile.read(read_manifest(demo_corpus.test_manifest)[0]["audio_filepath"])
    assert np.abs(samples).max() > 0.1  # normalised speech, not silence


def test_demo_splits_by_voice_and_mixes_engines(demo_corpus):
    voices = {split: {voice_of(r) for r in read_manifest(p)} for split, p in demo_corpus.manifests.items()}
    assert not voices["train"] & voices["test"]
    assert not voices["train"] & voices["val"]
    assert not voices["val"] & voices["test"]
    stats = json.loads(demo_corpus.stats_path.read_text())
    engines = stats["splits"]["train"]["by_engine"]
    assert len(engines) > 1
    counts = [e["utterances"] for e in engines.values()]
    assert max(counts) <= 0.5 * sum(counts)  # not mostly one engine
    assert set(stats["splits"]["test"]["by_engine"]) == set(stats["engines"])  # every family in test
    assert stats["total"]["utterances"] == sum(demo_corpus.utterances.values())


def test_demo_tokenizer_encodes_train_texts(demo_corpus):
    import sentencepiece as spm

    tok_dir = demo_corpus.tokenizer_dir
    assert {"tokenizer.model", "tokenizer.vocab", "vocab.txt"} <= {p.name for p in tok_dir.iterdir()}
    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))
    assert sp.get_piece_size() == demo_corpus.vocab_size
    assert len((tok_dir / "vocab.txt").read_text().splitlines()) == sp.get_piece_size() - 1  # no <unk>
    for row in read_manifest(demo_corpus.train_manifest):
        ids = sp.encode(row["text"])
        assert ids and sp.unk_id() not in ids
        assert sp.decode(ids) == row["text"]


@pytest.mark.slow  # needs the TTS engines
def test_same_seed_same_corpus_and_restart(tmp_path):
    first = prepare_demo(tmp_path / "a", hours=0.008, seed=3, num_jobs=2)
    second = prepare_demo(tmp_path / "b", hours=0.008, seed=3, num_jobs=1)
    for split in synthetic.SPLITS:
        a = first.manifests[split].read_text().replace(str(first.out_dir), "OUT")
        b = second.manifests[split].read_text().replace(str(second.out_dir), "OUT")
        assert a == b
    row = read_manifest(first.train_manifest)[0]
    twin = row["audio_filepath"].replace(str(first.out_dir), str(second.out_dir))
    assert Path(row["audio_filepath"]).read_bytes() == Path(twin).read_bytes()
    assert (first.tokenizer_dir / "tokenizer.model").read_bytes() == (
        second.tokenizer_dir / "tokenizer.model"
    ).read_bytes()

    start = time.perf_counter()
    again = prepare_demo(tmp_path / "a", hours=0.008, seed=3)
    assert time.perf_counter() - start < 1.0 and again == first
    with pytest.raises(KdstoreError, match="overwrite"):
        prepare_demo(tmp_path / "a", hours=0.008, seed=4)

    # an interrupted build (no .done, one WAV missing) resumes to the same corpus
    manifest = first.train_manifest.read_text()
    (first.out_dir / ".done").rename(first.out_dir / ".in_progress")
    Path(row["audio_filepath"]).unlink()
    first.train_manifest.unlink()
    assert prepare_demo(tmp_path / "a", hours=0.008, seed=3) == first
    assert first.train_manifest.read_text() == manifest


def test_corpus_import_is_light():
    """The corpus package must not pull in NeMo or torch (``kdstore --help`` stays fast)."""
    import subprocess
    import sys

    code = "import sys, kdstore.corpus; print(sorted({'nemo', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plan_is_seeded_and_balanced():
    inventory = tts.Inventory(
        names={
            "espeak-ng": list(tts.ESPEAK_DIALECTS),
            "flite": list(tts.FLITE_VOICES),
            "festival": list(tts.FESTIVAL_VOICES),
        },
        espeak_variants=[v for group in tts.ESPEAK_VARIANTS.values() for v in group],
        warnings=[],
    )
    voices = tts.split_voices(inventory)
    plan = synthetic.plan_utterances("commands", 0.5, 0, voices, Path("/w"))
    assert plan == synthetic.plan_utterances("commands", 0.5, 0, voices, Path("/w"))
    assert [p.text for p in plan] != [
        p.text for p in synthetic.plan_utterances("commands", 0.5, 1, voices, Path("/w"))
    ]
    train = [p for p in plan if p.split == "train"]
    for engine in tts.ENGINES:
        assert abs(sum(p.voice.engine == engine for p in train) / len(train) - 1 / 3) < 0.02
    estimate = sum(synthetic.estimate_seconds(p.text, p.voice) for p in plan) / 3600
    assert 0.5 <= estimate < 0.51
    # test speakers: base voices nobody trains on
    train_names = {(v.engine, v.name) for vs in voices["train"].values() for v in vs}
    for engine, test_voices in voices["test"].items():
        assert not {(v.engine, v.name) for v in test_voices} & train_names, engine


def test_tokenizer_vocab_size_is_clamped(tmp_path):
    small = ["set a timer for five minutes", "call mom", "turn on the lights"]
    info = tokenizer.train_tokenizer(small, tmp_path / "big", 1000)
    assert info.vocab_size < 1000 and "1000" in info.warning
    info = tokenizer.train_tokenizer(small, tmp_path / "tiny", 4)
    assert info.vocab_size > 4 and "below" in info.warning


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(KdstoreError, match="task"):
        prepare_demo(tmp_path, task="poetry")
    with pytest.raises(KdstoreError, match="hours"):
        prepare_demo(tmp_path, hours=0)


# ---------------------------------------------------------------- engines


@pytest.mark.slow  # needs the TTS engines
def test_missing_engine_is_a_warning_and_none_is_an_error(monkeypatch):
    import shutil

    real_which = shutil.which
    monkeypatch.setattr(tts.shutil, "which", lambda name: None if name == "flite" else real_which(name))
    inventory = tts.detect_engines()
    assert "flite" not in inventory.names
    assert any("flite" in w and "apt-get install" in w for w in inventory.warnings)
    assert "flite" not in tts.split_voices(inventory)["test"]

    monkeypatch.setattr(tts.shutil, "which", lambda name: real_which(name) if name == "sox" else None)
    with pytest.raises(DependencyError, match="apt-get install"):
        tts.detect_engines()


def test_plausibility_filter():
    assert tts.plausible(2.0, 6)
    assert not tts.plausible(0.5, 6)  # truncated
    assert not tts.plausible(9.0, 6)  # stuck
    assert not tts.plausible(1.0, 0)


# ---------------------------------------------------------------- grammar and texts


def test_grammar_vocabulary_and_numbers():
    words = grammar.vocabulary()
    assert 100 <= len(words) <= 150
    assert grammar.number_words(1) == "one" and grammar.number_words(60) == "sixty"
    assert grammar.number_words(45) == "forty five"
    with pytest.raises(ValueError):
        grammar.number_words(61)


def test_grammar_test_sentences_unseen_in_train():
    rng = random.Random(0)
    train = grammar.sample_commands(rng, "train", 3000)
    test = grammar.sample_commands(rng, "test", 300)
    assert sum(s in set(train) for s in test) == 0
    assert len(set(test)) > 100  # many combinations, not a handful of repeats
    assert {w for s in train for w in s.split()} == grammar.vocabulary()  # every word trainable


def test_normalize_keeps_only_speakable_sentences():
    assert texts.normalize('"Don\'t panic," she said -- twice.') == "don't panic she said twice"
    assert texts.normalize("Call me at 555 today, please now.") is None  # digits
    assert texts.normalize("The NASA rocket flew to the moon.") is None  # acronym
    assert texts.normalize("Mr. Smith went to town today.") is None  # abbreviation
    assert texts.normalize("Too short.") is None
    assert texts.normalize(" ".join(["word"] * 21)) is None


def test_open_sentences_from_text_packages(tmp_path):
    fortunes, wordnet = tmp_path / "fortunes", tmp_path / "wordnet"
    fortunes.mkdir()
    wordnet.mkdir()
    (fortunes / "wisdom").write_text(
        "A clash of doctrine is not a disaster. It is an opportunity for us all.\n"
        "\t\t-- Somebody Famous\n%\nNever trust a computer you cannot throw out a window.\n%\n"
    )
    (fortunes / "wisdom.dat").write_bytes(b"\x00\x01")
    (wordnet / "data.verb").write_text(
        "  1 licence header line\n"
        '00002724 29 v 01 choke 0 002 | breathe with difficulty; "She choked with emotion when she spoke"\n'
    )
    found = texts.open_sentences(fortunes, wordnet)
    everything = [s for split in found.values() for s in split]
    assert sorted(everything) == sorted(
        [
            "a clash of doctrine is not a disaster",
            "it is an opportunity for us all",
            "never trust a computer you cannot throw out a window",
            "she choked with emotion when she spoke",
        ]
    )
    for split, sentences in found.items():
        assert all(texts.sentence_split(s) == split for s in sentences)


# ---------------------------------------------------------------- CLI


def test_cli_help():
    from kdstore.cli.main import cli

    runner = CliRunner()
    for verb in ("prepare-demo", "prepare-librispeech"):
        result = runner.invoke(cli, [verb, "--help"])
        assert result.exit_code == 0 and "Example" in result.output


@pytest.mark.slow  # needs the TTS engines
def test_cli_prepare_demo_open_task(tmp_path):
    from kdstore.cli.main import cli

    result = CliRunner().invoke(
        cli,
        [
            "prepare-demo",
            str(tmp_path / "d"),
            "--task",
            "open",
            "--hours",
            "0.005",
            "--vocab-size",
            "64",
            "-j",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "tokenizer" in result.output
    rows = read_manifest(tmp_path / "d" / "train.json")
    assert all(5 <= len(r["text"].split()) <= 20 for r in rows)
    result = CliRunner().invoke(cli, ["prepare-demo", str(tmp_path / "d"), "--hours", "0.01"])
    assert result.exit_code != 0 and "--overwrite" in result.output and "Traceback" not in result.output
