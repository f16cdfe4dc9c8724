"""Untranscribed audio: the committed demo teacher labels it while dumping (real NeMo search, real Zarr).

The demo teacher is a trained model, so its labels are words, not the noise of a random model: the
tests can compare them with NeMo's own transcripts and with the withheld text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdstore.store import StoreReader
from kdstore.store.verify import verify_store
from tests.dump.test_dump import REPO, all_arrays, kill_after_commits, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher() -> Path:
    from kdstore.assets import demo_teacher_dir

    return demo_teacher_dir() / "teacher.nemo"


@pytest.fixture(scope="module")
def mixed_manifest(demo_corpus, tmp_path_factory) -> Path:
    """The demo corpus's train lines, every second one without its text (untranscribed)."""
    rows = [json.loads(line) for line in Path(demo_corpus.train_manifest).read_text().splitlines() if line.strip()]
    path = tmp_path_factory.mktemp("pseudo") / "mixed.json"
    with path.open("w") as handle:
        for i, row in enumerate(rows):
            if i % 2:
                row.pop("text")
            handle.write(json.dumps(row) + "\n")
    return path


def args(teacher, manifest, out, *extra):
    return ["dump-teacher", "--teacher", str(teacher), "--manifest", str(manifest), "--out", str(out),
            "--batch-size", "2", "--chunk-rows", "64", "--no-progress", *extra]


