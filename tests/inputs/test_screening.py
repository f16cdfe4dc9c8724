"""The one skip-bad policy and side-file schema (kdstore.inputs.screening), without a model."""

from __future__ import annotations

import json

import pytest

from kdstore.errors import ManifestError
from kdstore.inputs.manifest import read_manifest
from kdstore.inputs.screening import KINDS, BadInputPolicy, Skipped

FIELDS = {"kind", "file", "line", "utterance", "reason", "raw"}


def test_policy_stops_with_one_line_naming_where_why_and_fix():
    policy = BadInputPolicy(listed_in="out.zarr.skipped.jsonl")
    with pytest.raises(ManifestError) as info:
        policy.add(Skipped("missing_audio", "/m.json", 3, "a.wav", "audio file a.wav not found", hint="fix the path"))
    assert str(info.value) == ("/m.json:3: audio file a.wav not found; fix the path, or rerun with --skip-bad to leave "
                               "it out and list it in out.zarr.skipped.jsonl")
    assert policy.skipped == []


def test_skipping_appends_rows_to_a_side_file_emptied_at_start(tmp_path):
    side = tmp_path / "sub" / "x.skipped.jsonl"
    BadInputPolicy(skip_bad=True, side_file=side).add(Skipped("too_short", "/m.json", 1, "a.wav", "old run"))
    policy = BadInputPolicy(skip_bad=True, side_file=side)
    assert side.read_text() == ""  # a new run lists its own inputs only
    policy.add(Skipped("empty_subset", "/ls/dev-other", None, None, "no transcripts"))
    rows = [json.loads(line) for line in side.read_text().splitlines()]
    assert rows == [{"kind": "empty_subset", "file": "/ls/dev-other", "line": None, "utterance": None,
                     "reason": "no transcripts", "raw": None}]
    assert len(policy.skipped) == 1


def test_manifest_lines_get_a_kind_and_their_raw_text(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"")
    manifest = tmp_path / "m.json"
    lines = ["{not json", json.dumps({"audio_filepath": "nowhere.wav", "duration": 1.0, "text": "hi"}),
             json.dumps({"audio_filepath": str(audio), "duration": 1.0, "text": " "}),
             json.dumps({"audio_filepath": str(audio), "duration": 1.0, "text": "ok"})]
    manifest.write_text("\n".join(lines) + "\n")
    side = tmp_path / "m.skipped.jsonl"
    entries = read_manifest(manifest, on_bad_line=BadInputPolicy(skip_bad=True, side_file=side))
    assert [e.line for e in entries] == [4]
    rows = [json.loads(line) for line in side.read_text().splitlines()]
    assert all(set(r) == FIELDS and r["file"] == str(manifest) for r in rows)
    assert [(r["kind"], r["line"], r["raw"]) for r in rows] == [
        ("malformed_line", 1, lines[0]), ("missing_audio", 2, lines[1]), ("bad_transcript", 3, lines[2])]
    assert {r["kind"] for r in rows} <= set(KINDS)


# --- issue 14: repeats, durations and non-finite audio, screened without a model ------------------------------
def _wav(path, seconds: float, subtype: str = "PCM_16", poison: int = 0):
    import numpy as np
    import soundfile as sf

    samples = (0.1 * np.sin(np.arange(round(seconds * 16000)) / 7.0)).astype("float32")
    samples[100:100 + poison] = np.nan
    sf.write(path, samples, 16000, subtype=subtype)
    return path


def _rules():
    from kdstore.inputs.screening import ScreenRules
    from kdstore.store.meta_v1 import FrontEnd

    return ScreenRules(front_end=FrontEnd(sample_rate=16000, window_size=0.025, window_stride=0.01, features=80,
                                          normalize="per_feature", subsampling_factor=8, n_fft=512), unk_id=None)


def _screen(manifest, skip_bad: bool = True, seen=None, side=None):
    from kdstore.inputs.screening import screened_manifest

    policy = BadInputPolicy(skip_bad=skip_bad, side_file=side)
    kept = screened_manifest(manifest, lambda text: [1] * len(text.split()), _rules(), policy, seen=seen)
    return kept, policy


