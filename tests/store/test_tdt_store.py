"""``kdstore/3`` stores of TDT teachers on real Zarr v3 stores (no NeMo): duration rows round-trip in full
and band layouts, the verifier refuses a store that lacks or garbles them, old stores read as RNN-T ones,
and the collate pads the duration log-probs for training."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from kdstore.errors import MetadataError, StoreError
from kdstore.store import PartWriter, StoreReader, StoreSet, commit_store, open_for_writing
from kdstore.store.meta_v3 import StoreMetadata, TDTInfo
from kdstore.store.part_writer import Label
from kdstore.store.verify import verify_store, verify_unfinished
from tests.stores import all_arrays, toy_metadata

K, VOCAB = 4, 30
DURATIONS = (0, 1, 2, 3, 4)
REPO = Path(__file__).resolve().parents[2]


def tdt_metadata(value_dtype="float16", lattice="full", width=None, durations=DURATIONS) -> StoreMetadata:
    base = toy_metadata(top_k=K, vocab=VOCAB, value_dtype=value_dtype, lattice=lattice, band_width=width)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.name != "format"}
    return StoreMetadata(**fields, teacher_kind="tdt", tdt=TDTInfo(durations=tuple(durations), sigma=0.02, omega=0.1))


def log_softmax(x: np.ndarray) -> np.ndarray:
    return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)


def utterance(rng, frames: int, labels: int, width: int | None):
    """Dense token top-k, pairs and duration log-probs of one lattice, plus legal band starts."""
    tok = log_softmax(rng.normal(size=(frames, labels + 1, VOCAB + 1)) * 2)
    ids = np.argsort(-tok, -1)[..., :K]
    dense = {"logp": np.take_along_axis(tok, ids, -1).astype(np.float32), "ids": ids,
             "blank_label": np.stack([tok[..., VOCAB], tok[..., 1]], -1).astype(np.float32),
             "duration_logp": log_softmax(rng.normal(size=(frames, labels + 1, len(DURATIONS))) * 2).astype(np.float32)}
    w = labels + 1 if width is None or frames == 1 else min(width, labels + 1)
    starts = np.sort(rng.integers(0, labels + 2 - w, size=frames)).astype(np.int32)
    starts[0], starts[-1] = 0, labels + 1 - w
    u = starts[:, None] + np.arange(w)[None, :]
    band = {name: array[np.arange(frames)[:, None], u] for name, array in dense.items()}
    return {"dense": dense, "band": band, "starts": starts, "width": w, "frames": frames, "labels": labels,
            "occupancy_sum": float(labels + 1 + rng.uniform(0, frames - 1))}


def build(seed: int, count: int, width: int | None):
    rng = np.random.default_rng(seed)
    return {f"a/{i}.wav|0.000|{i}.000": utterance(rng, int(rng.integers(1, 25)), int(rng.integers(0, 9)), width)
            for i in range(count)}


def write(group, part, items, *, value_dtype="float16", with_occupancy=False, stop_after=None, resume=False):
    writer = PartWriter(group, part, top_k=K, vocab_size=VOCAB, value_dtype=value_dtype, with_occupancy=with_occupancy,
                        num_durations=len(DURATIONS), resume=resume, commit_seconds=0)
    done = set(writer.committed_keys)
    for n, (key, utt) in enumerate(items.items()):
        if key in done:
            continue
        if stop_after is not None and n >= stop_after:
            return writer  # killed: never closed
        band = utt["band"]
        rows = band["logp"].shape[0] * band["logp"].shape[1]
        writer.add_utterance(
            key, frames=utt["frames"], labels=utt["labels"], band_start=utt["starts"],
            logp=band["logp"].reshape(rows, K), ids=band["ids"].reshape(rows, K),
            blank_label=band["blank_label"].reshape(rows, 2), duration_logp=band["duration_logp"].reshape(rows, -1),
            occupancy=np.full(rows, 0.5, dtype=np.float32) if with_occupancy else None,
            occupancy_sum=utt["occupancy_sum"],
            label=Label(ids=np.arange(utt["labels"]) % VOCAB, text="w", source="person", confidence=-0.5))
    writer.close()
    return writer


def make_store(path, items, width=None, value_dtype="float16", **metadata):
    group = open_for_writing(path, {"k": K, "tdt": {"durations": list(DURATIONS)}})
    write(group, 0, items, value_dtype=value_dtype, with_occupancy=width is not None)
    lattice = "full" if width is None else "band"
    return commit_store(group, tdt_metadata(value_dtype, lattice, width, **metadata), {"tokenizer.model": b"tok"})


@pytest.mark.parametrize("value_dtype", ["float16", "float32"])
@pytest.mark.parametrize("width", [None, 3])
def test_tdt_store_round_trips_top_k_pairs_and_duration_log_probs(tmp_path, value_dtype, width):
    items = build(seed=1, count=20, width=width)
    path = tmp_path / "tdt.zarr"
    make_store(path, items, width, value_dtype)
    assert verify_store(path)
    reader = StoreReader(path)
    meta = reader.metadata
    assert (meta.format, meta.teacher_kind, meta.tdt) == ("kdstore/3", "tdt", TDTInfo(durations=DURATIONS, sigma=0.02,
                                                                                       omega=0.1))
    assert reader.tdt_durations == DURATIONS and reader.has_durations
    root = json.loads((path / "zarr.json").read_text())["attributes"]["kdstore"]
    assert root["teacher_kind"] == "tdt" and root["tdt"] == {"durations": [0, 1, 2, 3, 4], "sigma": 0.02, "omega": 0.1}
    for key, utt in items.items():
        rows = reader.read_key(key)
        stored = rows.stored
        assert rows.duration_logp.shape == (utt["frames"], utt["labels"] + 1, len(DURATIONS))
        assert stored.sum() == utt["frames"] * utt["width"]
        for name in ("logp", "ids", "blank_label", "duration_logp"):
            expected = utt["dense"][name]
            expected = expected.astype(value_dtype) if name != "ids" else expected
            np.testing.assert_array_equal(getattr(rows, name)[stored], expected[stored], err_msg=name)
        assert not rows.duration_logp[~stored].any()  # outside the band: 0, like the other arrays
        band = reader.read_key(key, dense=False)
        np.testing.assert_array_equal(band.duration_logp, utt["band"]["duration_logp"].astype(value_dtype))
    sums = np.asarray(zarr.open_array(str(path / "parts/00000/utt/occupancy_sum"), mode="r")[:])
    np.testing.assert_allclose(sums, [u["occupancy_sum"] for u in items.values()], rtol=1e-6)


def test_inspect_reports_the_occupancy_a_tdt_band_keeps_from_the_stored_sums(tmp_path):
    from kdstore.store.summary import summarize

    items = build(seed=2, count=8, width=3)
    path = tmp_path / "band.zarr"
    make_store(path, items, width=3)
    summary = summarize(path)
    kept = 0.5 * sum(u["frames"] * u["width"] for u in items.values())  # every stored row holds occupancy 0.5
    visited = sum(np.float32(u["occupancy_sum"]) for u in items.values())
    assert summary["teacher_kind"] == "tdt" and summary["tdt_durations"] == list(DURATIONS)
    assert summary["band_occupancy_kept"] == pytest.approx(kept / visited, abs=1e-6)


def test_resume_after_a_kill_gives_the_same_tdt_arrays(tmp_path):
    items = build(seed=3, count=30, width=4)
    ref = tmp_path / "ref.zarr"
    make_store(ref, items, width=4)
    path = tmp_path / "s.zarr"
    pending = {"top_k": K, "value_dtype": "float16", "band": 4, "ctc": False, "vocab_size": VOCAB,
               "tdt": {"durations": list(DURATIONS)}}
    crashed = write(open_for_writing(path, pending), 0, items, with_occupancy=True, stop_after=20)
    assert 0 < crashed.committed_utterances <= 20
    assert verify_unfinished(path)["utterances"] == crashed.committed_utterances
    with pytest.raises(StoreError, match="settings differ"):
        open_for_writing(path, {**pending, "tdt": {"durations": [0, 1, 2]}}, resume=True)
    with pytest.raises(StoreError, match="another teacher kind"):
        PartWriter(open_for_writing(path, pending, resume=True), 0, top_k=K, vocab_size=VOCAB, value_dtype="float16",
                   with_occupancy=True, resume=True)  # an RNN-T writer cannot continue a TDT part
    group = open_for_writing(path, pending, resume=True)
    write(group, 0, items, with_occupancy=True, resume=True)
    commit_store(group, tdt_metadata("float16", "band", 4), {"tokenizer.model": b"tok"})
    assert verify_store(path)
    a, b = all_arrays(ref), all_arrays(path)
    assert a.keys() == b.keys() and "parts/00000/node/duration_logp" in a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _remove_array(path: Path, name: str) -> None:
    import shutil

    shutil.rmtree(path / "parts" / "00000" / name)
    group = zarr.open_group(str(path / "parts" / "00000" / name.split("/")[0]), mode="r")
    assert name.split("/")[1] not in group


def test_verify_refuses_a_tdt_store_without_or_with_malformed_duration_arrays(tmp_path):
    items = build(seed=4, count=6, width=None)
    path = tmp_path / "s.zarr"
    make_store(path, items)
    zarr.open_array(str(path / "parts/00000/node/duration_logp"), mode="r+")[2] = 0.0  # five probabilities of 1
    with pytest.raises(StoreError) as caught:
        verify_store(path)
    assert str(caught.value) == ("parts/00000/node/duration_logp: the duration probabilities of row 2 sum to 5.0000, "
                                 "not 1")
    _remove_array(path, "node/duration_logp")
    with pytest.raises(StoreError) as caught:
        verify_store(path)
    assert str(caught.value) == ("parts/00000/node/duration_logp: missing: required in a TDT teacher's store (root "
                                 "field tdt lists 5 durations); the store is damaged or was not written by kdstore: "
                                 "dump it again")
    narrow = tmp_path / "narrow.zarr"  # 5 columns stored, but the metadata lists 3 durations
    make_store(narrow, items, durations=(0, 1, 2))
    with pytest.raises(StoreError, match=r"^parts/00000/node/duration_logp: shape \(\d+, 5\), expected \(\d+, 3\) "
                                         r"\(rows, D durations\)$"):
        verify_store(narrow)
    garbled = tmp_path / "nan.zarr"
    make_store(garbled, items)
    zarr.open_array(str(garbled / "parts/00000/node/duration_logp"), mode="r+")[0, 1] = np.nan
    with pytest.raises(StoreError, match="node/duration_logp: NaN or infinite value at row 0 .utterance 0"):
        verify_store(garbled)


@pytest.mark.parametrize(("edit", "field", "expected"), [
    (lambda m: m.pop("tdt"), "kdstore.tdt", "object"),
    (lambda m: m.pop("teacher_kind"), "kdstore.teacher_kind", "'rnnt' or 'tdt'"),
    (lambda m: m["tdt"].update(durations=[1, 2]), "kdstore.tdt.durations", "array of ints, strictly ascending, with 0 and 1"),
    (lambda m: m["tdt"].update(omega=2), "kdstore.tdt.omega", "float in [0, 1]"),
    (lambda m: m.update(teacher_kind="rnnt"), "kdstore.tdt", "null (teacher_kind is 'rnnt')"),
])
def test_wrong_tdt_root_attributes_fail_in_one_line(tmp_path, edit, field, expected):
    path = tmp_path / "s.zarr"
    make_store(path, build(seed=5, count=2, width=None))
    doc = json.loads((path / "zarr.json").read_text())
    edit(doc["attributes"]["kdstore"])
    (path / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(MetadataError) as caught:
        StoreReader(path)
    assert (caught.value.field, caught.value.expected) == (field, expected) and "\n" not in str(caught.value)


def test_rnnt_metadata_still_serialises_as_kdstore_2_and_old_stores_read_as_rnnt():
    meta = toy_metadata(top_k=K, vocab=VOCAB)
    assert meta.format == "kdstore/2" and "teacher_kind" not in meta.to_json() and "tdt" not in meta.to_json()
    assert StoreMetadata.from_json(meta.to_json()) == meta
    tdt = tdt_metadata()
    assert StoreMetadata.from_json(json.loads(json.dumps(tdt.to_json()))) == tdt
    with pytest.raises(StoreError, match="must be kdstore/3"):
        dataclasses.replace(tdt, format="kdstore/2")
    old = StoreReader(REPO / "tests/data/store_v1/teacher.zarr")  # written by the last kdstore/1 writer
    assert verify_store(old.path)
    assert (old.metadata.format, old.metadata.teacher_kind, old.tdt_durations, old.has_durations) == (
        "kdstore/1", "rnnt", None, False)
    assert old.read(0).duration_logp is None


def test_store_set_keeps_duration_rows_only_when_every_store_has_the_same_durations(tmp_path):
    from tests.store.test_store import person_label, random_utterance

    tdt_a, tdt_b = build(seed=6, count=3, width=None), build(seed=7, count=3, width=None)
    tdt_b = {key.replace("a/", "b/"): utt for key, utt in tdt_b.items()}
    make_store(tmp_path / "a.zarr", tdt_a)
    make_store(tmp_path / "b.zarr", tdt_b)
    both = StoreSet([tmp_path / "a.zarr", tmp_path / "b.zarr"])
    assert both.tdt_durations == DURATIONS
    rows = both.read_batch([next(iter(tdt_b)), next(iter(tdt_a))])
    assert all(r.duration_logp is not None for r in rows)
    make_store(tmp_path / "c.zarr", {k.replace("a/", "c/"): u for k, u in tdt_a.items()}, durations=(0, 1, 2, 3, 5))
    with pytest.raises(StoreError, match=r"different durations \(\[0, 1, 2, 3, 4\] vs \[0, 1, 2, 3, 5\]\)"):
        StoreSet([tmp_path / "a.zarr", tmp_path / "c.zarr"])
    rng = np.random.default_rng(8)  # an RNN-T teacher's store (kdstore/2) alongside: token rows only
    group = open_for_writing(tmp_path / "rnnt.zarr", {"k": K})
    writer = PartWriter(group, 0, top_k=K, vocab_size=VOCAB, value_dtype="float16")
    utt = random_utterance(rng, 5, 2, None)
    writer.add_utterance("r/0.wav|0.000|1.000", frames=5, labels=2, band_start=utt["starts"],
                         logp=utt["band"]["logp"].reshape(-1, K), ids=utt["band"]["ids"].reshape(-1, K),
                         blank_label=utt["band"]["blank_label"].reshape(-1, 2), label=person_label(2))
    writer.close()
    commit_store(group, toy_metadata(top_k=K, vocab=VOCAB), {"tokenizer.model": b"tok"})
    mixed = StoreSet([tmp_path / "a.zarr", tmp_path / "rnnt.zarr"])
    assert mixed.tdt_durations is None
    assert all(r.duration_logp is None for r in mixed.read_batch([next(iter(tdt_a)), "r/0.wav|0.000|1.000"]))


def test_store_collate_pads_duration_log_probs_like_blank_label(tmp_path):
    from kdstore.distill.data import StoreCollate

    items = build(seed=9, count=4, width=3)
    path = tmp_path / "s.zarr"
    make_store(path, items, width=3, value_dtype="float32")
    keys = list(items)[:3]
    batch_items = [{"audio": torch.zeros(160 * (i + 1)), "tokens": torch.arange(items[k]["labels"]), "key": k, "index": i}
                   for i, k in enumerate(keys)]
    batch = StoreCollate(StoreReader(path))(batch_items)
    kd = batch.kd
    frames, nodes = max(items[k]["frames"] for k in keys), max(items[k]["labels"] for k in keys) + 1
    assert kd.duration_logp.dtype == torch.float32 and kd.duration_logp.shape == (3, frames, nodes, len(DURATIONS))
    assert kd.duration_logp.shape[:3] == kd.blank_label.shape[:3]
    for b, key in enumerate(keys):
        utt = items[key]
        t, n = utt["frames"], utt["labels"] + 1
        stored = kd.stored[b, :t, :n].numpy()
        np.testing.assert_array_equal(kd.duration_logp[b, :t, :n].numpy()[stored], utt["dense"]["duration_logp"][stored])
        assert not kd.duration_logp[b, t:].any() and not kd.duration_logp[b, :, n:].any()  # padding: 0
    probs = kd.duration_logp.exp().sum(-1)[kd.stored]
    torch.testing.assert_close(probs, torch.ones_like(probs), rtol=0, atol=1e-5)


def test_tdt_store_converts_to_hdf5_and_back(tmp_path):
    from kdstore.store.convert import convert

    items = build(seed=10, count=5, width=3)
    path = tmp_path / "s.zarr"
    make_store(path, items, width=3)
    h5 = tmp_path / "s.h5"
    convert(path, h5)
    assert verify_store(h5)
    a, b = StoreReader(path), StoreReader(h5)
    assert b.metadata == a.metadata and b.tdt_durations == DURATIONS
    for key in items:
        np.testing.assert_array_equal(a.read_key(key).duration_logp, b.read_key(key).duration_logp)
    back = tmp_path / "back.zarr"
    convert(h5, back)
    assert verify_store(back)
    original, restored = all_arrays(path), all_arrays(back)
    assert original.keys() == restored.keys()
    for name in original:
        np.testing.assert_array_equal(original[name], restored[name], err_msg=name)
