"""Hostile inputs: each bad manifest line stops dump-teacher and train-student with one line naming
manifest:line and the problem; with --skip-bad the bad lines are listed and only good ones are used."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from kdstore.cli.main import cli
from kdstore.store import StoreReader
from kdstore.store.verify import verify_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher(demo_corpus, tmp_path_factory) -> Path:
    from tests.models import build_model

    path = tmp_path_factory.mktemp("bad_teacher") / "teacher.nemo"
    build_model("tiny", demo_corpus.tokenizer_dir, seed=21).save_to(str(path))
    return path


@pytest.fixture(scope="module")
def cases(demo_corpus, tmp_path_factory):
    """(name, manifest line, expected message fragment); good lines include 8 kHz stereo audio."""
    root = tmp_path_factory.mktemp("bad_inputs")
    good = [json.loads(line) for line in Path(demo_corpus.train_manifest).read_text().splitlines()[:3]]
    audio, rate = sf.read(good[0]["audio_filepath"], dtype="float32")
    stereo_8k = root / "stereo8k.wav"
    sf.write(stereo_8k, np.stack([audio[::2], audio[::2]], axis=1), rate // 2)
    good.append({"audio_filepath": str(stereo_8k), "duration": len(audio[::2]) / (rate // 2), "text": good[0]["text"]})
    corrupt = root / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10)
    short = root / "short.wav"
    sf.write(short, audio[: rate // 4], rate)
    base = good[1]
    nan_audio = root / "nan.wav"  # float WAV: the one kind of file that can hold NaN (issue 14, fault 2)
    poisoned = audio.copy()
    poisoned[1000:1010] = np.nan
    sf.write(nan_audio, poisoned, rate, subtype="FLOAT")
    first = Path(good[0]["audio_filepath"])
    copy = root / "copy.wav"  # the base line's audio under another name: not a repeat of that line
    sf.write(copy, *sf.read(base["audio_filepath"], dtype="float32"))
    tiny = root / "tiny.wav"  # 5 samples: no feature frame, so no encoder frame
    sf.write(tiny, audio[:5], rate)
    bad = [
        ("malformed JSON", "{not json", "not a JSON object"),
        ("missing key", json.dumps({"audio_filepath": base["audio_filepath"], "text": "hi"}), "missing field 'duration'"),
        ("missing file", json.dumps({**base, "audio_filepath": str(root / "nowhere.wav")}), "not found"),
        ("corrupt audio", json.dumps({**base, "audio_filepath": str(corrupt), "duration": 1.0}), "unreadable or corrupt audio"),
        ("empty transcript", json.dumps({**base, "text": "   "}), "no transcript ('text' missing or empty)"),
        ("unencodable", json.dumps({**base, "audio_filepath": str(copy), "text": base["text"] + " \u2603\u00e9"}),
         "cannot encode"),
        ("zero-length", json.dumps({**base, "audio_filepath": str(tiny), "duration": 5 / rate}), "no encoder frame"),
        ("too many tokens", json.dumps({"audio_filepath": str(short), "duration": 0.25,
                                        "text": " ".join(["set a timer for fifty nine minutes"] * 12)}), "tokens but only"),
        ("duration mismatch", json.dumps({**base, "duration": base["duration"] + 5.0}), "has only"),
        # issue 14: the same utterance twice (fault 5), under its own path or spelled another way
        ("repeated line", json.dumps(good[0]), "same utterance as line 1 (key "),
        ("repeated, other spelling", json.dumps({**good[0], "audio_filepath": str(first.parent / "." / first.name)}),
         "same utterance as line 1 (key "),
        ("non-finite audio", json.dumps({**base, "audio_filepath": str(nan_audio), "duration": len(audio) / rate}),
         "has non-finite samples (10 NaN or infinite values)"),
        # fault 10: shorter than the file and no offset would cut the audio
        ("duration too short", json.dumps({**base, "duration": round(base["duration"] - 0.5, 3)}), "would be cut at"),
    ]
    return root, good, bad


def write_manifest(path: Path, good: list[dict], bad_line: str | None) -> int:
    lines = [json.dumps(good[0]), json.dumps(good[1])]
    if bad_line is not None:
        lines.append(bad_line)
    lines += [json.dumps(g) for g in good[2:]]
    path.write_text("\n".join(lines) + "\n")
    return 3  # the bad line's number


KINDS = {"malformed JSON": "malformed_line", "missing key": "malformed_line", "missing file": "missing_audio",
         "corrupt audio": "unreadable_audio", "empty transcript": "bad_transcript", "unencodable": "bad_transcript",
         "zero-length": "too_short", "too many tokens": "too_many_tokens", "duration mismatch": "duration_mismatch",
         "repeated line": "duplicate_utterance", "repeated, other spelling": "duplicate_utterance",
         "non-finite audio": "non_finite_audio", "duration too short": "duration_mismatch"}
CASE_NAMES = list(KINDS)


def _one_bad_line(name: str, cases, tmp_path: Path) -> tuple[Path, list, int, str]:
    """``m.json``: the good lines with case ``name``'s bad line; (path, good rows, its line number, message)."""
    _root, good, bad = cases
    line, fragment = next((line, fragment) for case, line, fragment in bad if case == name)
    manifest = tmp_path / "m.json"
    return manifest, good, write_manifest(manifest, good, line), fragment