def test_a_repeated_utterance_is_reported_against_its_first_line_even_across_manifests(tmp_path):
    (tmp_path / "sub").mkdir()
    wav = _wav(tmp_path / "sub" / "a.wav", 1.0)
    other = _wav(tmp_path / "b.wav", 1.0)
    lines = [{"audio_filepath": "sub/a.wav", "duration": 1.0, "text": "a b"},
             {"audio_filepath": str(other), "duration": 1.0, "text": "a b"},
             {"audio_filepath": str(wav), "duration": 1.0, "text": "another text"},  # same audio, absolute path
             {"audio_filepath": "sub/a.wav", "duration": 0.5, "offset": 0.5, "text": "a"}]  # another span: fine
    first = tmp_path / "first.json"
    first.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.raises(ManifestError, match=r"first.json:3: same utterance as line 1 \(key sub/a.wav\|0.000\|1.000\)"):
        _screen(first, skip_bad=False)
    seen: dict = {}
    kept, policy = _screen(first, seen=seen, side=tmp_path / "s.jsonl")
    assert [e.line for e in kept] == [1, 2, 4]
    assert [(s.kind, s.line) for s in policy.skipped] == [("duplicate_utterance", 3)]
    second = tmp_path / "second.json"
    second.write_text(json.dumps({"audio_filepath": str(other), "duration": 1.0, "text": "x"}) + "\n"
                      + json.dumps({"audio_filepath": str(wav), "duration": 0.8, "offset": 0.1, "text": "y"}) + "\n")
    kept, policy = _screen(second, seen=seen)
    assert [e.line for e in kept] == [2]
    assert policy.skipped[0].reason == f"same utterance as {first}:2 (key {other}|0.000|1.000)"


def test_a_duration_shorter_than_the_file_needs_an_offset(tmp_path):
    wav = _wav(tmp_path / "a.wav", 2.0)
    lines = [{"audio_filepath": str(wav), "duration": 2.05, "text": "rounded"},  # within the tolerance
             {"audio_filepath": str(wav), "duration": 1.5, "text": "cut"},
             {"audio_filepath": str(wav), "duration": 1.5, "offset": 0.0, "text": "a span"},
             {"audio_filepath": str(wav), "duration": 1.2, "offset": 0.5, "text": "another span"}]
    manifest = tmp_path / "m.json"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    kept, policy = _screen(manifest)
    assert [e.line for e in kept] == [1, 3, 4]
    (cut,) = policy.skipped
    assert cut.kind == "duration_mismatch" and cut.line == 2
    assert "is 2.000 s long and the line gives no offset, so the audio would be cut at 1.500 s" in cut.reason


def test_non_finite_float_audio_is_found_by_screening_and_by_the_reader(tmp_path):
    from kdstore.errors import AudioError
    from kdstore.inputs.audio import read_samples
    from kdstore.inputs.screening import non_finite_samples

    nan = _wav(tmp_path / "nan.wav", 1.0, subtype="FLOAT", poison=10)
    clean = _wav(tmp_path / "clean.wav", 1.0, subtype="DOUBLE")
    assert non_finite_samples(nan) == 10 and non_finite_samples(clean) == 0
    assert non_finite_samples(nan, offset=0.5, duration=0.5) == 0  # the span screened is the span used
    manifest = tmp_path / "m.json"
    manifest.write_text("\n".join(json.dumps({"audio_filepath": str(p), "duration": 1.0, "text": "a"})
                                  for p in (clean, nan)) + "\n")
    with pytest.raises(ManifestError, match=r"m.json:2: audio .*nan.wav has non-finite samples \(10 NaN"):
        _screen(manifest, skip_bad=False)
    kept, policy = _screen(manifest)
    assert [e.line for e in kept] == [1] and policy.skipped[0].kind == "non_finite_audio"
    with pytest.raises(AudioError, match="m.json:2: audio .*nan.wav has non-finite samples"):
        read_samples(nan, 16000, where="m.json:2")


def test_duration_bounds_leave_lines_out_listed_and_refuse_an_empty_split(tmp_path):
    from kdstore.inputs.screening import duration_filter

    lines = [{"audio_filepath": str(_wav(tmp_path / f"{i}.wav", s)), "duration": s, "text": "a"}
             for i, s in enumerate((0.5, 2.0, 6.0))]
    manifest = tmp_path / "m.json"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    entries = read_manifest(manifest)
    side = tmp_path / "s.jsonl"
    policy = BadInputPolicy(side_file=side, reset_side_file=True)
    kept = duration_filter(entries, policy, min_duration=1.0, max_duration=5.0, setting="model.train_ds")
    assert [e.line for e in kept] == [2]
    rows = [json.loads(x) for x in side.read_text().splitlines()]
    assert [(r["kind"], r["line"]) for r in rows] == [("under_min_duration", 1), ("over_max_duration", 3)]
    assert rows[1]["reason"] == "6.000 s is longer than model.train_ds.max_duration=5.0 s"
    with pytest.raises(ManifestError, match=r"model.train_ds: every one of the 3 usable utterances was left out "
                                            r"\(3 by model.train_ds.max_duration\)"):
        duration_filter(entries, BadInputPolicy(), min_duration=None, max_duration=0.1, setting="model.train_ds")
