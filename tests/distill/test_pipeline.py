"""Dump -> store -> student, with real (tiny, randomly initialised) NeMo models and real Zarr stores."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdstore.errors import IncompatibleStoreError, ManifestError
from tests.models import build_model

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def teacher_nemo(demo_corpus, tmp_path_factory) -> Path:
    """A randomly initialised tiny teacher (hybrid RNNT-CTC, like the demo teacher) saved as .nemo."""
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("teacher") / "teacher.nemo"
    build_model("tiny-teacher", demo_corpus.tokenizer_dir, seed=1,
                **{"model.encoder.n_layers": 1, "model.model_defaults.enc_hidden": 64,
                   "model.encoder.subsampling_conv_channels": 64}).save_to(str(path))
    return path


@pytest.fixture(scope="module")
def small_manifest(demo_corpus, tmp_path_factory) -> Path:
    lines = Path(demo_corpus.train_manifest).read_text().splitlines()[:6]
    path = tmp_path_factory.mktemp("manifest") / "six.json"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def exact_store(teacher_nemo, small_manifest, tmp_path_factory) -> Path:
    """A k = V+1 float32 store: every teacher log-prob, exactly."""
    from kdstore.dump.run import DumpSettings, dump_teacher

    out = tmp_path_factory.mktemp("store") / "exact.zarr"
    dump_teacher(teacher_nemo, small_manifest, out, DumpSettings(top_k=10_000, batch_size=4, value_dtype="float32", band=None))
    return out


def test_dump_rows_match_live_teacher_and_student_lattice_shape(teacher_nemo, small_manifest, demo_corpus, tmp_path):
    from kdstore.dump.run import DumpSettings, dump_teacher
    from kdstore.inputs.batches import TranscribedAudioDataset, collate
    from kdstore.inputs.manifest import read_manifest
    from kdstore.nemo.checkpoint import restore_model
    from kdstore.nemo.teacher_forced import full_lattice
    from kdstore.store import StoreReader
    from kdstore.store.verify import verify_store

    store = tmp_path / "t.zarr"
    meta = dump_teacher(teacher_nemo, small_manifest, store, DumpSettings(top_k=4, batch_size=4, band=None))
    assert verify_store(store)
    reader = StoreReader(store)
    assert meta.counts.utterances == len(reader) == 6
    teacher = restore_model(teacher_nemo)
    student = build_model("tiny", demo_corpus.tokenizer_dir, seed=5)
    entries = read_manifest(small_manifest)
    dataset = TranscribedAudioDataset(entries, teacher.tokenizer.text_to_ids, 16000)
    for i, entry in enumerate(entries):
        batch = collate([dataset[i]])
        rows = reader.read_key(entry.key)
        _, enc_len = student.forward(input_signal=batch.signal, input_signal_length=batch.signal_len)
        assert rows.logp.shape == (int(enc_len[0]), int(batch.tokens_len[0]) + 1, 4)
        live, _ = full_lattice(teacher, batch.signal, batch.signal_len, batch.tokens, batch.tokens_len)
        live = live[:, : rows.num_frames]  # the encoder may pad one frame past the valid length
        top = live[0].topk(4, dim=-1)
        np.testing.assert_allclose(rows.logp.astype(np.float32), top.values.numpy(), atol=2e-2, rtol=2e-3)
        assert (rows.ids == top.indices.numpy()).mean() > 0.95  # ties may reorder under fp16
        u = int(batch.tokens_len[0])
        label_lp = live[0, :, np.arange(u), batch.tokens[0, :u]].numpy()
        np.testing.assert_allclose(rows.blank_label[:, :u, 1].astype(np.float32), label_lp, atol=2e-2, rtol=2e-3)
        assert np.all(rows.blank_label[:, u, 1] == np.finfo(np.float16).min)


def test_offline_kd_from_exact_store_equals_online_kd(teacher_nemo, exact_store, small_manifest, demo_corpus):
    from kdstore.distill.config import KDSettings
    from kdstore.distill.data import StoreCollate
    from kdstore.distill.kd_term import kd_node_loss, online_rows
    from kdstore.inputs.batches import TranscribedAudioDataset
    from kdstore.inputs.manifest import read_manifest
    from kdstore.nemo.checkpoint import restore_model
    from kdstore.store import StoreReader

    teacher = restore_model(teacher_nemo)
    student = build_model("tiny", demo_corpus.tokenizer_dir, seed=7)
    reader = StoreReader(exact_store)
    assert reader.metadata.top_k == teacher.decoder.vocab_size + 1
    entries = read_manifest(small_manifest)
    dataset = TranscribedAudioDataset(entries, teacher.tokenizer.text_to_ids, 16000)
    batch = StoreCollate(reader)([dataset[i] for i in (0, 3, 5, 1)])  # a different padding than the dump's batches
    enc, _ = student.forward(input_signal=batch.signal, input_signal_length=batch.signal_len)
    pred, _, _ = student.decoder(targets=batch.tokens, target_length=batch.tokens_len)
    log_probs = student.joint.joint(enc.transpose(1, 2), pred.transpose(1, 2)).log_softmax(-1)
    for temperature in (1.0, 2.0):
        settings = KDSettings(enabled=True, alpha=0.5, temperature=temperature, store=str(exact_store),
                              loss="topk_rest", weights="uniform", teacher_model_path=None)
        offline = kd_node_loss(log_probs, batch.kd, batch.tokens, student.decoder.blank_idx, settings)
        online = kd_node_loss(log_probs, online_rows(teacher, batch), batch.tokens, student.decoder.blank_idx, settings)
        assert offline.item() > 0.01
        assert abs(offline.item() - online.item()) < 1e-4, (offline.item(), online.item())


def test_train_student_with_store_saves_plain_nemo(exact_store, small_manifest, tmp_path):
    from kdstore.distill.config import load_train_config
    from kdstore.distill.train import train_student

    out = tmp_path / "student.nemo"
    cfg = load_train_config("tiny", [f"model.train_ds.manifest_filepath={small_manifest}", f"run.output={out}",
                                     "trainer.max_steps=3", "model.train_ds.batch_size=3", "trainer.accelerator=cpu"],
                            store=str(exact_store))
    result = train_student(cfg)
    assert result.steps == 3
    assert np.isfinite(result.final_losses["train_kd_loss"]) and result.final_losses["train_kd_loss"] > 0
    code = (
        "import sys, json\n"
        "from nemo.collections.asr.models import ASRModel\n"
        f"m = ASRModel.restore_from({str(out)!r}, map_location='cpu')\n"
        "print(json.dumps({'cls': type(m).__name__, 'kdstore': any(k.startswith('kdstore') for k in sys.modules)}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info == {"cls": "EncDecHybridRNNTCTCBPEModel", "kdstore": False}  # hybrid by default


def test_store_from_another_frame_rate_or_tokenizer_is_refused(exact_store, small_manifest, tmp_path, demo_corpus):
    from kdstore.distill.config import load_train_config
    from kdstore.distill.train import train_student

    base = [f"model.train_ds.manifest_filepath={small_manifest}", f"run.output={tmp_path / 's.nemo'}",
            "trainer.max_steps=1", "trainer.accelerator=cpu"]
    cfg = load_train_config("tiny", base + ["model.encoder.subsampling_factor=4"], store=str(exact_store))
    with pytest.raises(IncompatibleStoreError, match="subsampling_factor"):
        train_student(cfg)
    other_tok = tmp_path / "tok"
    other_tok.mkdir()
    (other_tok / "tokenizer.model").write_bytes(b"not the teacher's tokenizer")
    cfg = load_train_config("tiny", base + [f"model.tokenizer.dir={other_tok}"], store=str(exact_store))
    with pytest.raises(IncompatibleStoreError, match="tokenizer"):
        train_student(cfg)


def test_manifest_errors_name_file_and_line(tmp_path, demo_corpus):
    from kdstore.inputs.manifest import read_manifest

    good = Path(demo_corpus.train_manifest).read_text().splitlines()[0]
    bad = tmp_path / "bad.json"
    bad.write_text(good + "\n{not json\n")
    with pytest.raises(ManifestError, match=r"bad.json:2"):
        read_manifest(bad)
    empty = json.loads(good) | {"text": "  "}
    bad.write_text(json.dumps(empty) + "\n")
    with pytest.raises(ManifestError, match=r"bad.json:1: no transcript \('text' missing or empty\)"):
        read_manifest(bad)
    missing = json.loads(good) | {"audio_filepath": "nowhere.wav"}
    bad.write_text(good + "\n" + json.dumps(missing) + "\n")
    with pytest.raises(ManifestError, match=r"bad.json:2: audio file nowhere.wav not found"):
        read_manifest(bad)


def test_upfront_alignment_checks_name_the_line(exact_store, small_manifest, demo_corpus, tmp_path):
    import dataclasses

    from kdstore.distill.checks import check_alignment_upfront
    from kdstore.inputs.manifest import read_manifest
    from kdstore.store import StoreSet

    reader = StoreSet([exact_store])
    entries = read_manifest(small_manifest)
    teacher_tokens = build_model("tiny", demo_corpus.tokenizer_dir, seed=0).tokenizer.text_to_ids
    check_alignment_upfront(entries, teacher_tokens, reader, reader.metadata.front_end)  # all good
    with pytest.raises(IncompatibleStoreError, match=r"six.json:1: the transcript gives other tokens than the store's label"):
        check_alignment_upfront(entries, lambda text: [*teacher_tokens(text), 1], reader, reader.metadata.front_end)
    other_rate = dataclasses.replace(reader.metadata.front_end, subsampling_factor=4)
    with pytest.raises(IncompatibleStoreError, match=r"six.json:1: .* T=\d+ encoder frames, the store has T="):
        check_alignment_upfront(entries, teacher_tokens, reader, other_rate)
    extra = tmp_path / "extra.json"
    lines = Path(demo_corpus.train_manifest).read_text().splitlines()
    extra.write_text(Path(small_manifest).read_text() + lines[-1] + "\n")
    with pytest.raises(IncompatibleStoreError, match=r"extra.json:7: utterance .* is not in store"):
        check_alignment_upfront(read_manifest(extra), teacher_tokens, reader, reader.metadata.front_end)


def test_hybrid_teacher_ctc_rows_train_a_hybrid_student_with_both_kd_terms(teacher_nemo, small_manifest, tmp_path):
    from kdstore.distill.config import load_train_config
    from kdstore.distill.train import train_student
    from kdstore.dump.run import DumpSettings, dump_teacher
    from kdstore.store import StoreReader
    from kdstore.store.verify import verify_store

    store = tmp_path / "ctc.zarr"
    meta = dump_teacher(teacher_nemo, small_manifest, store, DumpSettings(top_k=4, batch_size=3, band=3, ctc=True))
    assert meta.ctc_top_k == 4 and verify_store(store)
    rows = StoreReader(store).read(0)
    assert rows.ctc_logp.shape == (rows.num_frames, 4) and rows.occupancy is not None
    out = tmp_path / "hybrid-student.nemo"
    cfg = load_train_config("tiny-teacher", [
        f"model.train_ds.manifest_filepath={small_manifest}", f"run.output={out}", "trainer.max_steps=2",
        "model.train_ds.batch_size=3", "trainer.accelerator=cpu", "model.encoder.n_layers=1",
        "model.model_defaults.enc_hidden=64", "model.encoder.subsampling_conv_channels=64",
        f"model.init_from_teacher.path={teacher_nemo}", "model.kd.weights=occupancy", "model.kd.top_k=2"],
        store=str(store))
    result = train_student(cfg)
    losses = result.final_losses
    assert losses["train_kd_loss"] > 0 and losses["train_ctc_kd_loss"] > 0, losses
    assert result.init_report is not None and ", 0 as initialised." in result.init_report.read_text()
    import json
    import subprocess
    import sys

    code = ("import json; from nemo.collections.asr.models import ASRModel; "
            f"print(json.dumps(type(ASRModel.restore_from({str(out)!r}, map_location='cpu')).__name__))")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == "EncDecHybridRNNTCTCBPEModel"


def test_occupancy_weights_from_a_full_store_train(exact_store, small_manifest, tmp_path):
    from kdstore.distill.config import load_train_config
    from kdstore.distill.train import train_student

    cfg = load_train_config("tiny", [f"model.train_ds.manifest_filepath={small_manifest}",
                                     f"run.output={tmp_path / 's.nemo'}", "trainer.max_steps=1",
                                     "model.train_ds.batch_size=3", "trainer.accelerator=cpu",
                                     "model.kd.weights=occupancy", "model.kd.loss=collapsed"], store=str(exact_store))
    result = train_student(cfg)
    assert 0 < result.final_losses["train_kd_loss"] < float("inf")


def test_collapsed_from_topk_store_equals_full_store_and_band_equals_restricted_dense(
        teacher_nemo, exact_store, small_manifest, demo_corpus, tmp_path):
    from kdstore.distill.config import KDSettings
    from kdstore.distill.data import StoreCollate
    from kdstore.distill.kd_term import kd_node_loss
    from kdstore.dump.run import DumpSettings, dump_teacher
    from kdstore.inputs.batches import TranscribedAudioDataset
    from kdstore.inputs.manifest import read_manifest
    from kdstore.store import StoreReader

    small = tmp_path / "k4.zarr"
    dump_teacher(teacher_nemo, small_manifest, small, DumpSettings(top_k=4, batch_size=4, value_dtype="float32", band=None))
    band = tmp_path / "band.zarr"
    dump_teacher(teacher_nemo, small_manifest, band, DumpSettings(top_k=4, batch_size=4, value_dtype="float32", band=2))
    student = build_model("tiny", demo_corpus.tokenizer_dir, seed=9)
    entries = read_manifest(small_manifest)
    dataset = TranscribedAudioDataset(entries, student.tokenizer.text_to_ids, 16000)
    items = [dataset[i] for i in range(len(entries))]
    batches = {name: StoreCollate(StoreReader(path))(items) for name, path in
               (("full", exact_store), ("k4", small), ("band", band))}
    b = batches["full"]
    enc, _ = student.forward(input_signal=b.signal, input_signal_length=b.signal_len)
    pred, _, _ = student.decoder(targets=b.tokens, target_length=b.tokens_len)
    log_probs = student.joint.joint(enc.transpose(1, 2), pred.transpose(1, 2)).log_softmax(-1)

    def settings(loss):
        return KDSettings(enabled=True, alpha=0.5, temperature=1.0, store="x", loss=loss)

    blank = student.decoder.blank_idx
    full_collapsed = kd_node_loss(log_probs, batches["full"].kd, b.tokens, blank, settings("collapsed"))
    k4_collapsed = kd_node_loss(log_probs, batches["k4"].kd, b.tokens, blank, settings("collapsed"))
    assert abs(full_collapsed.item() - k4_collapsed.item()) < 1e-6
    # band rows == the k4 rows restricted (masked) to the band's nodes
    restricted = dataclasses.replace(batches["k4"].kd, stored=batches["band"].kd.stored)
    band_loss = kd_node_loss(log_probs, batches["band"].kd, b.tokens, blank, settings("topk_rest"))
    dense_loss = kd_node_loss(log_probs, restricted, b.tokens, blank, settings("topk_rest"))
    assert batches["band"].kd.stored.sum() < batches["k4"].kd.stored.sum()
    assert abs(band_loss.item() - dense_loss.item()) < 1e-6


@pytest.mark.parametrize("perturbation", ["speed", "time_stretch"])
def test_length_changing_perturbation_with_kd_is_refused(exact_store, small_manifest, tmp_path, perturbation):
    from kdstore.distill.config import load_train_config
    from kdstore.distill.train import train_student

    cfg = load_train_config("tiny", [f"model.train_ds.manifest_filepath={small_manifest}",
                                     f"run.output={tmp_path / 's.nemo'}", "trainer.accelerator=cpu",
                                     f"+model.train_ds.augmentor.{perturbation}.prob=0.5"], store=str(exact_store))
    with pytest.raises(IncompatibleStoreError, match=f"{perturbation} perturbation"):
        train_student(cfg)


def test_augmentor_is_applied_to_training_audio_only(exact_store, small_manifest, tmp_path):
    """``model.train_ds.augmentor`` (NeMo's AudioAugmentor: here shift + white noise) reaches kdstore's
    training loader, keeps every utterance's length (so the store rows still fit), and KD trains."""
    from kdstore.distill.config import load_train_config
    from kdstore.distill.train import train_student

    cfg = load_train_config("tiny", [f"model.train_ds.manifest_filepath={small_manifest}",
                                     f"run.output={tmp_path / 's.nemo'}", "trainer.max_steps=1",
                                     "model.train_ds.batch_size=3", "trainer.accelerator=cpu",
                                     "+model.train_ds.augmentor.shift.prob=1.0",
                                     "+model.train_ds.augmentor.shift.min_shift_ms=-5.0",
                                     "+model.train_ds.augmentor.shift.max_shift_ms=5.0",
                                     "+model.train_ds.augmentor.white_noise.prob=1.0",
                                     "+model.train_ds.augmentor.white_noise.min_level=-70",
                                     "+model.train_ds.augmentor.white_noise.max_level=-60"], store=str(exact_store))
    result = train_student(cfg)
    assert 0 < result.final_losses["train_kd_loss"] < float("inf")