@pytest.mark.parametrize("name", [n for n in CASE_NAMES if n != "empty transcript"])
def test_dump_teacher_stops_or_skips(name, cases, teacher, tmp_path):
    manifest, good, number, fragment = _one_bad_line(name, cases, tmp_path)
    runner = CliRunner()
    base = ["dump-teacher", "--teacher", str(teacher), "--manifest", str(manifest), "--top-k", "4", "--no-progress"]
    result = runner.invoke(cli, [*base, "--out", str(tmp_path / "stop.zarr")])
    assert result.exit_code == 1, result.output
    assert f"m.json:{number}: " in result.output and fragment in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "stop.zarr").exists() or "kdstore" not in json.loads(
        (tmp_path / "stop.zarr" / "zarr.json").read_text()).get("attributes", {})
    out = tmp_path / "skip.zarr"
    result = runner.invoke(cli, [*base, "--out", str(out), "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad manifest lines" in result.output
    assert verify_store(out)
    keys = set(StoreReader(out).keys)
    assert len(keys) == len(good) and all(g["audio_filepath"] in " ".join(keys) for g in good)
    side = [json.loads(x) for x in Path(str(out) + ".skipped.jsonl").read_text().splitlines()]
    assert len(side) == 1 and side[0]["line"] == number and fragment in side[0]["reason"]
    assert side[0]["kind"] == KINDS[name] and side[0]["file"] == str(manifest) and side[0]["raw"]
    assert set(side[0]) == {"kind", "file", "line", "utterance", "reason", "raw"}


def test_dump_teacher_labels_a_line_without_text_instead_of_stopping(cases, teacher, demo_corpus, tmp_path):
    """No text is untranscribed audio, not bad input: the teacher labels it (this random teacher may hear
    no words; then the line is listed as ``empty_label`` and left out)."""
    _root, good, _bad = cases
    other = json.loads(Path(demo_corpus.train_manifest).read_text().splitlines()[5]) | {"text": "   "}
    manifest = tmp_path / "m.json"
    number = write_manifest(manifest, good, json.dumps(other))
    out = tmp_path / "labelled.zarr"
    result = CliRunner().invoke(cli, ["dump-teacher", "--teacher", str(teacher), "--manifest", str(manifest),
                                      "--top-k", "4", "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "labelled by the teacher (greedy_batch)" in result.output
    meta = StoreReader(out).metadata
    assert meta.labels.teacher_labelled + meta.labels.dropped_empty == 1
    assert len(StoreReader(out)) == len(good) + meta.labels.teacher_labelled
    side = Path(str(out) + ".skipped.jsonl").read_text().splitlines()
    assert [json.loads(x)["line"] for x in side] == ([number] if meta.labels.dropped_empty else [])


@pytest.mark.parametrize("name", CASE_NAMES)
def test_train_student_stops_or_skips(name, cases, demo_corpus, tmp_path):
    manifest, _good, number, fragment = _one_bad_line(name, cases, tmp_path)
    args = ["train-student", "--config", "tiny", "--no-progress", f"model.train_ds.manifest_filepath={manifest}",
            f"model.tokenizer.dir={demo_corpus.tokenizer_dir}", "model.enable_kd=false", "trainer.max_steps=1",
            "trainer.accelerator=cpu", "model.train_ds.batch_size=2", f"run.output={tmp_path / 's.nemo'}"]
    runner = CliRunner()
    result = runner.invoke(cli, args)
    assert result.exit_code == 1 and f"m.json:{number}: " in result.output and fragment in result.output, result.output
    result = runner.invoke(cli, [*args, "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad manifest lines" in result.output
    side = [json.loads(x) for x in (tmp_path / "s.skipped.jsonl").read_text().splitlines()]
    assert len(side) == 1 and side[0]["line"] == number and side[0]["kind"] == KINDS[name]
