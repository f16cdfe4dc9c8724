"""dump-teacher with TDT teachers (real NeMo TDT models with random weights, real Zarr stores, the committed
store_v1 audio and tokenizer, so no TTS engine): the teacher-forced token and duration distributions, the
kdstore/3 store they go to, the TDT forward-backward behind its occupancy and confidence, a crash and
--resume, TDT-CTC hybrids and teacher labels from NeMo's TDT greedy search."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from kdstore.store import StoreReader
from kdstore.store.meta_v3 import TDTInfo
from kdstore.store.verify import verify_store, verify_unfinished
from tests.models import TDT_DURATIONS
from tests.stores import all_arrays

REPO = Path(__file__).resolve().parents[2]
OLD = REPO / "tests" / "data" / "store_v1"
K = 4


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tokenizer folder (the committed store's), an 8-line manifest of its 4 wavs (each also cut 0.05 s
    later: another key) and the same lines with the transcripts of utt1 and utt3 removed."""
    folder = tmp_path_factory.mktemp("tdt_dump")
    StoreReader(OLD / "teacher.zarr").write_tokenizer(folder / "tokenizer")
    rows = []
    for line in (OLD / "train.json").read_text().splitlines():
        row = json.loads(line)
        row["audio_filepath"] = str(OLD / row["audio_filepath"])
        rows += [row, {**row, "offset": 0.05, "duration": round(row["duration"] - 0.05, 4)}]
    (folder / "m.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mixed = [{k: v for k, v in r.items() if k != "text" or i // 2 % 2 == 0} for i, r in enumerate(rows)]
    (folder / "mixed.json").write_text("".join(json.dumps(r) + "\n" for r in mixed))
    return folder


@pytest.fixture(scope="module")
def teacher(work) -> Path:
    from tests.models import build_tdt_model

    path = work / "tdt.nemo"
    build_tdt_model(work / "tokenizer", seed=3).save_to(str(path))
    return path


def dump(teacher, manifest, out, **settings):
    from kdstore.dump.run import DumpSettings, dump_teacher

    base = {"top_k": K, "batch_size": 2, "value_dtype": "float32", "band": None, "overwrite": True}
    return dump_teacher(teacher, manifest, out, DumpSettings(**{**base, **settings}))


def reference_lattices(teacher, manifest):
    """Per utterance, alone in its batch: token log-probs (T, U+1, V+1), duration log-probs (T, U+1, D), raw
    logits and label ids, computed from NeMo's modules directly (not through kdstore.nemo.tdt)."""
    from kdstore.inputs.batches import TranscribedAudioDataset, collate
    from kdstore.inputs.manifest import read_manifest
    from kdstore.nemo.checkpoint import restore_model

    model = restore_model(teacher)
    entries = read_manifest(manifest)
    dataset = TranscribedAudioDataset(entries, model.tokenizer.text_to_ids, 16000)
    out = {}
    with torch.inference_mode():
        for i, entry in enumerate(entries):
            batch = collate([dataset[i]])
            enc, enc_len = model.forward(input_signal=batch.signal, input_signal_length=batch.signal_len)
            pred, _, _ = model.decoder(targets=batch.tokens, target_length=batch.tokens_len)
            joint = model.joint
            f = joint.project_encoder(enc.transpose(1, 2))  # (1, T, H)
            g = joint.project_prednet(pred.transpose(1, 2))  # (1, U+1, H)
            raw = joint.joint_net(f[:, :, None] + g[:, None])[0, : int(enc_len[0])]  # (T, U+1, V+1+D)
            vocab = model.decoder.vocab_size
            out[entry.key] = {"tokens": raw[..., : vocab + 1].log_softmax(-1), "durations": raw[..., vocab + 1 :].log_softmax(-1),
                              "raw": raw, "ids": batch.tokens[0], "enc": enc, "enc_len": enc_len}
    return model, out


def test_teacher_forced_tdt_log_probs_are_two_log_softmaxes_of_nemos_raw_joint(teacher, work):
    from omegaconf import open_dict

    from kdstore.errors import KdstoreError
    from kdstore.nemo.tdt import tdt_joint_log_probs, tdt_settings

    model, refs = reference_lattices(teacher, work / "m.json")
    assert model.joint.log_softmax is None  # NeMo's default: log-softmax over all V+1+D outputs on CPU
    ref = next(iter(refs.values()))
    with torch.inference_mode():
        pred, _, _ = model.decoder(targets=ref["ids"][None], target_length=torch.tensor([len(ref["ids"])]))
        tokens, durations = tdt_joint_log_probs(model, ref["enc"], pred, len(TDT_DURATIONS))
        nemo_cpu = model.joint.joint(ref["enc"].transpose(1, 2), pred.transpose(1, 2))[0]
    frames = ref["raw"].shape[0]
    assert model.joint.log_softmax is None  # restored
    assert tokens.shape[-1] == model.decoder.vocab_size + 1 and durations.shape[-1] == len(TDT_DURATIONS)
    torch.testing.assert_close(tokens[0, :frames], ref["tokens"], rtol=0, atol=1e-6)
    torch.testing.assert_close(durations[0, :frames], ref["durations"], rtol=0, atol=1e-6)
    torch.testing.assert_close(durations.exp().sum(-1), torch.ones(durations.shape[:-1]), rtol=0, atol=1e-5)
    # What NeMo's CPU joint returns is one distribution over V+1+D: its token part is not the token distribution.
    torch.testing.assert_close(nemo_cpu[:frames], ref["raw"].log_softmax(-1), rtol=0, atol=1e-5)
    assert float((nemo_cpu[..., : model.decoder.vocab_size + 1].exp().sum(-1) - 1).abs().max()) > 1e-2

    assert tdt_settings(model) == tdt_settings(model, teacher)
    assert (tdt_settings(model).durations, tdt_settings(model).sigma, tdt_settings(model).omega) == (TDT_DURATIONS, 0.02, 0.1)
    with open_dict(model.cfg):
        model.cfg.model_defaults.tdt_durations = [0, 1, 2, 3, 5]
    with pytest.raises(KdstoreError) as caught:
        tdt_settings(model, "t.nemo")
    assert str(caught.value) == ("t.nemo: EncDecRNNTBPEModel: its duration lists disagree (loss.tdt_kwargs.durations = "
                                 "[0, 1, 2, 3, 4], decoding.durations = [0, 1, 2, 3, 4], model_defaults.tdt_durations = "
                                 "[0, 1, 2, 3, 5]); NeMo trains and decodes with loss.tdt_kwargs.durations: make the "
                                 "others equal to it")


def test_tdt_dump_stores_the_teachers_distributions_occupancy_and_confidence(teacher, work):
    from kdstore.lattice.tdt_loss import tdt_loss
    from kdstore.lattice.tdt_posteriors import tdt_lattice_posteriors
    from kdstore.store.summary import summarize

    full, band = work / "full.zarr", work / "band.zarr"
    meta = dump(teacher, work / "m.json", full)
    assert (meta.format, meta.teacher_kind, meta.tdt) == ("kdstore/3", "tdt", TDTInfo(durations=TDT_DURATIONS,
                                                                                       sigma=0.02, omega=0.1))
    dump(teacher, work / "m.json", band, band=2)
    assert verify_store(full) and verify_store(band)
    root = json.loads((full / "zarr.json").read_text())["attributes"]["kdstore"]
    assert (root["format"], root["teacher_kind"], root["tdt"]) == ("kdstore/3", "tdt",
                                                                   {"durations": [0, 1, 2, 3, 4], "sigma": 0.02, "omega": 0.1})
    _, refs = reference_lattices(teacher, work / "m.json")
    full_reader, band_reader = StoreReader(full), StoreReader(band)
    assert full_reader.tdt_durations == TDT_DURATIONS and len(full_reader) == len(refs) == 8
    sums = {}
    for key, ref in refs.items():
        rows, label = full_reader.read_key(key), full_reader.label_of(key)
        frames, labels = ref["tokens"].shape[:2]
        labels -= 1
        assert (rows.num_frames, rows.num_labels) == (frames, labels)
        values, ids = ref["tokens"].topk(K, -1)
        np.testing.assert_allclose(rows.logp, values.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_array_equal(rows.ids, ids.numpy())
        np.testing.assert_allclose(rows.blank_label[..., 0], ref["tokens"][..., -1].numpy(), rtol=0, atol=1e-4)
        next_label = ref["tokens"][:, :labels].gather(-1, ref["ids"][None, :, None].expand(frames, -1, 1))[..., 0]
        np.testing.assert_allclose(rows.blank_label[:, :labels, 1], next_label.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(rows.duration_logp, ref["durations"].numpy(), rtol=0, atol=1e-4)
        # confidence: log P(label | audio) / U with log P = -TDT loss of the raw logits (no sigma, no omega)
        nll = tdt_loss(ref["raw"][None].double(), ref["ids"][None], torch.tensor([frames]), torch.tensor([labels]),
                       blank=ref["tokens"].shape[-1] - 1, durations=TDT_DURATIONS, reduction=None)
        assert label.confidence == pytest.approx(-float(nll) / labels, abs=1e-4)
        # occupancy (band store) = the TDT forward-backward over the full store's own values
        post = tdt_lattice_posteriors(torch.from_numpy(rows.blank_label[..., 0]), torch.from_numpy(rows.blank_label[..., 1]),
                                      torch.from_numpy(rows.duration_logp), TDT_DURATIONS, labels)
        assert label.confidence == pytest.approx(float(post.log_z) / labels, abs=1e-5)
        banded = band_reader.read_key(key)
        stored = banded.stored
        assert stored.sum() == frames * 2
        np.testing.assert_allclose(banded.occupancy[stored], post.node.numpy()[stored], rtol=0, atol=1e-3)
        for name in ("logp", "ids", "blank_label", "duration_logp"):
            np.testing.assert_array_equal(getattr(banded, name)[stored], getattr(rows, name)[stored], err_msg=name)
        sums[key] = float(post.node.sum())
    stored_sums = np.asarray(zarr.open_array(str(band / "parts/00000/utt/occupancy_sum"), mode="r")[:])
    for key, total in sums.items():  # the expected visited nodes of each full lattice
        assert stored_sums[band_reader.index_in_part[band_reader.index_of(key)]] == pytest.approx(total, rel=1e-5)
    kept = summarize(band)["band_occupancy_kept"]
    uniform = np.mean([2 / (r["tokens"].shape[1]) for r in refs.values()])  # what a band anywhere would keep on average
    assert kept > max(0.5, 2 * uniform), kept  # the band follows the teacher's alignments (random weights here)
    assert summarize(full)["teacher_kind"] == "tdt"


def _crashing_dump(teacher, manifest, out, name, k):
    """Run in a forked child: dump, and die (os._exit, no cleanup) right before the k-th write of ``name``."""
    from kdstore.store import local_store

    replace, seen = local_store._replace, {"n": 0}

    def counted(temporary, path):
        if os.path.relpath(path, out) == name:
            seen["n"] += 1
            if seen["n"] == k:
                os._exit(77)
        replace(temporary, path)

    local_store._replace = counted
    dump(teacher, manifest, out, band=3, chunk_rows=2, overwrite=False)  # 32 rows per commit: one utterance


def test_tdt_dump_resumes_after_a_crash_with_the_same_arrays(teacher, work):
    ref, out = work / "ref.zarr", work / "crashed.zarr"
    dump(teacher, work / "m.json", ref, band=3, chunk_rows=2)
    child = multiprocessing.get_context("fork").Process(
        target=_crashing_dump, args=(teacher, work / "m.json", out, "parts/00000/zarr.json", 6))
    child.start()
    child.join(300)
    assert child.exitcode == 77
    committed = verify_unfinished(out)["utterances"]
    assert 0 < committed < 8
    dump(teacher, work / "m.json", out, band=3, chunk_rows=2, overwrite=False, resume=True)
    assert verify_store(out)
    a, b = all_arrays(ref), all_arrays(out)
    assert a.keys() == b.keys() and "parts/00000/node/duration_logp" in a and "parts/00000/utt/occupancy_sum" in a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_tdt_ctc_hybrid_dumps_ctc_rows_and_duration_rows_through_the_cli(work, tmp_path):
    from click.testing import CliRunner

    from kdstore.cli.main import cli
    from kdstore.inputs.batches import TranscribedAudioDataset, collate
    from kdstore.inputs.manifest import read_manifest
    from kdstore.nemo.checkpoint import restore_model
    from tests.models import build_tdt_model

    path = tmp_path / "hybrid.nemo"
    build_tdt_model(work / "tokenizer", seed=4, hybrid=True).save_to(str(path))
    out = tmp_path / "h.zarr"
    result = CliRunner().invoke(cli, ["dump-teacher", "--teacher", str(path), "--manifest", str(work / "m.json"),
                                      "--out", str(out), "--top-k", str(K), "--batch-size", "2", "--dtype", "float32",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    inspected = CliRunner().invoke(cli, ["inspect", str(out), "--verify", "--json"])
    assert inspected.exit_code == 0, inspected.output
    assert '"teacher_kind": "tdt"' in inspected.output
    reader = StoreReader(out)
    meta = reader.metadata
    assert (meta.format, meta.teacher_kind, meta.ctc_top_k, meta.band_width, reader.tdt_durations) == (
        "kdstore/3", "tdt", K, 6, TDT_DURATIONS)
    model = restore_model(path)
    entries = read_manifest(work / "m.json")
    dataset = TranscribedAudioDataset(entries, model.tokenizer.text_to_ids, 16000)
    with torch.inference_mode():
        for i, entry in enumerate(entries[:3]):
            batch = collate([dataset[i]])
            enc, enc_len = model.forward(input_signal=batch.signal, input_signal_length=batch.signal_len)
            ctc = model.ctc_decoder(encoder_output=enc)[0, : int(enc_len[0])].log_softmax(-1).topk(K, -1)
            rows = reader.read_key(entry.key)
            np.testing.assert_allclose(rows.ctc_logp, ctc.values.numpy(), rtol=0, atol=1e-4)
            np.testing.assert_array_equal(rows.ctc_ids, ctc.indices.numpy())
            assert rows.duration_logp.shape == (*rows.logp.shape[:2], len(TDT_DURATIONS))


def test_untranscribed_lines_are_labelled_by_nemos_tdt_greedy_search(teacher, work):
    from kdstore.inputs.manifest import read_manifest
    from kdstore.nemo.checkpoint import restore_model

    out = work / "mixed.zarr"
    meta = dump(teacher, work / "mixed.json", out, batch_size=1)
    assert verify_store(out) and meta.labels.teacher_labelled + meta.labels.dropped_empty == 4
    reader = StoreReader(out)
    model = restore_model(teacher)
    untranscribed = [e for e in read_manifest(work / "mixed.json", require_text=False) if not e.text]
    hyps = model.transcribe([str(e.audio_path) for e in untranscribed if e.offset == 0], batch_size=1, verbose=False)
    texts = [h.text if hasattr(h, "text") else h for h in hyps]
    stored = [reader.label_of(e.key) for e in untranscribed if e.offset == 0 and e.key in reader]
    assert stored and all(label.source == "teacher" for label in stored)
    by_key = {e.key: t for e, t in zip([e for e in untranscribed if e.offset == 0], texts, strict=True)}
    for label in stored:
        assert label.text == by_key[label.key]  # NeMo's TDT greedy hypothesis (same search, same audio)
        assert len(label.ids) == reader.read_key(label.key).num_labels > 0