@pytest.fixture(scope="module")
def mixed_store(teacher, mixed_manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pseudo_store") / "mixed.zarr"
    result = run_cli(args(teacher, mixed_manifest, out, "--band", "full", "--dtype", "float32"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "labelled by the teacher (greedy_batch)" in result.stdout
    return out


def test_pseudo_label_store_round_trips_text_ids_confidence_and_provenance(teacher, mixed_manifest, mixed_store,
                                                                           demo_corpus):
    from kdstore.inputs.manifest import read_manifest
    from kdstore.lattice.posteriors import lattice_posteriors
    from kdstore.nemo.checkpoint import restore_model

    assert verify_store(mixed_store)
    reader = StoreReader(mixed_store)
    meta = reader.metadata
    assert meta.format == "kdstore/2" and meta.labels is not None
    entries = read_manifest(mixed_manifest, require_text=False)
    model = restore_model(teacher)
    untranscribed = [e for e in entries if not e.text]
    assert meta.labels.teacher_labelled == len(untranscribed) > 0
    nemo_texts = [h.text if hasattr(h, "text") else h for h in
                  model.transcribe([str(e.audio_path) for e in untranscribed], batch_size=2, verbose=False)]
    agree = 0
    for entry in entries:
        label = reader.label_of(entry.key)
        rows = reader.read_key(entry.key)
        assert rows.num_labels == len(label.ids)
        if entry.text:
            assert label.source == "person" and label.text == entry.text
            assert label.ids.tolist() == list(model.tokenizer.text_to_ids(entry.text))
        else:
            assert label.source == "teacher" and len(label.ids) > 0
            assert label.text == model.tokenizer.ids_to_text(label.ids.tolist())
            agree += label.text == nemo_texts[untranscribed.index(entry)]
        # confidence = log P(label | audio) / U from the stored (float32, full) lattice
        post = lattice_posteriors(torch.from_numpy(rows.blank_label[..., 0]).double(),
                                  torch.from_numpy(rows.blank_label[..., 1]).double(), rows.num_labels)
        assert label.confidence <= 0
        assert label.confidence == pytest.approx(float(post.log_z) / max(rows.num_labels, 1), abs=1e-4)
    assert agree >= 0.8 * len(untranscribed), "the teacher's stored labels must be what NeMo's greedy search says"
    # the labels are real words: most of them are the withheld text
    refs = {e.key: e.text for e in read_manifest(demo_corpus.train_manifest)}
    exact = sum(reader.label_of(e.key).text == refs[e.key] for e in untranscribed)
    assert exact >= 0.5 * len(untranscribed)


def test_inspect_counts_person_and_teacher_labels(mixed_manifest, mixed_store):
    from kdstore.store.summary import summarize

    summary = summarize(mixed_store)
    without_text = sum(1 for line in mixed_manifest.read_text().splitlines() if "text" not in json.loads(line))
    assert summary["teacher_labels"] == without_text > 0
    assert summary["person_labels"] == summary["utterances"] - without_text > 0
    assert summary["teacher_search"] == "greedy_batch" and summary["teacher_label_confidence_median"] <= 0


def test_pseudo_label_flag_labels_every_line_and_beam_search_is_recorded(teacher, mixed_manifest, tmp_path):
    out = tmp_path / "all.zarr"
    result = run_cli(args(teacher, mixed_manifest, out, "--pseudo-label", "--beam-size", "2"))
    assert result.returncode == 0, result.stderr[-2000:]
    reader = StoreReader(out)
    labels = reader.metadata.labels
    assert (labels.pseudo_label, labels.decoding, labels.beam_size) == ("all", "beam", 2)
    assert labels.teacher_labelled == len(reader)
    assert {reader.label(i).source for i in range(len(reader))} == {"teacher"}
    shown = run_cli(["inspect", str(out)])
    assert "teacher_search: beam (size 2)" in shown.stdout
    assert "labelled by the teacher (beam (size 2))" in result.stdout


def test_min_confidence_leaves_weak_labels_out_and_lists_them(teacher, mixed_manifest, mixed_store, tmp_path):
    reader = StoreReader(mixed_store)
    teacher_conf = sorted(reader.label(i).confidence for i in range(len(reader)) if reader.label(i).source == "teacher")
    threshold = float(np.median(teacher_conf))
    out = tmp_path / "filtered.zarr"
    result = run_cli(args(teacher, mixed_manifest, out, "--band", "full", "--dtype", "float32",
                          "--min-confidence", f"{threshold}"))
    assert result.returncode == 0, result.stderr[-2000:]
    kept = StoreReader(out)
    weak = [c for c in teacher_conf if c < threshold]
    assert len(kept) == len(reader) - len(weak)
    assert kept.metadata.labels.dropped_low_confidence == len(weak) > 0
    assert all(kept.label(i).confidence >= threshold for i in range(len(kept)) if kept.label(i).source == "teacher")
    side = [json.loads(line) for line in Path(f"{out}.skipped.jsonl").read_text().splitlines()]
    assert len(side) == len(weak) and {row["kind"] for row in side} == {"low_confidence"}
    assert sorted(kept.left_out) == sorted(row["key"] for row in side)  # the store records what it left out
    assert set(kept.left_out.values()) == {"low_confidence"} and verify_store(out)
    assert "bad manifest lines" not in result.stdout and "train-student leaves them out too" in result.stdout
    assert all(row["confidence"] < threshold and row["label"] and row["line"] >= 1 for row in side)
    assert sorted(round(row["confidence"], 3) for row in side) == sorted(round(c, 3) for c in weak)


@pytest.mark.parametrize("value", ["0.5", "nan", "inf", "-inf"])
def test_a_min_confidence_no_label_can_meet_is_refused_in_one_line(teacher, mixed_manifest, tmp_path, value):
    """A mean log-prob per token is <= 0 and finite: 0.5 would leave every label out and commit an empty
    store, nan would leave none out; both are refused before the teacher loads, and nothing is written."""
    from click.testing import CliRunner

    from kdstore.cli.main import cli
    from kdstore.dump.run import DumpSettings
    from kdstore.errors import ConfigError

    out = tmp_path / "refused.zarr"
    result = CliRunner().invoke(cli, args(teacher, mixed_manifest, out, "--min-confidence", value))
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--min-confidence" in lines[0] and "label-quality" in lines[0], result.output
    assert not out.exists() and not Path(f"{out}.skipped.jsonl").exists()
    with pytest.raises(ConfigError, match="--min-confidence"):
        DumpSettings(min_confidence=float(value))
    assert DumpSettings(min_confidence=0.0).min_confidence == 0.0  # 0 (certain) is a valid, if strict, threshold
    with pytest.raises(ConfigError, match="--beam-size must be 1 or more"):
        DumpSettings(beam_size=0)


def test_resume_of_an_interrupted_pseudo_label_dump_equals_an_uninterrupted_one(teacher, mixed_manifest, tmp_path):
    ref = tmp_path / "ref.zarr"
    assert run_cli(args(teacher, mixed_manifest, ref, "--band", "3")).returncode == 0
    out = tmp_path / "out.zarr"
    killed_at = kill_after_commits(args(teacher, mixed_manifest, out, "--band", "3"), out)
    assert 0 < killed_at < len(StoreReader(ref)), "the kill must land mid-way"
    checked = run_cli(["inspect", str(out), "--verify"])  # the committed prefix, labels included
    assert checked.returncode == 0 and f"unfinished dump: {killed_at} utterances" in checked.stdout, checked.stderr
    result = run_cli(args(teacher, mixed_manifest, out, "--band", "3", "--resume"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert verify_store(out)
    a, b = all_arrays(ref), all_arrays(out)
    assert a.keys() == b.keys() and "parts/00000/label/ids" in a and "parts/00000/utt/confidence" in a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_label_quality_scores_the_labels_by_confidence_bucket(mixed_store, demo_corpus, tmp_path):
    from kdstore.evaluate.label_quality import label_quality

    quality = label_quality(mixed_store, demo_corpus.train_manifest, buckets=3)
    reader = StoreReader(mixed_store)
    assert quality.scored == reader.metadata.labels.teacher_labelled
    assert 0.0 <= quality.wer < 0.5
    assert sum(b.utterances for b in quality.buckets) == quality.scored
    assert [t.kept_utterances for t in quality.thresholds] == sorted((t.kept_utterances for t in quality.thresholds),
                                                                     reverse=True)
    assert quality.thresholds[0].kept_hours_share == pytest.approx(1.0)
    result = run_cli(["label-quality", "--store", str(mixed_store), "--references", str(demo_corpus.train_manifest),
                      "--buckets", "3", "--out", str(tmp_path / "q")])
    assert result.returncode == 0, result.stderr[-1500:]
    assert "--min-confidence" in result.stdout and (tmp_path / "q" / "label-quality.png").stat().st_size > 1000
    old = run_cli(["label-quality", "--store", str(REPO / "tests/data/store_v1/teacher.zarr"),
                   "--references", str(REPO / "tests/data/store_v1/train.json")])
    assert old.returncode != 0 and "kdstore/1: it keeps no labels" in old.stderr


def test_two_ranks_label_as_one_and_gather_what_they_leave_out(teacher, mixed_manifest, mixed_store, tmp_path):
    """Pseudo-labelling is the expensive part at scale: under torchrun each rank labels its own batches;
    the store, the labels and the side file (rank 0 gathers the other ranks' left-out lines) equal a
    one-rank dump's."""
    reader = StoreReader(mixed_store)
    threshold = float(np.median([reader.label(i).confidence for i in range(len(reader))
                                 if reader.label(i).source == "teacher"]))
    extra = ("--min-confidence", f"{threshold}")
    one = tmp_path / "one.zarr"
    assert run_cli(args(teacher, mixed_manifest, one, *extra)).returncode == 0
    two = tmp_path / "two.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
                "-m", "kdstore.cli.main", *args(teacher, mixed_manifest, two, *extra)]
    result = subprocess.run(torchrun, check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert verify_store(two) and len(StoreReader(two).parts) == 2
    a, b = StoreReader(one), StoreReader(two)
    assert sorted(a.keys) == sorted(b.keys)
    for key in a.keys:
        la, lb = a.label_of(key), b.label_of(key)
        assert (la.text, la.source, la.ids.tolist()) == (lb.text, lb.source, lb.ids.tolist())
        assert la.confidence == pytest.approx(lb.confidence, abs=1e-5)
    assert a.metadata.labels.dropped_low_confidence == b.metadata.labels.dropped_low_confidence > 0
    side = lambda path: sorted(json.loads(x)["utterance"] for x in Path(f"{path}.skipped.jsonl").read_text().splitlines())
    assert side(one) == side(two) and len(side(two)) == b.metadata.labels.dropped_low_confidence
    assert not list(tmp_path.glob("two.zarr.skipped.jsonl.rank*")), "rank side files are merged and removed"
