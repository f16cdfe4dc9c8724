"""Training on teacher-labelled audio: lines without text, mixed manifests, two stores, old stores.

Real parts: the committed demo teacher labels real synthetic speech into real Zarr stores, and the
students are NeMo models trained by ``train_student`` for two steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kdstore.errors import KdstoreError, StoreError
from kdstore.store import StoreReader, StoreSet
from kdstore.store.verify import verify_store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
OLD = REPO / "tests" / "data" / "store_v1"


@pytest.fixture(scope="module")
def teacher() -> Path:
    from kdstore.assets import demo_teacher_dir

    return demo_teacher_dir() / "teacher.nemo"


@pytest.fixture(scope="module")
def sets(demo_corpus, teacher, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """name -> (manifest, store): 'transcribed' (6 lines), 'untranscribed' (6 other lines, no text) and
    'mixed' (all 12), each dumped by the demo teacher (band 6, the default)."""
    from kdstore.dump.run import DumpSettings, dump_teacher

    rows = [json.loads(line) for line in Path(demo_corpus.train_manifest).read_text().splitlines() if line.strip()][:12]
    folder = tmp_path_factory.mktemp("untranscribed")
    manifests = {
        "transcribed": rows[:6],
        "untranscribed": [{k: v for k, v in row.items() if k != "text"} for row in rows[6:]],
    }
    manifests["mixed"] = manifests["transcribed"] + manifests["untranscribed"]
    out = {}
    for name, lines in manifests.items():
        manifest = folder / f"{name}.json"
        manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
        store = folder / f"{name}.zarr"
        dump_teacher(teacher, manifest, store, DumpSettings(batch_size=4))
        out[name] = (manifest, store)
    return out


def train(tmp_path, manifests, stores, *extra):
    from kdstore.distill.config import load_train_config
    from kdstore.distill.train import train_student

    cfg = load_train_config("tiny-teacher-2l", [f"model.train_ds.manifest_filepath={','.join(map(str, manifests))}",
                                                f"run.output={tmp_path / 's.nemo'}", "trainer.max_steps=2",
                                                "model.train_ds.batch_size=4", "trainer.accelerator=cpu", *extra],
                            store=",".join(map(str, stores)) if stores else None)
    return train_student(cfg)


def test_the_student_trains_on_the_stored_label_of_a_line_without_text(sets):
    from kdstore.distill.checks import check_alignment_upfront
    from kdstore.inputs.manifest import read_manifest
    from kdstore.nemo.checkpoint import read_tokenizer_files

    manifest, store = sets["mixed"]
    stores = StoreSet([store])
    entries = read_manifest(manifest, require_text=False)
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_proto=read_tokenizer_files(
        REPO / "kdstore/assets/demo_teacher/teacher.nemo")["tokenizer.model"])
    labels = check_alignment_upfront(entries, sp.encode, stores, stores.metadata.front_end)
    for entry in entries:
        stored = stores.label(entry.key)
        if entry.text:
            assert stored.source == "person" and labels[entry.key] == sp.encode(entry.text)
        else:
            assert stored.source == "teacher" and labels[entry.key] == stored.ids.tolist() and stored.text


def test_a_manifest_of_lines_without_text_trains(sets, tmp_path):
    manifest, store = sets["untranscribed"]
    result = train(tmp_path, [manifest], [store])
    assert result.steps == 2 and result.teacher_labelled == 6
    assert np.isfinite(result.final_losses["train_kd_loss"]) and np.isfinite(result.final_losses["train_rnnt_loss"])
    assert "train_ctc_kd_loss" in result.final_losses  # the hybrid student's CTC head learns from the CTC rows too


def test_a_mixed_manifest_trains(sets, tmp_path):
    manifest, store = sets["mixed"]
    result = train(tmp_path, [manifest], [store])
    assert result.steps == 2 and result.teacher_labelled == 6


def test_two_stores_train_together_without_copying(sets, tmp_path):
    (m1, s1), (m2, s2) = sets["transcribed"], sets["untranscribed"]
    result = train(tmp_path, [m1, m2], [s1, s2])
    assert result.steps == 2 and result.teacher_labelled == 6
    with pytest.raises(StoreError, match="is in both"):
        StoreSet([s1, sets["mixed"][1]])
    with pytest.raises(StoreError, match="given twice"):
        StoreSet([s1, Path(str(s1) + "/")])


def test_lines_the_dump_left_out_are_left_out_of_training_too(sets, teacher, tmp_path):
    """dump-teacher --min-confidence leaves weak labels out; training on the same manifest must skip those
    lines (the store records them), not call them bad input."""
    from kdstore.dump.run import DumpSettings, dump_teacher

    manifest, store = sets["untranscribed"]
    reader = StoreReader(store)
    confidences = sorted(reader.label(i).confidence for i in range(len(reader)))
    threshold = confidences[len(confidences) // 2]
    filtered = tmp_path / "filtered.zarr"
    meta = dump_teacher(teacher, manifest, filtered, DumpSettings(batch_size=4, min_confidence=threshold))
    weak = sum(c < threshold for c in confidences)
    assert meta.labels.dropped_low_confidence == weak > 0 and len(StoreReader(filtered).left_out) == weak
    result = train(tmp_path, [manifest], [filtered])
    assert result.left_out_by_dump == weak and result.teacher_labelled == 6 - weak and result.skipped_lines == 0


def test_labels_from_a_store_without_kd(sets, tmp_path):
    manifest, store = sets["untranscribed"]
    result = train(tmp_path, [manifest], [store], "model.enable_kd=false")
    assert result.steps == 2 and result.teacher_labelled == 6 and "train_kd_loss" not in result.final_losses


def test_a_line_without_text_and_no_store_fails_saying_how_to_label_it(sets, tmp_path):
    from kdstore.store import StoreReader

    manifest, store = sets["untranscribed"]
    tokenizer = StoreReader(store).write_tokenizer(tmp_path / "tok")
    with pytest.raises(KdstoreError, match=r"untranscribed.json:1: no transcript .* dump-teacher"):
        train(tmp_path, [manifest], [], f"model.tokenizer.dir={tokenizer}")


def test_a_store_from_before_kdstore2_still_reads_verifies_and_trains(tmp_path):
    reader = StoreReader(OLD / "teacher.zarr")
    assert reader.metadata.format == "kdstore/1" and not reader.has_labels and reader.metadata.labels is None
    assert verify_store(OLD / "teacher.zarr")
    with pytest.raises(StoreError, match="holds no labels"):
        reader.label(0)
    result = train(tmp_path, [OLD / "train.json"], [OLD / "teacher.zarr"], "model.train_ds.batch_size=2")
    assert result.steps == 2 and result.teacher_labelled == 0
    assert np.isfinite(result.final_losses["train_kd_loss"]) and result.final_losses["train_kd_loss"] > 0


@pytest.mark.parametrize("reduction", ["mean_batch", "mean", "sum", "mean_volume"])
def test_weighted_reduce_with_unit_weights_is_nemos_reduction(reduction):
    import torch
    from nemo.collections.asr.losses.rnnt import RNNTLoss

    from kdstore.distill.losses import weighted_reduce

    per_utt, lengths = torch.tensor([3.0, 1.5, 7.25]), torch.tensor([4, 2, 9])
    nemo = RNNTLoss(num_classes=5, reduction=reduction)
    torch.testing.assert_close(weighted_reduce(per_utt, torch.ones(3), lengths, reduction), nemo.reduce(per_utt, lengths))
    # a zero weight removes an utterance's term; the others keep their share
    half = weighted_reduce(per_utt, torch.tensor([1.0, 0.0, 1.0]), lengths, reduction)
    assert half < weighted_reduce(per_utt, torch.ones(3), lengths, reduction)


def test_per_utterance_mix_equals_the_batch_mix_and_alpha_one_drops_the_hard_label():
    import torch

    from kdstore.distill.losses import mix_per_utterance

    hard = torch.tensor([2.0, 5.0, 1.0], requires_grad=True)
    kd = torch.tensor([0.3, 0.1, 0.7], requires_grad=True)
    lengths = torch.tensor([3, 4, 2])
    same = mix_per_utterance(hard, kd, torch.full((3,), 0.8), lengths, "mean_batch", 2.0)
    torch.testing.assert_close(same, 0.2 * hard.mean() + 0.8 * 4.0 * kd.mean())
    mixed = mix_per_utterance(hard, kd, torch.tensor([0.8, 1.0, 0.8]), lengths, "mean_batch", 1.0)
    mixed.backward()
    assert hard.grad[1] == 0 and hard.grad[0] > 0 and kd.grad[1] > kd.grad[0] > 0  # utterance 1: lattice only


def test_pseudo_label_alpha_one_trains_teacher_labels_on_the_lattice_only(sets, tmp_path):
    from kdstore.distill.data import StoreCollate
    from kdstore.inputs.batches import TranscribedAudioDataset
    from kdstore.inputs.manifest import read_manifest

    manifest, store = sets["mixed"]
    stores = StoreSet([store])
    entries = read_manifest(manifest, require_text=False)
    labels = {e.key: stores.label(e.key).ids.tolist() for e in entries}
    dataset = TranscribedAudioDataset(entries, lambda text: [], 16000, labels=labels)
    batch = StoreCollate(stores)([dataset[i] for i in range(len(entries))])
    assert batch.kd.teacher_label.tolist() == [not e.text for e in entries]
    result = train(tmp_path, [manifest], [store], "model.kd.pseudo_label_alpha=1.0")
    assert result.steps == 2 and np.isfinite(result.final_losses["train_loss"])
    assert result.final_losses["train_kd_loss"] > 0 and result.teacher_labelled == 6
