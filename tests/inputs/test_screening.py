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
